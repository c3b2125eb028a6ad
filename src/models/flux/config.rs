//! FLUX DiT hyper-parameters: the named presets and inference from a checkpoint's shapes.
//!
//! Reference: BFL's `FluxParams` and `configs` in
//! <https://github.com/black-forest-labs/flux/blob/main/src/flux/util.py> (dev, schnell), the
//! same values as diffusers' `FluxTransformer2DModel` defaults.

use candle_core::{bail, Result};

/// Hyper-parameters of a FLUX.1 diffusion transformer (BFL's `FluxParams`).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Channels of a packed latent token: 16 latent channels × 2 × 2 patch = 64.
    pub in_channels: usize,
    /// Width of the pooled text vector (CLIP-L's 768).
    pub vec_in_dim: usize,
    /// Width of the text token embeddings (T5-XXL's 4096).
    pub context_in_dim: usize,
    pub hidden_size: usize,
    pub mlp_ratio: f64,
    pub num_heads: usize,
    /// Number of double-stream blocks (`double_blocks.N`).
    pub depth: usize,
    /// Number of single-stream blocks (`single_blocks.N`).
    pub depth_single_blocks: usize,
    /// RoPE dimensions per position axis (t, h, w); they sum to the head dimension.
    pub axes_dim: Vec<usize>,
    pub theta: f64,
    pub qkv_bias: bool,
    /// FLUX dev has a guidance embedding (`guidance_in`); schnell has none.
    pub guidance_embed: bool,
}

/// Channels of the FLUX latent (the VAE's `z_channels`); a packed token has 4× as many.
pub const LATENT_CHANNELS: usize = 16;
/// Side of the square patch that turns a latent into tokens.
pub const PATCH: usize = 2;
/// Width of the sinusoidal embedding fed to `time_in` and `guidance_in`.
pub const TIME_EMBED_DIM: usize = 256;

impl Config {
    /// FLUX.1 \[dev\]: BFL `configs["flux-dev"].params` (util.py).
    pub fn dev() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// FLUX.1 \[schnell\]: BFL `configs["flux-schnell"].params`: dev without guidance embedding.
    pub fn schnell() -> Self {
        Self {
            guidance_embed: false,
            ..Self::dev()
        }
    }

