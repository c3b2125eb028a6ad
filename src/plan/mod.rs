//! The planner: a pure function of the models to run (allocation, overrides, inventory,
//! workload) and the hardware to a [`Plan`]: each unit's home device, bytes per device, the
//! prefetch depth, the compute-device working set, and the predicted step time.
//!
//! Stages of [`plan`]:
//! 1. check: the hardware description, devices named by each model (compute, allocation
//!    entries, donor, overrides) against the machine, the allocation's quotas
//!    ([`quota`]), overrides that would change nothing. All errors are returned together.
//! 2. place, one model at a time (explicit allocations in the order given, then `auto` models:
//!    diffusion, VAE, text encoders): overrides, then quotas or `auto` ([`place`]); which
//!    blocks stream is chosen by spreading them over the step ([`select`]); the prefetch depth
//!    K and the candidate layouts are scored by simulating the slot ring ([`simulate`]) with
//!    the cost model ([`cost`]).
//! 3. fit: every device's weights plus the largest working set of the models computing on it
//!    must fit its usable memory; each device that overflows is refused with the numbers and
//!    an allocation that fits, found by planning with it ([`fix`]).
//!
//! Models sharing a compute device share its memory: their weights add up (held for the whole
//! run), while slots and activations are counted once, for the largest model, because the
//! models of a pipeline compute one after another. Rendering: [`render_text`], [`render_json`].

mod check;
pub mod cost;
pub mod error;
mod fix;
pub mod manifest;
mod place;
pub mod quota;
mod render;
pub mod select;
pub mod simulate;
mod switch;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::alloc::{Allocation, Override};
use crate::device::DeviceName;
use crate::family::{Family, Role};
use crate::hardware::Hardware;
use crate::inventory::{Inventory, UnitKind};

pub use error::{Demand, Fix, Location, NoEffect, NotFit, PlanError, PlanErrors};
pub use fix::alloc_text;
pub use render::{render_json, render_json_output, render_text, PlanOutput, PLAN_FORMAT};

use place::{Choice, ModelCtx};

/// What to plan: the models of a run (usually one pipeline's components).
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub models: Vec<ModelRequest>,
    /// Pairs of experts (Wan 2.2 A14B) that take turns within one sampling run: never
    /// computing at the same time, so each may have the memory the other leaves.
    pub experts: Vec<ExpertPair>,
}

/// Two models of `models` that take turns: `high` denoises the first steps, `low` the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpertPair {
    pub high: String,
    pub low: String,
}

/// One model to place.
#[derive(Debug, Clone)]
pub struct ModelRequest {
    /// The manifest's name for it (`flux`, `t5`).
    pub name: String,
    pub family: Family,
    pub compute: DeviceName,
    pub allocation: Allocation,
    pub overrides: Vec<Override>,
    pub inventory: Arc<Inventory>,
    /// Bytes each unit of `inventory` (in its order) occupies on the compute device, where
    /// that differs from its stored bytes: compact blocks widened there (GGUF Q8_0 → bf16
    /// ≈ 1.88 ×, Q4_K ≈ 3.56 ×, fp8 2 ×), a bf16 file computed in f32 on a CPU (2 ×). `None`
    /// (or a list of another length): as stored. Homes elsewhere hold, and copies move, the
    /// stored bytes.
    pub device_bytes: Option<Vec<u64>>,
    /// `lora_mode = "on_dequant"`: f32 operations per value its LoRA terms add each time a
    /// compact tensor is widened (`2·rank + 2` per term, summed over its LoRAs; counted for
    /// every compact tensor, an upper bound). 0 otherwise.
    pub patch_flops_per_value: f64,
    pub workload: Workload,
    /// Prefetch slots K; `None` chooses (2 unless more shortens the step and fits).
    pub prefetch: Option<u32>,
}

/// What one model computes: the size of a job and how many run together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Workload {
    pub width: u32,
    pub height: u32,
    /// Frames (video families); 1 for images.
    pub frames: u32,
    /// Jobs per batch: each fetched unit is applied to every job, one job at a time
    /// (docs/decisions.md §4).
    pub batch: u32,
    /// Sampling steps (1 for text encoders and VAEs: one pass per job).
    pub steps: u32,
    /// Model evaluations per step and job: 2 with classifier-free guidance, else 1.
    pub evals_per_step: u32,
    /// Text tokens: T5 sequence length (512 for FLUX-dev, 256 for schnell).
    pub text_tokens: u32,
    /// fp8 compute (`dtype = "fp8"`): the family's fp8 linears are held as e4m3 and multiply
    /// on the tensor cores ([`cost::FP8_LINEAR_SPEEDUP`]); not widened at a fetch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fp8_linears: bool,
}

