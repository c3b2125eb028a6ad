//! The Wan 2.1 text-to-video diffusion transformer (T2V 1.3B and 14B), written for block
//! streaming.
//!
//! A step is `prepare` (patch, text and time embeddings: resident weights) → one `run_block`
//! per placement unit (`blocks.0` … `blocks.N-1`, each built from the tensors the executor
//! hands over) → `finish` (the head: resident). The model never moves weights: every
//! `VarBuilder` it receives already sits on the compute device.
//!
//! ```text
//! latent [1,16,T,h,w] ─patchify─▶ [T·h/2·w/2, 64] ─patch_embedding─▶ x [L, dim]
//! umT5 [1,512,4096] ─text_embedding─▶ ctx [512, dim]
//! timestep (1000·σ) ─sinusoid─▶ [1,256] ─time_embedding─▶ temb [1,dim] ─time_projection─▶ e0 [6,dim]
//! grid (T, h/2, w/2) ─3-D RoPE─▶ (cos, sin) [L, head_dim/2]
//! blocks: x → x (self-attention with RoPE, cross-attention to ctx, FFN; modulated by e0)
//! head(x, temb) ─unpatchify─▶ velocity [1,16,T,h,w]
//! ```
//!
//! Reference: the Wan team's `wan/modules/model.py` (`WanModel.forward`),
//! <https://github.com/Wan-Video/Wan2.1>, with the precision of diffusers'
//! `WanTransformer3DModel` (`models/transformers/transformer_wan.py`), against which parity is
//! tested in `tests/models_wan.rs`. Text-to-video, and Wan 2.2 A14B image-to-video: its
//! experts take 36 input channels, the noisy latent followed by the image conditioning of
//! [`i2v`] (the runner concatenates them); Wan 2.1's image-to-video checkpoints (a CLIP-vision
//! image embedding) are refused.

pub mod block;
pub mod config;
pub mod embed;
#[cfg(feature = "cuda")]
mod fused;
pub mod i2v;

use std::collections::BTreeMap;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

pub use block::{Block, Head};
pub use config::Config;

use crate::family::Family;
use crate::models::spec::{DiffusionModel, ShapeOf, StepInputs, TextNeeds};
use crate::sample::model_sampling::WAN_T2V_SHIFT;
use crate::sample::{ModelSampling, SampleError};
use embed::{TextEmbedding, TimeEmbedding};

/// The resident part of a Wan transformer: embeddings and the head.
#[derive(Debug, Clone)]
pub struct WanDit {
    cfg: Config,
    /// `patch_embedding` as a linear map of patches `[dim, in·pt·ph·pw]`.
    patch_embedding: Linear,
    text_embedding: TextEmbedding,
    time_embedding: TimeEmbedding,
    /// `time_projection.1` (after a SiLU).
    time_projection: Linear,
    head: Head,
    dtype: DType,
    device: Device,
}

/// One evaluation's activations between units. Created by [`WanDit::prepare`], advanced by
/// [`WanDit::run_block`] in unit order, consumed by [`WanDit::finish`].
#[derive(Debug, Clone)]
pub struct State {
    /// Video tokens `[L, dim]` in the compute dtype.
    x: Tensor,
    /// Embedded text `[L_txt, dim]`.
    ctx: Tensor,
    /// Per run of tokens sharing a timestep (one run unless frames are clean, see
    /// [`WanDit::prepare_frames`]): the time embedding `[1, dim]` in the compute dtype (for
    /// the head).
    temb: Vec<(usize, Tensor)>,
    /// The same runs' time projections `[6, dim]` f32 (for the blocks' modulation).
    e0: Vec<(usize, Tensor)>,
    cos: Tensor,
    sin: Tensor,
    grid: [usize; 3],
    out_dtype: DType,
    next_unit: usize,
}

impl State {
    /// Index of the next unit to run (equals the unit count once all ran).
    pub fn next_unit(&self) -> usize {
        self.next_unit
    }
}

