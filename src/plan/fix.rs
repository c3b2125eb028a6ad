//! Fixes offered with refusals. A suggested allocation is only offered after planning the whole
//! request with it succeeded, so the string in an error message always works as written.

use crate::alloc::{Allocation, Entry, ExpertAllocation, Mode, Value};
use crate::device::DeviceName;
use crate::hardware::Hardware;
use crate::units::{ByteSize, GIB};

use super::error::Fix;
use super::place::{link_rate, Choice, ModelCtx};
use super::{plan_with, PlanRequest};

/// The allocation as text in the manifest's language: `cuda:0,8GiB;cpu,*`, `auto`,
/// `virtual_vram = 4GiB, donor = cpu`.
pub fn alloc_text(a: &Allocation) -> String {
    match a {
        Allocation::Auto => "auto".into(),
        Allocation::VirtualVram { bytes, donor } => {
            format!("virtual_vram = {bytes}, donor = {donor}")
        }
        Allocation::Expert(e) => e
            .entries
            .iter()
            .map(|x| {
                let v = match x.value {
                    None => String::new(),
                    Some(Value::Bytes(b)) => b.to_string(),
                    Some(Value::Percent(p)) => format!("{p}%"),
                    Some(Value::Fraction(f)) => format!("{f}"),
                };
                format!("{},{v}{}", x.device, if x.wildcard { "*" } else { "" })
            })
            .collect::<Vec<_>>()
            .join(";"),
    }
}

/// `bytes` rounded down to 0.1 GiB, as text (`17.5gb`) and as the bytes that text means.
fn gb(bytes: u64) -> (String, ByteSize) {
    let tenths = bytes / (GIB / 10);
    let text = if tenths.is_multiple_of(10) {
        format!("{}gb", tenths / 10)
    } else {
        format!("{}.{}gb", tenths / 10, tenths % 10)
    };
    let size = ByteSize::parse(&text).expect("the planner writes valid sizes");
    (text, size)
}

fn entry(device: DeviceName, bytes: Option<ByteSize>) -> Entry {
    Entry {
        device,
        value: bytes.map(Value::Bytes),
        wildcard: bytes.is_none(),
        span: Default::default(),
    }
}

fn bytes_alloc(entries: Vec<Entry>) -> Allocation {
    Allocation::Expert(ExpertAllocation {
        mode: Mode::Bytes,
        entries,
    })
}

fn works(req: &PlanRequest, hw: &Hardware, model: usize, alloc: &Allocation) -> bool {
    let mut r = req.clone();
    r.models[model].allocation = alloc.clone();
    plan_with(&r, hw, false).is_ok()
}

/// For an allocation without a wildcard that cannot hold the model: the same entries with the
/// last donor made the wildcard (or `cpu,*` added), preferring a version that plans.
pub(crate) fn quota_short_fix(req: &PlanRequest, i: usize, hw: &Hardware) -> Option<String> {
    let m = &req.models[i];
    let Allocation::Expert(e) = &m.allocation else {
        return None;
    };
    let mut candidates = Vec::new();
    if e.mode == Mode::Bytes {
        if let Some(last) = e.entries.iter().rposition(|x| x.device != m.compute) {
            let mut entries = e.entries.clone();
            entries[last] = entry(entries[last].device, None);
            candidates.push(bytes_alloc(entries));
        }
        for d in [DeviceName::Cpu, DeviceName::Disk] {
            if hw.has(d) && !e.entries.iter().any(|x| x.device == d) {
                let mut entries = e.entries.clone();
                entries.push(entry(d, None));
                candidates.push(bytes_alloc(entries));
            }
        }
    } else if e.mode == Mode::Fraction {
        // Raise the last entry's fraction to cover what is missing.
        let total = m.inventory.total_bytes() as f64;
        let held: f64 = e
            .entries
            .iter()
            .map(|x| match x.value {
                Some(Value::Fraction(f)) => {
                    f * hw.device(x.device).map_or(0, |d| d.memory.0) as f64
                }
                _ => 0.0,
            })
            .sum();
        if let Some(last) = e.entries.last() {
            let mem = hw.device(last.device).map_or(0, |d| d.memory.0) as f64;
            let Some(Value::Fraction(f)) = last.value else {
                return None;
            };
            let want = ((f + (total - held) / mem.max(1.0)) * 100.0).ceil() / 100.0;
            if want <= 1.0 {
                let mut entries = e.entries.clone();
                let n = entries.len();
                entries[n - 1].value = Some(Value::Fraction(want));
                candidates.push(Allocation::Expert(ExpertAllocation {
                    mode: Mode::Fraction,
                    entries,
                }));
            }
        }
    }
    let pick = candidates
        .iter()
        .find(|a| works(req, hw, i, a))
        .or(candidates.first())?;
    Some(alloc_text(pick))
}

