//! The loaded diffusion model and VAE of a pipeline, behind two object-safe traits
//! ([`Denoiser`], [`Codec`]) that the runner (`denoise`) is written against. Each has one
//! generic implementation over the family traits of [`crate::models::spec`], so a family's
//! model code is plugged in, never a copy of the runner. [`header`], [`load_diffusion`] and
//! [`load_vae`] are the one place a [`Family`] is mapped to its model code.
//!
//! A [`Denoiser::evaluate`] is one engine pass: each evaluation is prepared (resident
//! embeddings), every fetched unit is built once and run over every evaluation in turn, and
//! each is finished (resident head). An evaluation that fails fails alone; an engine error
//! fails the pass. [`Codec`] does the same for the VAE's encoder and decoder units.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::models::{candle_dtype, infer_err, load_parts, opened, Ctx, Eng};
use crate::exec::distribute::Target;
use crate::exec::load::ModelFile;
use crate::exec::{Event, ExecError, PassStats};
use crate::family::Family;
use crate::manifest::{Job, Model};
use crate::models::spec::{self, Autoencoder, DiffusionModel, StepInputs, TextNeeds};
use crate::models::{flux, vae, wan, wan_vae};
use crate::sample::ModelSampling;

/// What a diffusion model's file header says, before anything is loaded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Header {
    pub text: TextNeeds,
    /// `dev`/`schnell` for FLUX.
    pub variant: Option<&'static str>,
    /// The default expert switch (`DiffusionModel::boundary`).
    pub boundary: Option<f64>,
    /// Channels of image conditioning (`DiffusionModel::condition_channels`): image-to-video
    /// models have some and need an init image; 0 for the rest.
    pub condition_channels: usize,
    /// Whether an init image is the latent's first frame
    /// (`DiffusionModel::first_frame_conditioning`, Wan 2.2 TI2V-5B).
    pub first_frame: bool,
    /// The latent channels the model denoises (`DiffusionModel::latent_channels`): its VAE's.
    pub latent_channels: usize,
    /// Width and height must be multiples of this (`DiffusionModel::size_multiple`).
    pub size_multiple: u32,
}

/// A loaded diffusion model, as the runner drives it.
pub(crate) trait Denoiser {
    /// The model's name in the manifest.
    fn name(&self) -> &str;
    /// The compute device.
    fn device(&self) -> &Device;
    fn header(&self) -> Header;
    /// The model's config, for checking that two experts have the same shape.
    fn config_text(&self) -> String;
    /// The latent shape of one of `job`'s outputs.
    fn latent_shape(&self, job: &Job) -> Vec<usize>;
    /// The model sampling for `job` (its size and `shift`).
    fn sampling(&self, job: &Job) -> Result<ModelSampling, String>;
    /// The distilled-guidance input for `job`, if the model takes one.
    fn guidance(&self, job: &Job) -> Option<f64>;
    /// The image conditioning from the conditioning video's latent
    /// (`DiffusionModel::image_condition`).
    fn image_condition(&self, encoded: &Tensor) -> Result<Tensor, String>;
    /// One engine pass over every input; one result (the model output) per input, in order.
    fn evaluate(
        &mut self,
        inputs: &[StepInputs<'_>],
    ) -> Result<(Vec<Result<Tensor, String>>, PassStats), ExecError>;
}

/// Frames `[F, 3, H, W]` decoded from one latent, and the seconds the decode took.
pub(crate) type Decoded = Result<(Tensor, f64), String>;

/// A loaded VAE.
pub(crate) trait Codec {
    fn name(&self) -> &str;
    fn device(&self) -> &Device;
    fn dtype(&self) -> candle_core::DType;
    /// One encoder pass: the latent (model space) of each given pixel tensor `[F, 3, H, W]`.
    fn encode(
        &mut self,
        pixels: &[Option<Tensor>],
    ) -> Result<Vec<Option<Result<Tensor, String>>>, ExecError>;
    /// One decoder pass: frames `[F, 3, H, W]` of each given latent, with the seconds each
    /// decode took.
    fn decode(&mut self, latents: &[Option<Tensor>]) -> Result<Vec<Option<Decoded>>, ExecError>;
}

/// The file's metadata as strings: safetensors `__metadata__` / GGUF key-values, and the keys
/// of a `config.json` beside the file (diffusers writes one per component folder), the
/// file's own values winning.
pub(crate) fn file_meta(mf: &ModelFile) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    if let Some(dir) = mf.path.parent() {
        if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&text) {
                for (k, v) in map {
                    let s = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    meta.insert(k, s);
                }
            }
        }
    }
    for (k, v) in mf.file.metadata() {
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        meta.insert(k.clone(), text);
    }
    meta
}

