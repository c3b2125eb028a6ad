//! Wan 2.1 video autoencoder hyper-parameters.
//!
//! Reference: Wan2.1 `wan/modules/vae.py` (`_video_vae`: dim 96, dim_mult [1, 2, 4, 4],
//! num_res_blocks 2, attn_scales [], temperal_downsample [False, True, True]; `WanVAE`: z_dim
//! 16 and the per-channel latent `mean`/`std`), <https://github.com/Wan-Video/Wan2.1>; diffusers'
//! `AutoencoderKLWan` has the same defaults (`base_dim` 96, `latents_mean`, `latents_std`).

use candle_core::{bail, Result};

/// Per-channel mean of Wan 2.1's raw latents (`WanVAE.mean`, diffusers `latents_mean`).
pub const WAN21_LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517,
    -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
];
/// Per-channel standard deviation of Wan 2.1's raw latents (`WanVAE.std`, `latents_std`).
pub const WAN21_LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579,
    1.6382, 1.1253, 2.8251, 1.9160,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Video channels in and out (3).
    pub in_channels: usize,
    pub out_channels: usize,
    /// Base channel count; encoder level `i` has `dim · dim_mult[i]` channels.
    pub dim: usize,
    /// Latent channels (16); the encoder's head produces `2 · z_dim` (mean and log-variance).
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Resolutions (1 = full, ½, ¼ …) with attention inside the levels. Wan 2.1 has none and
    /// only that is supported: [`Config::validate`] refuses a non-empty list.
    pub attn_scales: Vec<f64>,
    /// Whether the down-sampling after encoder level `i` also halves time (the references'
    /// `temperal_downsample`); the decoder up-samples time in the reverse order.
    pub temporal_downsample: Vec<bool>,
    /// DiT latents are `(z − mean) / std` per channel (computed as `(z − mean) · (1/std)`, as
    /// the references do).
    pub latents_mean: Vec<f32>,
    pub latents_std: Vec<f32>,
}