impl Workload {
    /// One image of `width × height`, batch 1, 20 steps, no CFG, 512 text tokens.
    pub fn image(width: u32, height: u32) -> Self {
        Workload {
            width,
            height,
            frames: 1,
            batch: 1,
            steps: 20,
            evals_per_step: 1,
            text_tokens: 512,
            fp8_linears: false,
        }
    }
}

/// Why a unit lives where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Outside the blocks: always on the compute device.
    Resident,
    /// Placed by the allocation's quotas.
    Allocation,
    /// Placed by `overrides[i]`.
    Override(usize),
    /// Chosen by `allocation = "auto"`.
    Auto,
}

/// The result: per device and per model.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Plan {
    pub devices: Vec<DevicePlan>,
    pub models: Vec<ModelPlan>,
    /// One entry per [`ExpertPair`] of the request: how the executor switches experts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub switches: Vec<SwitchPlan>,
}

/// How a run switches from the high-noise expert to the low-noise one ([`ExpertPair`]).
///
/// Each expert is placed as if it were the only diffusion model (the other needs no memory
/// while it computes). If both placements fit side by side, both stay loaded and the switch
/// moves nothing (`resident_both`). Otherwise the executor *swaps*: it releases the expert
/// it leaves (its compute-device and host memory) and loads the other per its placement:
/// `bytes` read from its file (everything not homed on `disk`) at the disk rate, the
/// compute-device share of them uploaded over the host link.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SwitchPlan {
    pub high: String,
    pub low: String,
    /// Both experts stay loaded for the whole run: the switch costs nothing.
    pub resident_both: bool,
    /// Stored bytes per device while the high-noise expert computes (its placement) …
    pub before: BTreeMap<DeviceName, u64>,
    /// … and after the switch (the low-noise expert's).
    pub after: BTreeMap<DeviceName, u64>,
    /// Bytes loaded at one swap (0 with `resident_both`): the incoming expert's bytes not on
    /// `disk` (the larger expert's, as a run swaps both ways between batches).
    pub bytes: u64,
    /// Of which uploaded to the compute device.
    pub upload_bytes: u64,
    /// Predicted seconds of one swap (0 with `resident_both`).
    pub seconds: f64,
    /// Whether `seconds` rests on an assumed rate.
    pub assumed: bool,
}

/// One device's memory after the plan.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct DevicePlan {
    pub name: DeviceName,
    /// Free memory if probed, else total (`None` for disk).
    pub capacity: Option<u64>,
    pub reserve: u64,
    pub usable: Option<u64>,
    /// Weights homed here, all models.
    pub weights: u64,
    /// The largest working set (slots + activations + latents) of the models computing here.
    pub working_set: u64,
    /// Its parts: prefetch slots, and activations with latents.
    pub slots: u64,
    pub activations: u64,
    /// `usable − weights − working_set`.
    pub free: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ModelPlan {
    pub name: String,
    pub family: Family,
    pub compute: DeviceName,
    /// The allocation as the planner read it.
    pub allocation: String,
    /// Stored bytes per device (the compute device's entry includes the resident tensors).
    pub placement: BTreeMap<DeviceName, u64>,
    /// Every unit in execution order, the resident one first.
    pub blocks: Vec<BlockPlan>,
    pub prefetch_slots: u32,
    /// Bytes of one slot: the largest streamed unit as held on the compute device.
    pub slot_bytes: u64,
    pub working_set: WorkingSet,
    pub workload: Workload,
    /// Sequence length of one job through the blocks (FLUX: image + text tokens).
    pub tokens: u64,
    pub predicted: Prediction,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct BlockPlan {
    pub name: String,
    pub kind: UnitKind,
    pub bytes: u64,
    pub home: DeviceName,
    pub reason: Reason,
}

/// Memory on the compute device while this model computes.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct WorkingSet {
    /// Weights resident on the compute device (as held there).
    pub resident: u64,
    /// `prefetch_slots × slot_bytes`.
    pub slots: u64,
    /// Peak activations of one job in one block.
    pub activations: u64,
    /// The formula behind `activations`.
    pub activation_formula: String,
    /// Latents and conditioning of every job of the batch.
    pub latents: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Prediction {
    /// Simulated steady-state seconds per step (all jobs of the batch).
    pub step_seconds: f64,
    /// Seconds per step with every unit resident.
    pub resident_step_seconds: f64,
    /// `step_seconds / resident_step_seconds`.
    pub slowdown: f64,
    /// Compute alone (= `resident_step_seconds`).
    pub compute_seconds: f64,
    /// `max(compute, the busiest link's copy seconds)`: no schedule beats it.
    pub floor_seconds: f64,
    /// `step_seconds × steps`.
    pub run_seconds: f64,
    /// bf16 rate of the compute device, TFLOP/s, and whether it is assumed.
    pub tflops: f64,
    pub tflops_assumed: bool,
    pub efficiency: f64,
    pub per_link: Vec<LinkUse>,
}

/// Copies per step over one link.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LinkUse {
    pub from: DeviceName,
    pub to: DeviceName,
    pub bytes: u64,
    pub gbps: f64,
    pub seconds: f64,
    pub assumed: bool,
    /// Why the rate was assumed, or `measured`.
    pub basis: String,
}

