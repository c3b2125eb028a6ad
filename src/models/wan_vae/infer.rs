//! Reading a Wan VAE's [`Config`] from the tensor shapes of a checkpoint in the original
//! layout (see the module doc of [`super`]), for both variants:
//!
//! - Wan 2.1 (`wan_2.1_vae.safetensors`): flat lists `encoder.downsamples.N` /
//!   `decoder.upsamples.N` of residual blocks and resamplers, 16 latent channels.
//! - Wan 2.2 (`wan2.2_vae.safetensors`): one residual module per level,
//!   `encoder.downsamples.L.downsamples.M` (M < blocks: residual blocks, M = blocks: the
//!   resampler) and `decoder.upsamples.L.upsamples.M` (one more block per level), 48 latent
//!   channels, 12 = 3 · 2 · 2 channels at the ends (the 2 × 2 patchify).
//!
//! The latent mean and std are not stored in checkpoints: the variant's published ones are
//! used (16 channels: Wan 2.1's, 48: Wan 2.2's); other latent widths are refused.

use candle_core::{bail, Result};

use super::config::{
    Config, WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD,
};

/// The encoder's levels: output channels of each residual block, per level.
type Runs = Vec<Vec<usize>>;

impl Config {
    /// Infers the configuration from tensor shapes in the original layout: `dim` and the input
    /// channels from `encoder.conv1`, the latent channels from `conv2`, the decoder's width
    /// from `decoder.conv1`, the levels, residual blocks per level, their channels and which
    /// down-samplings also halve time (a `time_conv`) by walking `encoder.downsamples`; the
    /// variant from the nesting of those names.
    pub fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let need = |name: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => bail!(
                    "Wan VAE weights: `{name}` has shape {s:?}, expected {rank} dimensions"
                ),
                None => bail!(
                    "Wan VAE weights: tensor `{name}` is missing (is this a Wan VAE such as wan_2.1_vae.safetensors or wan2.2_vae.safetensors?)"
                ),
            }
        };
        let residual = shape_of("encoder.downsamples.0.downsamples.0.residual.0.gamma").is_some();
        let z_dim = need("conv2.weight", 5)?[0];
        let (variant, want_z, mean, std): (&str, usize, &[f32], &[f32]) = if residual {
            ("2.2", 48, &WAN22_LATENTS_MEAN, &WAN22_LATENTS_STD)
        } else {
            ("2.1", 16, &WAN21_LATENTS_MEAN, &WAN21_LATENTS_STD)
        };
        if z_dim != want_z {
            bail!("Wan VAE weights: `conv2.weight` has {z_dim} latent channels, but the layout is Wan {variant}'s, whose VAE has {want_z} (only the published Wan 2.1 and Wan 2.2 VAEs are supported: their latent mean and std are known)")
        }
        let conv_in = need("encoder.conv1.weight", 5)?;
        let dim = conv_in[0];
        let head = need("encoder.head.2.weight", 5)?;
        if head[0] != 2 * z_dim {
            bail!(
                "Wan VAE weights: `encoder.head.2.weight` has {} output channels, expected 2 × {z_dim}",
                head[0]
            )
        }
        let (runs, temporal) = if residual {
            walk_levels(&shape_of, &need)?
        } else {
            walk_flat(&shape_of, &need)?
        };
        let (dim_mult, num_res_blocks) = mults(&runs, dim)?;
        // Wan 2.2 folds 2 × 2 pixels into the channels at both ends.
        let patch_size = if residual { 2 } else { 1 };
        let p2 = patch_size * patch_size;
        let head_out = need("decoder.head.2.weight", 5)?[0];
        for (name, c) in [
            ("encoder.conv1.weight", conv_in[1]),
            ("decoder.head.2.weight", head_out),
        ] {
            if c == 0 || !c.is_multiple_of(p2) {
                bail!("Wan VAE weights: `{name}` has {c} video channels, not a multiple of the {patch_size} × {patch_size} patch")
            }
        }
        let dec_in = need("decoder.conv1.weight", 5)?;
        let last = *dim_mult.last().unwrap_or(&1);
        if dec_in[1] != z_dim || !dec_in[0].is_multiple_of(last) {
            bail!("Wan VAE weights: `decoder.conv1.weight` has shape {dec_in:?}, expected [k · {last}, {z_dim}, 3, 3, 3]")
        }
        let cfg = Self {
            in_channels: conv_in[1] / p2,
            out_channels: head_out / p2,
            dim,
            decoder_dim: dec_in[0] / last,
            z_dim,
            dim_mult,
            num_res_blocks,
            attn_scales: vec![],
            temporal_downsample: temporal,
            residual,
            patch_size,
            latents_mean: mean.to_vec(),
            latents_std: std.to_vec(),
        };
        cfg.validate()?;
        check_decoder_resamplers(&cfg, &shape_of, &need)?;
        Ok(cfg)
    }
}

