//! The FLUX autoencoder (`ae.safetensors`): the encoder turns an image into the 16-channel
//! latent the DiT denoises (img2img), the decoder turns a denoised latent into an image.
//!
//! Its placement units are the whole `encoder` and the whole `decoder`
//! ([`crate::family::Family::unit_of`]); each is built from a `VarBuilder` whose names are
//! relative to the unit (`conv_in.weight`, `down.0.block.0.norm1.weight`, …).
//! [`AutoEncoder::new`] builds both from a whole-file `VarBuilder`.
//!
//! Conventions: images are `[1, 3, H, W]` in [-1, 1] (decode output is not clamped: the
//! output stage clamps); latents are the DiT's, `scale_factor · (z − shift_factor)`;
//! H and W are multiples of 8.
//!
//! Reference: BFL `flux/modules/autoencoder.py` (`Encoder`, `Decoder`, `AutoEncoder`,
//! `DiagonalGaussian`), <https://github.com/black-forest-labs/flux/blob/main/src/flux/modules/autoencoder.py>;
//! parity with diffusers' `AutoencoderKL` is tested in `tests/models_flux.rs`.

pub mod blocks;
pub mod config;
pub mod tiled;

use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{Conv2d, GroupNorm, VarBuilder};

use blocks::{conv3, group_norm, AttnBlock, Downsample, ResnetBlock, Upsample};
pub use config::Config;
pub use tiled::Tiling;

/// `mid.block_1`, `mid.attn_1`, `mid.block_2`.
#[derive(Debug, Clone)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(c, c, groups, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(c, groups, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(c, c, groups, vb.pp("block_2"))?,
        })
    }
}

impl Module for Mid {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply(&self.block_1)?
            .apply(&self.attn_1)?
            .apply(&self.block_2)
    }
}

/// One resolution level: resnet `block.M`, then `downsample`/`upsample` if any.
#[derive(Debug, Clone)]
struct Level<S> {
    blocks: Vec<ResnetBlock>,
    resample: Option<S>,
}

impl<S: Module> Module for Level<S> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = h.apply(b)?;
        }
        match &self.resample {
            Some(r) => h.apply(r),
            None => Ok(h),
        }
    }
}

/// The `encoder` unit: image `[b, 3, H, W]` → posterior moments `[b, 2·z, H/8, W/8]`.
#[derive(Debug, Clone)]
pub struct Encoder {
    cfg: Config,
    conv_in: Conv2d,
    down: Vec<Level<Downsample>>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    /// `vb` names are relative to `encoder.`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let g = cfg.num_groups;
        let n = cfg.ch_mult.len();
        let mut down = Vec::with_capacity(n);
        let mut block_in = cfg.ch;
        for (i, m) in cfg.ch_mult.iter().enumerate() {
            let vbl = vb.pp(format!("down.{i}"));
            let block_out = cfg.ch * m;
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks);
            for j in 0..cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    g,
                    vbl.pp(format!("block.{j}")),
                )?);
                block_in = block_out;
            }
            let resample = if i + 1 != n {
                Some(Downsample::new(block_in, vbl.pp("downsample"))?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in: conv3(cfg.in_channels, cfg.ch, vb.pp("conv_in"))?,
            down,
            mid: Mid::new(block_in, g, vb.pp("mid"))?,
            norm_out: group_norm(g, block_in, vb.pp("norm_out"))?,
            conv_out: conv3(block_in, 2 * cfg.z_channels, vb.pp("conv_out"))?,
        })
    }

    /// Image `[b, 3, H, W]` in [-1, 1] → latent the DiT sees, `[b, 16, H/8, W/8]`: the
    /// posterior mean, or `mean + std · noise` when `noise` (same shape as the latent,
    /// standard normal) is given; then `scale · (z − shift)`.
    pub fn encode(&self, image: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let (_b, c, h, w) = image.dims4()?;
        let f = self.cfg.downscale();
        if c != self.cfg.in_channels || h % f != 0 || w % f != 0 {
            bail!(
                "VAE encode: image must be [b, {}, H, W] with H and W multiples of {f}, got {:?}",
                self.cfg.in_channels,
                image.shape()
            )
        }
        let moments = self.forward(image)?;
        let mean = moments.narrow(1, 0, self.cfg.z_channels)?;
        let z = match noise {
            None => mean,
            Some(eps) => {
                if eps.dims() != mean.dims() {
                    bail!(
                        "VAE encode: noise has shape {:?}, the latent is {:?}",
                        eps.shape(),
                        mean.shape()
                    )
                }
                let logvar = moments
                    .narrow(1, self.cfg.z_channels, self.cfg.z_channels)?
                    .clamp(-30f32, 20f32)?;
                (mean
                    + (logvar * 0.5)?
                        .exp()?
                        .mul(&eps.to_dtype(moments.dtype())?)?)?
            }
        };
        (z - self.cfg.shift_factor)? * self.cfg.scale_factor
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.apply(&self.conv_in)?;
        for level in &self.down {
            h = h.apply(level)?;
        }
        h.apply(&self.mid)?
            .apply(&self.norm_out)?
            .silu()?
            .apply(&self.conv_out)
    }
}