/// What earlier models already hold: weights per device, working sets per compute device.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    homes: BTreeMap<DeviceName, Vec<(String, u64)>>,
    ws: BTreeMap<DeviceName, Vec<(String, u64, u64)>>,
    /// Models not placed yet: (index, compute device, resident bytes, working-set estimate),
    /// so that `auto` models placed earlier leave them room.
    pending: Vec<(usize, DeviceName, u64, u64)>,
    /// Experts that take turns, by model name and by model index: each group holds the
    /// memory of its largest member on each device, not the sum.
    groups: BTreeMap<String, usize>,
    index_groups: BTreeMap<usize, usize>,
    /// The group of the model being placed: its partners are left out of every sum, so each
    /// expert is placed as if it were the only one.
    placing: Option<usize>,
}

impl Ledger {
    pub fn homes_on(&self, d: DeviceName) -> u64 {
        let mut sum = 0;
        let mut grouped: BTreeMap<usize, u64> = BTreeMap::new();
        let placing = self.placing;
        let mut add = |g: Option<&usize>, b: u64| match g {
            Some(g) if Some(*g) == placing => {}
            Some(g) => {
                let e = grouped.entry(*g).or_default();
                *e = (*e).max(b);
            }
            None => sum += b,
        };
        for (name, b) in self.homes.get(&d).into_iter().flatten() {
            add(self.groups.get(name), *b);
        }
        for p in self.pending.iter().filter(|p| p.1 == d) {
            add(self.index_groups.get(&p.0), p.2);
        }
        sum + grouped.values().sum::<u64>()
    }
    pub fn ws_on(&self, d: DeviceName) -> u64 {
        let placed = self
            .ws
            .get(&d)
            .map_or(0, |v| v.iter().map(|x| x.1 + x.2).max().unwrap_or(0));
        self.pending
            .iter()
            .filter(|p| p.1 == d)
            .map(|p| p.3)
            .fold(placed, u64::max)
    }

    /// Reserves room for model `i`: its resident tensors and a working set with two slots of
    /// its largest block.
    fn reserve(&mut self, i: usize, ctx: &ModelCtx) {
        let largest = (0..ctx.inv.units.len())
            .filter(|&i| ctx.inv.units[i].kind == UnitKind::Block)
            .map(|i| ctx.held[i])
            .max()
            .unwrap_or(0);
        let ws = ctx.activations + ctx.latents + 2 * largest;
        self.pending
            .push((i, ctx.req.compute, ctx.held_resident(), ws));
    }
    pub fn need(&self, d: DeviceName) -> u64 {
        self.homes_on(d) + self.ws_on(d)
    }

    /// Bytes per memory of a model laid out as `homes` (disk not counted).
    fn model_bytes(ctx: &ModelCtx, homes: &[DeviceName]) -> BTreeMap<DeviceName, u64> {
        let mut m = ctx.bytes_by_device(homes);
        m.remove(&DeviceName::Disk);
        m
    }

