//! Expert switches (Wan 2.2 A14B): two diffusion models that take turns within one sampling
//! run. Both are placed by the ordinary planner, each as if it were the only diffusion model
//! (the [`Ledger`] counts a pair's weights as the larger of the two per device, not the sum).
//! Here the planner decides how the executor switches, and what a switch costs:
//!
//! - **both loaded** when the two placements fit side by side on every device they use (with
//!   everything else the plan holds): the ledger then counts both, and a switch is free;
//! - otherwise **swap**: the executor releases the outgoing expert and loads the incoming one
//!   per its placement. Cost of one swap: the incoming expert's bytes not homed on `disk`
//!   (read from its file) at the disk read rate, plus its compute-device bytes uploaded over
//!   the host link (0 on a CPU compute device). The larger direction is reported, since a run
//!   of several batches swaps back to the high-noise expert for each new batch.
//!
//! Page-cached files read faster than the disk rate, so the prediction errs high when the
//! machine's RAM holds both files.

use super::place::{link_rate, Choice, ModelCtx};
use super::{Ledger, PlanRequest, SwitchPlan};
use crate::device::DeviceName;
use crate::hardware::Hardware;

/// One swap into `ctx`'s placement: (bytes read, bytes uploaded, seconds, assumed).
fn swap_cost(ctx: &ModelCtx, c: &Choice, hw: &Hardware) -> (u64, u64, f64, bool) {
    let compute = ctx.req.compute;
    let mut read = 0u64;
    let mut upload = 0u64;
    for (i, (u, &h)) in ctx.inv.units.iter().zip(&c.layout.homes).enumerate() {
        if h == DeviceName::Disk {
            continue;
        }
        read += u.bytes;
        if h == compute && compute != DeviceName::Cpu {
            upload += ctx.held[i];
        }
    }
    let disk = hw.disk_read();
    let mut seconds = read as f64 / (disk.value * 1e9);
    let mut assumed = disk.is_assumed();
    if upload > 0 {
        let host = link_rate(hw, DeviceName::Cpu, compute);
        seconds += upload as f64 / (host.value * 1e9);
        assumed |= host.is_assumed();
    }
    (read, upload, seconds, assumed)
}

