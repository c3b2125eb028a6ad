//! The family seam: what the executor needs of a diffusion transformer family and of a VAE
//! family, as two traits. The executor's one runner (`exec::pipeline`) is written against
//! these traits only; FLUX and Wan implement them. Adding a family is implementing the
//! traits in `models/` and naming it in [`crate::family`], never copying the runner.
//!
//! A diffusion step for one model evaluation is
//! `prepare` (resident weights: embeddings) → one `run_block` per placement unit, in the order
//! of `units`, each block built by `build_unit` from the tensors the streaming engine hands
//! over → `finish` (resident: output head). The executor builds a unit's block once per fetch
//! and runs it over every evaluation of the batch in turn (every job, and each job's
//! conditional and unconditional half under classifier-free guidance), so a model evaluation
//! never sees its neighbours (docs/decisions.md §4).
//!
//! Shapes: latents are `[1, C, h, w]` for image families and `[1, C, T, h, w]` for video
//! families; VAEs decode to frames `[F, 3, H, W]` in [-1, 1] (F = 1 for images).

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::family::Family;
use crate::sample::{ModelSampling, SampleError};

/// A tensor's shape in the canonical layout, or `None` when the file does not hold it.
pub type ShapeOf<'a> = &'a dyn Fn(&str) -> Option<Vec<usize>>;

/// What one model evaluation receives besides the weights.
#[derive(Debug, Clone, Copy)]
pub struct StepInputs<'a> {
    /// The latent being denoised, in the sampler's dtype (f32): `[1, C, h, w]` or
    /// `[1, C, T, h, w]`; for an image-to-video model, followed on the channel axis by the
    /// job's image conditioning ([`DiffusionModel::condition_channels`]).
    pub latent: &'a Tensor,
    /// Text hidden states `[1, L, D]` (T5-XXL for FLUX, umT5-XXL for Wan).
    pub context: &'a Tensor,
    /// Pooled text vector `[1, D]` (CLIP-L for FLUX); `None` for families without one.
    pub pooled: Option<&'a Tensor>,
    /// The model's own timestep, `ModelSampling::timestep(σ)`: σ for FLUX, 1000·σ for Wan.
    pub timestep: f64,
    /// Distilled guidance (FLUX dev); `None` otherwise.
    pub guidance: Option<f64>,
    /// Leading latent frames that hold given content rather than noise (Wan 2.2 TI2V-5B's init
    /// image, [`DiffusionModel::first_frame_conditioning`]): the model embeds their tokens at
    /// timestep 0. 0 for every other model and job.
    pub clean_frames: usize,
}

/// Which text encoding a family consumes, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextNeeds {
    /// The encoder whose hidden states are the context (`t5`, `umt5`), its token length and
    /// the width the model expects.
    pub context: Family,
    pub context_tokens: usize,
    pub context_dim: usize,
    /// Whether the context encoder runs with an attention mask over the real tokens and its
    /// states past the prompt's length are zeroed (Wan, as its reference pipeline does), or
    /// over all padded tokens unmasked (FLUX).
    pub masked: bool,
    /// The encoder whose pooled output is the vector input (`clip-l` for FLUX), if any, and
    /// the vector's width.
    pub pooled: Option<(Family, usize)>,
}

/// A diffusion transformer family, written for block streaming.
pub trait DiffusionModel: Sized {
    /// Hyper-parameters, inferred from a checkpoint's shapes.
    type Config: Clone + std::fmt::Debug + PartialEq;
    /// A block built from one unit's tensors; cheap (reference-counted tensors).
    type Block;
    /// One model evaluation's activations between units.
    type State;

    const FAMILY: Family;