/// A fix for `device` being `excess` bytes over: reduce one model's share there and give it to
/// a donor, checked by planning.
pub(crate) fn fit_fix(
    req: &PlanRequest,
    hw: &Hardware,
    ctxs: &[ModelCtx],
    choices: &[Choice],
    device: DeviceName,
    excess: u64,
) -> Fix {
    // Models with weights on `device`, most first; `auto` ones already kept only what fits.
    let mut models: Vec<(usize, u64)> = ctxs
        .iter()
        .zip(choices)
        .enumerate()
        .filter(|(i, _)| req.models[*i].allocation != Allocation::Auto)
        .map(|(i, (ctx, c))| {
            let b: u64 = ctx
                .inv
                .units
                .iter()
                .zip(&c.layout.homes)
                .filter(|(_, h)| **h == device)
                .map(|(u, _)| u.bytes)
                .sum();
            (i, b)
        })
        .filter(|x| x.1 > 0)
        .collect();
    models.sort_by_key(|m| std::cmp::Reverse(m.1));
    for &(i, on_device) in &models {
        let ctx = &ctxs[i];
        let m = &req.models[i];
        let amounts = amounts(ctx, &choices[i]);
        // The excess is in bytes as held there; quotas are in stored bytes. On the compute
        // device, convert with the ratio of the model's units there (a first guess: the
        // attempts below step further down and `works` checks each).
        let ratio = if device == m.compute {
            let held = ctx.held_of(
                (0..ctx.inv.units.len()).filter(|&u| choices[i].layout.homes[u] == device),
            );
            held as f64 / on_device as f64
        } else {
            1.0
        };
        let shortfall = (excess as f64 / ratio.max(1e-9)).ceil() as u64;
        let floor = if device == m.compute {
            ctx.inv.resident_bytes()
        } else {
            0
        };
        if on_device < floor + shortfall {
            continue;
        }
        let step = (GIB / 2).max(choices[i].slot_bytes);
        for donor in donors(m, hw, device) {
            for attempt in 0..12u64 {
                let Some(q) = (on_device - shortfall).checked_sub(attempt * step) else {
                    break;
                };
                if q < floor {
                    break;
                }
                let Some((alloc, key, text)) = rewrite(m, &amounts, device, q, donor) else {
                    break;
                };
                if works(req, hw, i, &alloc) {
                    return Fix::Allocation {
                        model: m.name.clone(),
                        bytes: excess,
                        key,
                        text,
                    };
                }
            }
        }
    }
    // Nothing movable: the working set itself is too large.
    let movable: u64 = models.iter().map(|x| x.1).sum();
    if movable == 0
        || ctxs.iter().any(|c| {
            c.req.compute == device
                && c.activations + c.latents > hw.usable(device).map_or(0, |u| u.usable.0)
        })
    {
        let big = ctxs
            .iter()
            .filter(|c| c.req.compute == device)
            .max_by_key(|c| c.activations + c.latents);
        if let Some(c) = big {
            return Fix::Shrink {
                text: format!(
                    "`{}`'s activations and latents alone take {:.1} GiB at {}×{}, batch {}: lower the resolution or the batch, or compute on a larger device",
                    c.req.name,
                    ByteSize(c.activations + c.latents).as_gib(),
                    c.req.workload.width,
                    c.req.workload.height,
                    c.req.workload.batch
                ),
            };
        }
    }
    Fix::MoveBytes { bytes: excess }
}

