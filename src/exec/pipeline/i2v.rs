//! Image-to-video inputs of a batch (Wan 2.2 A14B I2V): each task's *conditioning video* — its
//! init image, fitted to the job's size ([`InitFit::Cover`]: scaled keeping the aspect ratio,
//! centre cropped), as the first frame and `frames − 1` zero frames after — for one VAE
//! encoder pass; the model turns each latent into its image conditioning
//! ([`crate::models::spec::DiffusionModel::image_condition`]), which every evaluation of the
//! task receives after the noisy latent. The sampler starts from pure noise, as diffusers'
//! `WanImageToVideoPipeline` and Wan's `image2video.py` do (no img2img `denoise`).

use candle_core::{DType, Device, Tensor};

use crate::exec::JobError;
use crate::manifest::Job;
use crate::output::{load_init_image, InitFit};

/// The conditioning video `[F, 3, H, W]` of `job` (which has an init image) on `device` in
/// `dtype`: the init image in [-1, 1], then `F − 1` frames of zeros.
pub(crate) fn conditioning_video(
    job: &Job,
    device: &Device,
    dtype: DType,
) -> Result<Tensor, JobError> {
    let path = job
        .init_image
        .as_deref()
        .ok_or_else(|| JobError::new("image-to-video: the job has no init image"))?;
    let err = |e: &dyn std::fmt::Display| JobError::new(format!("init image: {e}"));
    let first =
        load_init_image(path, job.width, job.height, InitFit::Cover).map_err(|e| err(&e))?;
    let rest = job.frames.max(1) as usize - 1;
    let frames = if rest == 0 {
        first
    } else {
        let zeros = Tensor::zeros(
            (rest, 3, job.height as usize, job.width as usize),
            DType::F32,
            &Device::Cpu,
        )
        .map_err(|e| err(&e))?;
        Tensor::cat(&[first, zeros], 0).map_err(|e| err(&e))?
    };
    frames
        .to_device(device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(|e| err(&e))
}

/// Why a task cannot run on a model with `condition_channels` conditioning channels, if it
/// cannot: an image-to-video model needs an init image; a text-to-video video model cannot
/// use one (video img2img is not supported).
pub(crate) fn mismatch(job: &Job, condition_channels: usize, model: &str) -> Option<JobError> {
    match (condition_channels > 0, job.init_image.is_some()) {
        (true, false) => Some(JobError::new(format!(
            "`{model}` is an image-to-video model: give the job an `init_image` (the first frame), or use text-to-video weights"
        ))),
        (false, true) if job.is_video() => Some(JobError::new(format!(
            "`{model}` is a text-to-video model: `init_image` needs image-to-video weights (Wan 2.2 A14B I2V experts, 36 input channels)"
        ))),
        _ => None,
    }
}

/// The model's input for one evaluation: the noisy latent `x`, followed on the channel axis by
/// the task's image conditioning when it has one.
pub(crate) fn model_input(x: &Tensor, condition: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match condition {
        None => Ok(x.clone()),
        Some(c) => Tensor::cat(&[x, &c.to_dtype(x.dtype())?], 1),
    }
}
