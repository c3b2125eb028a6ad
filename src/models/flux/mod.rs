//! The FLUX.1 diffusion transformer (dev and schnell), written for block streaming.
//!
//! A step is `prepare` (embeddings: resident weights) → one `run_unit` per placement unit
//! (`double_blocks.0` … `single_blocks.37`, each built from the tensors the executor hands
//! over) → `finish` (final layer: resident). The model never moves weights: every
//! `VarBuilder` it receives already sits on the compute device.
//!
//! ```text
//! latent [1,16,h,w] ─pack─▶ img tokens [h/2·w/2, 64] ─img_in─▶ img [L_img, hidden]
//! t5 [1,L_txt,ctx] ─txt_in─▶ txt [L_txt, hidden]
//! timestep, guidance, clip pooled [1,vec] ─time_in/guidance_in/vector_in─▶ vec [1, hidden]
//! ids (txt: 0; img: (0,row,col)) ─RoPE─▶ (cos, sin) [L_txt+L_img, head_dim/2]
//! double_blocks: (img, txt) → (img, txt)   single_blocks: [txt; img] → [txt; img]
//! final_layer(img part) ─unpack─▶ velocity [1,16,h,w]
//! ```
//!
//! Reference: BFL `flux/model.py` (`Flux.forward`),
//! <https://github.com/black-forest-labs/flux/blob/main/src/flux/model.py>; parity with
//! diffusers' `FluxTransformer2DModel` is tested in `tests/models_flux.rs`.

pub mod block;
pub mod config;
pub mod embed;
pub mod kernels;

use std::collections::BTreeMap;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::spec::{DiffusionModel, ShapeOf, StepInputs, TextNeeds};
use crate::family::Family;
use crate::models::tokenize::T5Tokenizer;
use crate::sample::{ModelSampling, SampleError};

pub use block::{DoubleBlock, LastLayer, SingleBlock};
pub use config::Config;
pub use embed::{pack, unpack};

use embed::MlpEmbedder;

/// The resident part of a FLUX transformer: input embeddings and the final layer.
#[derive(Debug, Clone)]
pub struct FluxDit {
    cfg: Config,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    vector_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    final_layer: LastLayer,
    dtype: DType,
    device: Device,
}

/// A block built from one unit's tensors, ready to run over any number of jobs.
#[derive(Debug, Clone)]
pub enum Block {
    Double(DoubleBlock),
    Single(SingleBlock),
}

/// One job's activations between units. Created by [`FluxDit::prepare`], advanced by
/// [`FluxDit::run_block`] in unit order, consumed by [`FluxDit::finish`].
#[derive(Debug, Clone)]
pub struct State {
    stream: Streams,
    vec: Tensor,
    cos: Tensor,
    sin: Tensor,
    latent_hw: (usize, usize),
    out_dtype: DType,
    next_unit: usize,
}

#[derive(Debug, Clone)]
enum Streams {
    /// Before and during the double blocks.
    Double { img: Tensor, txt: Tensor },
    /// From the first single block on: `[txt; img]` and the text length.
    Single { x: Tensor, l_txt: usize },
}

impl State {
    /// Index of the next unit to run (equals the unit count once all ran).
    pub fn next_unit(&self) -> usize {
        self.next_unit
    }
}