fn config_of<M: DiffusionModel>(model: &Model, mf: &ModelFile) -> Result<M::Config, ExecError> {
    let shape_of = |n: &str| mf.shape_of(n);
    let cfg = M::infer_config(&shape_of, &file_meta(mf)).map_err(|e| infer_err(model, e))?;
    if let (Some(want), Some(got)) = (model.variant, M::variant(&cfg)) {
        if want.name() != got {
            return Err(infer_err(
                model,
                format!(
                    "`variant = \"{want}\"`, but the weights are {} {got}",
                    M::FAMILY.label()
                ),
            ));
        }
    }
    Ok(cfg)
}

fn header_from<M: DiffusionModel>(cfg: &M::Config) -> Header {
    Header {
        text: M::text_needs(cfg),
        variant: M::variant(cfg),
        boundary: M::boundary(cfg),
        condition_channels: M::condition_channels(cfg),
        first_frame: M::first_frame_conditioning(cfg),
        latent_channels: M::latent_channels(cfg),
        size_multiple: M::size_multiple(cfg),
    }
}

fn header_of<M: DiffusionModel>(model: &Model) -> Result<Header, ExecError> {
    let mf = ModelFile::open(model, candle_dtype(model.dtype))?;
    let cfg = config_of::<M>(model, &mf)?;
    Ok(header_from::<M>(&cfg))
}

fn vae_channels_of<V: Autoencoder>(model: &Model) -> Result<usize, ExecError> {
    let mf = ModelFile::open(model, candle_dtype(model.dtype))?;
    let shape_of = |n: &str| mf.shape_of(n);
    let cfg = V::infer_config(&shape_of, &file_meta(&mf)).map_err(|e| infer_err(model, e))?;
    Ok(V::latent_channels(&cfg))
}

fn not_runnable(model: &Model) -> ExecError {
    ExecError::Load(format!(
        "model `{}` is a {} model, which this version cannot run",
        model.name, model.family
    ))
}

/// The header of diffusion model `model` (reads the file's header only).
pub(crate) fn header(model: &Model) -> Result<Header, ExecError> {
    match model.family {
        Family::Flux => header_of::<flux::FluxDit>(model),
        Family::Wan => header_of::<wan::WanDit>(model),
        _ => Err(not_runnable(model)),
    }
}

/// The latent channels of VAE `model` (reads the file's header only).
fn vae_latent_channels(model: &Model) -> Result<usize, ExecError> {
    match model.family {
        Family::FluxVae => vae_channels_of::<vae::AutoEncoder>(model),
        Family::WanVae => vae_channels_of::<wan_vae::WanVae>(model),
        _ => Err(not_runnable(model)),
    }
}

/// What a VAE of `family` with `channels` latent channels is, for the pairing error.
fn vae_kind(family: Family, channels: usize) -> &'static str {
    match (family, channels) {
        (Family::WanVae, 16) => {
            "the Wan 2.1 VAE (wan_2.1_vae.safetensors: Wan 2.1 and Wan 2.2 A14B)"
        }
        (Family::WanVae, 48) => "the Wan 2.2 VAE (wan2.2_vae.safetensors: Wan 2.2 TI2V-5B only)",
        (Family::FluxVae, _) => "a FLUX autoencoder",
        _ => "a VAE",
    }
}

/// That VAE `vae` encodes to as many latent channels as diffusion model `dit` denoises
/// (`dit_channels`, from its header; the VAE's header is read here, not its weights): a Wan
/// 2.2 VAE (48) with a Wan 2.1 or A14B model (16), or the reverse, is refused naming both
/// models, both files, what the VAE is and which VAE the model needs.
pub(crate) fn check_vae_pairing(
    dit: &Model,
    dit_channels: usize,
    vae: &Model,
) -> Result<(), ExecError> {
    let vae_channels = vae_latent_channels(vae)?;
    if dit_channels == vae_channels {
        return Ok(());
    }
    let want = match (dit.family, dit_channels) {
        (Family::Wan, 48) => " (Wan 2.2 TI2V-5B: the Wan 2.2 VAE, wan2.2_vae.safetensors)",
        (Family::Wan, _) => " (Wan 2.1 and Wan 2.2 A14B: the Wan 2.1 VAE, wan_2.1_vae.safetensors)",
        _ => "",
    };
    Err(ExecError::Load(format!(
        "model `{}` ({}) denoises {dit_channels}-channel latents, but the pipeline's VAE `{}` ({}) is {} with {vae_channels}-channel latents: give the pipeline the VAE its diffusion model was trained with{want}",
        dit.name,
        dit.file.display(),
        vae.name,
        vae.file.display(),
        vae_kind(vae.family, vae_channels),
    )))
}