    /// Total bytes over usable memory, summed over devices, if the model were added.
    pub fn excess_with(
        &self,
        hw: &Hardware,
        ctx: &ModelCtx,
        homes: &[DeviceName],
        slots: u64,
    ) -> u64 {
        let mut bytes = Self::model_bytes(ctx, homes);
        bytes.entry(ctx.req.compute).or_default();
        let ws = slots + ctx.activations + ctx.latents;
        bytes
            .iter()
            .map(|(&d, &b)| {
                let own_ws = if d == ctx.req.compute { ws } else { 0 };
                let need = self.homes_on(d) + b + self.ws_on(d).max(own_ws);
                need.saturating_sub(hw.usable(d).map_or(0, |u| u.usable.0))
            })
            .sum()
    }

    fn add(&mut self, ctx: &ModelCtx, c: &Choice) {
        for (d, b) in Self::model_bytes(ctx, &c.layout.homes) {
            self.homes
                .entry(d)
                .or_default()
                .push((ctx.req.name.clone(), b));
        }
        self.ws.entry(ctx.req.compute).or_default().push((
            ctx.req.name.clone(),
            c.slots as u64 * c.slot_bytes,
            ctx.activations + ctx.latents,
        ));
    }
}

/// The planner's step time for `req` on `hw` with unit homes fixed by the caller (`homes[i]`
/// for `inventory.units[i]`) and `slots` prefetch slots: the same cost model and ring
/// simulation [`plan`] scores its layouts with, for a placement it did not choose. `mgpu bench
/// --hardware` prints it next to each measured placement.
///
/// `gap`: seconds of other work per step besides the model's units (the sampler, the host),
/// during which copies continue (`simulate::step_seconds_with_gap`); plans use 0.
pub fn predict_step(
    req: &ModelRequest,
    hw: &Hardware,
    homes: &[DeviceName],
    slots: u32,
    gap: f64,
) -> f64 {
    let ctx = place::ModelCtx::new(req, hw);
    simulate::step_seconds_with_gap(&place::sim_units(&ctx, hw, homes), slots, gap)
}

/// Plans `req` on `hw`.
pub fn plan(req: &PlanRequest, hw: &Hardware) -> Result<Plan, PlanErrors> {
    plan_with(req, hw, true)
}

/// `suggest = false` skips searching for fixes (used while checking a fix).
pub(crate) fn plan_with(
    req: &PlanRequest,
    hw: &Hardware,
    suggest: bool,
) -> Result<Plan, PlanErrors> {
    if let Err(errs) = hw.validate() {
        return Err(PlanErrors(
            errs.into_iter().map(PlanError::Hardware).collect(),
        ));
    }
    let ctxs: Vec<ModelCtx> = req.models.iter().map(|m| ModelCtx::new(m, hw)).collect();
    let mut errs = Vec::new();
    for (i, ctx) in ctxs.iter().enumerate() {
        errs.extend(check::check_devices(ctx.req, hw));
        if let Err(e) = quota::quotas(
            &ctx.req.name,
            &ctx.req.allocation,
            ctx.req.compute,
            ctx.inv.total_bytes(),
            hw,
        ) {
            errs.push(match e {
                PlanError::QuotaShort {
                    model, held, total, ..
                } => {
                    let fix = if suggest {
                        fix::quota_short_fix(req, i, hw)
                    } else {
                        None
                    };
                    PlanError::QuotaShort {
                        model,
                        held,
                        total,
                        fix,
                    }
                }
                e => e,
            });
        }
        if let Err(e) = place::claims(ctx) {
            errs.extend(e);
        }
    }
    if !errs.is_empty() {
        return Err(PlanErrors(errs));
    }
    // Explicit allocations first, then `auto` by role: the diffusion model runs every step.
    let mut order: Vec<usize> = (0..ctxs.len()).collect();
    let rank = |i: usize| match (&req.models[i].allocation, req.models[i].family.role()) {
        (Allocation::Auto, Role::Diffusion) => 1,
        (Allocation::Auto, Role::Vae) => 2,
        (Allocation::Auto, Role::TextEncoder) => 3,
        _ => 0,
    };
    order.sort_by_key(|&i| rank(i));
    let mut ledger = Ledger::default();
    for (g, pair) in req.experts.iter().enumerate() {
        for name in [&pair.high, &pair.low] {
            ledger.groups.insert(name.clone(), g);
            if let Some(i) = req.models.iter().position(|m| &m.name == name) {
                ledger.index_groups.insert(i, g);
            }
        }
    }
    for (i, ctx) in ctxs.iter().enumerate() {
        ledger.reserve(i, ctx);
    }
    let mut choices: Vec<Option<Choice>> = vec![None; ctxs.len()];
    for i in order {
        ledger.pending.retain(|p| p.0 != i);
        ledger.placing = ledger.index_groups.get(&i).copied();
        let placed = place::place(&ctxs[i], hw, &ledger);
        ledger.placing = None;
        match placed {
            Ok(c) => {
                ledger.add(&ctxs[i], &c);
                choices[i] = Some(c);
            }
            Err(e) => errs.extend(e),
        }
    }
    if !errs.is_empty() {
        return Err(PlanErrors(errs));
    }
    let choices: Vec<Choice> = choices
        .into_iter()
        .map(|c| c.expect("every model was placed"))
        .collect();
    let switches = switch::plan_switches(req, hw, &ctxs, &choices, &mut ledger);
    let on_disk: u64 = ctxs
        .iter()
        .zip(&choices)
        .flat_map(|(ctx, c)| ctx.inv.units.iter().zip(&c.layout.homes))
        .filter(|(_, h)| **h == DeviceName::Disk)
        .map(|(u, _)| u.bytes)
        .sum();
    let devices = device_plans(hw, &ledger, on_disk);
    for d in &devices {
        let (Some(usable), Some(_)) = (d.usable, d.capacity) else {
            continue;
        };
        let need = d.weights + d.working_set;
        if need > usable {
            let fix = if suggest {
                fix::fit_fix(req, hw, &ctxs, &choices, d.name, need - usable)
            } else {
                Fix::MoveBytes {
                    bytes: need - usable,
                }
            };
            errs.push(PlanError::DoesNotFit(Box::new(NotFit {
                device: d.name,
                need,
                demands: demands(&ledger, d.name),
                usable: hw
                    .usable(d.name)
                    .expect("devices in the plan are on the machine"),
                fix,
            })));
        }
    }
    if !errs.is_empty() {
        return Err(PlanErrors(errs));
    }
    let models = ctxs
        .iter()
        .zip(&choices)
        .map(|(ctx, c)| model_plan(ctx, hw, c))
        .collect();
    Ok(Plan {
        devices,
        models,
        switches,
    })
}

