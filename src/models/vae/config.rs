//! FLUX autoencoder hyper-parameters.
//!
//! Reference: BFL `AutoEncoderParams` and `ae_params` in
//! <https://github.com/black-forest-labs/flux/blob/main/src/flux/util.py> (resolution 256,
//! in_channels 3, ch 128, out_ch 3, ch_mult [1, 2, 4, 4], num_res_blocks 2, z_channels 16,
//! scale_factor 0.3611, shift_factor 0.1159); diffusers' `AutoencoderKL` FLUX config has the
//! same values (`block_out_channels` [128, 256, 512, 512], `latent_channels` 16).

use candle_core::{bail, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Image channels in (3).
    pub in_channels: usize,
    /// Image channels out (3).
    pub out_ch: usize,
    /// Base channel count; level `i` has `ch · ch_mult[i]` channels.
    pub ch: usize,
    pub ch_mult: Vec<usize>,
    /// Resnet blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Latent channels (16).
    pub z_channels: usize,
    /// Latents seen by the DiT are `scale_factor · (z − shift_factor)`.
    pub scale_factor: f64,
    pub shift_factor: f64,
    /// GroupNorm groups (32 in the real model).
    pub num_groups: usize,
}

impl Config {
    /// The FLUX.1 autoencoder (`ae.safetensors`), BFL `ae_params`.
    pub fn flux() -> Self {
        Self {
            in_channels: 3,
            out_ch: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 16,
            scale_factor: 0.3611,
            shift_factor: 0.1159,
            num_groups: 32,
        }
    }

    /// A tiny autoencoder with the same structure (4 levels: 8× down-sampling, 16 latent
    /// channels, the real scale/shift) and 8/8/16/16 channels, 1 resnet per level, 4 groups.
    pub fn tiny() -> Self {
        Self {
            ch: 8,
            ch_mult: vec![1, 1, 2, 2],
            num_res_blocks: 1,
            num_groups: 4,
            ..Self::flux()
        }
    }

    /// Pixels per latent pixel along each side (8 for FLUX).
    pub fn downscale(&self) -> usize {
        1 << (self.ch_mult.len() - 1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.ch_mult.is_empty() || self.num_groups == 0 {
            bail!("VAE config: ch_mult must be non-empty and num_groups positive")
        }
        for m in &self.ch_mult {
            if !(self.ch * m).is_multiple_of(self.num_groups) {
                bail!(
                    "VAE config: {} channels are not divisible into {} groups",
                    self.ch * m,
                    self.num_groups
                )
            }
        }
        Ok(())
    }

    /// Infers the configuration from tensor shapes in the `ae.safetensors` layout: `ch` from
    /// `encoder.conv_in`, the levels by probing `encoder.down.N`, resnets per level by
    /// probing `encoder.down.0.block.M`, latent channels from `decoder.conv_in`. The group
    /// count and the scale/shift factors are not stored: 32 and FLUX's values are used unless
    /// the channel count is the tiny one (8), which uses 4 groups.
    pub fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let need = |name: &str| -> Result<Vec<usize>> {
            match shape_of(name) {
                Some(s) if s.len() == 4 => Ok(s),
                Some(s) => {
                    bail!("VAE weights: `{name}` has shape {s:?}, expected a 4-d convolution")
                }
                None => bail!(
                    "VAE weights: tensor `{name}` is missing (is this a FLUX ae.safetensors?)"
                ),
            }
        };
        let conv_in = need("encoder.conv_in.weight")?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let levels = (0..)
            .take_while(|i| shape_of(&format!("encoder.down.{i}.block.0.conv1.weight")).is_some())
            .count();
        let num_res_blocks = (0..)
            .take_while(|i| shape_of(&format!("encoder.down.0.block.{i}.conv1.weight")).is_some())
            .count();
        let mut ch_mult = Vec::with_capacity(levels);
        for i in 0..levels {
            let out = need(&format!("encoder.down.{i}.block.0.conv2.weight"))?[0];
            if ch == 0 || out % ch != 0 {
                bail!("VAE weights: level {i} has {out} channels, not a multiple of {ch}")
            }
            ch_mult.push(out / ch);
        }
        let z_channels = need("decoder.conv_in.weight")?[1];
        let out_ch = need("decoder.conv_out.weight")?[0];
        let cfg = Self {
            in_channels,
            out_ch,
            ch,
            ch_mult,
            num_res_blocks,
            z_channels,
            num_groups: if ch == 8 { 4 } else { 32 },
            ..Self::flux()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
