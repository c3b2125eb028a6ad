//! The benchmark's table: one row per (placement, batch) cell, the pass and the wall per
//! step, stalls, bytes and rate streamed, the floor, bit-identity and the planner's prediction.

use std::collections::BTreeMap;

use super::BenchReport;

/// Renders the measurements as a table.
pub fn render(report: &BenchReport, floor_gbps: Option<f64>) -> String {
    let frames = if report.frames > 1 {
        format!("×{} frames", report.frames)
    } else {
        String::new()
    };
    let mut out = format!(
        "{} on {}: {:.2} B parameters ({:.2} GB in blocks, {:.2} GB resident rest), {}×{}{frames}, {} tokens, {} text tokens, {} evaluation{} per job, {} slots\n",
        report.model,
        report.device,
        report.parameters as f64 / 1e9,
        report.block_bytes as f64 / 1e9,
        report.resident_bytes as f64 / 1e9,
        report.width,
        report.height,
        report.tokens,
        report.txt_tokens,
        report.evals_per_job,
        if report.evals_per_job == 1 { "" } else { "s" },
        report.slots
    );
    let predicted = report
        .measurements
        .iter()
        .any(|m| m.predicted_seconds.is_some());
    let pw = report
        .measurements
        .iter()
        .map(|m| m.placement.chars().count())
        .max()
        .unwrap_or(0)
        .max(15);
    out.push_str(&format!(
        "{:<pw$} {:>5} {:>2} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9}{}\n",
        "placement",
        "batch",
        "K",
        "s/step",
        "wall s",
        "stall s",
        "streamed",
        "GB/s",
        "floor",
        "identical",
        if predicted { "  predicted (error)" } else { "" }
    ));
    let resident: BTreeMap<usize, f64> = report
        .measurements
        .iter()
        .filter(|m| m.placement == "resident")
        .map(|m| (m.batch, m.step_seconds))
        .collect();
    for m in &report.measurements {
        let floor = match (resident.get(&m.batch), floor_gbps) {
            (Some(r), Some(bw)) => format!("{:.3}", r.max(m.streamed_bytes as f64 / (bw * 1e9))),
            (Some(r), None) => format!("≥{r:.3}"),
            _ => "-".into(),
        };
        // The wall seconds per step (the pass and the work between passes).
        let wall = if m.steps.is_empty() {
            0.0
        } else {
            m.run_seconds / m.steps.len() as f64
        };
        // With the gap measured the prediction is of the wall per step, else of the pass.
        let against = if m.gap_seconds.is_some() {
            wall
        } else {
            m.step_seconds
        };
        let prediction = match m.predicted_seconds {
            Some(p) if predicted && against > 0.0 => {
                format!("  {p:>9.4} ({:+.1}%)", (p / against - 1.0) * 100.0)
            }
            _ if predicted => format!("  {:>9}", "-"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<pw$} {:>5} {:>2} {:>9.4} {:>9.4} {:>9.4} {:>8.2}GB {:>9.1} {:>9} {:>9}{prediction}\n",
            m.placement,
            m.batch,
            m.slots,
            m.step_seconds,
            wall,
            m.wait_seconds,
            m.streamed_bytes as f64 / 1e9,
            m.streamed_gbps,
            floor,
            match m.identical {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        ));
    }
    // The work between passes the predictions counted on (copies continue through it).
    let gaps: BTreeMap<usize, f64> = report
        .measurements
        .iter()
        .filter_map(|m| m.gap_seconds.map(|g| (m.batch, g)))
        .collect();
    if predicted && !gaps.is_empty() {
        let list: Vec<String> = gaps
            .iter()
            .map(|(b, g)| format!("batch {b} {:.1} ms", g * 1e3))
            .collect();
        out.push_str(&format!(
            "s/step: one pass over the blocks (median); wall s: per step, with the work between passes ({}, measured on the cells that stream nothing), which the predictions count and copies continue through\n",
            list.join(", ")
        ));
    }
    for m in &report.measurements {
        if let Some(q) = &m.quality {
            out.push_str(&format!(
                "{} batch {}: first-step velocity against the bf16 `resident` cell: max |Δ| {:.4}, PSNR {:.1} dB\n",
                m.placement, m.batch, q.max_abs_error, q.psnr_db
            ));
        }
    }
    // Two experts: whole runs, the switch included, against the resident run of the batch.
    let runs: BTreeMap<usize, f64> = report
        .measurements
        .iter()
        .filter(|m| m.placement == "resident" && m.switch_step.is_some())
        .map(|m| (m.batch, m.run_seconds))
        .collect();
    for m in report
        .measurements
        .iter()
        .filter(|m| m.switch_step.is_some())
    {
        let n = m.steps.len();
        let vs = runs
            .get(&m.batch)
            .filter(|r| **r > 0.0)
            .map(|r| format!(", {:.3} × resident", m.run_seconds / r))
            .unwrap_or_default();
        let pred = m
            .predicted_seconds
            .map(|p| format!("; predicted {:.2} s", p * n as f64))
            .unwrap_or_default();
        out.push_str(&format!(
            "run {:<11} batch {}: {:.2} s for {n} timed steps, low-noise expert from step {} (warm-up counted){vs}{pred}\n",
            m.placement,
            m.batch,
            m.run_seconds,
            m.switch_step.unwrap_or(0) + 1,
        ));
    }
    out
}