    /// The config from the canonical tensor shapes of a file (plus `meta`: the file's
    /// string metadata and a `config.json` beside it, flattened to `key → value`).
    fn infer_config(shape_of: ShapeOf, meta: &BTreeMap<String, String>) -> Result<Self::Config>;
    /// The resident part (embeddings, output head) from a `VarBuilder` over the resident
    /// tensors under their canonical names; its dtype is the compute dtype.
    fn new(cfg: &Self::Config, vb: VarBuilder) -> Result<Self>;
    /// Placement units in execution order, named as [`Family::unit_of`] names them.
    fn units(cfg: &Self::Config) -> Vec<String>;
    /// Builds unit `index` from `vb`, whose names are relative to the unit.
    fn build_unit(cfg: &Self::Config, index: usize, vb: VarBuilder) -> Result<Self::Block>;
    /// The latent channels the model denoises (and predicts): those of the VAE it was
    /// trained with.
    fn latent_channels(cfg: &Self::Config) -> usize;
    /// The latent shape of one job: `[1, C, h, w]` or `[1, C, T, h, w]` (the noisy latent
    /// the sampler denoises, without image conditioning).
    fn latent_shape(cfg: &Self::Config, width: u32, height: u32, frames: u32) -> Vec<usize>;
    /// The pixels one token covers per side for weights of `cfg`: a job's width and height must
    /// be multiples of it. The family's own ([`Family::size_multiple`], which manifest
    /// validation checks) unless the weights need more (Wan 2.2 TI2V-5B: 32).
    fn size_multiple(_cfg: &Self::Config) -> u32 {
        Self::FAMILY.size_multiple()
    }
    /// The text encoders the family needs (`pooled` only if the config uses one). Their
    /// families are those of [`Family::companions`].
    fn text_needs(cfg: &Self::Config) -> TextNeeds;
    /// How σ maps to the model's timestep, and the σ table schedulers pick from, for a job of
    /// `width × height`; `shift` is the manifest's `shift` when given.
    fn model_sampling(
        cfg: &Self::Config,
        width: u32,
        height: u32,
        shift: Option<f64>,
    ) -> std::result::Result<ModelSampling, SampleError>;
    /// The distilled-guidance input for a job's `guidance` value, if the model takes one.
    fn guidance(_cfg: &Self::Config, _guidance: f64) -> Option<f64> {
        None
    }
    /// The variant the weights are (FLUX: `dev`/`schnell`), when the family has variants; a
    /// manifest's `variant` must agree with it.
    fn variant(_cfg: &Self::Config) -> Option<&'static str> {
        None
    }

    /// For a family whose models come as two experts taking turns (Wan 2.2 A14B: high- and
    /// low-noise), the default switch for weights of `cfg`, as a fraction of 1000 timesteps:
    /// the high-noise expert denoises the steps whose timestep is at least `1000 · boundary`.
    /// `None`: the family has no experts.
    fn boundary(_cfg: &Self::Config) -> Option<f64> {
        None
    }

    /// Image-to-video models: the channels of image conditioning the model takes after the
    /// noisy latent (Wan 2.2 A14B I2V: 20); 0 for models without (the default). For such a
    /// model the runner VAE-encodes the *conditioning video* of a job — its init image as the
    /// first frame, zero frames after, as many frames as the job makes — hands that latent
    /// to [`DiffusionModel::image_condition`], and gives every evaluation the noisy latent
    /// followed by the result on the channel axis ([`StepInputs::latent`]).
    fn condition_channels(_cfg: &Self::Config) -> usize {
        0
    }
    /// The image conditioning `[1, condition_channels, T, h, w]` (f32) from the normalised VAE
    /// latent `[1, C, T, h, w]` of the conditioning video.
    fn image_condition(_cfg: &Self::Config, _encoded: &Tensor) -> Result<Tensor> {
        candle_core::bail!("this model takes no image conditioning")
    }

    /// Image-to-video by the first frame (Wan 2.2 TI2V-5B): the model takes an init image as
    /// the latent's first frame, not as extra channels. For such a model a job may have an
    /// init image (else it is text-to-video); the runner VAE-encodes the image alone, puts
    /// its latent in frame 0 of every evaluation's input and of the final latent (the
    /// sampler's own frame 0 is never used), and marks the frame clean
    /// ([`StepInputs::clean_frames`] = 1), as diffusers' `WanImageToVideoPipeline` with
    /// `expand_timesteps` and Wan 2.2's `textimage2video.py` do. `false` by default.
    fn first_frame_conditioning(_cfg: &Self::Config) -> bool {
        false
    }

    /// Embeds one evaluation's inputs.
    fn prepare(&self, inputs: &StepInputs) -> Result<Self::State>;
    /// Runs a built block on one evaluation's state; blocks run in unit order.
    fn run_block(&self, block: &Self::Block, state: &mut Self::State) -> Result<()>;
    /// The output head: the model output (velocity for flow models) in the latent's shape
    /// and in the dtype of the latent given to `prepare`.
    fn finish(&self, state: Self::State) -> Result<Tensor>;
}

