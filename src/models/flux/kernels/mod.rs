//! Fused CUDA kernels for the FLUX blocks on a GPU, and the settings that choose them.
//!
//! On a CUDA device with bf16 or f16 weights, [`super::block`] runs each block through a few
//! fused kernels around the cuBLAS matrix products instead of dozens of candle element-wise
//! kernels and an L×L score matrix (docs/models.md, "CUDA kernels"):
//!
//! | kernel | replaces |
//! |---|---|
//! | `ln_modulate` | LayerNorm in f32 + `(1 + scale)·x + shift` |
//! | `qkv_rope` | qkv bias, split/permute to `[3, H, L, D]`, QK RMSNorm × scale, RoPE, and the double block's text/image concatenation |
//! | `flash_fwd_*` | `q kᵀ`, softmax in f32, `· v` and the transpose to `[L, H·D]` (head dim 128) |
//! | `softmax_*` | softmax of bf16/f16 scores in f32 (the attention fallback for head dims ≠ 128) |
//! | `cat_gelu` | MLP bias + GELU(tanh), and the single block's `cat([attn, gelu(mlp)])` |
//! | `gated_residual` | projection bias + `x + gate·y` |
//!
//! Every kernel rounds to the compute dtype where the reference path (BFL, diffusers, and the
//! candle path in `block.rs`) rounds, computes in f32 between those points, and reduces in an
//! order fixed by the shapes: the same inputs give the same bits, whatever the placement or
//! batch (docs/decisions.md §4). The attention computes scores and softmax in f32 and rounds the
//! probabilities to bf16 for the `· v` product, as PyTorch's SDPA (FlashAttention-2) does.
//!
//! The kernels are compiled to PTX by `build.rs` only with the `cuda` feature; this module's
//! settings and launch geometry are plain Rust and compile (and are tested) everywhere. The
//! CPU path never uses the kernels.
//!
//! Settings come from the environment, read once (diagnostics and A/B measurements):
//! `MGPU_FLUX_KERNELS` = `on` (default) | `off` (the candle path on the GPU too),
//! `MGPU_ATTENTION` = `flash` (default) | `cublas` (two cuBLAS products around the fused
//! softmax), `MGPU_FLASH_VARIANT` = `w8c128` (default) | `w8c64` | `w4c64`.

#[cfg(feature = "cuda")]
pub mod check;
#[cfg(feature = "cuda")]
mod ops;

#[cfg(feature = "cuda")]
pub use ops::{
    attention, attention_cublas, cat_gelu, cat_gelu_to, flash_attention, gated_residual,
    ln_modulate, ln_modulate_to, qkv_rope, softmax_scaled, QkvSegment,
};

use std::fmt;
use std::str::FromStr;
use std::sync::{OnceLock, RwLock};

/// How the fused path computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionImpl {
    /// One flash-attention kernel (head dim 128); other head dims use `Cublas`.
    Flash,
    /// `q kᵀ` and `p v` with cuBLAS around the fused f32 softmax kernel.
    Cublas,
}

impl FromStr for AttentionImpl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "flash" => Ok(Self::Flash),
            "cublas" => Ok(Self::Cublas),
            other => Err(format!("attention `{other}`: expected `flash` or `cublas`")),
        }
    }
}

impl fmt::Display for AttentionImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flash => "flash",
            Self::Cublas => "cublas",
        })
    }
}

/// A compiled shape of the flash-attention kernel: warps per block (each owns 16 query rows)
/// and keys per tile. Spelled `w8c64`: 8 warps, 64 keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashVariant {
    pub warps: usize,
    pub keys: usize,
}

impl FlashVariant {
    /// The compiled variants (`flash.cu`'s `FLASH_VARIANT` lines), default first (the fastest
    /// at FLUX-dev 1024² on an H100: benches/RESULTS.md).
    pub const ALL: [FlashVariant; 3] = [
        FlashVariant {
            warps: 8,
            keys: 128,
        },
        FlashVariant { warps: 8, keys: 64 },
        FlashVariant { warps: 4, keys: 64 },
    ];

    /// Query rows per block.
    pub fn rows(self) -> usize {
        16 * self.warps
    }

    pub fn threads(self) -> u32 {
        32 * self.warps as u32
    }

    /// Dynamic shared memory: the Q tile and two K and two V tiles of 128 bf16 per row.
    pub fn smem_bytes(self) -> u32 {
        ((self.rows() + 4 * self.keys) * 256) as u32
    }

    /// Grid for `l` tokens and `heads` heads: query tiles × heads.
    pub fn grid(self, l: usize, heads: usize) -> (u32, u32, u32) {
        (l.div_ceil(self.rows()) as u32, heads as u32, 1)
    }

    /// The kernel's name in the PTX module for element type `suffix` (`bf16`, `f16`).
    pub fn kernel_name(self, suffix: &str) -> String {
        format!("flash_fwd_w{}_c{}_{suffix}", self.warps, self.keys)
    }
}

