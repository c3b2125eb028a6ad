//! Plans for people ([`render_text`]) and programs ([`render_json`]). Every number that rests on
//! an assumption rather than a measurement is marked `*` and explained at the end.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::device::DeviceName;
use crate::units::ByteSize;

use super::{ModelPlan, Plan, SwitchPlan};

/// The plan as JSON (`models[].name`, `.compute`, `.placement`, `.blocks[]`,
/// `.predicted.step_seconds`, `.predicted.slowdown`, …).
pub fn render_json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).expect("plans serialise to JSON")
}

/// What `mgpu plan --json` prints: [`render_json`]'s plan with `format` and `mgpu_version`
/// first ([`PlanOutput`]).
pub fn render_json_output(plan: &Plan) -> String {
    let out = PlanOutput {
        format: PLAN_FORMAT,
        mgpu_version: env!("CARGO_PKG_VERSION").into(),
        plan: plan.clone(),
    };
    serde_json::to_string_pretty(&out).expect("plans serialise to JSON")
}

/// Version of the `mgpu plan --json` layout (bumped when a field changes meaning).
pub const PLAN_FORMAT: u32 = 1;

/// `mgpu plan --json`: the plan with a version (schemas/plan.schema.json).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct PlanOutput {
    pub format: u32,
    pub mgpu_version: String,
    #[serde(flatten)]
    pub plan: Plan,
}

fn h(b: u64) -> String {
    ByteSize(b).human()
}

fn secs(s: f64) -> String {
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else if s >= 100.0 {
        format!("{s:.0} s")
    } else if s >= 1.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.3} s")
    }
}

/// The plan as a readable report.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let mut assumed: Vec<String> = Vec::new();
    for m in &plan.models {
        model(&mut out, m, &mut assumed);
        out.push('\n');
    }
    for sw in &plan.switches {
        switch(&mut out, sw, &mut assumed);
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>12} {:>10}",
        "device", "usable", "weights", "working set", "free"
    );
    for d in &plan.devices {
        let opt = |x: Option<u64>| x.map(h).unwrap_or_else(|| "-".into());
        let ws = if d.working_set > 0 {
            h(d.working_set)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>10} {:>12} {:>10}",
            d.name.to_string(),
            opt(d.usable),
            h(d.weights),
            ws,
            opt(d.free)
        );
    }
    if !assumed.is_empty() {
        out.push_str(
            "\n* assumed, not measured (measure with `mgpu probe --bench --save FILE`):\n",
        );
        for a in assumed {
            let _ = writeln!(out, "  {a}");
        }
    }
    out
}