/// A VAE family: an encoder unit and a decoder unit (each streamed or resident as a whole),
/// plus resident tensors outside both (Wan's `conv1`/`conv2`; none for FLUX).
pub trait Autoencoder: Sized {
    type Config: Clone + std::fmt::Debug + PartialEq;
    type Encoder;
    type Decoder;

    const FAMILY: Family;

    fn infer_config(shape_of: ShapeOf, meta: &BTreeMap<String, String>) -> Result<Self::Config>;
    /// The latent channels the VAE encodes to (a pipeline's diffusion model must denoise as
    /// many: [`DiffusionModel::latent_channels`]).
    fn latent_channels(cfg: &Self::Config) -> usize;
    /// The two unit names: `["encoder", "decoder"]`.
    fn units() -> [&'static str; 2];
    /// Builds the encoder from its unit's tensors (`unit`, relative names) and the resident
    /// tensors (`resident`, canonical names).
    fn encoder(cfg: &Self::Config, unit: VarBuilder, resident: VarBuilder)
        -> Result<Self::Encoder>;
    fn decoder(cfg: &Self::Config, unit: VarBuilder, resident: VarBuilder)
        -> Result<Self::Decoder>;
    /// Pixels `[F, 3, H, W]` in [-1, 1] → the posterior mean in the diffusion model's latent
    /// space (scaled/normalised as the DiT expects), `[1, C, h, w]` or `[1, C, T, h, w]`.
    fn encode(enc: &Self::Encoder, pixels: &Tensor) -> Result<Tensor>;
    /// A latent in the diffusion model's space → frames `[F, 3, H, W]` in [-1, 1] (not
    /// clamped). `tile`: tiled decoding with tiles of this many latent pixels, if the family
    /// supports it.
    fn decode(dec: &Self::Decoder, latent: &Tensor, tile: Option<usize>) -> Result<Tensor>;
}

/// Names and shapes of a checkpoint of diffusion family `M` for `cfg`, taken from the model
/// constructors themselves (see [`super::tiny::ShapeRecorder`]): what a file must hold.
pub fn diffusion_layout<M: DiffusionModel>(
    cfg: &M::Config,
) -> Result<BTreeMap<String, Vec<usize>>> {
    super::tiny::ShapeRecorder::record(candle_core::DType::F32, |vb| {
        M::new(cfg, vb.clone())?;
        for (i, unit) in M::units(cfg).iter().enumerate() {
            M::build_unit(cfg, i, vb.pp(unit))?;
        }
        Ok(())
    })
}

/// Names and shapes of a checkpoint of VAE family `V` for `cfg`.
pub fn vae_layout<V: Autoencoder>(cfg: &V::Config) -> Result<BTreeMap<String, Vec<usize>>> {
    super::tiny::ShapeRecorder::record(candle_core::DType::F32, |vb| {
        let [enc, dec] = V::units();
        V::encoder(cfg, vb.pp(enc), vb.clone())?;
        V::decoder(cfg, vb.pp(dec), vb.clone())?;
        Ok(())
    })
}