impl FromStr for FlashVariant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let parsed = t.strip_prefix('w').and_then(|r| {
            let (w, c) = r.split_once('c')?;
            Some(FlashVariant {
                warps: w.parse().ok()?,
                keys: c.parse().ok()?,
            })
        });
        match parsed {
            Some(v) if Self::ALL.contains(&v) => Ok(v),
            _ => Err(format!(
                "flash variant `{t}`: expected one of {}",
                Self::ALL.map(|v| v.to_string()).join(", ")
            )),
        }
    }
}

impl fmt::Display for FlashVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}c{}", self.warps, self.keys)
    }
}

/// How large `mgpu bench --check-kernels` checks are (see `check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckSize {
    /// FLUX-dev at 1024²: 512 text + 4096 image tokens, hidden 3072, 24 heads of 128.
    Full,
    /// Small enough for compute-sanitizer: 16 + 64 tokens and hidden 256 for the kernels,
    /// attention over up to 300 tokens (3 key tiles: the double buffer is reused), FLUX-dev
    /// blocks over 16 + 16 tokens.
    Small,
}

impl FromStr for CheckSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "full" => Ok(Self::Full),
            "small" => Ok(Self::Small),
            other => Err(format!("check size `{other}`: expected `full` or `small`")),
        }
    }
}

impl fmt::Display for CheckSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "full",
            Self::Small => "small",
        })
    }
}

/// Which fused path the FLUX blocks take on a CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Use the fused kernels at all (off: candle ops on the GPU, as on the CPU).
    pub kernels: bool,
    pub attention: AttentionImpl,
    pub flash: FlashVariant,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            kernels: true,
            attention: AttentionImpl::Flash,
            flash: FlashVariant::ALL[0],
        }
    }
}

impl Settings {
    /// Settings from `MGPU_FLUX_KERNELS`, `MGPU_ATTENTION` and `MGPU_FLASH_VARIANT` as
    /// returned by `var` (unset variables keep the defaults).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut s = Settings::default();
        if let Some(v) = var("MGPU_FLUX_KERNELS") {
            s.kernels = match v.trim() {
                "on" | "1" | "true" => true,
                "off" | "0" | "false" => false,
                other => {
                    return Err(format!(
                        "MGPU_FLUX_KERNELS=`{other}`: expected `on` or `off`"
                    ))
                }
            };
        }
        if let Some(v) = var("MGPU_ATTENTION") {
            s.attention = v.parse().map_err(|e| format!("MGPU_ATTENTION: {e}"))?;
        }
        if let Some(v) = var("MGPU_FLASH_VARIANT") {
            s.flash = v.parse().map_err(|e| format!("MGPU_FLASH_VARIANT: {e}"))?;
        }
        Ok(s)
    }
}

static OVERRIDE: RwLock<Option<Settings>> = RwLock::new(None);

/// The settings in force: those set by [`set_settings`], else the environment's (read once).
pub fn settings() -> candle_core::Result<Settings> {
    if let Some(s) = *OVERRIDE.read().unwrap_or_else(|e| e.into_inner()) {
        return Ok(s);
    }
    static FROM_ENV: OnceLock<Result<Settings, String>> = OnceLock::new();
    FROM_ENV
        .get_or_init(|| Settings::from_vars(|k| std::env::var(k).ok()))
        .clone()
        .map_err(candle_core::Error::Msg)
}

/// Overrides the environment's settings for this process (`None`: back to the environment).
/// For diagnostics that compare paths (`mgpu bench --check-kernels`).
pub fn set_settings(s: Option<Settings>) {
    *OVERRIDE.write().unwrap_or_else(|e| e.into_inner()) = s;
}

/// Threads per qkv vector in `qkv_rope`: one 8-element chunk each, so `head_dim / 8`, which
/// must be a power of two of at most 32 (head dims 8 … 256).
pub fn qkv_group(head_dim: usize) -> Option<usize> {
    let g = head_dim / 8;
    (head_dim.is_multiple_of(8) && g.is_power_of_two() && g <= 32).then_some(g)
}

/// Threads of a one-block-per-row kernel over `vectors` 8-element vectors per row: the fewest
/// passes of at most 256 threads, split evenly, rounded up to whole warps.
pub fn row_threads(vectors: usize) -> u32 {
    let v = vectors.max(1);
    let passes = v.div_ceil(256);
    (v.div_ceil(passes).div_ceil(32) * 32) as u32
}

/// Blocks of 256 threads for a grid-stride kernel over `vectors` items (at most 2¹⁶ blocks;
/// each thread then loops).
pub fn flat_blocks(vectors: usize) -> u32 {
    vectors.div_ceil(256).clamp(1, 1 << 16) as u32
}