/// The `decoder` unit: raw latent `z [b, 16, h, w]` → image `[b, 3, 8h, 8w]`.
#[derive(Debug, Clone)]
pub struct Decoder {
    cfg: Config,
    conv_in: Conv2d,
    mid: Mid,
    /// Indexed by level as in the file (`up.0` is the full-resolution level); run from the
    /// last to the first.
    up: Vec<Level<Upsample>>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    /// `vb` names are relative to `decoder.`.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let g = cfg.num_groups;
        let n = cfg.ch_mult.len();
        let mut block_in = cfg.ch * cfg.ch_mult[n - 1];
        let conv_in = conv3(cfg.z_channels, block_in, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, g, vb.pp("mid"))?;
        let mut up = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let vbl = vb.pp(format!("up.{i}"));
            let block_out = cfg.ch * cfg.ch_mult[i];
            let mut blocks = Vec::with_capacity(cfg.num_res_blocks + 1);
            for j in 0..=cfg.num_res_blocks {
                blocks.push(ResnetBlock::new(
                    block_in,
                    block_out,
                    g,
                    vbl.pp(format!("block.{j}")),
                )?);
                block_in = block_out;
            }
            let resample = if i != 0 {
                Some(Upsample::new(block_in, vbl.pp("upsample"))?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        up.reverse();
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            mid,
            up,
            norm_out: group_norm(g, block_in, vb.pp("norm_out"))?,
            conv_out: conv3(block_in, cfg.out_ch, vb.pp("conv_out"))?,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// DiT latent `[b, 16, h, w]` → image `[b, 3, 8h, 8w]` (unclamped, nominally [-1, 1]):
    /// un-scales (`z / scale + shift`) and decodes in one piece.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let (_b, c, _h, _w) = latent.dims4()?;
        if c != self.cfg.z_channels {
            bail!(
                "VAE decode: latent has {c} channels, the VAE expects {}",
                self.cfg.z_channels
            )
        }
        let z = ((latent / self.cfg.scale_factor)? + self.cfg.shift_factor)?;
        self.forward(&z)
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.apply(&self.conv_in)?.apply(&self.mid)?;
        for level in self.up.iter().rev() {
            h = h.apply(level)?;
        }
        h.apply(&self.norm_out)?.silu()?.apply(&self.conv_out)
    }
}

/// Both halves, from a whole-file `VarBuilder` (`encoder.…`, `decoder.…`).
#[derive(Debug, Clone)]
pub struct AutoEncoder {
    pub encoder: Encoder,
    pub decoder: Decoder,
}

impl AutoEncoder {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
        })
    }

    /// The placement units in execution order of a text-to-image run's use.
    pub fn units() -> [&'static str; 2] {
        ["encoder", "decoder"]
    }
}

impl super::spec::Autoencoder for AutoEncoder {
    type Config = Config;
    type Encoder = Encoder;
    type Decoder = Decoder;

    const FAMILY: crate::family::Family = crate::family::Family::FluxVae;

    fn infer_config(
        shape_of: super::spec::ShapeOf,
        meta: &std::collections::BTreeMap<String, String>,
    ) -> Result<Config> {
        Config::infer_with(shape_of, meta)
    }

    fn latent_channels(cfg: &Config) -> usize {
        cfg.z_channels
    }

    fn units() -> [&'static str; 2] {
        AutoEncoder::units()
    }

    /// The FLUX autoencoder has no tensors outside its two units.
    fn encoder(cfg: &Config, unit: VarBuilder, _resident: VarBuilder) -> Result<Encoder> {
        Encoder::new(cfg, unit)
    }

    fn decoder(cfg: &Config, unit: VarBuilder, _resident: VarBuilder) -> Result<Decoder> {
        Decoder::new(cfg, unit)
    }

    /// One image `[1, 3, H, W]`: the posterior mean (no sampled noise, so img2img stays
    /// deterministic), scaled into the DiT's space.
    fn encode(enc: &Encoder, pixels: &Tensor) -> Result<Tensor> {
        let (f, _c, _h, _w) = pixels.dims4()?;
        if f != 1 {
            bail!("the FLUX autoencoder encodes one image, got {f} frames")
        }
        enc.encode(pixels, None)
    }

    fn decode(dec: &Decoder, latent: &Tensor, tile: Option<usize>) -> Result<Tensor> {
        match tile {
            Some(t) => dec.decode_tiled(
                latent,
                Tiling {
                    tile: t,
                    ..Tiling::default()
                },
            ),
            None => dec.decode(latent),
        }
    }
}