    /// A tiny dev-style model for tests and the demo: hidden 32, 2 heads of 16 (RoPE axes
    /// 4+6+6), 2 double + 2 single blocks, text widths 32 (the tiny T5 and CLIP-L widths).
    /// Latent channels stay 16 so it pairs with the real and the tiny VAE.
    pub fn tiny() -> Self {
        Self {
            in_channels: 64,
            vec_in_dim: 32,
            context_in_dim: 32,
            hidden_size: 32,
            mlp_ratio: 4.0,
            num_heads: 2,
            depth: 2,
            depth_single_blocks: 2,
            axes_dim: vec![4, 6, 6],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// [`Config::tiny`] without guidance embedding (schnell-style).
    pub fn tiny_schnell() -> Self {
        Self {
            guidance_embed: false,
            ..Self::tiny()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<()> {
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            bail!(
                "FLUX config: hidden size {} is not a multiple of the {} heads",
                self.hidden_size,
                self.num_heads
            )
        }
        let sum: usize = self.axes_dim.iter().sum();
        if self.axes_dim.len() != 3 || sum != self.head_dim() {
            bail!(
                "FLUX config: RoPE axes {:?} must be 3 dimensions summing to the head dimension {}",
                self.axes_dim,
                self.head_dim()
            )
        }
        if let Some(d) = self.axes_dim.iter().find(|d| *d % 2 == 1) {
            bail!(
                "FLUX config: RoPE axis dimension {d} is odd (axes {:?})",
                self.axes_dim
            )
        }
        if self.in_channels != LATENT_CHANNELS * PATCH * PATCH {
            bail!(
                "FLUX config: in_channels {} is not {} latent channels × {PATCH}×{PATCH}",
                self.in_channels,
                LATENT_CHANNELS
            )
        }
        Ok(())
    }

    /// [`Config::infer_with`] without metadata.
    pub fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        Self::infer_with(&shape_of, &std::collections::BTreeMap::new())
    }

    /// Infers the configuration from tensor shapes in the canonical BFL layout (`shape_of`
    /// returns a tensor's shape, `None` when absent), as ComfyUI does: widths from `img_in`,
    /// `txt_in`, `vector_in`, `double_blocks.0.img_mlp.0`; head dimension from the query-norm
    /// scale; block counts by probing; guidance from the presence of `guidance_in`.
    ///
    /// The RoPE split of the head dimension over the (t, h, w) axes is not stored in the
    /// weights. It is read from `meta` when given (`axes_dims_rope`, the diffusers
    /// `config.json` key, or `axes_dim`, as a list like `[16, 56, 56]`); otherwise BFL's split
    /// is used for head dimension 128 ([16, 56, 56], every released FLUX.1) and mgpu's tiny
    /// models' for 16 ([4, 6, 6]). Any other head dimension without metadata is ambiguous
    /// and refused, with the fix in the message.
    pub fn infer_with(
        shape_of: &dyn Fn(&str) -> Option<Vec<usize>>,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        let need = |name: &str, rank: usize| -> Result<Vec<usize>> {
            match shape_of(name) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => bail!("FLUX weights: `{name}` has shape {s:?}, expected rank {rank}"),
                None => bail!(
                    "FLUX weights: tensor `{name}` is missing (is this a FLUX.1 transformer in the BFL/ComfyUI layout?)"
                ),
            }
        };
        let img_in = need("img_in.weight", 2)?;
        let (hidden_size, in_channels) = (img_in[0], img_in[1]);
        let context_in_dim = need("txt_in.weight", 2)?[1];
        let vec_in_dim = need("vector_in.in_layer.weight", 2)?[1];
        let mlp = need("double_blocks.0.img_mlp.0.weight", 2)?[0];
        let head_dim = need("double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0];
        let count = |prefix: &str, probe: &str| {
            (0..)
                .take_while(|i| shape_of(&format!("{prefix}.{i}.{probe}")).is_some())
                .count()
        };
        let depth = count("double_blocks", "img_attn.qkv.weight");
        let depth_single_blocks = count("single_blocks", "linear1.weight");
        let given = ["axes_dims_rope", "axes_dim"]
            .iter()
            .find_map(|k| meta.get(*k).map(|v| (*k, v)));
        let axes_dim = match (given, head_dim) {
            (Some((key, v)), _) => parse_axes(v).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "FLUX metadata: `{key}` = `{v}` is not a list of three whole numbers like [16, 56, 56]"
                ))
            })?,
            (None, 128) => vec![16, 56, 56],
            (None, 16) => vec![4, 6, 6],
            (None, d) => bail!(
                "FLUX weights: head dimension {d} has no known RoPE axis split (known: 128 → [16, 56, 56], 16 → [4, 6, 6]); give it as `axes_dims_rope` in a config.json beside the weights file (as diffusers writes it) or in the safetensors metadata"
            ),
        };
        if head_dim == 0 || hidden_size % head_dim != 0 {
            bail!("FLUX weights: hidden size {hidden_size} is not a multiple of head dimension {head_dim}")
        }
        let cfg = Self {
            in_channels,
            vec_in_dim,
            context_in_dim,
            hidden_size,
            mlp_ratio: mlp as f64 / hidden_size as f64,
            num_heads: hidden_size / head_dim,
            depth,
            depth_single_blocks,
            axes_dim,
            theta: 10_000.0,
            qkv_bias: shape_of("double_blocks.0.img_attn.qkv.bias").is_some(),
            guidance_embed: shape_of("guidance_in.in_layer.weight").is_some(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// `[16, 56, 56]` (JSON list, spaces optional) → the three numbers.
fn parse_axes(v: &str) -> Option<Vec<usize>> {
    let inner = v.trim().strip_prefix('[')?.strip_suffix(']')?;
    let axes: Vec<usize> = inner
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<_>>()?;
    (axes.len() == 3).then_some(axes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        for c in [
            Config::dev(),
            Config::schnell(),
            Config::tiny(),
            Config::tiny_schnell(),
        ] {
            c.validate().unwrap();
        }
        assert_eq!(Config::dev().head_dim(), 128);
        assert_eq!(Config::dev().mlp_hidden(), 12288);
    }

    /// Regression (issue 10): unseen head dimensions were refused outright; metadata (a
    /// diffusers `config.json` beside the file) now decides, and only a missing split is an
    /// error.
    #[test]
    fn head_dims_other_than_the_known_ones_take_axes_from_metadata() {
        let cfg = Config {
            hidden_size: 48,
            num_heads: 2,
            axes_dim: vec![4, 10, 10],
            ..Config::tiny()
        };
        let layout = crate::models::tiny::flux_layout(&cfg).unwrap();
        let shape_of = |n: &str| layout.get(n).cloned();
        let e = Config::infer_with(&shape_of, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("head dimension 24") && e.contains("axes_dims_rope"),
            "{e}"
        );
        let meta = [("axes_dims_rope".to_string(), "[4, 10, 10]".to_string())].into();
        assert_eq!(Config::infer_with(&shape_of, &meta).unwrap(), cfg);
        let bad = [("axes_dims_rope".to_string(), "[4, 10]".to_string())].into();
        let e = Config::infer_with(&shape_of, &bad).unwrap_err().to_string();
        assert!(e.contains("three whole numbers"), "{e}");
    }

    #[test]
    fn invalid_axes_rejected() {
        let c = Config {
            axes_dim: vec![4, 6, 8],
            ..Config::tiny()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("summing to the head dimension 16"), "{e}");
    }
}
