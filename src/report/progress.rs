//! Live progress of `mgpu run`: indicatif bars on a terminal, plain lines otherwise.
//!
//! Bars: one for the images of the run (made / to make, elapsed, ETA) and one for the steps
//! of the current batch (it/s, fetch wait); messages print above them. Lines (not a terminal):
//! one line per stage, batch, step, written image and failure, for logs and CI. Quiet: only
//! failures and warnings.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{human_bytes, human_seconds};
use crate::exec::queue::{Action, RunEvent, TaskInfo};
use crate::exec::Event;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bars,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// Bars when stderr is a terminal, else lines; quiet when asked.
    pub fn auto(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Bars
        } else {
            ProgressMode::Lines
        }
    }
}

struct Bars {
    multi: MultiProgress,
    images: ProgressBar,
    steps: ProgressBar,
}

/// Renders run events (see the module doc).
pub struct Progress {
    mode: ProgressMode,
    sink: Box<dyn FnMut(&str) + Send>,
    bars: Option<Bars>,
    /// Color the bars (`--color`).
    color: bool,
    tasks: Vec<TaskInfo>,
    batch_started: Option<Instant>,
    batch_wait: f64,
}

impl Progress {
    /// Progress on stderr.
    pub fn new(mode: ProgressMode) -> Self {
        Self::with_sink(mode, Box::new(|l| eprintln!("{l}")))
    }

    /// Progress whose lines go to `sink` (bars, if any, still draw on stderr).
    pub fn with_sink(mode: ProgressMode, sink: Box<dyn FnMut(&str) + Send>) -> Self {
        Progress {
            mode,
            sink,
            bars: None,
            color: true,
            tasks: Vec::new(),
            batch_started: None,
            batch_wait: 0.0,
        }
    }

    /// Whether the bars use colors (`--color never` turns them off).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    /// The images bar's position, length and message (tests).
    #[cfg(test)]
    pub(crate) fn images_bar(&self) -> Option<(u64, Option<u64>, String)> {
        self.bars
            .as_ref()
            .map(|b| (b.images.position(), b.images.length(), b.images.message()))
    }

