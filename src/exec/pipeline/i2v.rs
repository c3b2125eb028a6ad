//! Image-to-video inputs of a batch, of two kinds. Wan 2.2 A14B I2V (conditioning channels):
//! each task's *conditioning video* — its init image, fitted to the job's size
//! ([`InitFit::Cover`]: scaled keeping the aspect ratio, centre cropped), as the first frame and
//! `frames − 1` zero frames after — for one VAE encoder pass; the model turns each latent into
//! its image conditioning ([`crate::models::spec::DiffusionModel::image_condition`]), which
//! every evaluation of the task receives after the noisy latent. Wan 2.2 TI2V-5B (first-frame
//! conditioning, [`crate::models::spec::DiffusionModel::first_frame_conditioning`]): the init
//! image alone is encoded, and its one latent frame replaces frame 0 of every evaluation's
//! input and of the result ([`model_input`], [`with_first_frame`]). Either way the sampler
//! starts from pure noise, as diffusers' `WanImageToVideoPipeline` and Wan's `image2video.py`
//! and `textimage2video.py` do (no img2img `denoise`).

use candle_core::{DType, Device, Tensor};

use crate::exec::JobError;
use crate::manifest::Job;
use crate::output::{load_init_image, InitFit};

fn err(e: &dyn std::fmt::Display) -> JobError {
    JobError::new(format!("init image: {e}"))
}

/// The init image of `job` (which has one), fitted to the job's size ([`InitFit::Cover`]), as
/// one frame `[1, 3, H, W]` in [-1, 1] on the CPU in f32.
fn first_frame(job: &Job) -> Result<Tensor, JobError> {
    let path = job
        .init_image
        .as_deref()
        .ok_or_else(|| JobError::new("image-to-video: the job has no init image"))?;
    load_init_image(path, job.width, job.height, InitFit::Cover).map_err(|e| err(&e))
}

/// The init image of `job` alone, `[1, 3, H, W]` on `device` in `dtype` (first-frame
/// conditioning: diffusers encodes `image.unsqueeze(2)`, one frame).
pub(crate) fn first_frame_image(
    job: &Job,
    device: &Device,
    dtype: DType,
) -> Result<Tensor, JobError> {
    first_frame(job)?
        .to_device(device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(|e| err(&e))
}

/// The conditioning video `[F, 3, H, W]` of `job` (which has an init image) on `device` in
/// `dtype`: the init image in [-1, 1], then `F − 1` frames of zeros.
pub(crate) fn conditioning_video(
    job: &Job,
    device: &Device,
    dtype: DType,
) -> Result<Tensor, JobError> {
    let first = first_frame(job)?;
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

/// Why a task cannot run on a model with `condition_channels` conditioning channels (and
/// `first_frame` conditioning or not), if it cannot: an image-to-video model with
/// conditioning channels needs an init image; a text-to-video video model cannot use one
/// (video img2img is not supported); a first-frame model (TI2V) takes either.
pub(crate) fn mismatch(
    job: &Job,
    condition_channels: usize,
    first_frame: bool,
    model: &str,
) -> Option<JobError> {
    if first_frame {
        return None;
    }
    match (condition_channels > 0, job.init_image.is_some()) {
        (true, false) => Some(JobError::new(format!(
            "`{model}` is an image-to-video model: give the job an `init_image` (the first frame), or use text-to-video weights"
        ))),
        (false, true) if job.is_video() => Some(JobError::new(format!(
            "`{model}` is a text-to-video model: `init_image` needs image-to-video weights (Wan 2.2 A14B I2V experts, 36 input channels, or Wan 2.2 TI2V-5B, 48)"
        ))),
        _ => None,
    }
}

/// `x` with its first frame (axis 2) replaced by `first` (`[1, C, 1, h, w]`).
pub(crate) fn with_first_frame(x: &Tensor, first: &Tensor) -> candle_core::Result<Tensor> {
    let t = x.dim(2)?;
    let first = first.to_dtype(x.dtype())?;
    if t == 1 {
        return Ok(first);
    }
    Tensor::cat(&[&first, &x.narrow(2, 1, t - 1)?], 2)
}

/// The model's input for one evaluation: the noisy latent `x` — its first frame replaced by the
/// task's first-frame latent when it has one — followed on the channel axis by the task's
/// image conditioning when it has one.
pub(crate) fn model_input(
    x: &Tensor,
    condition: Option<&Tensor>,
    first: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let x = match first {
        Some(f) => with_first_frame(x, f)?,
        None => x.clone(),
    };
    match condition {
        None => Ok(x),
        Some(c) => Tensor::cat(&[&x, &c.to_dtype(x.dtype())?], 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_replaces_frame_zero_only() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 4.0, &dev)?.reshape((1, 2, 3, 2, 2))?;
        let f = Tensor::full(-1f32, (1, 2, 1, 2, 2), &dev)?;
        let y = model_input(&x, None, Some(&f))?;
        assert_eq!(y.dims(), x.dims());
        let frame = |t: &Tensor, i| t.narrow(2, i, 1)?.flatten_all()?.to_vec1::<f32>();
        assert_eq!(frame(&y, 0)?, vec![-1.0; 8]);
        for i in 1..3 {
            assert_eq!(frame(&y, i)?, frame(&x, i)?);
        }
        let one = x.narrow(2, 0, 1)?;
        assert_eq!(
            with_first_frame(&one, &f)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            vec![-1.0; 8]
        );
        // Without either, the input is the latent itself.
        let same = model_input(&x, None, None)?;
        assert_eq!(
            same.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