impl Config {
    /// The Wan 2.1 VAE (`wan_2.1_vae.safetensors`, `Wan2.1_VAE.pth`), also used by Wan 2.2's
    /// 14B models.
    pub fn wan21() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temporal_downsample: vec![false, true, true],
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
        }
    }

    /// The same structure with 4/8/16/16 channels (`tools/parity_wan_vae.py`'s tiny model):
    /// 8× spatial and 4× temporal compression, 16 latent channels, the real normalisation.
    pub fn tiny() -> Self {
        Self {
            dim: 4,
            ..Self::wan21()
        }
    }

    pub fn levels(&self) -> usize {
        self.dim_mult.len()
    }

    /// Pixels per latent pixel along each side (8).
    pub fn spatial_factor(&self) -> usize {
        1 << (self.levels() - 1)
    }

    /// Frames per latent frame after the first (4): `F = 1 + 4 (T − 1)`.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|t| **t).count()
    }

    /// Latent frames of a clip of `frames` frames (`frames` = 1 + k · temporal factor).
    pub fn latent_frames(&self, frames: usize) -> usize {
        1 + frames.saturating_sub(1) / self.temporal_factor()
    }

    /// Frames decoded from `latent_frames` latent frames.
    pub fn frames(&self, latent_frames: usize) -> usize {
        1 + latent_frames.saturating_sub(1) * self.temporal_factor()
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.levels();
        if n == 0 || self.dim == 0 || self.num_res_blocks == 0 {
            bail!("Wan VAE config: dim_mult, dim and num_res_blocks must be non-zero")
        }
        if self.temporal_downsample.len() + 1 != n {
            bail!(
                "Wan VAE config: {} levels need {} temporal_downsample flags, got {}",
                n,
                n - 1,
                self.temporal_downsample.len()
            )
        }
        if !self.attn_scales.is_empty() {
            bail!(
                "Wan VAE config: attention inside the levels (attn_scales {:?}) is not supported; the Wan 2.1 VAE has none",
                self.attn_scales
            )
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            bail!(
                "Wan VAE config: {} latent channels need {} means and stds, got {} and {}",
                self.z_dim,
                self.z_dim,
                self.latents_mean.len(),
                self.latents_std.len()
            )
        }
        // Each decoder up-sampling convolution halves the channels.
        for (i, m) in self.dim_mult.iter().enumerate().skip(1) {
            if !(self.dim * m).is_multiple_of(2) {
                bail!(
                    "Wan VAE config: level {i} has an odd channel count {}",
                    self.dim * m
                )
            }
        }
        Ok(())
    }

    /// Infers the configuration from tensor shapes in the original layout (see the module doc
    /// of [`super`]): `dim` and the input channels from `encoder.conv1`, the latent channels
    /// from `conv2`, the levels, residual blocks per level, their channels and which
    /// down-samplings also halve time (a `time_conv`) by walking `encoder.downsamples.N`. The
    /// latent mean and std are not stored in checkpoints: Wan 2.1's are used. The Wan 2.2 VAE
    /// (48 latent channels, patchified input) is refused.
    pub fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let need = |name: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => bail!(
                    "Wan VAE weights: `{name}` has shape {s:?}, expected {rank} dimensions"
                ),
                None => bail!(
                    "Wan VAE weights: tensor `{name}` is missing (is this a Wan 2.1 VAE such as wan_2.1_vae.safetensors?)"
                ),
            }
        };
        let z_dim = need("conv2.weight", 5)?[0];
        let conv_in = need("encoder.conv1.weight", 5)?;
        let (dim, in_channels) = (conv_in[0], conv_in[1]);
        if z_dim == 48 || in_channels == 12 {
            bail!("the Wan 2.2 VAE is not supported yet ({z_dim} latent channels, {in_channels} input channels); use the Wan 2.1 VAE (wan_2.1_vae.safetensors), which Wan 2.2's 14B models also use")
        }
        if z_dim != WAN21_LATENTS_MEAN.len() {
            bail!("Wan VAE weights: {z_dim} latent channels; only the Wan 2.1 VAE (16) is supported, its latent mean and std are known")
        }
        let head = need("encoder.head.2.weight", 5)?;
        if head[0] != 2 * z_dim {
            bail!(
                "Wan VAE weights: `encoder.head.2.weight` has {} output channels, expected 2 × {z_dim}",
                head[0]
            )
        }

        // encoder.downsamples: runs of residual blocks separated by resamples.
        let mut runs: Vec<Vec<usize>> = vec![vec![]];
        let mut temporal = Vec::new();
        for k in 0.. {
            let p = format!("encoder.downsamples.{k}");
            if shape_of(&format!("{p}.residual.0.gamma")).is_some() {
                let out = need(&format!("{p}.residual.6.weight"), 5)?[0];
                if let Some(run) = runs.last_mut() {
                    run.push(out);
                }
            } else if shape_of(&format!("{p}.resample.1.weight")).is_some() {
                temporal.push(shape_of(&format!("{p}.time_conv.weight")).is_some());
                runs.push(vec![]);
            } else if shape_of(&format!("{p}.to_qkv.weight")).is_some() {
                bail!("Wan VAE weights: `{p}` is an attention block; attention inside the levels (attn_scales) is not supported, the Wan 2.1 VAE has none")
            } else {
                break;
            }
        }
        let num_res_blocks = runs[0].len();
        let mut dim_mult = Vec::with_capacity(runs.len());
        for (i, run) in runs.iter().enumerate() {
            if run.len() != num_res_blocks || num_res_blocks == 0 {
                bail!(
                    "Wan VAE weights: encoder level {i} has {} residual blocks, level 0 has {num_res_blocks}",
                    run.len()
                )
            }
            let out = run[0];
            if run.iter().any(|c| *c != out) || dim == 0 || out % dim != 0 {
                bail!("Wan VAE weights: encoder level {i} has channels {run:?}, expected one multiple of {dim}")
            }
            dim_mult.push(out / dim);
        }
        let out_channels = need("decoder.head.2.weight", 5)?[0];
        let cfg = Self {
            in_channels,
            out_channels,
            dim,
            z_dim,
            dim_mult,
            num_res_blocks,
            attn_scales: vec![],
            temporal_downsample: temporal,
            ..Self::wan21()
        };
        cfg.validate()?;
        // The decoder mirrors the encoder: level i's resample sits after its blocks and has a
        // `time_conv` where time is up-sampled.
        let per_level = cfg.num_res_blocks + 2;
        for (i, t) in cfg.temporal_downsample.iter().rev().enumerate() {
            let p = format!(
                "decoder.upsamples.{}",
                i * per_level + cfg.num_res_blocks + 1
            );
            need(&format!("{p}.resample.1.weight"), 4)?;
            if shape_of(&format!("{p}.time_conv.weight")).is_some() != *t {
                bail!(
                    "Wan VAE weights: `{p}` {} a time_conv but the encoder's down-sampling {} {} time",
                    if *t { "lacks" } else { "has" },
                    cfg.levels() - 2 - i,
                    if *t { "halves" } else { "keeps" }
                )
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_factors() {
        let c = Config::wan21();
        c.validate().unwrap();
        Config::tiny().validate().unwrap();
        assert_eq!(c.spatial_factor(), 8);
        assert_eq!(c.temporal_factor(), 4);
        assert_eq!(c.latent_frames(81), 21);
        assert_eq!(c.frames(21), 81);
        assert_eq!(c.latent_frames(1), 1);
        assert_eq!(c.frames(1), 1);
        let bad = Config {
            attn_scales: vec![0.5],
            ..Config::tiny()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("attn_scales"));
    }
}