/// Loads, patches and distributes diffusion model `name`.
pub(crate) fn load_diffusion(
    cx: &mut Ctx,
    name: &str,
    events: &mut dyn FnMut(Event),
) -> Result<Box<dyn Denoiser>, ExecError> {
    let model = cx.model(name)?.clone();
    match model.family {
        Family::Flux => Ok(Box::new(Diffusion::<flux::FluxDit>::load(
            cx, &model, events,
        )?)),
        Family::Wan => Ok(Box::new(Diffusion::<wan::WanDit>::load(
            cx, &model, events,
        )?)),
        _ => Err(not_runnable(&model)),
    }
}

/// Loads, patches and distributes VAE `name`.
pub(crate) fn load_vae(
    cx: &mut Ctx,
    name: &str,
    events: &mut dyn FnMut(Event),
) -> Result<Box<dyn Codec>, ExecError> {
    let model = cx.model(name)?.clone();
    match model.family {
        Family::FluxVae => Ok(Box::new(Vae::<vae::AutoEncoder>::load(cx, &model, events)?)),
        Family::WanVae => Ok(Box::new(Vae::<wan_vae::WanVae>::load(cx, &model, events)?)),
        _ => Err(not_runnable(&model)),
    }
}

/// A diffusion model of family `M`: resident part, its blocks in one engine.
struct Diffusion<M: DiffusionModel> {
    name: String,
    cfg: M::Config,
    model: M,
    engine: Eng,
    target: Target,
}

impl<M: DiffusionModel> Diffusion<M> {
    fn load(cx: &mut Ctx, model: &Model, events: &mut dyn FnMut(Event)) -> Result<Self, ExecError> {
        let mf = opened(model, events)?;
        let cfg = config_of::<M>(model, &mf)?;
        let needed = spec::diffusion_layout::<M>(&cfg).map_err(|e| infer_err(model, e))?;
        let units = M::units(&cfg);
        let mut parts = load_parts(cx, model, mf, &needed, &[units], events)?;
        let m = M::new(&cfg, parts.var_builder()).map_err(|e| infer_err(model, e))?;
        Ok(Diffusion {
            name: model.name.clone(),
            cfg,
            model: m,
            engine: parts.engines.remove(0),
            target: parts.target,
        })
    }

    fn failed(&self, e: impl std::fmt::Display) -> String {
        format!("{} `{}`: {e}", M::FAMILY.label(), self.name)
    }
}

impl<M: DiffusionModel> Denoiser for Diffusion<M> {
    fn name(&self) -> &str {
        &self.name
    }

    fn device(&self) -> &Device {
        &self.target.device
    }

    fn header(&self) -> Header {
        header_from::<M>(&self.cfg)
    }

    fn image_condition(&self, encoded: &Tensor) -> Result<Tensor, String> {
        M::image_condition(&self.cfg, encoded).map_err(|e| self.failed(e))
    }

    fn config_text(&self) -> String {
        format!("{:?}", self.cfg)
    }

    fn latent_shape(&self, job: &Job) -> Vec<usize> {
        M::latent_shape(&self.cfg, job.width, job.height, job.frames)
    }

    fn sampling(&self, job: &Job) -> Result<ModelSampling, String> {
        M::model_sampling(&self.cfg, job.width, job.height, job.shift).map_err(|e| e.to_string())
    }

    fn guidance(&self, job: &Job) -> Option<f64> {
        M::guidance(&self.cfg, job.guidance)
    }

