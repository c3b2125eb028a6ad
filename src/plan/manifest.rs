//! From a validated manifest to a [`PlanRequest`]: which models the jobs need, their
//! inventories (weight-file headers only), the workload each model computes, and plan errors
//! turned back into diagnostics that point into the manifest.
//!
//! Used by `mgpu plan` and by the executor, so both plan exactly the same thing.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ExpertPair, Location, ModelRequest, PlanError, PlanErrors, PlanRequest, Workload};
use crate::alloc::Allocation;
use crate::family::Role;
use crate::inventory::{self, Inventory};
use crate::manifest::{Diagnostic, Diagnostics, FluxVariant, Manifest, Model};
use crate::sample::Sampler;
use crate::weights::{DType, TensorInfo};

/// The models that the manifest's jobs use, in a stable order: for each pipeline used (in
/// name order), its diffusion model, text encoders and VAE; each model once.
pub fn needed_models(m: &Manifest) -> Vec<&Model> {
    let mut names: Vec<&str> = Vec::new();
    for p in m.pipelines.values() {
        if !m.jobs.iter().any(|j| j.pipeline == p.name) {
            continue;
        }
        let all = std::iter::once(p.diffusion.as_str())
            .chain(p.low_noise.as_deref())
            .chain(p.text_encoders.iter().map(String::as_str))
            .chain(std::iter::once(p.vae.as_str()));
        for n in all {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names.iter().filter_map(|n| m.models.get(*n)).collect()
}

/// What `read_inventories_assuming` put in place of a missing weights file: per model name,
/// a sentence naming the layout assumed.
pub type Assumed = BTreeMap<String, String>;

/// Reads the header of every needed model's file. Errors point at the model's `file` key.
pub fn read_inventories(m: &Manifest) -> Result<BTreeMap<String, Arc<Inventory>>, Diagnostics> {
    read_inventories_with(m, false).map(|(i, _)| i)
}

/// [`read_inventories`] for planning before downloading (`mgpu plan`, issue 14): a model
/// whose file does not exist gets the known layout of its family, chosen by the file name
/// ([`assumed_inventory`]), and the returned [`Assumed`] says which. `mgpu run` never
/// assumes: it needs the weights.
pub fn read_inventories_assuming(
    m: &Manifest,
) -> Result<(BTreeMap<String, Arc<Inventory>>, Assumed), Diagnostics> {
    read_inventories_with(m, true)
}

fn read_inventories_with(
    m: &Manifest,
    assume: bool,
) -> Result<(BTreeMap<String, Arc<Inventory>>, Assumed), Diagnostics> {
    let mut assumed = Assumed::new();
    let mut out = BTreeMap::new();
    let mut diags = Diagnostics::default();
    for model in needed_models(m) {
        // LoRA files: their headers are read (and checked) now, so a corrupt LoRA fails
        // `plan`, not the first batch of `run`. One that is not there yet is fine when
        // planning before downloading.
        for (i, lora) in model.loras.iter().enumerate() {
            if assume && !lora.file.exists() {
                continue;
            }
            let problem = match crate::weights::WeightFile::open(&lora.file) {
                Ok(f) if f.tensors().is_empty() => Some("the file holds no tensors".to_string()),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = problem {
                diags.push(m.diagnostic_at(
                    &model.name,
                    &format!("loras.{i}.file"),
                    None,
                    format!("model `{}`: LoRA {}: {e}", model.name, lora.file.display()),
                    "`file` must name a LoRA safetensors file (kohya, diffusers/PEFT or ComfyUI names; docs/lora.md), relative to the manifest's folder",
                ));
            }
        }
        if assume && !model.file.exists() {
            if let Some((inv, what)) = assumed_inventory(model) {
                assumed.insert(
                    model.name.clone(),
                    format!(
                        "no file at {}: planned with the known layout of {what}, assumed from \
                         the family and the file name",
                        model.file.display()
                    ),
                );
                out.insert(model.name.clone(), Arc::new(inv));
                continue;
            }
        }
        match inventory::read(&model.file, Some(model.family)) {
            Ok(inv) => {
                out.insert(model.name.clone(), Arc::new(inv));
            }
            Err(e) => diags.push(m.diagnostic_at(
                &model.name,
                "file",
                None,
                format!("model `{}`: {e}", model.name),
                "`file` must name a safetensors or GGUF weight file of this family (PyTorch pickles are refused: convert them, docs/weights.md), relative to the manifest's folder",
            )),
        }
    }
    if diags.has_errors() {
        Err(diags)
    } else {
        Ok((out, assumed))
    }
}

/// The published layout a model's missing file most likely has, from its family and file
/// name, with a description: FLUX.1 dev or schnell (`schnell` in the name; bf16 as BFL
/// publishes it, fp8 or fp16 when the name says so; a GGUF of the file type its name says,
/// `Q8_0` … `Q2_K`, with the tensor types of city96's files: `inventory::gguf_layout`),
/// T5-XXL (fp16, or fp8 by name), CLIP-L (fp16), the FLUX autoencoder (f32), Wan 2.1 (`1.3B`
/// or `14B` in the name; bf16, fp8 by name, GGUF as FLUX), Wan 2.2 TI2V-5B (`ti2v` and `5B` in
/// the name). `None` for other families and file types: the file is needed.
pub fn assumed_inventory(model: &Model) -> Option<(Inventory, String)> {
    use crate::family::Family;
    use crate::inventory::gguf_layout::FileType;
    use crate::inventory::synthetic;
    let name = model
        .file
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let has = |k: &str| name.contains(k);
    let fp8 = has("fp8") || has("e4m3");
    let gguf = if name.ends_with(".gguf") {
        Some(FileType::in_file_name(&name)?)
    } else {
        None
    };
    let (dtype, dname) = if gguf.is_some() {
        (DType::BF16, "")
    } else if fp8 {
        (DType::F8_E4M3, "fp8")
    } else if has("fp16") || has("f16") {
        (DType::F16, "fp16")
    } else if has("fp32") || has("f32") {
        (DType::F32, "f32")
    } else {
        (DType::BF16, "bf16")
    };
    let (inv, what) = match model.family {
        Family::Flux => {
            // The manifest's `variant` wins over the file name.
            let schnell = match model.variant {
                Some(v) => v == FluxVariant::Schnell,
                None => has("schnell"),
            };
            let inv = if schnell {
                synthetic::flux_schnell(dtype)
            } else {
                synthetic::flux_dev(dtype)
            };
            (
                inv,
                if schnell {
                    "FLUX.1-schnell"
                } else {
                    "FLUX.1-dev"
                },
            )
        }
        Family::T5 if gguf.is_none() => {
            let d = if fp8 { DType::F8_E4M3 } else { DType::F16 };
            (synthetic::t5_xxl(d), "T5-XXL")
        }
        Family::ClipL if gguf.is_none() => (synthetic::clip_l(DType::F16), "CLIP-L"),
        Family::FluxVae if gguf.is_none() => {
            (synthetic::flux_vae(DType::F32), "the FLUX.1 autoencoder")
        }
        Family::Wan if has("ti2v") && has("5b") => (
            synthetic::wan_with_latent(dtype, 3072, 14336, 30, 48),
            "Wan 2.2 TI2V-5B",
        ),
        Family::Wan if has("1.3b") => (synthetic::wan(dtype, 1536, 8960, 30), "Wan 2.1 1.3B"),
        Family::Wan if has("14b") => (synthetic::wan(dtype, 5120, 13824, 40), "Wan 2.1 14B"),
        _ => return None,
    };
    let (inv, dt) = match gguf {
        Some(t) => (t.apply(&inv), t.to_string()),
        None => {
            let dt = match inv.tensors.first().map(|t| t.dtype) {
                Some(DType::F16) => "fp16",
                Some(DType::F32) => "f32",
                Some(DType::F8_E4M3) => "fp8",
                _ => dname,
            };
            (inv, dt.to_string())
        }
    };
    let gib = |inv: &Inventory| inv.total_bytes() as f64 / 1e9;
    let text = format!("{what} ({dt}, {:.1} GB)", gib(&inv));
    Some((inv, text))
}

/// Model evaluations per step of a sampler (Heun evaluates twice).
fn evals_per_step(s: Sampler) -> u32 {
    match s {
        Sampler::Heun => 2,
        _ => 1,
    }
}

/// The workload `model` computes across the jobs that use it: the largest image, the most
/// frames, the largest batch, the most steps and evaluations per step.
fn workload(m: &Manifest, model: &Model) -> Workload {
    let uses = |p: &crate::manifest::Pipeline| {
        p.diffusion == model.name
            || p.low_noise.as_ref() == Some(&model.name)
            || p.vae == model.name
            || p.text_encoders.contains(&model.name)
    };
    let jobs: Vec<_> = m
        .jobs
        .iter()
        .filter(|j| m.pipelines.get(&j.pipeline).is_some_and(uses))
        .collect();
    let mut w = Workload::image(1024, 1024);
    if let Some(big) = jobs.iter().max_by_key(|j| j.width as u64 * j.height as u64) {
        w.width = big.width;
        w.height = big.height;
    }
    // A tiled VAE decodes one tile at a time: its activations are a tile's.
    if let Some(t) = model.decode_tile {
        w.width = w.width.min(8 * t);
        w.height = w.height.min(8 * t);
    }
    w.batch = jobs.iter().map(|j| j.batch.unwrap_or(1)).max().unwrap_or(1);
    w.fp8_linears = model.dtype.fp8_linears();
    let diffusion = model.family.role() == Role::Diffusion;
    w.steps = if diffusion {
        jobs.iter().map(|j| j.steps).max().unwrap_or(20)
    } else {
        1
    };
    // Classifier-free guidance evaluates the prompt and the negative prompt at every call.
    w.evals_per_step = if diffusion {
        jobs.iter()
            .map(|j| evals_per_step(j.sampler) * if j.true_cfg() { 2 } else { 1 })
            .max()
            .unwrap_or(1)
    } else {
        1
    };
    w.frames = jobs.iter().map(|j| j.frames).max().unwrap_or(1);
    // T5 encodes the pipeline's `max_sequence_length` tokens, else 512 for FLUX dev and 256
    // for schnell (schnell only when the manifest says so); the longest over the jobs.
    w.text_tokens = jobs
        .iter()
        .map(|j| {
            let p = m.pipelines.get(&j.pipeline);
            let schnell = p
                .and_then(|p| m.models.get(&p.diffusion))
                .is_some_and(|d| d.variant == Some(FluxVariant::Schnell));
            p.and_then(|p| p.max_sequence_length)
                .unwrap_or(if schnell { 256 } else { 512 })
        })
        .max()
        .unwrap_or(512);
    w
}

/// Bytes each unit of `inv` takes on the compute device: its values in the compute dtype
/// (bf16 stored, f32 compute on a CPU: 2 × the file; GGUF Q8_0 dequantised to bf16: ≈ 1.88 ×;
/// Q4_K: ≈ 3.56 ×; fp8 widened to bf16: 2 ×), fp8 linears under fp8 compute at one byte per
/// value, integer tensors as stored. Per unit, so that a GGUF whose blocks mix Q4_K and Q6_K,
/// or F32 norms beside Q8_0 blocks, is counted exactly (decision 38).
fn device_bytes(model: &Model, inv: &Inventory) -> Vec<u64> {
    let (_, esize) = model.dtype.dtype().block();
    let held = |t: &TensorInfo| -> u64 {
        let integer = matches!(
            t.dtype,
            DType::Bool | DType::U8 | DType::I8 | DType::I16 | DType::I32 | DType::I64
        );
        if fp8_linear(model, &t.name) {
            t.numel()
        } else if !integer {
            t.numel() * esize
        } else {
            t.len
        }
    };
    inv.units
        .iter()
        .map(|u| u.tensors.iter().map(|&i| held(&inv.tensors[i])).sum())
        .collect()
}

/// What `lora_mode = "on_dequant"` adds to a model whose GGML blocks stay compact, from its
/// LoRA files' headers (each read once; files not there yet, when planning before
/// downloading, count nothing). Zero for `bake` or without compact blocks.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct OnDequantCost {
    /// Every LoRA tensor in f32, kept on the compute device (an upper bound: modules for
    /// other components count too).
    factor_bytes: u64,
    /// f32 operations per value the terms add at each widening, summed over the files (rank:
    /// the largest `lora_down`/`lora_A` factor's rows); counted for every compact tensor.
    flops_per_value: f64,
}

fn on_dequant_cost(model: &Model, inv: &Inventory) -> OnDequantCost {
    use crate::manifest::LoraMode;
    // `inv` is as loaded: a tensor still quantised there stays in its blocks.
    let compact = inv.tensors.iter().any(|t| t.dtype.is_quantized());
    if model.lora_mode != LoraMode::OnDequant || !compact {
        return OnDequantCost::default();
    }
    let mut cost = OnDequantCost::default();
    for f in model
        .loras
        .iter()
        .filter_map(|l| crate::weights::WeightFile::open(&l.file).ok())
    {
        let ts = f.tensors();
        cost.factor_bytes += ts.iter().map(|t| 4 * t.numel()).sum::<u64>();
        let rank = ts
            .iter()
            .filter(|t| {
                t.shape.len() >= 2 && (t.name.contains("lora_down") || t.name.contains("lora_A"))
            })
            .map(|t| t.shape[0] as usize)
            .max();
        if let Some(r) = rank {
            cost.flops_per_value += crate::weights::lora::term_flops_per_value(r) as f64;
        }
    }
    cost
}

/// `held` with the LoRA factors of `cost` on the resident unit (they stay on the compute
/// device for the whole run).
fn with_factors(inv: &Inventory, mut held: Vec<u64>, cost: OnDequantCost) -> Vec<u64> {
    if let Some(i) = inv
        .units
        .iter()
        .position(|u| u.kind == crate::inventory::UnitKind::Resident)
    {
        held[i] += cost.factor_bytes;
    }
    held
}

/// The dtype a stored tensor is held in after loading, when the executor converts it
/// (`exec::load`): GGML-quantised tensors are dequantised and rounded once to the compute
/// dtype, except GGML blocks (Q8_0, Q4_K, …) computed in bf16 without LoRAs, which stay
/// quantised and travel as stored. fp8 and scaled fp8 always stay fp8 (LoRAs patch them in place) and are widened on
/// the compute device: every home holds, and every fetch moves, their file bytes. With LoRAs
/// every quantised tensor counts as patched (an upper bound: the LoRA files are not read
/// when planning).
fn loaded_dtype(stored: DType, compute: DType, loras: bool) -> Option<DType> {
    (stored.is_quantized() && !stored.stays_quantized(compute, loras)).then_some(compute)
}

/// With fp8 compute, whether the stored tensor `raw` is one of the family's fp8 linears: held
/// as e4m3 in every home and on the compute device (1 byte per value).
fn fp8_linear(model: &Model, raw: &str) -> bool {
    model.dtype.fp8_linears()
        && model
            .family
            .fp8_linear(&crate::inventory::canonical_name(Some(model.family), raw))
}

/// `inv` with each tensor's bytes as the executor will hold them in every home (see
/// [`loaded_dtype`]), and unit sizes summed again: what the plan must place. Unchanged (the
/// same `Arc`) when nothing is converted.
fn as_loaded(model: &Model, inv: Arc<Inventory>) -> Arc<Inventory> {
    let compute = model.dtype.dtype();
    // `on_dequant` keeps patched blocks compact (computing in bf16): only `bake` widens them.
    let loras = !model.loras.is_empty() && model.lora_mode != crate::manifest::LoraMode::OnDequant;
    let loaded = |t: &TensorInfo| {
        if fp8_linear(model, &t.name) {
            Some(DType::F8_E4M3).filter(|_| t.dtype != DType::F8_E4M3)
        } else {
            loaded_dtype(t.dtype, compute, loras)
        }
    };
    if !inv.tensors.iter().any(|t| loaded(t).is_some()) {
        return inv;
    }
    let mut out = (*inv).clone();
    for t in &mut out.tensors {
        if let Some(d) = loaded(t) {
            t.len = d.storage_bytes(t.numel()).unwrap_or(t.len);
            t.dtype = d;
        }
    }
    for u in &mut out.units {
        u.bytes = u.tensors.iter().map(|&i| out.tensors[i].len).sum();
    }
    Arc::new(out)
}

/// The plan request for every needed model.
pub fn request(m: &Manifest, inventories: &BTreeMap<String, Arc<Inventory>>) -> PlanRequest {
    let models = needed_models(m)
        .into_iter()
        .filter_map(|model| {
            let inv = as_loaded(model, inventories.get(&model.name)?.clone());
            let lora = on_dequant_cost(model, &inv);
            Some(ModelRequest {
                name: model.name.clone(),
                family: model.family,
                compute: model.compute,
                allocation: model.allocation.clone(),
                overrides: model.overrides.clone(),
                device_bytes: Some(with_factors(&inv, device_bytes(model, &inv), lora)),
                patch_flops_per_value: lora.flops_per_value,
                workload: workload(m, model),
                prefetch: model.prefetch,
                inventory: inv,
            })
        })
        .collect();
    let mut experts: Vec<ExpertPair> = Vec::new();
    for p in m.pipelines.values() {
        if !m.jobs.iter().any(|j| j.pipeline == p.name) {
            continue;
        }
        if let Some(low) = &p.low_noise {
            let pair = ExpertPair {
                high: p.diffusion.clone(),
                low: low.clone(),
            };
            if !experts.contains(&pair) {
                experts.push(pair);
            }
        }
    }
    PlanRequest { models, experts }
}

/// Plan errors as diagnostics pointing at the manifest key (and, for allocation entries, the
/// entry inside the string) they are about.
pub fn diagnostics(m: &Manifest, errors: &PlanErrors) -> Diagnostics {
    let mut out = Diagnostics::default();
    for e in &errors.0 {
        out.push(diagnostic(m, e));
    }
    out
}

fn diagnostic(m: &Manifest, e: &PlanError) -> Diagnostic {
    let message = e.to_string();
    let help = match e {
        PlanError::DoesNotFit(_) => "move weights to a donor as the message says, or lower the job size or batch",
        PlanError::UnknownDevice { .. } => "run `mgpu probe` to list this machine's devices, or plan for another machine with `--hardware FILE`",
        PlanError::Fp8Unsupported { .. } => "use dtype = \"bf16\" on this GPU (an fp8 file still travels as fp8 and is widened on the GPU), or compute on an fp8-capable one",
        _ => "see docs/allocation.md for the allocation language",
    };
    let (Some(model), Some(at)) = (e.model(), e.location()) else {
        // Not tied to one key: point at the model's allocation when the error names a fix for
        // one model, else at nothing.
        if let PlanError::DoesNotFit(nf) = e {
            if let super::Fix::Allocation { model, key, .. } = &nf.fix {
                return m.diagnostic_at(model, key, None, message, help);
            }
        }
        return Diagnostic::error(message).with_help(help);
    };
    let entry_range = |i: usize| match m.models.get(model).map(|x| &x.allocation) {
        Some(Allocation::Expert(ex)) => ex.entries.get(i).map(|en| en.span.entry.clone()),
        _ => None,
    };
    match at {
        Location::Compute => m.diagnostic_at(model, "compute", None, message, help),
        Location::Allocation => m.diagnostic_at(model, "allocation", None, message, help),
        Location::Entry(i) => m.diagnostic_at(model, "allocation", entry_range(i), message, help),
        Location::VirtualVram => m.diagnostic_at(model, "virtual_vram", None, message, help),
        Location::Donor => m.diagnostic_at(model, "donor", None, message, help),
        Location::Override(i) => m.diagnostic_at_path(
            &format!("models.{model}.overrides.{i}"),
            None,
            message,
            help,
        ),
        Location::Prefetch => m.diagnostic_at(model, "prefetch", None, message, help),
        Location::Dtype => m.diagnostic_at(model, "dtype", None, message, help),
    }
}

#[cfg(test)]
mod tests;