/// Whether the fused block path can run a model of this `hidden` width and `head_dim`: every
/// row, bias and norm scale is read in 16-byte vectors of 8 elements.
pub fn shapes_supported(hidden: usize, head_dim: usize, mlp_hidden: usize) -> bool {
    hidden.is_multiple_of(8) && mlp_hidden.is_multiple_of(8) && qkv_group(head_dim).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn attention_impl_round_trips() {
        for (s, v) in [
            ("flash", AttentionImpl::Flash),
            ("cublas", AttentionImpl::Cublas),
        ] {
            assert_eq!(s.parse::<AttentionImpl>().unwrap(), v);
            assert_eq!(v.to_string(), s);
        }
        let e = "sdpa".parse::<AttentionImpl>().unwrap_err();
        assert_eq!(e, "attention `sdpa`: expected `flash` or `cublas`");
    }

    #[test]
    fn flash_variants_parse_and_size() {
        for v in FlashVariant::ALL {
            assert_eq!(v.to_string().parse::<FlashVariant>().unwrap(), v);
            assert!(v.smem_bytes() <= 227 * 1024, "{v}");
        }
        let d = FlashVariant::ALL[0];
        assert_eq!(d.to_string(), "w8c128");
        assert_eq!(d.rows(), 128);
        assert_eq!(d.threads(), 256);
        assert_eq!(d.smem_bytes(), 163_840);
        assert_eq!(d.kernel_name("bf16"), "flash_fwd_w8_c128_bf16");
        let v = FlashVariant { warps: 4, keys: 64 };
        assert_eq!((v.rows(), v.threads(), v.smem_bytes()), (64, 128, 81_920));
        assert_eq!(v.kernel_name("f16"), "flash_fwd_w4_c64_f16");
        // 4608 tokens = 36 tiles of 128 rows; 4609 needs a 37th.
        assert_eq!(d.grid(4608, 24), (36, 24, 1));
        assert_eq!(d.grid(4609, 24), (37, 24, 1));
        for bad in ["w8c32", "w8", "8c64", "", "w8c64x"] {
            let e = bad.parse::<FlashVariant>().unwrap_err();
            assert!(e.contains("expected one of w8c128, w8c64, w4c64"), "{e}");
        }
    }

    #[test]
    fn settings_from_vars() {
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        assert_eq!(Settings::from_vars(env(&[])).unwrap(), Settings::default());
        let s = Settings::from_vars(env(&[
            ("MGPU_FLUX_KERNELS", "off"),
            ("MGPU_ATTENTION", "cublas"),
            ("MGPU_FLASH_VARIANT", "w4c64"),
        ]))
        .unwrap();
        assert!(!s.kernels);
        assert_eq!(s.attention, AttentionImpl::Cublas);
        assert_eq!(s.flash, FlashVariant { warps: 4, keys: 64 });
        assert_eq!(
            Settings::from_vars(env(&[("MGPU_FLUX_KERNELS", "maybe")])).unwrap_err(),
            "MGPU_FLUX_KERNELS=`maybe`: expected `on` or `off`"
        );
        assert!(Settings::from_vars(env(&[("MGPU_ATTENTION", "x")]))
            .unwrap_err()
            .starts_with("MGPU_ATTENTION: attention `x`"));
    }

    #[test]
    fn check_sizes_parse() {
        for (s, v) in [("full", CheckSize::Full), ("small", CheckSize::Small)] {
            assert_eq!(s.parse::<CheckSize>().unwrap(), v);
            assert_eq!(v.to_string(), s);
        }
        assert_eq!(
            "tiny".parse::<CheckSize>().unwrap_err(),
            "check size `tiny`: expected `full` or `small`"
        );
    }

    #[test]
    fn launch_geometry() {
        // FLUX-dev: hidden 3072 = 384 vectors → 2 passes of 192 threads; 4608 scores = 576
        // vectors → 3 passes of 192; tiny hidden 32 = 4 vectors → one warp.
        assert_eq!(row_threads(384), 192);
        assert_eq!(row_threads(576), 192);
        assert_eq!(row_threads(4), 32);
        assert_eq!(row_threads(0), 32);
        assert_eq!(row_threads(256), 256);
        assert_eq!(row_threads(257), 160);
        for v in [1usize, 31, 33, 255, 256, 257, 1000, 4608, 100_000] {
            let t = row_threads(v) as usize;
            assert!(t.is_multiple_of(32) && (32..=256).contains(&t), "{v} → {t}");
            assert!(v.div_ceil(t) == v.div_ceil(256), "{v}: no extra pass");
        }
        assert_eq!(qkv_group(128), Some(16));
        assert_eq!(qkv_group(16), Some(2));
        assert_eq!(qkv_group(256), Some(32));
        assert_eq!(qkv_group(96), None);
        assert_eq!(qkv_group(512), None);
        assert_eq!(qkv_group(12), None);
        assert_eq!(flat_blocks(0), 1);
        assert_eq!(flat_blocks(257), 2);
        assert_eq!(flat_blocks(usize::MAX / 2), 1 << 16);
        assert!(shapes_supported(3072, 128, 12288));
        assert!(shapes_supported(32, 16, 128));
        assert!(!shapes_supported(3072, 96, 12288));
        assert!(!shapes_supported(3070, 128, 12288));
    }
}
