//! The Wan video autoencoders: Wan 2.1's (`wan_2.1_vae.safetensors`, also used by Wan 2.2's
//! 14B models), a causal 3-D VAE with 8× spatial and 4× temporal compression to 16 latent
//! channels, and Wan 2.2's (`wan2.2_vae.safetensors`, the VAE of TI2V-5B), 16× spatial (a 2 × 2
//! patchify, then 8×) and 4× temporal compression to 48 latent channels, with residual levels
//! ([`residual`]). The encoder turns a clip into the latent the Wan DiT denoises
//! (image-to-video, video-to-video), the decoder turns a denoised latent into frames.
//!
//! Placement: the units are the whole `encoder` and the whole `decoder`
//! ([`crate::family::Family::unit_of`]); each is built from a `VarBuilder` whose names are
//! relative to the unit (`conv1.weight`, `downsamples.0.residual.0.gamma`, …). The two 1×1×1
//! convolutions outside them, `conv1` (after the encoder: posterior moments) and `conv2`
//! (before the decoder), are resident and reach [`Encoder::new`] / [`Decoder::new`] through
//! the resident `VarBuilder`.
//!
//! Canonical names are Wan's own (`wan/modules/vae.py`, also ComfyUI's): `encoder.conv1`,
//! `encoder.downsamples.N.residual.{0,2,3,6}` / `.shortcut` (residual blocks: RMS norm γ,
//! causal conv, RMS norm γ, causal conv, 1³ shortcut), `encoder.downsamples.N.resample.1` /
//! `.time_conv` (resamplers), `encoder.middle.{0,2}` (residual) and `encoder.middle.1`
//! (`norm`, `to_qkv`, `proj`), `encoder.head.{0,2}`, `conv1`, `conv2`, and the decoder's
//! mirror with `decoder.upsamples.N`. Wan 2.2 (`wan/modules/vae2_2.py`) nests the lists per
//! level: `encoder.downsamples.L.downsamples.M` (M < B residual blocks, M = B the resampler;
//! B = `num_res_blocks`) and `decoder.upsamples.L.upsamples.M` (M ≤ B residual blocks, M = B + 1
//! the resampler); its level shortcuts have no parameters. diffusers' `AutoencoderKLWan` names
//! of either version are mapped onto these by `weights::keymap`.
//!
//! Computation, exactly as the references (with `CACHE_T = 2` cached frames per causal
//! convolution between chunks, see [`layers`]):
//! - encode: pixels `[F, 3, H, W]` in [-1, 1], `F = 1 + 4k`, H and W multiples of s (the
//!   spatial factor, 8 or 16); Wan 2.2 patchifies them to `[F, 12, H/2, W/2]`; the encoder sees
//!   frame 0, then chunks of 4 frames, each giving one latent frame; `conv1`; the posterior
//!   mean μ (no sampling, so image-to-video is deterministic); the DiT latent
//!   `(μ − mean) · (1/std)` per channel, `[1, z, 1 + k, H/s, W/s]`, f32.
//! - decode: a DiT latent `[1, z, T, h, w]` is un-normalised (`z / (1/std) + mean`), goes
//!   through `conv2`, then the decoder one latent frame at a time: the first gives 1 frame,
//!   each further one 4 (temporal up-sampling starts with the second latent frame; Wan 2.2's
//!   shortcuts drop their first duplicated frame on the first chunk); Wan 2.2 unpatchifies;
//!   frames `[1 + 4(T − 1), 3, s·h, s·w]`, f32, not clamped.
//!
//! Memory: a pass holds one chunk's activations (at most 4 frames at full resolution), the
//! frame caches (two input frames per causal convolution, at that convolution's resolution),
//! im2col buffers of at most [`layers::IM2COL_BUDGET`] elements, and the output frames; nothing
//! else grows with the number of frames. For 81 frames at 480×832 with the real model in f32:
//! caches ≈ 3.6 GiB (7 convolutions × 2 frames × 96 channels at full resolution, 6 × 2 × 192 at
//! half, 6 × 2 × 192–384 at a quarter, a few more below), one 4-frame full-resolution
//! activation 0.57 GiB (several live at once), im2col ≤ 0.5 GiB, the output 0.36 GiB (twice
//! while joined). Measured with `examples/wan_vae_memory.rs` (CPU, f32, peak resident set
//! above the weights): decoding 0.54 GiB at 120×208 for 9 and for 17 frames alike, encoding
//! 0.3 GiB. Everything but the capped im2col buffers scales with the pixel count (16×), so a
//! 480×832 decode peaks at about 8.6 GiB above the weights in f32 or less, less again in bf16
//! (caches and activations halve; RMS norms work in f32), whatever the number of frames.
//!
//! The memory figures above are Wan 2.1's; Wan 2.2's decoder is wider (1024 channels at the
//! latent resolution, 256 at the last level, which runs at half the output resolution before
//! the unpatchify), not measured yet.
//!
//! References: Wan2.1 `wan/modules/vae.py` (`WanVAE_`, `Encoder3d`, `Decoder3d`,
//! `WanVAE.encode/decode`), <https://github.com/Wan-Video/Wan2.1>; Wan2.2
//! `wan/modules/vae2_2.py`, <https://github.com/Wan-Video/Wan2.2>; diffusers
//! `models/autoencoders/autoencoder_kl_wan.py` (`AutoencoderKLWan`), the parity target of
//! `tests/models_wan_vae.rs`.

