//! What every model load shares ([`Ctx`]: the run's inputs and opened devices; [`load_parts`]:
//! load → patch → distribute with the model's placement units grouped into engines) and the
//! text encoders as the executor holds them. The diffusion model and the VAE are loaded by
//! `family`, generically over their family traits.
//!
//! | model | config | units (engines) |
//! |---|---|---|
//! | diffusion model | `DiffusionModel::infer_config` | its blocks (one engine) |
//! | VAE | `Autoencoder::infer_config` | `encoder` and `decoder` (one engine each: encoding happens only for img2img) |
//! | T5 / umT5 | [`t5_config`] | `encoder.block.*` (one engine) |
//! | CLIP-L | [`clip_config`] | `text_model.encoder.layers.*` (one engine) |

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType as CDType, Device, Tensor};
use candle_nn::VarBuilder;

use super::PipelineOptions;
use crate::device::DeviceName;
use crate::exec::distribute::{self, compute_device, Target, UnitHome, UnitSpec};
use crate::exec::engine::{Backend, Engine};
use crate::exec::load::ModelFile;
use crate::exec::phase::{Phase, Phases};
use crate::exec::{Event, ExecError};
use crate::family::Family;
use crate::hardware::Hardware;
use crate::inventory::RESIDENT;
use crate::manifest::{ComputeDtype, Manifest, Model};
use crate::models::tokenize::{ClipTokenizer, T5Tokenizer};
use crate::models::{clip, t5};
use crate::plan::{ModelPlan, Plan};

/// A streaming engine as the pipeline holds it.
pub(crate) type Eng = Engine<Box<dyn Backend>>;

/// What every model load needs: the run's inputs and the compute devices opened so far.
pub(crate) struct Ctx {
    pub manifest: Arc<Manifest>,
    pub plan: Arc<Plan>,
    pub hardware: Arc<Hardware>,
    pub options: PipelineOptions,
    pub cache_dir: PathBuf,
    devices: HashMap<DeviceName, Device>,
}

pub(crate) fn candle_dtype(d: ComputeDtype) -> CDType {
    match d {
        ComputeDtype::Bf16 | ComputeDtype::Fp8 => CDType::BF16,
        ComputeDtype::F16 => CDType::F16,
        ComputeDtype::F32 => CDType::F32,
    }
}

impl Ctx {
    pub fn new(
        manifest: Arc<Manifest>,
        plan: Arc<Plan>,
        hardware: Arc<Hardware>,
        options: PipelineOptions,
    ) -> Self {
        let cache_dir = options
            .cache_dir
            .clone()
            .unwrap_or_else(|| manifest.settings.output_root.join(".mgpu-cache"));
        Ctx {
            manifest,
            plan,
            hardware,
            options,
            cache_dir,
            devices: HashMap::new(),
        }
    }

    pub fn model(&self, name: &str) -> Result<&Model, ExecError> {
        self.manifest.models.get(name).ok_or_else(|| {
            ExecError::Other(format!(
                "the manifest has no model `{name}` (a bug in the executor)"
            ))
        })
    }

    /// The compute target of `model`: its device (opened once per run and shared by every
    /// model computing there) and compute dtype.
    pub fn target(&mut self, model: &Model) -> Result<Target, ExecError> {
        if !self.hardware.has(model.compute) && model.compute != DeviceName::Cpu {
            return Err(ExecError::Load(format!(
                "model `{}` computes on {}, which this machine does not have (devices: {})",
                model.name,
                model.compute,
                self.hardware.names()
            )));
        }
        let device = match self.devices.get(&model.compute) {
            Some(d) => d.clone(),
            None => {
                let d = compute_device(model.compute)
                    .map_err(|m| ExecError::Load(format!("model `{}`: {m}", model.name)))?;
                self.devices.insert(model.compute, d.clone());
                d
            }
        };
        Ok(Target {
            name: model.compute,
            device,
            dtype: candle_dtype(model.dtype),
        })
    }

