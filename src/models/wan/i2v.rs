//! Wan 2.2 A14B image-to-video conditioning: what the experts' 20 extra input channels hold.
//!
//! Wan 2.2's I2V experts take 36 channels per latent voxel: the 16-channel noisy latent, then a
//! 4-channel mask, then the 16-channel VAE latent of a *conditioning video* whose first frame
//! is the init image and whose other frames are zeros (pixel value 0, mid-grey in [-1, 1]),
//! normalised like every latent the DiT sees (`(μ − mean) / std` per channel).
//!
//! The mask follows the Wan team's `wan/image2video.py` and diffusers'
//! `WanImageToVideoPipeline.prepare_latents`: a per-pixel-frame mask (1 for the given first
//! frame, 0 for the frames to generate) whose first entry is repeated 4 times (the VAE's
//! temporal stride, since latent frame 0 covers pixel frame 0 alone), regrouped 4 at a time
//! into the 4 channels of each latent frame. With only the first frame given, this is 1 in all
//! four channels of latent frame 0 and 0 everywhere after. Checked against diffusers in
//! `tests/wan22_i2v.rs` (fixture from `tools/parity_wan22_i2v.py`).

use candle_core::{bail, DType, Result, Tensor};

use super::config::{I2V_CONDITION_CHANNELS, LATENT_CHANNELS, VAE_STRIDE};

/// The mask channels (the VAE's temporal stride).
pub const MASK_CHANNELS: usize = VAE_STRIDE[0];

/// The first-frame mask `[1, 4, T, h, w]` (f32) for a latent of `T` frames of `h × w`: the
/// pixel-frame mask (1 on frame 0, 0 on the `4·(T − 1)` frames after), its first entry
/// repeated 4 times, entry `4·t + c` placed at channel `c` of latent frame `t`.
pub fn first_frame_mask(t: usize, h: usize, w: usize, dev: &candle_core::Device) -> Result<Tensor> {
    if t == 0 {
        bail!("Wan image-to-video: a latent needs at least one frame")
    }
    // Pixel frames after the repeat: 4 copies of frame 0's mask, then frames 1..F.
    let pixel_frames = 1 + MASK_CHANNELS * (t - 1);
    let given = |f: usize| f == 0;
    let repeated: Vec<f32> = (0..MASK_CHANNELS)
        .map(|_| given(0))
        .chain((1..pixel_frames).map(given))
        .map(|g| if g { 1.0 } else { 0.0 })
        .collect();
    // [T, 4] (latent frame, channel) → [4, T].
    let m = Tensor::from_vec(repeated, (t, MASK_CHANNELS), dev)?.t()?;
    m.reshape((1, MASK_CHANNELS, t, 1, 1))?
        .broadcast_as((1, MASK_CHANNELS, t, h, w))?
        .contiguous()
}

/// The image conditioning `[1, 20, T, h, w]` (f32): [`first_frame_mask`] then `encoded`, the
/// normalised VAE latent `[1, 16, T, h, w]` of the conditioning video (init image first, zero
/// frames after).
pub fn image_condition(encoded: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = encoded.dims5()?;
    if b != 1 || c != LATENT_CHANNELS {
        bail!(
            "Wan image-to-video: the conditioning latent must be [1, {LATENT_CHANNELS}, T, h, w], got {:?}",
            encoded.dims()
        )
    }
    let mask = first_frame_mask(t, h, w, encoded.device())?;
    let out = Tensor::cat(&[mask, encoded.to_dtype(DType::F32)?], 1)?;
    debug_assert_eq!(out.dim(1)?, I2V_CONDITION_CHANNELS);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mask_marks_latent_frame_zero_only() -> Result<()> {
        let m = first_frame_mask(3, 2, 2, &Device::Cpu)?;
        assert_eq!(m.dims(), &[1, 4, 3, 2, 2]);
        let v = m.squeeze(0)?.flatten_from(1)?.to_vec2::<f32>()?;
        for (c, row) in v.iter().enumerate() {
            assert_eq!(row[..4], [1.0; 4], "channel {c} frame 0");
            assert!(
                row[4..].iter().all(|&x| x == 0.0),
                "channel {c} later frames"
            );
        }
        let one = first_frame_mask(1, 1, 1, &Device::Cpu)?;
        assert_eq!(one.flatten_all()?.to_vec1::<f32>()?, vec![1.0; 4]);
        assert!(first_frame_mask(0, 1, 1, &Device::Cpu).is_err());
        Ok(())
    }

    #[test]
    fn condition_is_mask_then_latent() -> Result<()> {
        let z = Tensor::arange(0f32, 16.0 * 2.0, &Device::Cpu)?.reshape((1, 16, 2, 1, 1))?;
        let c = image_condition(&z)?;
        assert_eq!(c.dims(), &[1, 20, 2, 1, 1]);
        assert_eq!(
            c.narrow(1, 4, 16)?.flatten_all()?.to_vec1::<f32>()?,
            z.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(image_condition(&z.narrow(1, 0, 8)?).is_err());
        Ok(())
    }
}
