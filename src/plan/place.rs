//! Placing one model: overrides first, then the allocation's quotas (or `auto`) for the rest,
//! then the prefetch depth K; each candidate is scored by the pipeline simulation.
//!
//! The resident unit always stays on the compute device. Overridden blocks go where their
//! override says and count against that device's quota. The remaining blocks fill the quotas:
//! the compute device keeps its share, and the blocks chosen to stream ([`select`]) are spread
//! through the step and interleaved over the donors. Candidates differ in the largest block
//! allowed to stream (smaller slots leave more room on the compute device) and in K; the
//! fastest candidate that fits wins.

use std::collections::BTreeMap;

use regex::Regex;

use crate::alloc::{Allocation, Override};
use crate::device::DeviceName;
use crate::hardware::{Hardware, Rate};
use crate::inventory::{canonical_name, Inventory, UnitKind};

use super::cost::Arch;
use super::error::{NoEffect, PlanError};
use super::quota::{quotas, Quotas};
use super::select::{assign_donors, select, Candidate, Round};
use super::simulate::{step_seconds, SimUnit};
use super::{Ledger, ModelRequest, Reason};

/// Everything about a model that does not depend on where its blocks go.
pub(crate) struct ModelCtx<'a> {
    pub req: &'a ModelRequest,
    pub inv: &'a Inventory,
    /// Compute seconds per unit and step, all jobs and evaluations included.
    pub compute: Vec<f64>,
    /// Whether the unit runs in this workload (a VAE's encoder does not when decoding).
    pub runs: Vec<bool>,
    /// Seconds the compute device spends dequantising the unit per fetch: non-zero for units
    /// that travel quantised (tensors still quantised after [`super::manifest::as_loaded`])
    /// to a GPU; a resident unit is dequantised once, at load.
    pub dequant: Vec<f64>,
    /// Per unit: bytes of its compact tensors, which a CUDA slot holds beside their widened
    /// form (0 on a CPU, where widening makes a fresh tensor).
    pub staging: Vec<u64>,
    pub tflops: Rate,
    pub activations: u64,
    pub activation_formula: String,
    /// Per-job state (latents, conditioning) for the whole batch.
    pub latents: u64,
    /// Per unit: bytes it takes on the compute device ([`ModelRequest::device_bytes`]).
    pub held: Vec<u64>,
    /// Sequence length of one job.
    pub tokens: u64,
}

impl<'a> ModelCtx<'a> {
    pub fn new(req: &'a ModelRequest, hw: &Hardware) -> Self {
        let inv = req.inventory.as_ref();
        let arch = Arch::new(req.family, inv, &req.workload);
        let tflops = hw.tflops(req.compute);
        let per_job = (req.workload.batch.max(1) * req.workload.evals_per_step.max(1)) as f64;
        let runs: Vec<bool> = inv
            .units
            .iter()
            .map(|u| {
                !(matches!(
                    req.family,
                    crate::family::Family::FluxVae | crate::family::Family::WanVae
                ) && u.name == "encoder")
            })
            .collect();
        let compute = inv
            .units
            .iter()
            .zip(&runs)
            .map(|(u, &r)| {
                if r {
                    let cpu = if req.compute == crate::device::DeviceName::Cpu {
                        arch.cpu_extra_seconds(inv, u)
                    } else {
                        0.0
                    };
                    (arch.unit_seconds(inv, u, tflops.value) + cpu) * per_job
                } else {
                    0.0
                }
            })
            .collect();
        let widen_rate = super::cost::WIDEN_GBPS_PER_TFLOPS * tflops.value * 1e9;
        let patch_rate = super::cost::LORA_TERM_GFLOPS_PER_TFLOPS * tflops.value * 1e9;
        let dequant = inv
            .units
            .iter()
            .map(|u| {
                // Compact tensors (GGUF Q8_0 blocks that travel quantised, fp8) are widened to
                // bf16 (2 bytes) on the GPU at each fetch.
                if !req.compute.is_cuda() || tflops.value <= 0.0 {
                    return 0.0;
                }
                u.tensors
                    .iter()
                    .map(|&t| &inv.tensors[t])
                    .filter(|t| compact(t.dtype) && !arch.is_fp8_linear(inv, t))
                    .map(|t| {
                        let patch = if t.dtype.is_quantized() {
                            t.numel() as f64 * req.patch_flops_per_value / patch_rate
                        } else {
                            0.0
                        };
                        (t.numel() * 2) as f64 / widen_rate + patch
                    })
                    .sum()
            })
            .collect();
        // A CUDA slot also holds the compact bytes of its unit while they are widened.
        let staging = inv
            .units
            .iter()
            .map(|u| {
                if !req.compute.is_cuda() {
                    return 0;
                }
                u.tensors
                    .iter()
                    .map(|&t| &inv.tensors[t])
                    .filter(|t| compact(t.dtype) && !arch.is_fp8_linear(inv, t))
                    .map(|t| t.len)
                    .sum()
            })
            .collect();
        let (activations, activation_formula) = arch.activations();
        let held = match &req.device_bytes {
            Some(b) if b.len() == inv.units.len() => b.clone(),
            _ => inv.units.iter().map(|u| u.bytes).collect(),
        };
        ModelCtx {
            req,
            inv,
            compute,
            runs,
            dequant,
            staging,
            tflops,
            activations,
            activation_formula,
            latents: arch.per_job() * req.workload.batch.max(1) as u64,
            held,
            tokens: arch.seq(),
        }
    }