impl WanDit {
    /// Builds the resident part from `vb` (canonical names: `patch_embedding.weight`,
    /// `text_embedding.0.weight`, `head.modulation`, …). Computation runs in `vb`'s dtype on
    /// `vb`'s device, with the f32 islands described in [`block`].
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let [pt, ph, pw] = cfg.patch_size;
        let pe = vb.pp("patch_embedding");
        let w = pe
            .get((cfg.dim, cfg.in_dim, pt, ph, pw), "weight")?
            .reshape((cfg.dim, cfg.patch_in()))?;
        let b = pe.get(cfg.dim, "bias")?;
        Ok(Self {
            patch_embedding: Linear::new(w, Some(b)),
            text_embedding: TextEmbedding::new(cfg, vb.pp("text_embedding"))?,
            time_embedding: TimeEmbedding::new(cfg, vb.pp("time_embedding"))?,
            time_projection: candle_nn::linear(cfg.dim, 6 * cfg.dim, vb.pp("time_projection.1"))?,
            head: Head::new(cfg, vb.pp("head"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The placement units in execution order: `blocks.0` … (as
    /// [`crate::family::Family::unit_of`] names them).
    pub fn units(cfg: &Config) -> Vec<String> {
        (0..cfg.num_layers).map(|i| format!("blocks.{i}")).collect()
    }

    /// Builds unit `index` from `vb`, whose names are relative to the unit
    /// (`self_attn.q.weight`, …). Cheap: it keeps references to the tensors.
    pub fn build_unit(cfg: &Config, index: usize, vb: VarBuilder) -> Result<Block> {
        if index >= cfg.num_layers {
            bail!(
                "Wan unit index {index} out of range: the model has {} blocks",
                cfg.num_layers
            )
        }
        Block::new(cfg, vb)
    }

    /// Embeds one evaluation's inputs: `latent [1, in_dim, T, h, w]` (h, w even), `context
    /// [1, L_txt, text_dim]` (umT5 states, zero-padded to 512 tokens by the runner as Wan
    /// pads them; any length is accepted), `timestep` = 1000·σ. Inputs are converted to the
    /// compute dtype; [`WanDit::finish`] returns the latent's dtype.
    pub fn prepare(&self, latent: &Tensor, context: &Tensor, timestep: f64) -> Result<State> {
        self.prepare_frames(latent, context, timestep, 0)
    }

    /// [`WanDit::prepare`] with the first `clean_frames` latent frames holding given content
    /// (Wan 2.2 TI2V's init image): their tokens are embedded at timestep 0, the others at
    /// `timestep` — the per-token timesteps of Wan 2.2's `textimage2video.py` and diffusers'
    /// `expand_timesteps` (`mask · t` per token, the mask 0 on frame 0). The time MLPs run
    /// once per distinct timestep and the blocks modulate each run of tokens with its own
    /// table ([`Block::forward_runs`]), which is what a per-token table computes.
    pub fn prepare_frames(
        &self,
        latent: &Tensor,
        context: &Tensor,
        timestep: f64,
        clean_frames: usize,
    ) -> Result<State> {
        let (_, c, t, _, _) = latent.dims5()?;
        let (bc, _, width) = context.dims3()?;
        if c != self.cfg.in_dim {
            bail!(
                "Wan latent has {c} channels, the model expects {}",
                self.cfg.in_dim
            )
        }
        if bc != 1 {
            bail!("Wan runs one job at a time: context batch size {bc}, expected 1")
        }
        if width != self.cfg.text_dim {
            bail!(
                "Wan text states have width {width}, the model expects {} (umT5 hidden size)",
                self.cfg.text_dim
            )
        }
        if clean_frames > t {
            bail!("Wan: {clean_frames} clean latent frames asked of a latent of {t} frames")
        }
        let out_dtype = latent.dtype();
        let (patches, grid) = embed::patchify(&latent.to_dtype(self.dtype)?, self.cfg.patch_size)?;
        let x = patches.apply(&self.patch_embedding)?;
        let ctx = context
            .to_dtype(self.dtype)?
            .squeeze(0)?
            .apply(&self.text_embedding)?;
        // Runs of tokens (in (t, h, w) order) and their timesteps.
        let per_frame = grid[1] * grid[2];
        let pt = self.cfg.patch_size[0];
        if !clean_frames.is_multiple_of(pt) {
            bail!("Wan: {clean_frames} clean latent frames is not a multiple of the temporal patch {pt}")
        }
        let clean = clean_frames / pt * per_frame;
        let total = grid.iter().product::<usize>();
        let runs: Vec<(usize, f64)> = [(clean, 0.0), (total - clean, timestep)]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .collect();
        let (mut temb, mut e0) = (Vec::new(), Vec::new());
        for (n, ts) in runs {
            let te = embed::timestep_embedding(ts, self.cfg.freq_dim, &self.device)?
                .apply(&self.time_embedding)?
                .to_dtype(self.dtype)?;
            let e = te
                .silu()?
                .apply(&self.time_projection)?
                .to_dtype(DType::F32)?
                .reshape((6, self.cfg.dim))?;
            temb.push((n, te));
            e0.push((n, e));
        }
        let (cos, sin) = embed::rope_table(grid, self.cfg.rope_axes(), &self.device)?;
        Ok(State {
            x,
            ctx,
            temb,
            e0,
            cos,
            sin,
            grid,
            out_dtype,
            next_unit: 0,
        })
    }

    /// Runs a built block on one evaluation's state. Blocks must run in unit order.
    pub fn run_block(&self, block: &Block, state: &mut State) -> Result<()> {
        if state.next_unit >= self.cfg.num_layers {
            bail!(
                "Wan units out of order: all {} blocks already ran; the next step is finish()",
                self.cfg.num_layers
            )
        }
        state.x = block.forward_runs(&state.x, &state.ctx, &state.e0, &state.cos, &state.sin)?;
        state.next_unit += 1;
        Ok(())
    }

    /// Builds unit `index` from `vb` and runs it on `state`.
    pub fn run_unit(&self, index: usize, vb: VarBuilder, state: &mut State) -> Result<()> {
        if index != state.next_unit {
            bail!(
                "Wan unit {index} run out of order: the next unit is {}",
                state.next_unit
            )
        }
        let block = Self::build_unit(&self.cfg, index, vb)?;
        self.run_block(&block, state)
    }

    /// The head: velocity `[1, out_dim, T, h, w]` in the dtype of the latent given to
    /// [`WanDit::prepare`].
    pub fn finish(&self, state: State) -> Result<Tensor> {
        let n = self.cfg.num_layers;
        if state.next_unit != n {
            bail!("Wan finish() after {} of {n} blocks", state.next_unit)
        }
        let out = self.head.forward_runs(&state.x, &state.temb)?;
        embed::unpatchify(&out, state.grid, self.cfg.patch_size)?.to_dtype(state.out_dtype)
    }

    /// A whole forward pass: `unit_weights(i)` supplies unit `i`'s `VarBuilder`.
    pub fn forward<'a>(
        &self,
        latent: &Tensor,
        context: &Tensor,
        timestep: f64,
        unit_weights: &mut dyn FnMut(usize) -> Result<VarBuilder<'a>>,
    ) -> Result<Tensor> {
        let mut state = self.prepare(latent, context, timestep)?;
        for i in 0..self.cfg.num_layers {
            self.run_unit(i, unit_weights(i)?, &mut state)?;
        }
        self.finish(state)
    }
}

impl DiffusionModel for WanDit {
    type Config = Config;
    type Block = Block;
    type State = State;

    const FAMILY: Family = Family::Wan;

    fn infer_config(shape_of: ShapeOf, meta: &BTreeMap<String, String>) -> Result<Config> {
        Config::infer(shape_of, meta)
    }

    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        WanDit::new(cfg, vb)
    }

    fn units(cfg: &Config) -> Vec<String> {
        WanDit::units(cfg)
    }

    fn build_unit(cfg: &Config, index: usize, vb: VarBuilder) -> Result<Block> {
        WanDit::build_unit(cfg, index, vb)
    }

    /// `[1, out_dim, (frames − 1)/4 + 1, height/s, width/s]` with the VAE's spatial stride `s`:
    /// 8 for the Wan 2.1 VAE's 16 channels, 16 for the Wan 2.2 VAE's 48 (TI2V-5B). The noisy
    /// latent alone, without an image-to-video model's conditioning channels.
    fn latent_shape(cfg: &Config, width: u32, height: u32, frames: u32) -> Vec<usize> {
        let [st, sh, sw] = cfg.vae_stride();
        vec![
            1,
            cfg.out_dim,
            (frames.max(1) as usize - 1) / st + 1,
            height as usize / sh,
            width as usize / sw,
        ]
    }

    /// The VAE's spatial stride times the patch: 16 (Wan 2.1 VAE), 32 (Wan 2.2 VAE, TI2V-5B).
    fn size_multiple(cfg: &Config) -> u32 {
        let [_, sh, _] = cfg.vae_stride();
        (sh * cfg.patch_size[1].max(cfg.patch_size[2])) as u32
    }

    /// umT5-XXL states of `text_len` (512) tokens, masked and zero-padded; no pooled vector.
    fn text_needs(cfg: &Config) -> TextNeeds {
        TextNeeds {
            context: Family::UmT5,
            context_tokens: cfg.text_len,
            context_dim: cfg.text_dim,
            masked: true,
            pooled: None,
        }
    }

    /// ComfyUI's `ModelSamplingDiscreteFlow` with multiplier 1000 (timestep = 1000·σ) and
    /// Wan's own text-to-video shift, 5 (`generate.py`), or the manifest's `shift`.
    fn model_sampling(
        _cfg: &Config,
        _width: u32,
        _height: u32,
        shift: Option<f64>,
    ) -> std::result::Result<ModelSampling, SampleError> {
        ModelSampling::wan(shift.unwrap_or(WAN_T2V_SHIFT))
    }

    /// Wan 2.2 A14B's switch (`wan/configs/wan_{t2v,i2v}_A14B.py`, diffusers'
    /// `boundary_ratio`): 0.875 for text-to-video experts (16 latent channels in), 0.900 for
    /// image-to-video ones (36: latent, mask and image latent); none for TI2V-5B (48), which
    /// has no experts.
    fn boundary(cfg: &Config) -> Option<f64> {
        match cfg.in_dim {
            config::LATENT_CHANNELS => Some(0.875),
            config::WAN22_LATENT_CHANNELS => None,
            _ => Some(0.9),
        }
    }

    /// Wan 2.2 TI2V-5B (48 latent channels): an init image is latent frame 0.
    fn first_frame_conditioning(cfg: &Config) -> bool {
        cfg.first_frame_conditioning()
    }

    fn latent_channels(cfg: &Config) -> usize {
        cfg.out_dim
    }

    /// 20 for Wan 2.2 A14B image-to-video experts (mask and image latent), else 0.
    fn condition_channels(cfg: &Config) -> usize {
        cfg.condition_channels()
    }

    /// [`i2v::image_condition`]: the first-frame mask, then the conditioning video's latent.
    fn image_condition(cfg: &Config, encoded: &Tensor) -> Result<Tensor> {
        if cfg.condition_channels() != config::I2V_CONDITION_CHANNELS {
            bail!("this Wan model is text-to-video: it takes no image conditioning")
        }
        i2v::image_condition(encoded)
    }

    fn prepare(&self, inputs: &StepInputs) -> Result<State> {
        if inputs.guidance.is_some() {
            bail!("Wan has no distilled guidance embedding: it takes no guidance value")
        }
        if inputs.pooled.is_some() {
            bail!("Wan takes no pooled text vector")
        }
        if inputs.clean_frames > 0 && !self.cfg.first_frame_conditioning() {
            bail!("this Wan model takes no given first frame (only Wan 2.2 TI2V-5B does)")
        }
        WanDit::prepare_frames(
            self,
            inputs.latent,
            inputs.context,
            inputs.timestep,
            inputs.clean_frames,
        )
    }

    fn run_block(&self, block: &Block, state: &mut State) -> Result<()> {
        WanDit::run_block(self, block, state)
    }

    fn finish(&self, state: State) -> Result<Tensor> {
        WanDit::finish(self, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::spec::diffusion_layout;
    use crate::models::tiny;

    /// The tiny model's random weights rounded to bf16, so that an f32 and a bf16 model hold
    /// the same values.
    fn weights() -> std::collections::HashMap<String, Tensor> {
        let layout = diffusion_layout::<WanDit>(&Config::tiny()).unwrap();
        tiny::weights_for(&layout, 7)
            .unwrap()
            .into_iter()
            .map(|(k, t)| (k, t.to_dtype(DType::BF16).unwrap()))
            .collect()
    }

    #[test]
    fn time_embedding_and_modulation_are_f32_islands() -> Result<()> {
        let cfg = Config::tiny();
        let dev = Device::Cpu;
        let latent = Tensor::zeros((1, 16, 1, 2, 2), DType::F32, &dev)?;
        let ctx = Tensor::zeros((1, 3, 32), DType::F32, &dev)?;
        let state = |dtype| -> Result<State> {
            let vb = VarBuilder::from_tensors(weights(), dtype, &dev);
            WanDit::new(&cfg, vb)?.prepare(&latent, &ctx, 651.3)
        };
        let (s32, s16) = (state(DType::F32)?, state(DType::BF16)?);
        // bf16: the time MLP runs in f32 and its output is rounded once, as diffusers does.
        let (t16, t32) = (&s16.temb[0].1, &s32.temb[0].1);
        assert_eq!(t16.dtype(), DType::BF16);
        assert_eq!(
            t16.to_dtype(DType::F32)?.to_vec2::<f32>()?,
            t32.to_dtype(DType::BF16)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?
        );
        // The time projection reaches the blocks in f32.
        assert_eq!(s16.e0.len(), 1);
        assert_eq!(s16.e0[0].1.dtype(), DType::F32);
        assert_eq!(s16.e0[0].1.dims(), &[6, 32]);
        assert_eq!(s16.x.dtype(), DType::BF16);
        Ok(())
    }
}