fn per_device(m: &BTreeMap<DeviceName, u64>) -> String {
    m.iter()
        .map(|(d, b)| format!("{d} {}", h(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An expert switch: where each expert lives before and after, and what a switch costs.
fn switch(out: &mut String, sw: &SwitchPlan, assumed: &mut Vec<String>) {
    let _ = writeln!(out, "expert switch `{}` → `{}`", sw.high, sw.low);
    let _ = writeln!(
        out,
        "  before (`{}` computes): {}",
        sw.high,
        per_device(&sw.before)
    );
    let _ = writeln!(
        out,
        "  after  (`{}` computes): {}",
        sw.low,
        per_device(&sw.after)
    );
    if sw.resident_both {
        let _ = writeln!(
            out,
            "  both experts stay loaded (they fit side by side): a switch moves nothing"
        );
    } else {
        let star = if sw.assumed { "*" } else { "" };
        let _ = writeln!(
            out,
            "  swap: release the outgoing expert, load the incoming one: {} read ({} uploaded) in {}{star}",
            h(sw.bytes),
            h(sw.upload_bytes),
            secs(sw.seconds)
        );
        let _ = writeln!(
            out,
            "  (once per batch, and once more back to `{}` before each further batch)",
            sw.high
        );
        if sw.assumed {
            let note = "swap time: disk read and host-link rates".to_string();
            if !assumed.contains(&note) {
                assumed.push(note);
            }
        }
    }
}

fn model(out: &mut String, m: &ModelPlan, assumed: &mut Vec<String>) {
    let w = &m.workload;
    let size = match m.family.role() {
        crate::family::Role::TextEncoder => String::new(),
        _ if w.frames > 1 => format!("{}×{}×{} · ", w.width, w.height, w.frames),
        _ => format!("{}×{} · ", w.width, w.height),
    };
    let _ = writeln!(
        out,
        "{} ({}) computes on {} · {size}{} tokens · batch {} · {} step{}",
        m.name,
        m.family,
        m.compute,
        m.tokens,
        w.batch,
        w.steps,
        if w.steps == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "  allocation   {}", m.allocation);
    // Placement: bytes and unit counts per device, compute device first.
    let mut devs: Vec<DeviceName> = m.placement.keys().copied().collect();
    devs.sort_by_key(|d| (*d != m.compute, *d));
    for (i, d) in devs.iter().enumerate() {
        let blocks = m
            .blocks
            .iter()
            .filter(|b| b.home == *d && b.kind == crate::inventory::UnitKind::Block)
            .count();
        let res = m
            .blocks
            .iter()
            .any(|b| b.home == *d && b.kind == crate::inventory::UnitKind::Resident);
        let what = match (res, blocks) {
            (true, 0) => "resident tensors".to_string(),
            (true, n) => format!(
                "resident tensors + {n} block{}",
                if n == 1 { "" } else { "s" }
            ),
            (false, n) => format!("{n} block{}", if n == 1 { "" } else { "s" }),
        };
        let _ = writeln!(
            out,
            "  {:<12} {:<7} {:>10}  {what}",
            if i == 0 { "placement" } else { "" },
            d.to_string(),
            h(m.placement[d])
        );
    }
    for (i, d) in devs.iter().enumerate() {
        let text = ranges(m, *d);
        let lines = wrap(&text, 70);
        for (j, line) in lines.iter().enumerate() {
            let label = if i == 0 && j == 0 { "blocks" } else { "" };
            let dev = if j == 0 { d.to_string() } else { String::new() };
            let _ = writeln!(out, "  {label:<12} {dev:<7} {line}");
        }
    }
    if m.prefetch_slots > 0 {
        let _ = writeln!(
            out,
            "  prefetch     {} slot{} × {} = {}",
            m.prefetch_slots,
            if m.prefetch_slots == 1 { "" } else { "s" },
            h(m.slot_bytes),
            h(m.working_set.slots)
        );
    } else {
        let _ = writeln!(out, "  prefetch     none: every block is resident");
    }
    let ws = &m.working_set;
    let _ = writeln!(
        out,
        "  working set  {} weights + {} slots + {} activations + {} latents = {} on {}",
        h(ws.resident),
        h(ws.slots),
        h(ws.activations),
        h(ws.latents),
        h(ws.total),
        m.compute
    );
    let p = &m.predicted;
    let star = |a: bool| if a { " *" } else { "" };
    let any_assumed = p.tflops_assumed || p.per_link.iter().any(|l| l.assumed);
    let _ = writeln!(
        out,
        "  predicted    {}/step{} ({} for {} step{}) · all resident {}/step · slowdown {:.2}× · floor {}",
        secs(p.step_seconds),
        star(any_assumed),
        secs(p.run_seconds),
        w.steps,
        if w.steps == 1 { "" } else { "s" },
        secs(p.resident_step_seconds),
        p.slowdown,
        secs(p.floor_seconds)
    );
    let _ = writeln!(
        out,
        "  compute      {}/step on {} at {} TFLOP/s{} × {:.3} efficiency",
        secs(p.compute_seconds),
        m.compute,
        tflops_text(p.tflops),
        star(p.tflops_assumed),
        p.efficiency
    );
    if p.tflops_assumed {
        let a = format!("{} at {} TFLOP/s bf16", m.compute, tflops_text(p.tflops));
        if !assumed.contains(&a) {
            assumed.push(a);
        }
    }
    for (i, l) in p.per_link.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {:<12} {} → {}  {}/step at {:.1} GB/s{} = {}",
            if i == 0 { "copies" } else { "" },
            l.from,
            l.to,
            h(l.bytes),
            l.gbps,
            star(l.assumed),
            secs(l.seconds)
        );
        if l.assumed {
            let a = format!("{} → {} at {} GB/s: {}", l.from, l.to, l.gbps, l.basis);
            if !assumed.contains(&a) {
                assumed.push(a);
            }
        }
    }
    for (i, n) in m.notes.iter().enumerate() {
        let _ = writeln!(out, "  {:<12} {n}", if i == 0 { "notes" } else { "" });
    }
}

/// Units homed on `d` as compact ranges: `resident, double_blocks.0-2,4 single_blocks.0-37`.
fn ranges(m: &ModelPlan, d: DeviceName) -> String {
    let mut groups: Vec<(String, Vec<u64>)> = Vec::new();
    let mut plain: Vec<String> = Vec::new();
    for b in m.blocks.iter().filter(|b| b.home == d) {
        match b
            .name
            .rsplit_once('.')
            .and_then(|(g, i)| Some((g, i.parse::<u64>().ok()?)))
        {
            Some((g, i)) => match groups.iter_mut().find(|x| x.0 == g) {
                Some(x) => x.1.push(i),
                None => groups.push((g.to_string(), vec![i])),
            },
            None => plain.push(b.name.clone()),
        }
    }
    let mut parts = plain;
    for (g, mut idx) in groups {
        idx.sort_unstable();
        let mut runs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut start = idx[0];
        let mut prev = idx[0];
        for &i in &idx[1..] {
            if i != prev + 1 {
                runs.insert(start, prev);
                start = i;
            }
            prev = i;
        }
        runs.insert(start, prev);
        let text: Vec<String> = runs
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        parts.push(format!("{g}.{}", text.join(",")));
    }
    parts.join(" ")
}

/// Splits at spaces and commas so that lines stay under `width`.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut word = String::new();
    let flush = |word: &mut String, lines: &mut Vec<String>| {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.chars().count() + word.chars().count() > width {
            lines.push(word.trim_start().to_string());
        } else {
            last.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        word.push(c);
        if c == ',' || c == ' ' {
            flush(&mut word, &mut lines);
        }
    }
    flush(&mut word, &mut lines);
    lines
        .into_iter()
        .map(|l| l.trim_end().to_string())
        .collect()
}

/// A TFLOP/s figure with the precision it deserves: `790`, `25.0`, `0.50`.
fn tflops_text(t: f64) -> String {
    if t >= 100.0 {
        format!("{t:.0}")
    } else if t >= 10.0 {
        format!("{t:.1}")
    } else {
        format!("{t:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_long_lists() {
        let s = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let lines = wrap(&s, 20);
        assert!(lines.iter().all(|l| l.len() <= 21), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), s);
    }
}