    /// Bytes a slot needs to hold unit `i` streamed: its values in the compute dtype and the
    /// compact bytes they are widened from.
    pub fn slot_of(&self, i: usize) -> u64 {
        self.held[i] + self.staging[i]
    }

    /// Bytes the units `which` take on the compute device, summed.
    pub fn held_of(&self, which: impl IntoIterator<Item = usize>) -> u64 {
        which.into_iter().map(|i| self.held[i]).sum()
    }

    /// Bytes per device of the model laid out as `homes`: as held on the compute device, as
    /// stored everywhere else (disk included).
    pub fn bytes_by_device(&self, homes: &[DeviceName]) -> BTreeMap<DeviceName, u64> {
        let mut m = BTreeMap::new();
        for (i, (u, &h)) in self.inv.units.iter().zip(homes).enumerate() {
            let b = if h == self.req.compute {
                self.held[i]
            } else {
                u.bytes
            };
            *m.entry(h).or_default() += b;
        }
        m
    }

    /// Bytes the resident units take on the compute device.
    pub fn held_resident(&self) -> u64 {
        self.held_of(
            (0..self.inv.units.len()).filter(|&i| self.inv.units[i].kind == UnitKind::Resident),
        )
    }
}

/// Where each unit lives, and why.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub homes: Vec<DeviceName>,
    pub reasons: Vec<Reason>,
    pub notes: Vec<String>,
}

/// A layout with its prefetch depth, scored.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    pub layout: Layout,
    pub slots: u32,
    pub slot_bytes: u64,
    pub step: f64,
    pub excess: u64,
}

/// Whether tensors stored as `d` travel compact and are widened on the compute device at
/// each fetch (GGML blocks that stay quantised, fp8): see `plan::manifest::as_loaded`.
fn compact(d: crate::weights::DType) -> bool {
    use crate::weights::DType as W;
    d.is_quantized() || matches!(d, W::F8_E4M3 | W::F8_E5M2)
}

/// Copy queue of a source: the host link (cpu and disk share it) or a peer GPU's link.
pub(crate) fn queue_of(d: DeviceName) -> usize {
    match d {
        DeviceName::Cuda(i) => 1 + i as usize,
        _ => 0,
    }
}

/// Copy rate from `src` to the compute device in GB/s; disk reads go through the host.
pub(crate) fn link_rate(hw: &Hardware, src: DeviceName, compute: DeviceName) -> Rate {
    match src {
        DeviceName::Disk => {
            let disk = hw.disk_read();
            if compute == DeviceName::Cpu {
                return disk;
            }
            let host = hw.link(DeviceName::Cpu, compute);
            if host.value < disk.value {
                host
            } else {
                disk
            }
        }
        _ => hw.link(src, compute),
    }
}