impl FluxDit {
    /// Builds the resident part from `vb` (canonical names: `img_in.weight`, `time_in.…`,
    /// `final_layer.…`). Computation runs in `vb`'s dtype on `vb`'s device.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let h = cfg.hidden_size;
        let guidance_in = if cfg.guidance_embed {
            Some(MlpEmbedder::new(
                config::TIME_EMBED_DIM,
                h,
                vb.pp("guidance_in"),
            )?)
        } else {
            None
        };
        Ok(Self {
            img_in: candle_nn::linear(cfg.in_channels, h, vb.pp("img_in"))?,
            txt_in: candle_nn::linear(cfg.context_in_dim, h, vb.pp("txt_in"))?,
            time_in: MlpEmbedder::new(config::TIME_EMBED_DIM, h, vb.pp("time_in"))?,
            vector_in: MlpEmbedder::new(cfg.vec_in_dim, h, vb.pp("vector_in"))?,
            guidance_in,
            final_layer: LastLayer::new(cfg, vb.pp("final_layer"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The placement units in execution order, named as
    /// [`crate::family::Family::unit_of`] names them.
    pub fn units(cfg: &Config) -> Vec<String> {
        (0..cfg.depth)
            .map(|i| format!("double_blocks.{i}"))
            .chain((0..cfg.depth_single_blocks).map(|i| format!("single_blocks.{i}")))
            .collect()
    }

    /// Builds unit `index` (of [`FluxDit::units`]) from `vb`, whose names are relative to the
    /// unit (`img_attn.qkv.weight`, `linear1.weight`, …). Cheap: it keeps references to the
    /// tensors.
    pub fn build_unit(cfg: &Config, index: usize, vb: VarBuilder) -> Result<Block> {
        if index < cfg.depth {
            Ok(Block::Double(DoubleBlock::new(cfg, vb)?))
        } else if index < cfg.depth + cfg.depth_single_blocks {
            Ok(Block::Single(SingleBlock::new(cfg, vb)?))
        } else {
            bail!(
                "FLUX unit index {index} out of range: the model has {} units",
                cfg.depth + cfg.depth_single_blocks
            )
        }
    }

    /// Embeds one job's inputs. `latent [1, 16, h, w]` (h, w even), `txt [1, L_txt, ctx]`
    /// (T5 hidden states), `vec [1, vec_in]` (CLIP pooled), `timestep` the flow-matching
    /// time (σ in [0, 1]), `guidance` the distilled guidance scale (dev) or `None`
    /// (schnell). Inputs are converted to the model dtype; [`FluxDit::finish`] returns the
    /// latent's dtype.
    pub fn prepare(
        &self,
        latent: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        timestep: f64,
        guidance: Option<f64>,
    ) -> Result<State> {
        let (b, _c, h, w) = latent.dims4()?;
        let (bt, l_txt, ctx) = txt.dims3()?;
        let (bv, vdim) = vec.dims2()?;
        if b != 1 || bt != 1 || bv != 1 {
            bail!("FLUX runs one job at a time: batch sizes must be 1 (latent {b}, txt {bt}, vec {bv})")
        }
        if ctx != self.cfg.context_in_dim {
            bail!(
                "FLUX text embeddings have width {ctx}, the model expects {} (T5 hidden size)",
                self.cfg.context_in_dim
            )
        }
        if vdim != self.cfg.vec_in_dim {
            bail!(
                "FLUX pooled vector has width {vdim}, the model expects {} (CLIP pooled size)",
                self.cfg.vec_in_dim
            )
        }
        let out_dtype = latent.dtype();
        let img = pack(&latent.to_dtype(self.dtype)?)?.apply(&self.img_in)?;
        let txt = txt.to_dtype(self.dtype)?.squeeze(0)?.apply(&self.txt_in)?;
        let mut v =
            embed::timestep_embedding(timestep, self.dtype, &self.device)?.apply(&self.time_in)?;
        match (&self.guidance_in, guidance) {
            (Some(g_in), Some(g)) => {
                v = (v + embed::timestep_embedding(g, self.dtype, &self.device)?.apply(g_in)?)?;
            }
            (Some(_), None) => bail!(
                "this FLUX model has a guidance embedding (dev): a guidance value is required"
            ),
            (None, Some(_)) => bail!(
                "this FLUX model has no guidance embedding (schnell): it takes no guidance value"
            ),
            (None, None) => {}
        }
        let v = (v + vec.to_dtype(self.dtype)?.apply(&self.vector_in)?)?;
        let mut ids = vec![[0.0; 3]; l_txt];
        ids.extend(embed::img_ids(h, w));
        let (cos, sin) = embed::rope_table(&ids, &self.cfg.axes_dim, self.cfg.theta, &self.device)?;
        Ok(State {
            stream: Streams::Double { img, txt },
            vec: v,
            cos,
            sin,
            latent_hw: (h, w),
            out_dtype,
            next_unit: 0,
        })
    }

    /// Runs a built block on one job's state. Blocks must run in unit order.
    pub fn run_block(&self, block: &Block, state: &mut State) -> Result<()> {
        let i = state.next_unit;
        let n_double = self.cfg.depth;
        match (block, &state.stream) {
            (Block::Double(b), Streams::Double { img, txt }) if i < n_double => {
                let (img, txt) = b.forward(img, txt, &state.vec, &state.cos, &state.sin)?;
                state.stream = Streams::Double { img, txt };
            }
            (Block::Single(b), _)
                if i >= n_double && i < n_double + self.cfg.depth_single_blocks =>
            {
                let (x, l_txt) = match &state.stream {
                    Streams::Double { img, txt } => (Tensor::cat(&[txt, img], 0)?, txt.dim(0)?),
                    Streams::Single { x, l_txt } => (x.clone(), *l_txt),
                };
                state.stream = Streams::Single {
                    x: b.forward(&x, &state.vec, &state.cos, &state.sin)?,
                    l_txt,
                };
            }
            _ => {
                let kind = match block {
                    Block::Double(_) => "a double block",
                    Block::Single(_) => "a single block",
                };
                let units = Self::units(&self.cfg);
                let expected = units.get(i).map(String::as_str).unwrap_or("finish()");
                bail!("FLUX units out of order: got {kind}, the next unit is {expected}")
            }
        }
        state.next_unit += 1;
        Ok(())
    }

    /// Builds unit `index` from `vb` and runs it on `state` (a batch of one).
    pub fn run_unit(&self, index: usize, vb: VarBuilder, state: &mut State) -> Result<()> {
        if index != state.next_unit {
            bail!(
                "FLUX unit {index} run out of order: the next unit is {}",
                state.next_unit
            )
        }
        let block = Self::build_unit(&self.cfg, index, vb)?;
        self.run_block(&block, state)
    }

    /// The final layer: velocity `[1, 16, h, w]` in the dtype of the latent given to
    /// [`FluxDit::prepare`].
    pub fn finish(&self, state: State) -> Result<Tensor> {
        let n = self.cfg.depth + self.cfg.depth_single_blocks;
        if state.next_unit != n {
            bail!("FLUX finish() after {} of {n} units", state.next_unit)
        }
        let img = match state.stream {
            Streams::Double { img, .. } => img,
            Streams::Single { x, l_txt } => {
                let l = x.dim(0)?;
                x.narrow(0, l_txt, l - l_txt)?
            }
        };
        let out = self.final_layer.forward(&img, &state.vec)?;
        let (h, w) = state.latent_hw;
        embed::unpack(&out, h, w)?.to_dtype(state.out_dtype)
    }

    /// A whole forward pass: `unit_weights(i)` supplies unit `i`'s `VarBuilder`.
    pub fn forward<'a>(
        &self,
        latent: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        timestep: f64,
        guidance: Option<f64>,
        unit_weights: &mut dyn FnMut(usize) -> Result<VarBuilder<'a>>,
    ) -> Result<Tensor> {
        let mut state = self.prepare(latent, txt, vec, timestep, guidance)?;
        for i in 0..self.cfg.depth + self.cfg.depth_single_blocks {
            self.run_unit(i, unit_weights(i)?, &mut state)?;
        }
        self.finish(state)
    }
}

impl DiffusionModel for FluxDit {
    type Config = Config;
    type Block = Block;
    type State = State;

    const FAMILY: Family = Family::Flux;

    fn infer_config(shape_of: ShapeOf, meta: &BTreeMap<String, String>) -> Result<Config> {
        Config::infer_with(shape_of, meta)
    }

    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        FluxDit::new(cfg, vb)
    }

    fn units(cfg: &Config) -> Vec<String> {
        FluxDit::units(cfg)
    }

    fn build_unit(cfg: &Config, index: usize, vb: VarBuilder) -> Result<Block> {
        FluxDit::build_unit(cfg, index, vb)
    }

    /// The FLUX autoencoder's 16.
    fn latent_channels(_cfg: &Config) -> usize {
        config::LATENT_CHANNELS
    }

    /// `[1, 16, h/8, w/8]`; FLUX makes one frame.
    fn latent_shape(_cfg: &Config, width: u32, height: u32, _frames: u32) -> Vec<usize> {
        vec![
            1,
            config::LATENT_CHANNELS,
            height as usize / 8,
            width as usize / 8,
        ]
    }

    /// T5-XXL's padded states (512 tokens for dev, 256 for schnell, unmasked, as diffusers'
    /// `FluxPipeline` and ComfyUI encode them) and CLIP-L's pooled vector.
    fn text_needs(cfg: &Config) -> TextNeeds {
        TextNeeds {
            context: Family::T5,
            context_tokens: if cfg.guidance_embed {
                T5Tokenizer::MAX_LEN_DEV
            } else {
                T5Tokenizer::MAX_LEN_SCHNELL
            },
            context_dim: cfg.context_in_dim,
            masked: false,
            pooled: Some((Family::ClipL, cfg.vec_in_dim)),
        }
    }

    /// dev: `ModelSamplingFlux` with the size-dependent shift (or `shift` as its μ);
    /// schnell: `ModelSamplingDiscreteFlow` with shift 1 (or `shift`), as ComfyUI loads them.
    fn model_sampling(
        cfg: &Config,
        width: u32,
        height: u32,
        shift: Option<f64>,
    ) -> std::result::Result<ModelSampling, SampleError> {
        match (cfg.guidance_embed, shift) {
            (true, None) => Ok(ModelSampling::flux_dev(width, height)),
            (true, Some(s)) => ModelSampling::flux(s),
            (false, None) => Ok(ModelSampling::flux_schnell()),
            (false, Some(s)) => ModelSampling::discrete_flow(s, 1.0),
        }
    }

    fn guidance(cfg: &Config, guidance: f64) -> Option<f64> {
        cfg.guidance_embed.then_some(guidance)
    }

    fn variant(cfg: &Config) -> Option<&'static str> {
        Some(if cfg.guidance_embed { "dev" } else { "schnell" })
    }

    fn prepare(&self, inputs: &StepInputs) -> Result<State> {
        if inputs.clean_frames > 0 {
            bail!("FLUX makes images: it takes no given video frames")
        }
        let Some(pooled) = inputs.pooled else {
            bail!("FLUX needs a pooled text vector (CLIP-L)")
        };
        FluxDit::prepare(
            self,
            inputs.latent,
            inputs.context,
            pooled,
            inputs.timestep,
            inputs.guidance,
        )
    }

    fn run_block(&self, block: &Block, state: &mut State) -> Result<()> {
        FluxDit::run_block(self, block, state)
    }

    fn finish(&self, state: State) -> Result<Tensor> {
        FluxDit::finish(self, state)
    }
}
