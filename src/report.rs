//! The one place that prints progress and tables: typed events in, text out.
//!
//! - [`Progress`] renders the queue's [`crate::exec::queue::RunEvent`]s while a run goes:
//!   indicatif bars on a terminal (images done, steps of the current batch with it/s, ETA and
//!   fetch wait), plain lines otherwise (logs, CI), only failures with `--quiet`;
//! - [`ReportBuilder`] collects the same events into the machine-readable [`RunReport`]
//!   (`mgpu run --report FILE`; field names are stable, documented in docs/executor.md);
//! - [`render_summary`] and [`render_golden`] are the end-of-run tables;
//! - [`html`] renders a [`RunReport`] as one self-contained page (`--html FILE`).

mod golden;
pub mod html;
mod json;
pub mod progress;

pub use golden::render_golden;
pub use json::{
    job_reports, BatchReport, Counts, DeviceBytes, JobLora, JobModel, JobReport, ModelReport,
    PhaseReport, ReportBuilder, RunReport, RunStatus, StepReport, TaskReport, TaskState,
    REPORT_FORMAT,
};
pub use progress::{Progress, ProgressMode};

use crate::exec::phase::Phase;

/// `1536` → `1.50 KiB`; bytes below 1 KiB as `N B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// `75.3` → `1m15s`; under a minute `12.3s`.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "?".into();
    }
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{}m{:02}s", t / 60, t % 60)
    } else {
        format!("{}h{:02}m", t / 3600, t % 3600 / 60)
    }
}

/// The run's outcome in words. A run whose images were all made but whose golden comparison
/// failed says so rather than "finished with failures … 0 failed" (issue 14).
pub fn status_word(r: &RunReport) -> &'static str {
    match r.status {
        RunStatus::Ok => "done",
        RunStatus::Failed if r.counts.failed == 0 && r.golden.as_ref().is_some_and(|g| !g.ok) => {
            "done, but the golden comparison failed"
        }
        RunStatus::Failed => "finished with failures",
        RunStatus::Interrupted => "interrupted",
        RunStatus::Error => "stopped by an error",
    }
}

/// The end-of-run table: counts, then every failed image with its error.
pub fn render_summary(r: &RunReport) -> String {
    let c = &r.counts;
    let mut s = format!(
        "{}: {} made, {} up to date, {} failed",
        status_word(r),
        c.made,
        c.skipped,
        c.failed
    );
    if c.not_run > 0 {
        s.push_str(&format!(", {} not run", c.not_run));
    }
    s.push_str(&format!(" in {}", human_seconds(r.seconds)));
    if let Some(shard) = &r.shard {
        s.push_str(&format!(" (shard {shard})"));
    }
    s.push('\n');
    if let Some(line) = phase_line(&r.phases) {
        s.push_str(&line);
        s.push('\n');
    }
    let failed: Vec<&TaskReport> = r
        .tasks
        .iter()
        .filter(|t| t.status == TaskState::Failed)
        .collect();
    if !failed.is_empty() {
        s.push_str("failed images:\n");
        for t in failed {
            s.push_str(&format!(
                "  {}#{} (seed {}) → {}: {}\n",
                t.job,
                t.index,
                t.seed,
                t.output.display(),
                t.error.as_deref().unwrap_or("?")
            ));
        }
    }
    if let Some(e) = &r.error {
        s.push_str(&format!("error: {e}\n"));
    }
    s
}

/// One line: each phase's seconds summed over models (bytes where they mean something), in
/// the order of [`Phase::ALL`]; `None` when the run reported none.
pub fn phase_line(phases: &[PhaseReport]) -> Option<String> {
    if phases.is_empty() {
        return None;
    }
    let parts: Vec<String> = Phase::ALL
        .iter()
        .filter_map(|&ph| {
            let of: Vec<&PhaseReport> = phases.iter().filter(|p| p.phase == ph).collect();
            if of.is_empty() {
                return None;
            }
            let secs: f64 = of.iter().map(|p| p.seconds).sum();
            let bytes: u64 = of.iter().map(|p| p.bytes).sum();
            let mut t = format!("{ph} {}", human_seconds(secs));
            if bytes > 0 && !matches!(ph, Phase::Write) {
                t.push_str(&format!(" ({})", human_bytes(bytes)));
            }
            if ph == Phase::Hash {
                t.push_str(" in background");
            }
            Some(t)
        })
        .collect();
    Some(format!("time: {}", parts.join(", ")))
}

#[cfg(test)]
mod tests;