/// Full-match versions of the override patterns.
fn anchored(o: &Override) -> Option<Regex> {
    Regex::new(&format!("^(?:{})$", o.pattern.as_str())).ok()
}

fn full_match(o: &Override, re: &Option<Regex>, s: &str) -> bool {
    match re {
        Some(r) => r.is_match(s),
        None => o
            .pattern
            .find_iter(s)
            .any(|m| m.start() == 0 && m.end() == s.len()),
    }
}

/// For each unit, the override that claims it (first match wins); errors for overrides that
/// change nothing.
pub(crate) fn claims(ctx: &ModelCtx) -> Result<Vec<Option<usize>>, Vec<PlanError>> {
    let inv = ctx.inv;
    let ovs = &ctx.req.overrides;
    let res: Vec<Option<Regex>> = ovs.iter().map(anchored).collect();
    let matches = |k: usize, unit: usize| {
        let u = &inv.units[unit];
        full_match(&ovs[k], &res[k], &u.name)
            || inv.tensors_of(u).any(|t| {
                full_match(&ovs[k], &res[k], &t.name)
                    || full_match(&ovs[k], &res[k], &canonical_name(inv.family, &t.name))
            })
    };
    let mut claim = vec![None; inv.units.len()];
    let mut errs = Vec::new();
    let mut claimed_by: Vec<Vec<usize>> = vec![vec![]; ovs.len()];
    for (i, u) in inv.units.iter().enumerate() {
        if u.kind != UnitKind::Block {
            continue;
        }
        if let Some(k) = (0..ovs.len()).find(|&k| matches(k, i)) {
            claim[i] = Some(k);
            claimed_by[k].push(i);
        }
    }
    for k in 0..ovs.len() {
        if !claimed_by[k].is_empty() {
            continue;
        }
        let blocks: Vec<usize> = (0..inv.units.len())
            .filter(|&i| inv.units[i].kind == UnitKind::Block && matches(k, i))
            .collect();
        let reason = if let Some(by) = blocks.iter().find_map(|&i| claim[i]) {
            NoEffect::Shadowed { by }
        } else if (0..inv.units.len())
            .any(|i| inv.units[i].kind == UnitKind::Resident && matches(k, i))
        {
            NoEffect::OnlyResident
        } else {
            NoEffect::NoMatch
        };
        let examples: Vec<String> = inv
            .blocks()
            .take(2)
            .map(|u| format!("`{}`", u.name))
            .collect();
        errs.push(PlanError::OverrideNoEffect {
            model: ctx.req.name.clone(),
            index: k,
            pattern: ovs[k].pattern.as_str().to_string(),
            reason,
            examples: examples.join(", "),
        });
    }
    if errs.is_empty() {
        Ok(claim)
    } else {
        Err(errs)
    }
}

/// The starting layout: resident unit on the compute device, overridden blocks placed,
/// everything else unplaced (`None`).
fn base(ctx: &ModelCtx, claim: &[Option<usize>]) -> (Vec<Option<DeviceName>>, Vec<Reason>) {
    let mut homes = vec![None; ctx.inv.units.len()];
    let mut reasons = vec![Reason::Allocation; ctx.inv.units.len()];
    for (i, u) in ctx.inv.units.iter().enumerate() {
        if u.kind == UnitKind::Resident {
            homes[i] = Some(ctx.req.compute);
            reasons[i] = Reason::Resident;
        } else if let Some(k) = claim[i] {
            homes[i] = Some(ctx.req.overrides[k].device);
            reasons[i] = Reason::Override(k);
        }
    }
    (homes, reasons)
}

/// Distinct block sizes (`size` of each of `free`) to try as the largest streamed block
/// (largest first, at most 4).
fn caps(free: &[usize], size: impl Fn(usize) -> u64) -> Vec<Option<u64>> {
    let mut sizes: Vec<u64> = free.iter().map(|&i| size(i)).collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let mut out = vec![None];
    out.extend(sizes.into_iter().skip(1).take(3).map(Some));
    out
}