pub mod config;
mod infer;
pub mod layers;
pub mod residual;

use std::collections::BTreeMap;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::family::Family;
use crate::models::spec::{Autoencoder, ShapeOf};
pub use config::Config;
use layers::{
    AttentionBlock, CausalConv3d, FeatCache, Mode, Resample, ResidualBlock, RmsNorm, Slots,
};
use residual::{patchify, unpatchify, DownLevel, UpLevel};

/// A residual block or a resampler of `downsamples` / `upsamples`.
#[derive(Debug, Clone)]
enum Layer {
    Residual(ResidualBlock),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        match self {
            Layer::Residual(r) => r.forward(x, cache),
            Layer::Resample(r) => r.forward(x, cache),
        }
    }
}

/// The encoder's levels: Wan 2.1's flat `downsamples.N`, Wan 2.2's `downsamples.L.downsamples`.
#[derive(Debug, Clone)]
enum DownBody {
    Flat(Vec<Layer>),
    Levels(Vec<DownLevel>),
}

/// The decoder's levels: Wan 2.1's flat `upsamples.N`, Wan 2.2's `upsamples.L.upsamples`.
#[derive(Debug, Clone)]
enum UpBody {
    Flat(Vec<Layer>),
    Levels(Vec<UpLevel>),
}

/// `middle.0` (residual), `middle.1` (attention), `middle.2` (residual).
#[derive(Debug, Clone)]
struct Middle {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res2: ResidualBlock,
}