/// What each model puts on `d`, for messages.
fn demands(ledger: &Ledger, d: DeviceName) -> Vec<Demand> {
    let mut out: Vec<Demand> = ledger
        .homes
        .get(&d)
        .into_iter()
        .flatten()
        .map(|(m, b)| Demand {
            what: format!("weights of `{m}`"),
            bytes: *b,
        })
        .collect();
    if let Some((m, s, a)) = ledger
        .ws
        .get(&d)
        .and_then(|v| v.iter().max_by_key(|x| x.1 + x.2))
    {
        let what = if *s > 0 {
            format!(
                "working set of `{m}` ({:.1} slots + {:.1} activations)",
                gib(*s),
                gib(*a)
            )
        } else {
            format!("working set of `{m}` (activations)")
        };
        out.push(Demand { what, bytes: s + a });
    }
    out
}

fn gib(b: u64) -> f64 {
    crate::units::ByteSize(b).as_gib()
}

fn device_plans(hw: &Hardware, ledger: &Ledger, on_disk: u64) -> Vec<DevicePlan> {
    let mut names: Vec<DeviceName> = hw.devices.iter().map(|d| d.name).collect();
    if on_disk > 0 {
        names.push(DeviceName::Disk);
    }
    names
        .into_iter()
        .map(|name| {
            let u = hw.usable(name).filter(|_| name != DeviceName::Disk);
            let weights = if name == DeviceName::Disk {
                on_disk
            } else {
                ledger.homes_on(name)
            };
            let working_set = ledger.ws_on(name);
            let (slots, activations) = ledger
                .ws
                .get(&name)
                .and_then(|v| v.iter().max_by_key(|x| x.1 + x.2))
                .map_or((0, 0), |x| (x.1, x.2));
            DevicePlan {
                name,
                capacity: u.map(|u| u.capacity.0),
                reserve: u.map_or(0, |u| u.reserve.0),
                usable: u.map(|u| u.usable.0),
                weights,
                working_set,
                slots,
                activations,
                free: u.map(|u| u.usable.0.saturating_sub(weights + working_set)),
            }
        })
        .collect()
}