/// Layouts for an explicit allocation (bytes, ratio, fraction, virtual VRAM).
pub(crate) fn explicit_layouts(ctx: &ModelCtx, q: &Quotas, claim: &[Option<usize>]) -> Vec<Layout> {
    let compute = ctx.req.compute;
    let (homes0, reasons) = base(ctx, claim);
    let units = &ctx.inv.units;
    let mut used: BTreeMap<DeviceName, u64> = BTreeMap::new();
    for (i, h) in homes0.iter().enumerate() {
        if let Some(d) = h {
            *used.entry(*d).or_default() += units[i].bytes;
        }
    }
    let mut notes = Vec::new();
    let mut quota_of: BTreeMap<DeviceName, u64> = BTreeMap::new();
    let mut order: Vec<DeviceName> = Vec::new();
    for x in &q.list {
        *quota_of.entry(x.device).or_default() += x.bytes;
        if !order.contains(&x.device) {
            order.push(x.device);
        }
    }
    for (d, &u) in &used {
        let qd = quota_of.get(d).copied().unwrap_or(0);
        // Overrides to a device the allocation does not list are deliberate: no note.
        if u > qd && (*d == compute || quota_of.contains_key(d)) {
            let overridden = (0..units.len())
                .any(|i| homes0[i] == Some(*d) && matches!(reasons[i], Reason::Override(_)));
            let what = match (*d == compute, overridden) {
                (true, false) => "the resident tensors (always on the compute device)",
                (true, true) => "the resident tensors and overridden blocks",
                (false, _) => "overridden blocks",
            };
            notes.push(format!(
                "{what} put {} on {d}, more than its allocation share of {}",
                crate::units::ByteSize(u).human(),
                crate::units::ByteSize(qd).human()
            ));
        }
    }
    let rem = |d: &DeviceName| {
        quota_of
            .get(d)
            .copied()
            .unwrap_or(0)
            .saturating_sub(used.get(d).copied().unwrap_or(0))
    };
    let free: Vec<usize> = (0..units.len()).filter(|&i| homes0[i].is_none()).collect();
    let free_bytes: u64 = free.iter().map(|&i| units[i].bytes).sum();
    let donors: Vec<DeviceName> = order.iter().copied().filter(|d| *d != compute).collect();
    let donor_cap: Vec<u64> = donors.iter().map(rem).collect();
    let (target, round) = if q.absorber_device() == compute {
        (donor_cap.iter().sum::<u64>().min(free_bytes), Round::Down)
    } else {
        (free_bytes.saturating_sub(rem(&compute)), Round::Up)
    };
    let overflow = donors
        .iter()
        .position(|d| *d == q.absorber_device())
        .unwrap_or(donors.len().saturating_sub(1));
    let cands: Vec<Candidate> = free
        .iter()
        .map(|&i| Candidate {
            bytes: units[i].bytes,
            weight: ctx.compute[i],
        })
        .collect();
    let mut out = Vec::new();
    for cap in caps(&free, |i| units[i].bytes) {
        let Some(sel) = select(&cands, target, round, cap) else {
            continue;
        };
        if donors.is_empty() && !sel.is_empty() {
            continue;
        }
        let mut homes = homes0.clone();
        let sel_bytes: Vec<u64> = sel.iter().map(|&j| cands[j].bytes).collect();
        let who = assign_donors(&sel_bytes, &donor_cap, overflow);
        for (&j, &d) in sel.iter().zip(&who) {
            homes[free[j]] = Some(donors[d]);
        }
        let mut notes = notes.clone();
        for (k, d) in donors.iter().enumerate() {
            let got: u64 = sel_bytes
                .iter()
                .zip(&who)
                .filter(|(_, &w)| w == k)
                .map(|(b, _)| b)
                .sum();
            let written = q
                .list
                .iter()
                .filter(|x| x.device == *d)
                .filter_map(|x| x.written)
                .sum::<u64>();
            let limited = q.list.iter().any(|x| x.device == *d && x.written.is_some());
            if limited && got + used.get(d).copied().unwrap_or(0) > written {
                notes.push(format!(
                    "{d} holds {} more than written: blocks are whole",
                    crate::units::ByteSize(got + used.get(d).copied().unwrap_or(0) - written)
                        .human()
                ));
            }
        }
        out.push(Layout {
            homes: homes.into_iter().map(|h| h.unwrap_or(compute)).collect(),
            reasons: reasons.clone(),
            notes,
        });
    }
    if out.is_empty() {
        // Nothing streams (no donors) or no cap worked: everything unplaced stays on compute.
        out.push(Layout {
            homes: homes0.into_iter().map(|h| h.unwrap_or(compute)).collect(),
            reasons,
            notes,
        });
    }
    out
}