    /// Prints a line (above the bars when they show).
    pub fn line(&mut self, text: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(text);
            }
            None => (self.sink)(text),
        }
    }

    /// A warning: shown in every mode.
    pub fn warn(&mut self, text: &str) {
        self.line(&format!("warning: {text}"));
    }

    fn label(&self, task: usize) -> String {
        self.tasks
            .get(task)
            .map(|t| format!("{}#{} (seed {})", t.job, t.index, t.seed))
            .unwrap_or_else(|| format!("image {task}"))
    }

    /// Takes one event.
    pub fn event(&mut self, e: &RunEvent) {
        let quiet = self.mode == ProgressMode::Quiet;
        match e {
            RunEvent::Planned {
                tasks,
                batches,
                removed_temp,
                temp_errors,
            } => {
                self.tasks = tasks.clone();
                let run = tasks
                    .iter()
                    .filter(|t| matches!(t.action, Action::Run(_)))
                    .count();
                let skip = tasks.iter().filter(|t| t.action == Action::Skip).count();
                let refused = tasks.len() - run - skip;
                for err in temp_errors {
                    self.warn(&format!(
                        "cannot remove a temporary file of an earlier run: {err}"
                    ));
                }
                if quiet {
                    return;
                }
                let mut s = format!(
                    "{} image{}: {run} to make, {skip} up to date",
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" }
                );
                if refused > 0 {
                    s.push_str(&format!(", {refused} blocked by existing files"));
                }
                if run > 0 {
                    s.push_str(&format!(
                        " ({batches} batch{})",
                        if *batches == 1 { "" } else { "es" }
                    ));
                }
                self.line(&s);
                if !removed_temp.is_empty() {
                    self.line(&format!(
                        "removed {} temporary file{} left by an interrupted run",
                        removed_temp.len(),
                        if removed_temp.len() == 1 { "" } else { "s" }
                    ));
                }
                if self.mode == ProgressMode::Bars && run > 0 {
                    self.start_bars(run as u64);
                }
            }
            RunEvent::Batch {
                batch,
                batches,
                tasks,
                steps,
            } => {
                self.batch_started = Some(Instant::now());
                self.batch_wait = 0.0;
                if quiet {
                    return;
                }
                let names: Vec<String> = tasks
                    .iter()
                    .take(4)
                    .map(|&t| {
                        self.tasks
                            .get(t)
                            .map(|i| format!("{}#{}", i.job, i.index))
                            .unwrap_or_default()
                    })
                    .collect();
                let more = if tasks.len() > 4 { ", …" } else { "" };
                let text = format!(
                    "batch {}/{batches}: {} image{} ({}{more}), {steps} steps",
                    batch + 1,
                    tasks.len(),
                    if tasks.len() == 1 { "" } else { "s" },
                    names.join(", ")
                );
                match &self.bars {
                    Some(b) => {
                        b.steps.reset();
                        b.steps.set_length(*steps as u64);
                        b.steps.set_prefix(format!("batch {}/{batches}", batch + 1));
                        let _ = b.multi.println(&text);
                    }
                    None => (self.sink)(&text),
                }
            }
            RunEvent::Exec(ev) => self.exec(ev),
            RunEvent::Written { path, seconds, .. } => {
                if let Some(b) = &self.bars {
                    b.images.inc(1);
                }
                if !quiet {
                    self.line(&format!(
                        "wrote {} ({})",
                        path.display(),
                        human_seconds(*seconds)
                    ));
                }
            }
            RunEvent::Failed { task, error } => {
                if let Some(b) = &self.bars {
                    b.images.inc(1);
                }
                let text = format!("failed: {}: {error}", self.label(*task));
                self.line(&text);
            }
            RunEvent::Stopping { reason } => {
                self.line(&format!("stopping: {reason}"));
                self.finish();
            }
        }
    }

    fn exec(&mut self, ev: &Event) {
        if self.mode == ProgressMode::Quiet {
            return;
        }
        match ev {
            Event::Stage { model, stage } => {
                if let Some(b) = &self.bars {
                    b.images.set_message(format!("{model}: {stage}"));
                }
                self.line(&format!("{model}: {stage}"));
            }
            Event::Loaded { model, measured } => {
                let per: Vec<String> = measured
                    .iter()
                    .map(|(d, b)| format!("{d} {}", human_bytes(*b)))
                    .collect();
                self.line(&format!("{model}: ready ({})", per.join(", ")));
            }
            Event::Note { message } => self.line(&format!("note: {message}")),
            // Summed into the report and its summary line, not printed one by one.
            Event::BatchStarted { .. } | Event::Phase { .. } => {}
            Event::Step {
                step,
                steps,
                passes,
            } => {
                let wait: f64 = passes.iter().map(|p| p.wait_seconds).sum();
                let secs: f64 = passes.iter().map(|p| p.seconds).sum();
                self.batch_wait += wait;
                let elapsed = self
                    .batch_started
                    .map(|t| t.elapsed().as_secs_f64())
                    .unwrap_or(secs);
                let rate = if elapsed > 0.0 {
                    *step as f64 / elapsed
                } else {
                    0.0
                };
                let eta = if rate > 0.0 {
                    (steps - step) as f64 / rate
                } else {
                    f64::NAN
                };
                let pct = if secs > 0.0 { 100.0 * wait / secs } else { 0.0 };
                let wait_text = format!("fetch wait {wait:.3}s ({pct:.0}%)");
                match &self.bars {
                    Some(b) => {
                        // Loading stages are over once steps run: no stale "vae: distributing".
                        b.images.set_message("");
                        b.steps.set_position(*step as u64);
                        b.steps
                            .set_message(format!("{}  {wait_text}", rate_text(rate)));
                    }
                    None => (self.sink)(&format!(
                        "  step {step}/{steps}  {}  ETA {}  {wait_text}",
                        rate_text(rate),
                        human_seconds(eta)
                    )),
                }
            }
        }
    }

    fn start_bars(&mut self, images: u64) {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let (images_template, steps_template) = bar_templates(self.color);
        let images_bar = multi.add(ProgressBar::new(images));
        images_bar.set_style(
            ProgressStyle::with_template(&images_template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        images_bar.set_prefix("run");
        let steps = multi.add(ProgressBar::new(1));
        steps.set_style(
            ProgressStyle::with_template(&steps_template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        images_bar.enable_steady_tick(Duration::from_millis(250));
        self.bars = Some(Bars {
            multi,
            images: images_bar,
            steps,
        });
    }

    /// Removes the bars (call before printing the summary).
    pub fn finish(&mut self) {
        if let Some(b) = self.bars.take() {
            b.steps.finish_and_clear();
            // The images bar stays on screen in its final state (4/4 images), drawn once more
            // now: at 8 redraws a second the last image's increment was often never shown.
            b.images.set_message("");
            b.images.finish();
        }
    }
}

/// Steps per second as `4.57 it/s` (or seconds per step below one step a second,
/// `2.30 s/it`), as diffusion UIs write it; indicatif's `{per_sec}` printed `4.5654/s`.
pub fn rate_text(rate: f64) -> String {
    if !rate.is_finite() || rate <= 0.0 {
        "? it/s".into()
    } else if rate >= 1.0 {
        format!("{rate:.2} it/s")
    } else {
        format!("{:.2} s/it", 1.0 / rate)
    }
}

/// The images bar's and the steps bar's templates, with or without colors.
pub fn bar_templates(color: bool) -> (String, String) {
    let (a, b) = if color {
        ("{bar:30.cyan/blue}", "{bar:30.green/white}")
    } else {
        ("{bar:30}", "{bar:30}")
    };
    (
        format!("{{prefix:>12}} [{a}] {{pos}}/{{len}} images  {{elapsed}} elapsed, ETA {{eta}}  {{msg}}"),
        format!("{{prefix:>12}} [{b}] step {{pos}}/{{len}}  ETA {{eta}}  {{msg}}"),
    )
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