    pub fn model_plan(&self, name: &str) -> Result<&ModelPlan, ExecError> {
        self.plan
            .models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| {
                ExecError::Load(format!(
                    "the plan has no entry for model `{name}`: plan the same manifest that runs"
                ))
            })
    }

    /// The home of `unit` of `model`: the override when the options give one, else the plan's.
    fn home(&self, model: &Model, mplan: &ModelPlan, unit: &str) -> Result<UnitHome, ExecError> {
        if let Some(h) = self
            .options
            .homes
            .get(&model.name)
            .and_then(|m| m.get(unit))
        {
            return Ok(*h);
        }
        let b = mplan.blocks.iter().find(|b| b.name == unit).ok_or_else(|| {
            ExecError::Load(format!(
                "model `{}`: the plan has no unit `{unit}` (its units: {}); was the plan made for another file?",
                model.name,
                mplan.blocks.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok(UnitHome::from_plan(b.home, mplan.compute))
    }
}

/// The resident tensors and engines of one loaded model.
pub(crate) struct Parts {
    pub resident: HashMap<String, Tensor>,
    pub engines: Vec<Eng>,
    pub target: Target,
}

impl Parts {
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(
            self.resident.clone(),
            self.target.dtype,
            &self.target.device,
        )
    }
}

/// Load → patch → distribute for `model`, whose file `mf` is open: checks that the file
/// holds `needed` (canonical name → shape), loads the LoRAs, and distributes the resident
/// tensors and the units of `groups` (one engine per group) per the plan.
pub(crate) fn load_parts(
    cx: &mut Ctx,
    model: &Model,
    mut mf: ModelFile,
    needed: &BTreeMap<String, Vec<usize>>,
    groups: &[Vec<String>],
    events: &mut dyn FnMut(Event),
) -> Result<Parts, ExecError> {
    let stage = |events: &mut dyn FnMut(Event), s: &str| {
        events(Event::Stage {
            model: model.name.clone(),
            stage: s.into(),
        })
    };
    let target = cx.target(model)?;
    let mplan = cx.model_plan(&model.name)?.clone();
    if mplan.compute != model.compute {
        return Err(ExecError::Load(format!(
            "model `{}`: the plan computes it on {}, the manifest on {}",
            model.name, mplan.compute, model.compute
        )));
    }
    mf.check(needed)?;
    stage(events, "patching");
    let t0 = std::time::Instant::now();
    mf.load_loras(&model.loras)?;
    let mut phases = Phases::default();
    phases.since(Phase::Patch, t0, 0);
    let mut by_unit = mf.by_unit(&needed.keys().cloned().collect::<BTreeSet<_>>());
    let resident = by_unit.remove(RESIDENT).unwrap_or_default();
    let mut specs = Vec::with_capacity(groups.len());
    for group in groups {
        let mut g = Vec::with_capacity(group.len());
        for unit in group {
            let tensors = by_unit.remove(unit).ok_or_else(|| {
                ExecError::Load(format!(
                    "model `{}`: unit `{unit}` has no tensors in {}",
                    model.name,
                    model.file.display()
                ))
            })?;
            g.push(UnitSpec {
                name: unit.clone(),
                home: cx.home(model, &mplan, unit)?,
                tensors,
            });
        }
        specs.push(g);
    }
    if let Some(unit) = by_unit.keys().next() {
        return Err(ExecError::Other(format!(
            "model `{}`: unit `{unit}` is not in any engine (a bug in the executor)",
            model.name
        )));
    }
    stage(events, "distributing");
    let slots = mplan.prefetch_slots as usize;
    let d = distribute::distribute(&mut mf, &resident, &specs, &target, slots, &cx.cache_dir)?;
    for n in mf.notes.drain(..) {
        events(Event::Note { message: n });
    }
    phases.merge(&d.phases);
    for e in phases.events(&model.name) {
        events(e);
    }
    let homes: Vec<String> = d.homes.iter().map(|(h, n)| format!("{n} {h}")).collect();
    let mut msg = format!(
        "model `{}`: units {} on {}",
        model.name,
        homes.join(", "),
        target.name
    );
    if d.slot_bytes > 0 {
        msg.push_str(&format!(
            "; {} prefetch slots hold {}",
            slots.max(1),
            crate::units::ByteSize(d.slot_bytes)
        ));
    }
    if d.spilled > 0 {
        msg.push_str(&format!(
            "; {} of patched or converted weights homed on disk written to a spill file in {}",
            crate::units::ByteSize(d.spilled),
            cx.cache_dir.display()
        ));
    }
    events(Event::Note { message: msg });
    events(Event::Loaded {
        model: model.name.clone(),
        measured: d.held.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
    });
    Ok(Parts {
        resident: d.resident,
        engines: d.engines,
        target,
    })
}

pub(crate) fn opened(model: &Model, events: &mut dyn FnMut(Event)) -> Result<ModelFile, ExecError> {
    events(Event::Stage {
        model: model.name.clone(),
        stage: "loading".into(),
    });
    let t0 = std::time::Instant::now();
    let mf = ModelFile::open(model, candle_dtype(model.dtype))?;
    events(Event::Phase {
        model: model.name.clone(),
        phase: Phase::Read,
        seconds: t0.elapsed().as_secs_f64(),
        bytes: 0,
    });
    Ok(mf)
}

pub(crate) fn infer_err(model: &Model, e: impl std::fmt::Display) -> ExecError {
    ExecError::Load(format!(
        "model `{}` ({}): {e}",
        model.name,
        model.file.display()
    ))
}

fn layout_map(v: Vec<(String, Vec<usize>)>) -> BTreeMap<String, Vec<usize>> {
    v.into_iter().collect()
}

/// T5's config from canonical shapes: widths from `shared.weight` (or its tied copy) and the
/// first block's projections, heads and buckets from block 0's relative-attention bias, the
/// block count by probing, per-block position bias (umT5) from block 1. The relative-attention
/// distance (128) and the norm epsilon (1e-6) are not stored; T5 v1.1 and umT5 use these.
pub(crate) fn t5_config(
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<t5::Config, String> {
    let need = |name: &str, rank: usize| -> Result<Vec<usize>, String> {
        match shape_of(name) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => Err(format!("T5 weights: `{name}` has shape {s:?}, expected rank {rank}")),
            None => Err(format!(
                "T5 weights: tensor `{name}` is missing (is this a T5 v1.1 encoder in the Hugging Face layout?)"
            )),
        }
    };
    let [shared, tied] = t5::EMBEDDING_NAMES;
    let emb = if shape_of(shared).is_some() {
        need(shared, 2)?
    } else {
        need(tied, 2)?
    };
    let (vocab_size, d_model) = (emb[0], emb[1]);
    let b0 = "encoder.block.0.layer";
    let inner = need(&format!("{b0}.0.SelfAttention.q.weight"), 2)?[0];
    let bias = need(
        &format!("{b0}.0.SelfAttention.relative_attention_bias.weight"),
        2,
    )?;
    let (buckets, num_heads) = (bias[0], bias[1]);
    let d_ff = need(&format!("{b0}.1.DenseReluDense.wi_0.weight"), 2)?[0];
    let num_layers = (0..)
        .take_while(|i| {
            shape_of(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")).is_some()
        })
        .count();
    if num_heads == 0 || inner % num_heads != 0 {
        return Err(format!(
            "T5 weights: attention width {inner} is not a multiple of the {num_heads} heads of the position bias"
        ));
    }
    Ok(t5::Config {
        vocab_size,
        d_model,
        d_kv: inner / num_heads,
        d_ff,
        num_layers,
        num_heads,
        relative_attention_num_buckets: buckets,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        per_layer_position_bias: shape_of(
            "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
        )
        .is_some(),
    })
}

/// CLIP-L's config from canonical shapes. The head count is not stored: the tiny model's
/// layout ([`clip::Config::tiny`]) has its own; otherwise heads are 64 wide, as in every
/// OpenAI/OpenCLIP text model (CLIP-L: 768 → 12 heads). `<|endoftext|>` is the last
/// vocabulary entry (49407 in CLIP's vocabulary); the activation is CLIP-L's quick GELU.
pub(crate) fn clip_config(
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<clip::Config, String> {
    let need = |name: &str| -> Result<Vec<usize>, String> {
        match shape_of(name) {
            Some(s) if s.len() == 2 => Ok(s),
            Some(s) => Err(format!("CLIP weights: `{name}` has shape {s:?}, expected rank 2")),
            None => Err(format!(
                "CLIP weights: tensor `{name}` is missing (is this a CLIP text model in the Hugging Face layout?)"
            )),
        }
    };
    let tok = need("text_model.embeddings.token_embedding.weight")?;
    let pos = need("text_model.embeddings.position_embedding.weight")?;
    let fc1 = need("text_model.encoder.layers.0.mlp.fc1.weight")?;
    let layers = (0..)
        .take_while(|i| {
            shape_of(&format!(
                "text_model.encoder.layers.{i}.self_attn.q_proj.weight"
            ))
            .is_some()
        })
        .count();
    let tiny = clip::Config::tiny();
    let mut cfg = clip::Config {
        vocab_size: tok[0],
        hidden_size: tok[1],
        intermediate_size: fc1[0],
        num_hidden_layers: layers,
        num_attention_heads: 0,
        max_position_embeddings: pos[0],
        layer_norm_eps: 1e-5,
        hidden_act: clip::Activation::QuickGelu,
        eos_token_id: tok[0].saturating_sub(1) as u32,
    };
    let like_tiny = clip::Config {
        num_attention_heads: tiny.num_attention_heads,
        ..cfg.clone()
    } == tiny;
    cfg.num_attention_heads = if like_tiny {
        tiny.num_attention_heads
    } else if cfg.hidden_size.is_multiple_of(64) && cfg.hidden_size > 0 {
        cfg.hidden_size / 64
    } else {
        return Err(format!(
            "CLIP weights: hidden size {} is not a multiple of 64, so the head count is unknown",
            cfg.hidden_size
        ));
    };
    Ok(cfg)
}

/// The T5 (or umT5) encoder with its tokenizer.
pub(crate) struct T5Model {
    pub name: String,
    /// umT5 (Wan's encoder): prompts are cleaned as Wan's pipeline cleans them.
    pub umt5: bool,
    pub enc: t5::T5Encoder,
    pub tokenizer: T5Tokenizer,
    pub engine: Eng,
}

impl T5Model {
    pub fn load(
        cx: &mut Ctx,
        name: &str,
        events: &mut dyn FnMut(Event),
    ) -> Result<Self, ExecError> {
        let model = cx.model(name)?.clone();
        let umt5 = model.family == Family::UmT5;
        // umT5: a tokenizer file, or (as ComfyUI saves umT5) the `spiece_model` tensor of the
        // weights file itself when the manifest names none.
        let tokenizer = if umt5 {
            let path = model
                .tokenizer
                .clone()
                .unwrap_or_else(|| model.file.clone());
            T5Tokenizer::umt5_from_file(path)
        } else {
            T5Tokenizer::from_file(tokenizer_path(&model)?)
        }
        .map_err(|e| infer_err(&model, e))?;
        let mf = opened(&model, events)?;
        let cfg = t5_config(|n| mf.shape_of(n)).map_err(|e| infer_err(&model, e))?;
        let mut needed = layout_map(t5::tensor_shapes(&cfg));
        let [shared, tied] = t5::EMBEDDING_NAMES;
        if !mf.has(shared) {
            if let Some(s) = needed.remove(shared) {
                needed.insert(tied.to_string(), s);
            }
        }
        let units = t5::units(&cfg);
        let mut parts = load_parts(cx, &model, mf, &needed, &[units], events)?;
        let enc =
            t5::T5Encoder::new(&cfg, parts.var_builder()).map_err(|e| infer_err(&model, e))?;
        Ok(T5Model {
            name: name.into(),
            umt5,
            enc,
            tokenizer,
            engine: parts.engines.remove(0),
        })
    }
}

/// The CLIP text model with its tokenizer.
pub(crate) struct ClipModel {
    pub name: String,
    pub model: clip::ClipTextModel,
    pub tokenizer: ClipTokenizer,
    pub engine: Eng,
}

impl ClipModel {
    pub fn load(
        cx: &mut Ctx,
        name: &str,
        events: &mut dyn FnMut(Event),
    ) -> Result<Self, ExecError> {
        let model = cx.model(name)?.clone();
        let tokenizer =
            ClipTokenizer::from_file(tokenizer_path(&model)?).map_err(|e| infer_err(&model, e))?;
        let mf = opened(&model, events)?;
        let cfg = clip_config(|n| mf.shape_of(n)).map_err(|e| infer_err(&model, e))?;
        // FLUX takes the pooled output without `text_projection`: it is not loaded.
        let mut needed = layout_map(clip::tensor_shapes(&cfg, None));
        let ids = "text_model.embeddings.position_ids";
        if let Some(s) = mf.shape_of(ids) {
            needed.insert(ids.into(), s);
        }
        let units = clip::units(&cfg);
        let mut parts = load_parts(cx, &model, mf, &needed, &[units], events)?;
        let m = clip::ClipTextModel::new(&cfg, parts.var_builder())
            .map_err(|e| infer_err(&model, e))?;
        Ok(ClipModel {
            name: name.into(),
            model: m,
            tokenizer,
            engine: parts.engines.remove(0),
        })
    }
}

fn tokenizer_path(model: &Model) -> Result<PathBuf, ExecError> {
    model.tokenizer.clone().ok_or_else(|| {
        ExecError::Load(format!(
            "model `{}`: a text encoder needs `tokenizer` (a tokenizer.json, or the original tokenizer files)",
            model.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(v: Vec<(String, Vec<usize>)>) -> impl Fn(&str) -> Option<Vec<usize>> {
        let m: BTreeMap<String, Vec<usize>> = v.into_iter().collect();
        move |n| m.get(n).cloned()
    }

    #[test]
    fn t5_configs_round_trip_through_their_layouts() {
        for cfg in [
            t5::Config::xxl(),
            t5::Config::umt5_xxl(),
            t5::Config::tiny(),
        ] {
            let got = t5_config(shapes(t5::tensor_shapes(&cfg))).unwrap();
            assert_eq!(got, cfg);
        }
        let e = t5_config(|_| None).unwrap_err();
        assert!(e.contains("`encoder.embed_tokens.weight`"), "{e}");
    }

    #[test]
    fn clip_configs_round_trip_through_their_layouts() {
        for cfg in [clip::Config::vit_l_14(), clip::Config::tiny()] {
            let got = clip_config(shapes(clip::tensor_shapes(&cfg, None))).unwrap();
            assert_eq!(got, cfg);
        }
        let odd = clip::Config {
            hidden_size: 100,
            ..clip::Config::vit_l_14()
        };
        let e = clip_config(shapes(clip::tensor_shapes(&odd, None))).unwrap_err();
        assert!(e.contains("multiple of 64"), "{e}");
    }
}