/// Layouts for `allocation = "auto"`: keep as much as fits on the compute device, stream the
/// rest from the fastest donors (peer GPU, then host memory, then disk).
pub(crate) fn auto_layouts(
    ctx: &ModelCtx,
    hw: &Hardware,
    ledger: &Ledger,
    claim: &[Option<usize>],
    k: u32,
) -> Vec<Layout> {
    let compute = ctx.req.compute;
    let (homes0, mut reasons) = base(ctx, claim);
    for (i, r) in reasons.iter_mut().enumerate() {
        if homes0[i].is_none() {
            *r = Reason::Auto;
        }
    }
    let units = &ctx.inv.units;
    let free: Vec<usize> = (0..units.len()).filter(|&i| homes0[i].is_none()).collect();
    // In bytes on the compute device: what keeping a unit there costs, and what streaming it
    // saves (a slot holds the largest streamed unit instead).
    let free_held = ctx.held_of(free.iter().copied());
    let fixed_on_compute = ctx.held_of((0..units.len()).filter(|&i| homes0[i] == Some(compute)));
    let usable = hw.usable(compute).map_or(0, |u| u.usable.0);
    let room_for = |ws: u64| {
        usable
            .saturating_sub(ledger.homes_on(compute))
            .saturating_sub(ledger.ws_on(compute).max(ws))
            .saturating_sub(fixed_on_compute)
    };
    let act = ctx.activations + ctx.latents;
    let all = |homes: &Vec<Option<DeviceName>>| {
        homes
            .iter()
            .map(|h| h.unwrap_or(compute))
            .collect::<Vec<_>>()
    };
    // Everything fits: no streaming at all.
    if free_held <= room_for(act) {
        let overridden_stream = (0..units.len()).any(|i| homes0[i].is_some_and(|d| d != compute));
        if !overridden_stream
            || free_held <= room_for(act + k as u64 * max_streamed(ctx, &homes0, compute))
        {
            return vec![Layout {
                homes: all(&homes0),
                reasons,
                notes: vec![],
            }];
        }
    }
    let cands: Vec<Candidate> = free
        .iter()
        .map(|&i| Candidate {
            bytes: ctx.held[i],
            weight: ctx.compute[i],
        })
        .collect();
    let mut donors: Vec<(DeviceName, f64, u64)> = hw
        .devices
        .iter()
        .filter(|d| d.name != compute)
        .map(|d| {
            let room = hw
                .usable(d.name)
                .map_or(0, |u| u.usable.0)
                .saturating_sub(ledger.need(d.name));
            (d.name, link_rate(hw, d.name, compute).value, room)
        })
        .filter(|d| d.2 > 0)
        .collect();
    donors.sort_by(|a, b| b.1.total_cmp(&a.1));
    donors.push((
        DeviceName::Disk,
        link_rate(hw, DeviceName::Disk, compute).value,
        u64::MAX,
    ));
    let mut out = Vec::new();
    for cap in caps(&free, |i| ctx.held[i]) {
        let largest = free
            .iter()
            .map(|&i| ctx.held[i])
            .filter(|&b| cap.is_none_or(|c| b <= c))
            .max()
            .unwrap_or(0);
        let overridden = max_streamed(ctx, &homes0, compute);
        let slot = largest.max(overridden);
        let keep = room_for(act + k as u64 * slot);
        let target = free_held.saturating_sub(keep);
        let Some(sel) = select(&cands, target, Round::Up, cap) else {
            continue;
        };
        // Donors hold the units as stored.
        let sel_bytes: Vec<u64> = sel.iter().map(|&j| units[free[j]].bytes).collect();
        let need: u64 = sel_bytes.iter().sum();
        for split in [Split::FastestFirst, Split::ByRate] {
            let caps = split.capacities(&donors, need);
            if split == Split::ByRate && caps.iter().filter(|&&c| c > 0).count() < 2 {
                continue;
            }
            let who = assign_donors(&sel_bytes, &caps, donors.len() - 1);
            let mut homes = homes0.clone();
            for (&j, &d) in sel.iter().zip(&who) {
                homes[free[j]] = Some(donors[d].0);
            }
            out.push(Layout {
                homes: all(&homes),
                reasons: reasons.clone(),
                notes: vec![],
            });
        }
    }
    if out.is_empty() {
        let homes: Vec<DeviceName> = homes0
            .iter()
            .map(|h| h.unwrap_or(DeviceName::Cpu))
            .collect();
        out.push(Layout {
            homes,
            reasons,
            notes: vec![],
        });
    }
    out
}

