//! Wan 2.1 and Wan 2.2 video autoencoder hyper-parameters.
//!
//! References: Wan2.1 `wan/modules/vae.py` (`_video_vae`: dim 96, dim_mult [1, 2, 4, 4],
//! num_res_blocks 2, attn_scales [], temperal_downsample [False, True, True]; `WanVAE`: z_dim
//! 16 and the per-channel latent `mean`/`std`), <https://github.com/Wan-Video/Wan2.1>; diffusers'
//! `AutoencoderKLWan` has the same defaults (`base_dim` 96, `latents_mean`, `latents_std`).
//! Wan2.2 `wan/modules/vae2_2.py` (`Wan2_2_VAE`: z_dim 48, c_dim 160, `WanVAE_`'s dec_dim 256,
//! temperal_downsample [False, True, True], patchify 2, the 48 means and stds),
//! <https://github.com/Wan-Video/Wan2.2>; diffusers' `AutoencoderKLWan(is_residual=True,
//! patch_size=2, …)`.

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

/// Per-channel mean of Wan 2.2's raw latents (`Wan2_2_VAE.mean` in `vae2_2.py`).
pub const WAN22_LATENTS_MEAN: [f32; 48] = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813,
    0.0891, 0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108,
    -0.2158, 0.2502, -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313,
    -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944,
    0.3573, -0.0548, -0.1681, -0.0667,
];
/// Per-channel standard deviation of Wan 2.2's raw latents (`Wan2_2_VAE.std`).
pub const WAN22_LATENTS_STD: [f32; 48] = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Video channels in and out (3); the convolutions at the ends see `· patch_size²`.
    pub in_channels: usize,
    pub out_channels: usize,
    /// Base channel count; encoder level `i` has `dim · dim_mult[i]` channels.
    pub dim: usize,
    /// The decoder's base channel count (its level `i` has `decoder_dim ·
    /// dim_mult[n − 1 − i]`): `dim` in Wan 2.1, 256 against 160 in Wan 2.2.
    pub decoder_dim: usize,
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
    /// Wan 2.2's structure: each level is one residual module (`downsamples.L.downsamples.M`)
    /// whose input, averaged down to the level's output shape (`AvgDown3D`) or duplicated up
    /// (`DupUp3D`), is added to its output; the decoder's up-samplers keep the channel count.
    /// Wan 2.1 (false): flat lists, up-samplers halve the channels, no level shortcuts.
    pub residual: bool,
    /// Pixels are folded `p × p` into channels before the encoder and unfolded after the
    /// decoder (Wan 2.2: 2; Wan 2.1: 1).
    pub patch_size: usize,
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
            decoder_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temporal_downsample: vec![false, true, true],
            residual: false,
            patch_size: 1,
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
        }
    }

    /// The same structure with 4/8/16/16 channels (`tools/parity_wan_vae.py`'s tiny model):
    /// 8× spatial and 4× temporal compression, 16 latent channels, the real normalisation.
    pub fn tiny() -> Self {
        Self {
            dim: 4,
            decoder_dim: 4,
            ..Self::wan21()
        }
    }

    /// The Wan 2.2 VAE (`wan2.2_vae.safetensors`, `Wan2.2_VAE.pth`) of Wan 2.2 TI2V-5B: 48
    /// latent channels, 16× spatial (a 2 × 2 patchify, then 8×) and 4× temporal compression.
    pub fn wan22() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            dim: 160,
            decoder_dim: 256,
            z_dim: 48,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temporal_downsample: vec![false, true, true],
            residual: true,
            patch_size: 2,
            latents_mean: WAN22_LATENTS_MEAN.to_vec(),
            latents_std: WAN22_LATENTS_STD.to_vec(),
        }
    }

    /// `tools/parity_wan22_vae.py`'s tiny Wan 2.2 model: encoder width 4, decoder width 3,
    /// the real 48 latent channels and normalisation.
    pub fn tiny22() -> Self {
        Self {
            dim: 4,
            decoder_dim: 3,
            ..Self::wan22()
        }
    }

    pub fn levels(&self) -> usize {
        self.dim_mult.len()
    }

    /// Pixels per latent pixel along each side (8; 16 with Wan 2.2's patchify).
    pub fn spatial_factor(&self) -> usize {
        self.patch_size << (self.levels() - 1)
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
        if n == 0
            || self.dim == 0
            || self.decoder_dim == 0
            || self.num_res_blocks == 0
            || self.patch_size == 0
        {
            bail!("Wan VAE config: dim_mult, dim, decoder_dim, num_res_blocks and patch_size must be non-zero")
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
        if self.residual {
            return self.validate_shortcuts();
        }
        // Each decoder up-sampling convolution halves the channels.
        for (i, m) in self.dim_mult.iter().enumerate().skip(1) {
            if !(self.decoder_dim * m).is_multiple_of(2) {
                bail!(
                    "Wan VAE config: level {i} has an odd channel count {}",
                    self.decoder_dim * m
                )
            }
        }
        Ok(())
    }

    /// The level shortcuts of the residual structure regroup channels: `AvgDown3D` averages
    /// groups of `cin · factor / cout` values, `DupUp3D` repeats each input channel
    /// `cout · factor / cin` times (factor = time × height × width scaling).
    fn validate_shortcuts(&self) -> Result<()> {
        let n = self.levels();
        let enc: Vec<usize> = std::iter::once(1)
            .chain(self.dim_mult.iter().copied())
            .map(|m| self.dim * m)
            .collect();
        for i in 0..n {
            let (cin, cout) = (enc[i], enc[i + 1]);
            let f = self.down_factors(i);
            if !(cin * f.0 * f.1 * f.1).is_multiple_of(cout) {
                bail!("Wan VAE config: encoder level {i} cannot average {cin} channels (× {f:?}) into {cout}")
            }
        }
        let dec = self.decoder_dims();
        for i in 0..n - 1 {
            let (cin, cout) = (dec[i], dec[i + 1]);
            let f = self.up_factors(i);
            if !(cout * f.0 * f.1 * f.1).is_multiple_of(cin) {
                bail!("Wan VAE config: decoder level {i} cannot spread {cin} channels (× {f:?}) over {cout}")
            }
        }
        Ok(())
    }

    /// Channels entering decoder level `i` (`i < n`) and, at `n`, leaving the last level:
    /// `decoder_dim · [mult[n−1], mult[n−1], …, mult[0]]`.
    pub fn decoder_dims(&self) -> Vec<usize> {
        let n = self.levels();
        std::iter::once(self.dim_mult[n - 1])
            .chain(self.dim_mult.iter().rev().copied())
            .map(|m| self.decoder_dim * m)
            .collect()
    }

    /// (time, space) down-sampling of encoder level `i` (1 = none).
    pub fn down_factors(&self, i: usize) -> (usize, usize) {
        if i + 1 >= self.levels() {
            return (1, 1);
        }
        (if self.temporal_downsample[i] { 2 } else { 1 }, 2)
    }

    /// (time, space) up-sampling of decoder level `i` (the encoder's level `n − 2 − i`).
    pub fn up_factors(&self, i: usize) -> (usize, usize) {
        let n = self.levels();
        if i + 1 >= n {
            return (1, 1);
        }
        (
            if self.temporal_downsample[n - 2 - i] {
                2
            } else {
                1
            },
            2,
        )
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