/// Decides each pair's switch and, for pairs that stay loaded together, makes the ledger
/// count both experts' weights.
pub(super) fn plan_switches(
    req: &PlanRequest,
    hw: &Hardware,
    ctxs: &[ModelCtx],
    choices: &[Choice],
    ledger: &mut Ledger,
) -> Vec<SwitchPlan> {
    let mut out = Vec::new();
    for pair in &req.experts {
        let find = |n: &str| req.models.iter().position(|m| m.name == n);
        let (Some(hi), Some(lo)) = (find(&pair.high), find(&pair.low)) else {
            continue;
        };
        let before = ctxs[hi].bytes_by_device(&choices[hi].layout.homes);
        let after = ctxs[lo].bytes_by_device(&choices[lo].layout.homes);
        // Side by side: today's need plus the smaller expert's share on each device.
        let fits = before
            .keys()
            .chain(after.keys())
            .filter(|d| **d != DeviceName::Disk)
            .all(|&d| {
                let extra = before
                    .get(&d)
                    .copied()
                    .unwrap_or(0)
                    .min(after.get(&d).copied().unwrap_or(0));
                match hw.usable(d) {
                    Some(u) => ledger.need(d) + extra <= u.usable.0,
                    None => true,
                }
            });
        if fits {
            ledger.groups.remove(&pair.high);
            ledger.groups.remove(&pair.low);
            ledger.index_groups.remove(&hi);
            ledger.index_groups.remove(&lo);
        }
        let (bytes, upload_bytes, seconds, assumed) = if fits {
            (0, 0, 0.0, false)
        } else {
            let a = swap_cost(&ctxs[lo], &choices[lo], hw);
            let b = swap_cost(&ctxs[hi], &choices[hi], hw);
            if b.2 > a.2 {
                b
            } else {
                a
            }
        };
        out.push(SwitchPlan {
            high: pair.high.clone(),
            low: pair.low.clone(),
            resident_both: fits,
            before,
            after,
            bytes,
            upload_bytes,
            seconds,
            assumed,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::alloc::Allocation;
    use crate::device::DeviceName;
    use crate::family::Family;
    use crate::inventory::synthetic;
    use crate::plan::tests::hw;
    use crate::plan::{plan, render_text, ExpertPair, ModelRequest, PlanRequest, Workload};
    use crate::weights::DType;

    /// Two Wan 14B-shaped experts (bf16, 28.6 GB each) at 832×480×81 with CFG.
    fn a14b() -> PlanRequest {
        let inv = Arc::new(synthetic::wan(DType::BF16, 5120, 13824, 40));
        let workload = Workload {
            width: 832,
            height: 480,
            frames: 81,
            batch: 1,
            steps: 20,
            evals_per_step: 2,
            text_tokens: 512,
            fp8_linears: false,
        };
        let expert = |name: &str| ModelRequest {
            name: name.into(),
            family: Family::Wan,
            compute: DeviceName::Cuda(0),
            allocation: Allocation::Auto,
            overrides: vec![],
            inventory: inv.clone(),
            device_bytes: None,
            patch_flops_per_value: 0.0,
            workload,
            prefetch: None,
        };
        PlanRequest {
            models: vec![expert("high"), expert("low")],
            experts: vec![ExpertPair {
                high: "high".into(),
                low: "low".into(),
            }],
        }
    }

    #[test]
    fn a_24gb_card_swaps_experts_and_holds_one_at_a_time() {
        let hw = hw("hw-4090-cpu.toml");
        let p = plan(&a14b(), &hw).unwrap();
        let text = render_text(&p);
        let [sw] = p.switches.as_slice() else {
            panic!("{text}")
        };
        assert!(!sw.resident_both, "{text}");
        let gpu = |m: &std::collections::BTreeMap<DeviceName, u64>| m[&DeviceName::Cuda(0)];
        // Each expert got the card to itself; the card holds the larger of the two.
        let d0 = &p.devices[0];
        assert_eq!(d0.weights, gpu(&sw.before).max(gpu(&sw.after)), "{text}");
        assert!(gpu(&sw.before) > 8 << 30, "{text}");
        // One swap reads the incoming expert's non-disk bytes and uploads its GPU share.
        let total: u64 = p.models[1].placement.values().sum();
        assert_eq!(sw.bytes, total, "{text}");
        assert_eq!(sw.upload_bytes, gpu(&sw.after), "{text}");
        let want = total as f64 / (hw.disk_read().value * 1e9)
            + sw.upload_bytes as f64 / (hw.link(DeviceName::Cpu, DeviceName::Cuda(0)).value * 1e9);
        assert!((sw.seconds - want).abs() < 1e-9 * want, "{text}");
        assert!(text.contains("expert switch `high` → `low`"), "{text}");
        assert!(text.contains("swap: release the outgoing expert"), "{text}");
    }

    #[test]
    fn experts_that_fit_side_by_side_stay_loaded() {
        let hw = hw("hw-h100-cpu.toml");
        let p = plan(&a14b(), &hw).unwrap();
        let text = render_text(&p);
        let sw = &p.switches[0];
        assert!(sw.resident_both, "{text}");
        assert_eq!((sw.bytes, sw.seconds), (0, 0.0));
        // Both experts' weights are counted on the card.
        let both: u64 = p
            .models
            .iter()
            .map(|m| m.placement.get(&DeviceName::Cuda(0)).copied().unwrap_or(0))
            .sum();
        assert_eq!(p.devices[0].weights, both, "{text}");
        assert!(text.contains("both experts stay loaded"), "{text}");
    }
}