/// Largest block already placed off the compute device (by an override), as slot bytes.
fn max_streamed(ctx: &ModelCtx, homes: &[Option<DeviceName>], compute: DeviceName) -> u64 {
    (0..homes.len())
        .filter(|&i| homes[i].is_some_and(|d| d != compute))
        .map(|i| ctx.held[i])
        .max()
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Fill the fastest donor, then the next.
    FastestFirst,
    /// Share in proportion to link rates, so that concurrent links finish together.
    ByRate,
}

impl Split {
    fn capacities(self, donors: &[(DeviceName, f64, u64)], need: u64) -> Vec<u64> {
        let mut caps = vec![0u64; donors.len()];
        let mut left = need;
        match self {
            Split::FastestFirst => {
                for (k, d) in donors.iter().enumerate() {
                    caps[k] = d.2.min(left);
                    left -= caps[k];
                }
            }
            Split::ByRate => {
                // Water-filling over the memory donors; disk (last) only takes what is left.
                let mem = donors.len() - 1;
                let mut open: Vec<usize> = (0..mem).collect();
                while left > 0 && !open.is_empty() {
                    let rate: f64 = open.iter().map(|&k| donors[k].1).sum();
                    let mut full = Vec::new();
                    let before = left;
                    for &k in &open {
                        let share = (before as f64 * donors[k].1 / rate).ceil() as u64;
                        let give = share.min(donors[k].2 - caps[k]).min(left);
                        caps[k] += give;
                        left -= give;
                        if caps[k] == donors[k].2 {
                            full.push(k);
                        }
                    }
                    open.retain(|k| !full.contains(k));
                    if left == before {
                        break;
                    }
                }
                caps[mem] = left;
            }
        }
        caps
    }
}

/// The simulation's view of a layout.
pub(crate) fn sim_units(ctx: &ModelCtx, hw: &Hardware, homes: &[DeviceName]) -> Vec<SimUnit> {
    let compute = ctx.req.compute;
    ctx.inv
        .units
        .iter()
        .enumerate()
        .filter(|(i, _)| ctx.runs[*i])
        .map(|(i, u)| {
            let fetch = (homes[i] != compute).then(|| {
                let gbps = link_rate(hw, homes[i], compute).value;
                (queue_of(homes[i]), u.bytes as f64 / (gbps * 1e9))
            });
            SimUnit {
                compute: ctx.compute[i] + if fetch.is_some() { ctx.dequant[i] } else { 0.0 },
                fetch,
            }
        })
        .collect()
}