impl Middle {
    fn new(c: usize, slots: &mut Slots, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            res0: ResidualBlock::new(c, c, slots, vb.pp("0"))?,
            attn: AttentionBlock::new(c, vb.pp("1"))?,
            res2: ResidualBlock::new(c, c, slots, vb.pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res2.forward(&x, cache)
    }
}

/// `head.0` (RMS norm), SiLU, `head.2` (causal conv 3³).
#[derive(Debug, Clone)]
struct Head {
    norm: RmsNorm,
    conv: CausalConv3d,
}

impl Head {
    fn new(cin: usize, cout: usize, slots: &mut Slots, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(cin, false, vb.pp("0"))?,
            conv: CausalConv3d::new(cin, cout, [3; 3], [1; 3], 1, Some(slots.take()), vb.pp("2"))?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let y = self.norm.forward(x)?.silu()?;
        self.conv.forward_cached(&y, cache)
    }
}

/// Wan 2.1's `encoder.downsamples.N`: per level, residual blocks then a resampler.
fn flat_downsamples(
    cfg: &Config,
    dims: &[usize],
    slots: &mut Slots,
    vb: &VarBuilder,
) -> Result<Vec<Layer>> {
    let mut downsamples = Vec::new();
    for i in 0..cfg.levels() {
        let (mut cin, cout) = (dims[i], dims[i + 1]);
        for _ in 0..cfg.num_res_blocks {
            let vbl = vb.pp(format!("downsamples.{}", downsamples.len()));
            downsamples.push(Layer::Residual(ResidualBlock::new(cin, cout, slots, vbl)?));
            cin = cout;
        }
        if i + 1 != cfg.levels() {
            let mode = if cfg.temporal_downsample[i] {
                Mode::Down3d
            } else {
                Mode::Down2d
            };
            let vbl = vb.pp(format!("downsamples.{}", downsamples.len()));
            downsamples.push(Layer::Resample(Resample::new(cout, mode, slots, vbl)?));
        }
    }
    Ok(downsamples)
}

/// Wan 2.1's `decoder.upsamples.N`: per level, residual blocks then a resampler that halves
/// the channels.
fn flat_upsamples(
    cfg: &Config,
    dims: &[usize],
    slots: &mut Slots,
    vb: &VarBuilder,
) -> Result<Vec<Layer>> {
    let n = cfg.levels();
    let mut upsamples = Vec::new();
    for i in 0..n {
        // Every up-sampler halves the channels: later levels start from half.
        let (mut cin, cout) = (if i > 0 { dims[i] / 2 } else { dims[i] }, dims[i + 1]);
        for _ in 0..=cfg.num_res_blocks {
            let vbl = vb.pp(format!("upsamples.{}", upsamples.len()));
            upsamples.push(Layer::Residual(ResidualBlock::new(cin, cout, slots, vbl)?));
            cin = cout;
        }
        if i + 1 != n {
            let mode = if cfg.temporal_downsample[n - 2 - i] {
                Mode::Up3d
            } else {
                Mode::Up2d
            };
            let vbl = vb.pp(format!("upsamples.{}", upsamples.len()));
            upsamples.push(Layer::Resample(Resample::new(cout, mode, slots, vbl)?));
        }
    }
    Ok(upsamples)
}

/// `(mean, 1/std)` as `[1, z, 1, 1]` f32 tensors.
fn normalisation(cfg: &Config, device: &Device) -> Result<(Tensor, Tensor)> {
    let z = cfg.z_dim;
    let inv: Vec<f32> = cfg.latents_std.iter().map(|s| 1.0 / s).collect();
    Ok((
        Tensor::from_slice(&cfg.latents_mean, (1, z, 1, 1), device)?,
        Tensor::from_slice(&inv, (1, z, 1, 1), device)?,
    ))
}

/// The `encoder` unit with the resident `conv1`: pixels → posterior mean.
#[derive(Debug, Clone)]
pub struct Encoder {
    cfg: Config,
    dtype: DType,
    conv1: CausalConv3d,
    downsamples: DownBody,
    middle: Middle,
    head: Head,
    /// The resident `conv1` (`2·z` → `2·z` channels, 1³).
    quant: CausalConv3d,
    slots: usize,
}

impl Encoder {
    /// `vb` names are relative to `encoder.`; `quant` is the resident `conv1`.
    pub fn new(cfg: &Config, vb: VarBuilder, quant: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let mut slots = Slots::default();
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| cfg.dim * m)
            .collect();
        let p2 = cfg.patch_size * cfg.patch_size;
        let conv1 = CausalConv3d::new(
            cfg.in_channels * p2,
            dims[0],
            [3; 3],
            [1; 3],
            1,
            Some(slots.take()),
            vb.pp("conv1"),
        )?;
        let downsamples = if cfg.residual {
            let mut levels = Vec::with_capacity(cfg.levels());
            for i in 0..cfg.levels() {
                let vbl = vb.pp(format!("downsamples.{i}.downsamples"));
                levels.push(DownLevel::new(
                    cfg,
                    i,
                    dims[i],
                    dims[i + 1],
                    &mut slots,
                    vbl,
                )?);
            }
            DownBody::Levels(levels)
        } else {
            DownBody::Flat(flat_downsamples(cfg, &dims, &mut slots, &vb)?)
        };
        let c = dims[cfg.levels()];
        let middle = Middle::new(c, &mut slots, vb.pp("middle"))?;
        let head = Head::new(c, 2 * cfg.z_dim, &mut slots, vb.pp("head"))?;
        let zz = 2 * cfg.z_dim;
        let quant = CausalConv3d::new(zz, zz, [1; 3], [0; 3], 1, None, quant)?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            conv1,
            downsamples,
            middle,
            head,
            quant,
            slots: slots.count(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One chunk `[T, 3, H, W]` through the encoder body (the caches carry the past).
    fn forward_chunk(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv1.forward_cached(x, cache)?;
        match &self.downsamples {
            DownBody::Flat(layers) => {
                for layer in layers {
                    x = layer.forward(&x, cache)?;
                }
            }
            DownBody::Levels(levels) => {
                for level in levels {
                    x = level.forward(&x, cache)?;
                }
            }
        }
        let x = self.middle.forward(&x, cache)?;
        self.head.forward(&x, cache)
    }

    /// Pixels `[F, 3, H, W]` (F = 1 + 4k, H and W multiples of s) → the raw posterior mean μ
    /// `[1 + k, z, H/s, W/s]` (s = [`Config::spatial_factor`]) in the compute dtype.
    pub fn encode_raw(&self, pixels: &Tensor) -> Result<Tensor> {
        let (f, c, h, w) = pixels.dims4()?;
        let (s, tf) = (self.cfg.spatial_factor(), self.cfg.temporal_factor());
        if c != self.cfg.in_channels
            || h % s != 0
            || w % s != 0
            || h == 0
            || w == 0
            || f == 0
            || (f - 1) % tf != 0
        {
            bail!(
                "Wan VAE encode: pixels must be [F, {}, H, W] with F = 1 + {tf}·k frames and H, W positive multiples of {s}, got {:?}",
                self.cfg.in_channels,
                pixels.dims()
            )
        }
        let x = patchify(&pixels.to_dtype(self.dtype)?, self.cfg.patch_size)?;
        let mut cache = FeatCache::new(self.slots);
        // Frame 0 alone, then chunks of `tf` frames: one latent frame each.
        let mut outs = vec![self.forward_chunk(&x.narrow(0, 0, 1)?, &mut cache)?];
        for start in (1..f).step_by(tf) {
            outs.push(self.forward_chunk(&x.narrow(0, start, tf)?, &mut cache)?);
        }
        let moments = self.quant.forward(&Tensor::cat(&outs, 0)?, None)?;
        moments.narrow(1, 0, self.cfg.z_dim)
    }

    /// Pixels `[F, 3, H, W]` in [-1, 1] → the DiT latent `[1, z, T, H/s, W/s]` (f32): the
    /// posterior mean, normalised per channel.
    pub fn encode(&self, pixels: &Tensor) -> Result<Tensor> {
        let mu = self.encode_raw(pixels)?.to_dtype(DType::F32)?;
        let (mean, inv_std) = normalisation(&self.cfg, mu.device())?;
        let z = mu.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        // [T, z, h, w] -> [1, z, T, h, w]
        z.transpose(0, 1)?.unsqueeze(0)?.contiguous()
    }
}

/// The `decoder` unit with the resident `conv2`: latent → frames.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: Config,
    dtype: DType,
    /// The resident `conv2` (`z` → `z` channels, 1³).
    post_quant: CausalConv3d,
    conv1: CausalConv3d,
    middle: Middle,
    upsamples: UpBody,
    head: Head,
    slots: usize,
}

impl Decoder {
    /// `vb` names are relative to `decoder.`; `post_quant` is the resident `conv2`.
    pub fn new(cfg: &Config, vb: VarBuilder, post_quant: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let mut slots = Slots::default();
        let n = cfg.levels();
        let dims = cfg.decoder_dims();
        let z = cfg.z_dim;
        let post_quant = CausalConv3d::new(z, z, [1; 3], [0; 3], 1, None, post_quant)?;
        let conv1 = CausalConv3d::new(
            z,
            dims[0],
            [3; 3],
            [1; 3],
            1,
            Some(slots.take()),
            vb.pp("conv1"),
        )?;
        let middle = Middle::new(dims[0], &mut slots, vb.pp("middle"))?;
        let upsamples = if cfg.residual {
            let mut levels = Vec::with_capacity(n);
            for i in 0..n {
                let vbl = vb.pp(format!("upsamples.{i}.upsamples"));
                levels.push(UpLevel::new(cfg, i, dims[i], dims[i + 1], &mut slots, vbl)?);
            }
            UpBody::Levels(levels)
        } else {
            UpBody::Flat(flat_upsamples(cfg, &dims, &mut slots, &vb)?)
        };
        let p2 = cfg.patch_size * cfg.patch_size;
        let head = Head::new(dims[n], cfg.out_channels * p2, &mut slots, vb.pp("head"))?;
        Ok(Self {
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            post_quant,
            conv1,
            middle,
            upsamples,
            head,
            slots: slots.count(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One latent frame through the decoder body; `first`: the clip's first chunk.
    fn forward_chunk(&self, x: &Tensor, cache: &mut FeatCache, first: bool) -> Result<Tensor> {
        let x = self.conv1.forward_cached(x, cache)?;
        let mut x = self.middle.forward(&x, cache)?;
        match &self.upsamples {
            UpBody::Flat(layers) => {
                for layer in layers {
                    x = layer.forward(&x, cache)?;
                }
            }
            UpBody::Levels(levels) => {
                for level in levels {
                    x = level.forward(&x, cache, first)?;
                }
            }
        }
        self.head.forward(&x, cache)
    }

    /// A raw latent `[T, z, h, w]` → frames `[1 + 4(T − 1), 3, s·h, s·w]` in the compute dtype.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = z.dims4()?;
        if c != self.cfg.z_dim || t == 0 || h == 0 || w == 0 {
            bail!(
                "Wan VAE decode: latent must be [T, {}, h, w] (T, h, w > 0), got {:?}",
                self.cfg.z_dim,
                z.dims()
            )
        }
        let x = self.post_quant.forward(&z.to_dtype(self.dtype)?, None)?;
        let mut cache = FeatCache::new(self.slots);
        let mut outs = Vec::with_capacity(t);
        for i in 0..t {
            outs.push(self.forward_chunk(&x.narrow(0, i, 1)?, &mut cache, i == 0)?);
        }
        drop(cache);
        unpatchify(&Tensor::cat(&outs, 0)?, self.cfg.patch_size)
    }

    /// A DiT latent `[1, z, T, h, w]` → frames `[1 + 4(T − 1), 3, s·h, s·w]` (f32, unclamped,
    /// nominally [-1, 1]).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let (b, c, _t, _h, _w) = latent.dims5()?;
        if b != 1 || c != self.cfg.z_dim {
            bail!(
                "Wan VAE decode: latent must be [1, {}, T, h, w], got {:?}",
                self.cfg.z_dim,
                latent.dims()
            )
        }
        // [1, z, T, h, w] -> [T, z, h, w]
        let z = latent
            .squeeze(0)?
            .transpose(0, 1)?
            .contiguous()?
            .to_dtype(DType::F32)?;
        let (mean, inv_std) = normalisation(&self.cfg, z.device())?;
        let z = z.broadcast_div(&inv_std)?.broadcast_add(&mean)?;
        self.decode_raw(&z)?.to_dtype(DType::F32)
    }
}

/// The Wan VAE family ([`Family::WanVae`]): Wan 2.1's and Wan 2.2's VAE.
#[derive(Debug, Clone, Copy)]
pub struct WanVae;

impl Autoencoder for WanVae {
    type Config = Config;
    type Encoder = Encoder;
    type Decoder = Decoder;

    const FAMILY: Family = Family::WanVae;

    fn infer_config(shape_of: ShapeOf, _meta: &BTreeMap<String, String>) -> Result<Config> {
        Config::infer(shape_of)
    }

    /// 16 (Wan 2.1's VAE) or 48 (Wan 2.2's).
    fn latent_channels(cfg: &Config) -> usize {
        cfg.z_dim
    }

    fn units() -> [&'static str; 2] {
        ["encoder", "decoder"]
    }

    fn encoder(cfg: &Config, unit: VarBuilder, resident: VarBuilder) -> Result<Encoder> {
        Encoder::new(cfg, unit, resident.pp("conv1"))
    }

    fn decoder(cfg: &Config, unit: VarBuilder, resident: VarBuilder) -> Result<Decoder> {
        Decoder::new(cfg, unit, resident.pp("conv2"))
    }

    fn encode(enc: &Encoder, pixels: &Tensor) -> Result<Tensor> {
        enc.encode(pixels)
    }

    fn decode(dec: &Decoder, latent: &Tensor, tile: Option<usize>) -> Result<Tensor> {
        if let Some(t) = tile {
            bail!("wan-vae does not tile yet (tile {t} requested): decode without tiling; its memory does not grow with the number of frames")
        }
        dec.decode(latent)
    }
}
