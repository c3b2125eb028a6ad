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

    /// [`Config::infer_with`] without metadata.
    pub fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        Self::infer_with(&shape_of, &std::collections::BTreeMap::new())
    }

    /// Infers the configuration from tensor shapes in the `ae.safetensors` layout: `ch` from
    /// `encoder.conv_in`, the levels by probing `encoder.down.N`, resnets per level by
    /// probing `encoder.down.0.block.M`, latent channels from `decoder.conv_in`.
    ///
    /// Not stored in the weights, so taken from `meta` (safetensors metadata or a diffusers
    /// `config.json` beside the file) when given: the GroupNorm group count
    /// (`norm_num_groups`) and the latent `scaling_factor` / `shift_factor`. Without them:
    /// FLUX's factors; 32 groups when every level's channel count is a multiple of 32 (every
    /// released autoencoder); 4 for mgpu's own tiny models (8 base channels, which older
    /// `make-tiny` files do not record). Any other channel count is ambiguous and refused
    /// with the fix in the message.
    pub fn infer_with(
        shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
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
        let number = |key: &str| -> Result<Option<f64>> {
            match meta.get(key) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(x) if x.is_finite() => Ok(Some(x)),
                    _ => bail!("VAE metadata: `{key}` = `{v}` is not a number"),
                },
            }
        };
        let all_by_32 = ch_mult.iter().all(|m| (ch * m).is_multiple_of(32));
        let num_groups = match number("norm_num_groups")? {
            Some(g) if g >= 1.0 && g.fract() == 0.0 => g as usize,
            Some(g) => bail!("VAE metadata: `norm_num_groups` = {g} is not a whole number ≥ 1"),
            None if all_by_32 => 32,
            None if ch == 8 => 4,
            None => bail!(
                "VAE weights: the GroupNorm group count is not stored, and {ch} base channels are not the usual multiple of 32; give `norm_num_groups` in a config.json beside the weights file (as diffusers writes it) or in the safetensors metadata"
            ),
        };
        let flux = Self::flux();
        let cfg = Self {
            in_channels,
            out_ch,
            ch,
            ch_mult,
            num_res_blocks,
            z_channels,
            num_groups,
            scale_factor: number("scaling_factor")?.unwrap_or(flux.scale_factor),
            shift_factor: number("shift_factor")?.unwrap_or(flux.shift_factor),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 10): an unseen channel count was given 32 groups and failed with a
    /// divisibility error; now metadata decides, and without it the message says how.
    #[test]
    fn groups_from_metadata_or_refused() {
        let cfg = Config {
            ch: 16,
            num_groups: 8,
            ..Config::tiny()
        };
        let layout = crate::models::tiny::vae_layout(&cfg).unwrap();
        let shape_of = |n: &str| layout.get(n).cloned();
        let e = Config::infer_with(&shape_of, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let meta = [("norm_num_groups".to_string(), "8".to_string())].into();
        assert_eq!(Config::infer_with(&shape_of, &meta).unwrap(), cfg);
        // The real layout needs no metadata; the tiny one keeps its 4 groups.
        let flux = crate::models::tiny::vae_layout(&Config::flux()).unwrap();
        assert_eq!(
            Config::infer(|n| flux.get(n).cloned()).unwrap(),
            Config::flux()
        );
        let tiny = crate::models::tiny::vae_layout(&Config::tiny()).unwrap();
        assert_eq!(
            Config::infer(|n| tiny.get(n).cloned()).unwrap(),
            Config::tiny()
        );
    }
}