/// Scores `layout` for each K and keeps the best: the fastest that fits, preferring fewer slots
/// when they are within 1% of the fastest.
pub(crate) fn choose_k(ctx: &ModelCtx, hw: &Hardware, ledger: &Ledger, layout: Layout) -> Choice {
    let compute = ctx.req.compute;
    let sim = sim_units(ctx, hw, &layout.homes);
    let streamed = layout.homes.iter().any(|h| *h != compute);
    let slot_bytes = (0..layout.homes.len())
        .filter(|&i| layout.homes[i] != compute)
        .map(|i| ctx.slot_of(i))
        .max()
        .unwrap_or(0);
    let ks: Vec<u32> = match (streamed, ctx.req.prefetch) {
        (false, _) => vec![0],
        (true, Some(k)) => vec![k],
        (true, None) => (2..=8).collect(),
    };
    let mut scored: Vec<Choice> = ks
        .iter()
        .map(|&k| {
            let step = if streamed && k == 0 {
                f64::INFINITY
            } else {
                step_seconds(&sim, k)
            };
            let excess = ledger.excess_with(hw, ctx, &layout.homes, k as u64 * slot_bytes);
            Choice {
                layout: layout.clone(),
                slots: k,
                slot_bytes,
                step,
                excess,
            }
        })
        .collect();
    let best_fit = scored
        .iter()
        .filter(|c| c.excess == 0)
        .map(|c| c.step)
        .fold(f64::INFINITY, f64::min);
    if best_fit.is_finite() {
        let pick = scored
            .iter()
            .position(|c| c.excess == 0 && c.step <= best_fit * 1.01)
            .unwrap_or(0);
        return scored.swap_remove(pick);
    }
    // Nothing fits: report the default depth.
    let pick = scored.iter().position(|c| c.slots == 2).unwrap_or(0);
    scored.swap_remove(pick)
}

/// Best choice among layouts: fits first (least excess), then fastest, where steps within
/// 0.5% of the fastest count as equal (the model is not that precise) and the one holding the
/// least compute-device memory in slots wins among them.
pub(crate) fn best(choices: Vec<Choice>) -> Choice {
    let least_excess = |c: &Choice| (c.excess > 0, c.excess);
    let fit = choices
        .iter()
        .map(least_excess)
        .min()
        .expect("every model has at least one layout");
    let fastest = choices
        .iter()
        .filter(|c| least_excess(c) == fit)
        .map(|c| c.step)
        .fold(f64::INFINITY, f64::min);
    choices
        .into_iter()
        .filter(|c| least_excess(c) == fit && c.step <= fastest * 1.005)
        .min_by(|a, b| {
            (a.slots as u64 * a.slot_bytes)
                .cmp(&(b.slots as u64 * b.slot_bytes))
                .then(a.step.total_cmp(&b.step))
        })
        .expect("the fastest choice passes its own filter")
}

/// Places one model against what earlier models already hold.
pub(crate) fn place(
    ctx: &ModelCtx,
    hw: &Hardware,
    ledger: &Ledger,
) -> Result<Choice, Vec<PlanError>> {
    let claim = claims(ctx)?;
    let total = ctx.inv.total_bytes();
    let choices: Vec<Choice> = match &ctx.req.allocation {
        Allocation::Auto => {
            let ks: Vec<u32> = ctx
                .req
                .prefetch
                .map_or((2..=4).collect(), |k| vec![k.max(1)]);
            ks.iter()
                .flat_map(|&k| auto_layouts(ctx, hw, ledger, &claim, k))
                .map(|l| choose_k(ctx, hw, ledger, l))
                .collect()
        }
        alloc => {
            let q = quotas(&ctx.req.name, alloc, ctx.req.compute, total, hw)
                .map_err(|e| vec![e])?
                .expect("explicit allocations have quotas");
            let mut layouts = explicit_layouts(ctx, &q, &claim);
            if let Allocation::VirtualVram { bytes, .. } = alloc {
                let blocks: u64 = ctx.inv.blocks().map(|u| u.bytes).sum();
                if bytes.0 > blocks {
                    for l in &mut layouts {
                        l.notes.push(format!(
                            "virtual_vram {} is more than the model's {} of blocks: every block streams",
                            bytes.human(),
                            crate::units::ByteSize(blocks).human()
                        ));
                    }
                }
            }
            layouts
                .into_iter()
                .map(|l| choose_k(ctx, hw, ledger, l))
                .collect()
        }
    };
    let choice = best(choices);
    if choice.slots == 0 && choice.layout.homes.iter().any(|h| *h != ctx.req.compute) {
        return Err(vec![PlanError::PrefetchZero {
            model: ctx.req.name.clone(),
            compute: ctx.req.compute,
            streamed: choice
                .layout
                .homes
                .iter()
                .filter(|h| **h != ctx.req.compute)
                .count(),
        }]);
    }
    Ok(choice)
}