/// Seconds rounded to the microsecond: predictions are not more precise than that, and plans
/// print the same on every platform.
fn us(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

fn model_plan(ctx: &ModelCtx, hw: &Hardware, c: &Choice) -> ModelPlan {
    let compute = ctx.req.compute;
    let inv = ctx.inv;
    let mut placement: BTreeMap<DeviceName, u64> = BTreeMap::new();
    let blocks: Vec<BlockPlan> = inv
        .units
        .iter()
        .zip(&c.layout.homes)
        .zip(&c.layout.reasons)
        .map(|((u, &home), &reason)| {
            *placement.entry(home).or_default() += u.bytes;
            BlockPlan {
                name: u.name.clone(),
                kind: u.kind,
                bytes: u.bytes,
                home,
                reason,
            }
        })
        .collect();
    let resident = ctx.held_of((0..blocks.len()).filter(|&i| blocks[i].home == compute));
    let slots = c.slots as u64 * c.slot_bytes;
    let working_set = WorkingSet {
        resident,
        slots,
        activations: ctx.activations,
        activation_formula: ctx.activation_formula.clone(),
        latents: ctx.latents,
        total: resident + slots + ctx.activations + ctx.latents,
    };
    // Copies per step, per source.
    let mut per_src: BTreeMap<DeviceName, u64> = BTreeMap::new();
    for (i, b) in blocks.iter().enumerate() {
        if b.home != compute && ctx.runs[i] {
            *per_src.entry(b.home).or_default() += b.bytes;
        }
    }
    let per_link: Vec<LinkUse> = per_src
        .iter()
        .map(|(&from, &bytes)| {
            let rate = place::link_rate(hw, from, compute);
            LinkUse {
                from,
                to: compute,
                bytes,
                gbps: rate.value,
                seconds: us(bytes as f64 / (rate.value * 1e9)),
                assumed: rate.is_assumed(),
                basis: match &rate.basis {
                    crate::hardware::Basis::Measured => "measured".into(),
                    crate::hardware::Basis::Assumed(why) => why.clone(),
                },
            }
        })
        .collect();
    let compute_seconds: f64 = ctx.compute.iter().sum();
    let mut queue_secs: BTreeMap<usize, f64> = BTreeMap::new();
    for l in &per_link {
        *queue_secs.entry(place::queue_of(l.from)).or_default() += l.seconds;
    }
    let floor = queue_secs.values().fold(compute_seconds, |a, &b| a.max(b));
    let step = c.step;
    let mut notes = c.layout.notes.clone();
    if per_src.contains_key(&DeviceName::Disk) {
        notes.push("blocks homed on disk are read from the memory-mapped file every step, through the host link".into());
    }
    ModelPlan {
        name: ctx.req.name.clone(),
        family: ctx.req.family,
        compute,
        allocation: alloc_text(&ctx.req.allocation),
        placement,
        blocks,
        prefetch_slots: c.slots,
        slot_bytes: c.slot_bytes,
        working_set,
        workload: ctx.req.workload,
        tokens: ctx.tokens,
        predicted: Prediction {
            step_seconds: us(step),
            resident_step_seconds: us(compute_seconds),
            slowdown: if compute_seconds > 0.0 {
                (step / compute_seconds * 1e4).round() / 1e4
            } else {
                1.0
            },
            compute_seconds: us(compute_seconds),
            floor_seconds: us(floor),
            run_seconds: us(step * ctx.req.workload.steps.max(1) as f64),
            tflops: ctx.tflops.value,
            tflops_assumed: ctx.tflops.is_assumed(),
            efficiency: {
                // The effective share of the bf16 rate the prediction assumes (FLUX: the
                // calibrated constant; Wan: its attention, product and element-wise rates
                // combined).
                let per_job =
                    (ctx.req.workload.batch.max(1) * ctx.req.workload.evals_per_step.max(1)) as f64;
                let inv = ctx.req.inventory.as_ref();
                let arch = cost::Arch::new(ctx.req.family, inv, &ctx.req.workload);
                let flops: f64 = inv
                    .units
                    .iter()
                    .zip(&ctx.compute)
                    .filter(|(_, &s)| s > 0.0)
                    .map(|(u, _)| arch.unit_flops(inv, u) * per_job)
                    .sum();
                if compute_seconds > 0.0 && flops > 0.0 {
                    ((flops / (compute_seconds * ctx.tflops.value * 1e12)) * 1e3).round() / 1e3
                } else {
                    cost::EFFICIENCY
                }
            },
            per_link,
        },
        notes,
    }
}