/// Wan 2.1's flat `encoder.downsamples.N`: runs of residual blocks separated by resamplers.
fn walk_flat(
    shape_of: &impl Fn(&str) -> Option<Vec<usize>>,
    need: &impl Fn(&str, usize) -> Result<Vec<usize>>,
) -> Result<(Runs, Vec<bool>)> {
    let mut runs: Runs = vec![vec![]];
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
    Ok((runs, temporal))
}

/// Wan 2.2's `encoder.downsamples.L.downsamples.M`: per level, residual blocks then (except
/// in the last level) the resampler.
fn walk_levels(
    shape_of: &impl Fn(&str) -> Option<Vec<usize>>,
    need: &impl Fn(&str, usize) -> Result<Vec<usize>>,
) -> Result<(Runs, Vec<bool>)> {
    let mut runs: Runs = Vec::new();
    let mut temporal = Vec::new();
    for level in 0.. {
        let lp = format!("encoder.downsamples.{level}.downsamples");
        if shape_of(&format!("{lp}.0.residual.0.gamma")).is_none() {
            break;
        }
        if runs.len() > temporal.len() {
            bail!(
                "Wan VAE weights: encoder level {} has no resampler (`…downsamples.{}.downsamples.{}.resample.1.weight`) but level {level} follows it",
                level - 1,
                level - 1,
                runs.last().map_or(0, Vec::len)
            )
        }
        let mut outs = Vec::new();
        while shape_of(&format!("{lp}.{}.residual.0.gamma", outs.len())).is_some() {
            outs.push(need(&format!("{lp}.{}.residual.6.weight", outs.len()), 5)?[0]);
        }
        let m = outs.len();
        if shape_of(&format!("{lp}.{m}.resample.1.weight")).is_some() {
            temporal.push(shape_of(&format!("{lp}.{m}.time_conv.weight")).is_some());
        }
        runs.push(outs);
    }
    if runs.len() == temporal.len() && !runs.is_empty() {
        bail!(
            "Wan VAE weights: the last encoder level ({}) has a resampler; the last level keeps the resolution",
            runs.len() - 1
        )
    }
    Ok((runs, temporal))
}

/// `dim_mult` and the residual blocks per level from the encoder's levels.
fn mults(runs: &Runs, dim: usize) -> Result<(Vec<usize>, usize)> {
    let num_res_blocks = runs.first().map_or(0, Vec::len);
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
    Ok((dim_mult, num_res_blocks))
}

/// The decoder mirrors the encoder: the resampler of level i sits after its blocks and has a
/// `time_conv` where time is up-sampled.
fn check_decoder_resamplers(
    cfg: &Config,
    shape_of: &impl Fn(&str) -> Option<Vec<usize>>,
    need: &impl Fn(&str, usize) -> Result<Vec<usize>>,
) -> Result<()> {
    let per_level = cfg.num_res_blocks + 2;
    for (i, t) in cfg.temporal_downsample.iter().rev().enumerate() {
        let p = if cfg.residual {
            format!("decoder.upsamples.{i}.upsamples.{}", cfg.num_res_blocks + 1)
        } else {
            format!(
                "decoder.upsamples.{}",
                i * per_level + cfg.num_res_blocks + 1
            )
        };
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
    Ok(())
}