    fn evaluate(
        &mut self,
        inputs: &[StepInputs<'_>],
    ) -> Result<(Vec<Result<Tensor, String>>, PassStats), ExecError> {
        let mut states: Vec<Result<M::State, String>> = inputs
            .iter()
            .map(|i| self.model.prepare(i).map_err(|e| self.failed(e)))
            .collect();
        let (cfg, model, name) = (&self.cfg, &self.model, &self.name);
        let failed = |e: candle_core::Error| format!("{} `{name}`: {e}", M::FAMILY.label());
        let pass = self.engine.pass(|i, w| -> Result<(), ExecError> {
            let block = M::build_unit(cfg, i, w.var_builder())?;
            for s in states.iter_mut() {
                if let Ok(st) = s {
                    if let Err(e) = model.run_block(&block, st) {
                        *s = Err(failed(e));
                    }
                }
            }
            Ok(())
        })?;
        let out = states
            .into_iter()
            .map(|s| s.and_then(|st| model.finish(st).map_err(failed)))
            .collect();
        Ok((out, pass))
    }
}

/// A VAE of family `V`: an engine for its encoder and one for its decoder (encoding happens
/// only for img2img), and its resident tensors.
struct Vae<V: Autoencoder> {
    name: String,
    cfg: V::Config,
    /// `decode_tile` of the manifest.
    tile: Option<usize>,
    encoder: Eng,
    decoder: Eng,
    resident: HashMap<String, Tensor>,
    target: Target,
}

impl<V: Autoencoder> Vae<V> {
    fn load(cx: &mut Ctx, model: &Model, events: &mut dyn FnMut(Event)) -> Result<Self, ExecError> {
        let mf = opened(model, events)?;
        let shape_of = |n: &str| mf.shape_of(n);
        let cfg = V::infer_config(&shape_of, &file_meta(&mf)).map_err(|e| infer_err(model, e))?;
        let needed = spec::vae_layout::<V>(&cfg).map_err(|e| infer_err(model, e))?;
        let groups = V::units().map(|u| vec![u.to_string()]);
        let mut parts = load_parts(cx, model, mf, &needed, &groups, events)?;
        let decoder = parts.engines.remove(1);
        let encoder = parts.engines.remove(0);
        Ok(Vae {
            name: model.name.clone(),
            cfg,
            tile: model.decode_tile.map(|t| t as usize),
            encoder,
            decoder,
            resident: parts.resident,
            target: parts.target,
        })
    }

    fn resident_vb(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(
            self.resident.clone(),
            self.target.dtype,
            &self.target.device,
        )
    }
}

impl<V: Autoencoder> Codec for Vae<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn device(&self) -> &Device {
        &self.target.device
    }

    fn dtype(&self) -> candle_core::DType {
        self.target.dtype
    }

    fn encode(
        &mut self,
        pixels: &[Option<Tensor>],
    ) -> Result<Vec<Option<Result<Tensor, String>>>, ExecError> {
        let mut out: Vec<Option<Result<Tensor, String>>> = vec![None; pixels.len()];
        if pixels.iter().all(Option::is_none) {
            return Ok(out);
        }
        let resident = self.resident_vb();
        let (cfg, name) = (&self.cfg, &self.name);
        self.encoder.pass(|_, w| -> Result<(), ExecError> {
            let enc = V::encoder(cfg, w.var_builder(), resident.clone())?;
            for (k, p) in pixels.iter().enumerate() {
                if let Some(p) = p {
                    out[k] =
                        Some(V::encode(&enc, p).map_err(|e| format!("VAE `{name}` encode: {e}")));
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    fn decode(&mut self, latents: &[Option<Tensor>]) -> Result<Vec<Option<Decoded>>, ExecError> {
        let mut out: Vec<Option<Decoded>> = vec![None; latents.len()];
        if latents.iter().all(Option::is_none) {
            return Ok(out);
        }
        let resident = self.resident_vb();
        let (cfg, name, tile) = (&self.cfg, &self.name, self.tile);
        let (device, dtype) = (&self.target.device, self.target.dtype);
        self.decoder.pass(|_, w| -> Result<(), ExecError> {
            let dec = V::decoder(cfg, w.var_builder(), resident.clone())?;
            for (k, z) in latents.iter().enumerate() {
                let Some(z) = z else { continue };
                let t = Instant::now();
                let frames = z
                    .to_device(device)
                    .and_then(|z| z.to_dtype(dtype))
                    .and_then(|z| V::decode(&dec, &z, tile))
                    .map_err(|e| format!("VAE `{name}` decode: {e}"));
                out[k] = Some(frames.map(|f| (f, t.elapsed().as_secs_f64())));
            }
            Ok(())
        })?;
        Ok(out)
    }
}