/// Stored bytes per device of a chosen layout, in first-use order.
fn amounts(ctx: &ModelCtx, c: &Choice) -> Vec<(DeviceName, u64)> {
    let mut out: Vec<(DeviceName, u64)> = Vec::new();
    for (u, &h) in ctx.inv.units.iter().zip(&c.layout.homes) {
        match out.iter_mut().find(|x| x.0 == h) {
            Some(x) => x.1 += u.bytes,
            None => out.push((h, u.bytes)),
        }
    }
    out
}

/// Where to move bytes off `device`: the model's own donors first (as written), then other
/// devices by link rate to the compute device, then disk.
fn donors(m: &super::ModelRequest, hw: &Hardware, device: DeviceName) -> Vec<DeviceName> {
    let mut out: Vec<DeviceName> = Vec::new();
    if let Allocation::Expert(e) = &m.allocation {
        out.extend(e.entries.iter().filter(|x| x.wildcard).map(|x| x.device));
        out.extend(e.entries.iter().map(|x| x.device));
    }
    if let Allocation::VirtualVram { donor, .. } = &m.allocation {
        out.push(*donor);
    }
    let mut others: Vec<DeviceName> = hw.devices.iter().map(|d| d.name).collect();
    others.sort_by(|a, b| {
        link_rate(hw, *b, m.compute)
            .value
            .total_cmp(&link_rate(hw, *a, m.compute).value)
    });
    out.extend(others);
    out.push(DeviceName::Disk);
    let mut seen = Vec::new();
    out.retain(|d| {
        *d != device && *d != m.compute && !seen.contains(d) && {
            seen.push(*d);
            true
        }
    });
    out
}

/// `m`'s allocation rewritten so that `device` holds `q` bytes and `donor` takes the rest.
fn rewrite(
    m: &super::ModelRequest,
    amounts: &[(DeviceName, u64)],
    device: DeviceName,
    q: u64,
    donor: DeviceName,
) -> Option<(Allocation, &'static str, String)> {
    if let Allocation::VirtualVram { donor: d, .. } = m.allocation {
        if device == m.compute && d == donor {
            let total = m.inventory.total_bytes();
            // Round the moved bytes up to 0.1 GiB so the compute device keeps at most `q`.
            let (_, keep) = gb(q);
            let moved = total - keep.0.min(total);
            let tenths = moved.div_ceil(GIB / 10);
            let text = if tenths.is_multiple_of(10) {
                format!("{}gb", tenths / 10)
            } else {
                format!("{}.{}gb", tenths / 10, tenths % 10)
            };
            let bytes = ByteSize::parse(&text).ok()?;
            return Some((
                Allocation::VirtualVram { bytes, donor },
                "virtual_vram",
                text,
            ));
        }
    }
    // A bytes-mode string: the device at fault first, the other homes at their current
    // amounts (rounded down), the donor as the wildcard.
    let mut entries = vec![entry(device, Some(gb(q).1))];
    let mut order: Vec<(DeviceName, u64)> = amounts.to_vec();
    if let Some(pos) = order.iter().position(|x| x.0 == m.compute) {
        let c = order.remove(pos);
        order.insert(0, c);
    }
    for &(d, b) in &order {
        if d != device && d != donor {
            entries.push(entry(d, Some(gb(b).1)));
        }
    }
    if device != m.compute {
        if let Some(pos) = entries.iter().position(|x| x.device == m.compute) {
            let c = entries.remove(pos);
            entries.insert(0, c);
        }
    }
    entries.push(entry(donor, None));
    let alloc = bytes_alloc(entries);
    let text = alloc_text_gb(&alloc);
    Some((alloc, "allocation", text))
}

/// Like [`alloc_text`], with sizes written the way DisTorch users write them (`17.5gb`).
fn alloc_text_gb(a: &Allocation) -> String {
    let Allocation::Expert(e) = a else {
        return alloc_text(a);
    };
    e.entries
        .iter()
        .map(|x| match x.value {
            Some(Value::Bytes(b)) => format!("{},{}", x.device, gb(b.0).0),
            _ => format!("{},*", x.device),
        })
        .collect::<Vec<_>>()
        .join(";")
}
