//! `mgpu run MANIFEST`: validate, lock the output root, decide which images to make (resume,
//! `--force`, `--shard`), plan for the hardware, build the pipeline and run the batched queue;
//! then the summary, the `--report` JSON and the `--verify-golden` comparison.
//!
//! [`execute`] is shared with `mgpu golden` (which runs into a temporary output root) and
//! takes the generator as a function, so tests can drive the whole command with a fake one.
//!
//! Exit codes: 0 every image made or up to date (and golden outputs match); 1 invalid input
//! (manifest diagnostics, missing files, a plan that does not fit, a model that cannot be
//! loaded), failed images or a golden mismatch; 2 usage or internal errors; 75 an output root
//! locked by another run (try again later); 130 SIGINT (Ctrl-C); 143 SIGTERM.
//!
//! Signals (SIGINT, SIGTERM, as schedulers send them): the first stops the run after the
//! current batch — the report is written (status `interrupted`) and the lock released — and
//! starts the grace period (`--grace`); when the grace period ends first, or at a second
//! signal, the lock is released and the process exits at once. Outputs are written to a
//! temporary file and renamed, so no partial image is left either way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Status;
use crate::exec::pipeline::{self, PipelineOptions};
use crate::exec::queue::{
    lock, shard, Action, LockInfo, Observer, Outcome, Queue, RunEvent, RunLock, Shard, ShardArg,
    Stop, TaskHasher, TaskStatus,
};
use crate::exec::{ExecError, Generator, ImageTask, Rendered};
use crate::golden::{self, Captured, Fingerprint, Recorder, Tolerance, Verifier, VerifyReport};
use crate::hardware::Hardware;
use crate::manifest::{self, Diagnostics, Manifest};
use crate::plan::{self, Plan};
use crate::report::{self, Progress, ProgressMode, ReportBuilder};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest to run.
    pub manifest: PathBuf,
    #[command(flatten)]
    pub hardware: super::HardwareArg,
    /// Make every image again, even those whose file is up to date (same job hash), and
    /// overwrite files mgpu did not write.
    #[arg(long)]
    pub force: bool,
    /// Make only shard I of N (0 ≤ I < N): the images whose position in the manifest's
    /// expanded image list is ≡ I (mod N). N machines with the same manifest and
    /// I = 0…N−1 make every image exactly once. `auto` takes I and N from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID with _COUNT or _MIN/_MAX/_STEP) or a Kubernetes Indexed Job
    /// (JOB_COMPLETION_INDEX, with N from `auto/N` or MGPU_SHARD_COUNT).
    #[arg(long, value_name = "I/N|auto[/N]")]
    pub shard: Option<ShardArg>,
    /// After SIGTERM or SIGINT, wait up to this many seconds for the current batch to finish
    /// (then the report is written and the lock released) before stopping at once. The
    /// default leaves Kubernetes' 30 s termination grace period time to spare.
    #[arg(long, value_name = "SECONDS", default_value_t = 25)]
    pub grace: u64,
    /// Write a JSON run report: per image status, seconds, output and file SHA-256; per model
    /// planned vs measured bytes per device; per batch step times and fetch waits. `-` writes
    /// it to stdout.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Write an HTML report: one self-contained page (no network) with a card per image or
    /// video (thumbnail, prompt, seed, settings, models, LoRAs, status), a plot of each
    /// batch's step times and fetch waits, and the plan next to what was measured.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Compare every image with the golden files in DIR (`mgpu golden record` writes them):
    /// bit-exact on the recording machine, within a stated tolerance elsewhere. A mismatch
    /// exits 1.
    #[arg(long, value_name = "DIR")]
    pub verify_golden: Option<PathBuf>,
    /// Leave the model and LoRA file hashes (A1111 "Model hash", "Lora hashes") out of the
    /// image records, so no weights file is read whole for them. Hashes are kept per file
    /// version in the per-user cache folder (MGPU_CACHE_DIR, XDG_CACHE_HOME, ~/.cache): a CI
    /// job in a fresh container without it persisted hashes every file every run (a 23.8 GB
    /// FLUX checkpoint takes 19–25 s at an H200 host's SHA-256 rate, longer than the rest of
    /// the load). Pixels and job hashes do not change.
    #[arg(long)]
    pub no_file_hashes: bool,
    /// Print only failures, warnings and the summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub color: super::ColorArg,
}

/// What a run does with golden files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoldenMode {
    Off,
    /// Compare with the golden files of this folder.
    Verify(PathBuf),
    /// Record into this folder (replacing existing ones only with `force`).
    Record {
        dir: PathBuf,
        force: bool,
    },
}

/// Everything [`execute`] needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub manifest: PathBuf,
    pub hardware: super::HardwareArg,
    pub force: bool,
    pub shard: Option<Shard>,
    pub report: Option<PathBuf>,
    /// `--html FILE`: the HTML report.
    pub html: Option<PathBuf>,
    pub golden: GoldenMode,
    pub quiet: bool,
    pub color: bool,
    /// Write outputs here instead of the manifest's `output_root` (golden runs).
    pub output_root: Option<PathBuf>,
    /// How long the current batch may take after a SIGTERM/SIGINT before the run stops at
    /// once (`None`: [`DEFAULT_GRACE`]).
    pub grace: Option<Duration>,
}

/// The grace period after a stop signal when none is given.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(25);

/// Builds the generator once the plan is known.
pub type MakeGenerator<'a> = &'a mut dyn FnMut(
    Arc<Manifest>,
    Arc<Plan>,
    Arc<Hardware>,
) -> Result<Box<dyn Generator>, ExecError>;

/// The real pipeline.
pub fn pipeline_generator(
    m: Arc<Manifest>,
    p: Arc<Plan>,
    hw: Arc<Hardware>,
) -> Result<Box<dyn Generator>, ExecError> {
    pipeline::generator(m, p, hw, PipelineOptions::default())
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let var = |k: &str| std::env::var(k).ok();
    let shard = match args.shard {
        Some(a) => Some(a.resolve(&var).map_err(anyhow::Error::msg)?),
        None => {
            if let Some(w) = shard::unsharded_warning(&var) {
                eprintln!("warning: {w}");
            }
            None
        }
    };
    let opts = RunOptions {
        manifest: args.manifest,
        hardware: args.hardware,
        force: args.force,
        shard,
        report: args.report,
        html: args.html,
        golden: match args.verify_golden {
            Some(d) => GoldenMode::Verify(d),
            None => GoldenMode::Off,
        },
        quiet: args.quiet,
        color: args.color.for_stderr(),
        output_root: None,
        grace: Some(Duration::from_secs(args.grace)),
    };
    let hashes = if args.no_file_hashes {
        pipeline::HashMode::Off
    } else {
        pipeline::HashMode::Cached
    };
    execute(&opts, &mut |m, p, hw| {
        let o = PipelineOptions {
            hashes,
            ..PipelineOptions::default()
        };
        pipeline::generator(m, p, hw, o)
    })
}

/// Whether an [`ExecError`] is the input's fault (exit 1) rather than mgpu's (exit 2): a model
/// that cannot be loaded is a bad or unreadable weights file.
pub fn is_input_error(e: &ExecError) -> bool {
    matches!(e, ExecError::Load(_))
}

/// The exit status of a finished run.
pub fn status_of(outcome: &Outcome, golden: Option<&VerifyReport>) -> Status {
    match &outcome.stop {
        Some(Stop::Interrupted) => Status::Interrupted,
        Some(Stop::Error(e)) if !is_input_error(e) => Status::Error,
        Some(Stop::Error(_)) => Status::Failed,
        None if outcome.failed() > 0 || golden.is_some_and(|g| !g.ok) => Status::Failed,
        None => Status::Ok,
    }
}

// Signals: the first SIGINT/SIGTERM stops after the current batch and starts the grace timer;
// the second (or the timer) removes the lock and exits at once (128 + signal). Outputs are
// atomic, so either way nothing half-written stays.
static STOP: AtomicBool = AtomicBool::new(false);
/// The first stop signal of the current run (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Counts runs, so a grace timer of an earlier run (in a test process) never ends a later one.
static RUN: AtomicU64 = AtomicU64::new(0);
static GRACE_MS: AtomicU64 = AtomicU64::new(25_000);
static HELD: Mutex<Option<(PathBuf, LockInfo)>> = Mutex::new(None);

fn stop_now(sig: i32) -> ! {
    if let Some((path, info)) = HELD.lock().ok().and_then(|mut h| h.take()) {
        let _ = lock::remove_if_ours(&path, &info);
    }
    std::process::exit(128 + sig);
}

fn install_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                result = Err(e);
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("mgpu-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                    let active = HELD.lock().map(|h| h.is_some()).unwrap_or(false);
                    if !active || STOP.swap(true, Ordering::SeqCst) {
                        eprintln!("\n{name}: stopping now");
                        stop_now(sig);
                    }
                    SIGNAL.store(sig, Ordering::SeqCst);
                    let grace = Duration::from_millis(GRACE_MS.load(Ordering::SeqCst));
                    eprintln!(
                        "\n{name}: stopping after the current batch (at most {:.0} s; a second signal stops now)",
                        grace.as_secs_f64()
                    );
                    let run = RUN.load(Ordering::SeqCst);
                    std::thread::spawn(move || {
                        std::thread::sleep(grace);
                        let still = HELD.lock().map(|h| h.is_some()).unwrap_or(false);
                        if still && RUN.load(Ordering::SeqCst) == run {
                            eprintln!(
                                "grace period of {:.0} s over: stopping now (the current batch is abandoned)",
                                grace.as_secs_f64()
                            );
                            stop_now(sig);
                        }
                    });
                }
            });
        if let Err(e) = spawned {
            result = Err(e);
        }
    });
    result.context("installing the SIGINT/SIGTERM handler")
}

/// The status of a run stopped by a signal: 143 for SIGTERM, 130 otherwise.
fn stopped_status() -> Status {
    if SIGNAL.load(Ordering::SeqCst) == signal_hook::consts::SIGTERM {
        Status::Terminated
    } else {
        Status::Interrupted
    }
}

fn fail(diags: &Diagnostics, color: bool, what: &str) -> Status {
    eprintln!("{}", diags.render(color));
    eprintln!("{what}: {}", diags.counts());
    Status::Failed
}

/// Points every job of `m` at `root` instead of its output root.
fn redirect(m: &mut Manifest, root: &Path) {
    m.settings.output_root = root.to_path_buf();
    for j in &mut m.jobs {
        j.output_root = root.to_path_buf();
    }
}

/// Sees the run: progress, report, golden checks.
struct Watch {
    progress: Progress,
    report: ReportBuilder,
    root: PathBuf,
    verifier: Option<Verifier>,
    recorder: Option<Recorder>,
    record_errors: Vec<String>,
}

impl Observer for Watch {
    fn event(&mut self, e: &RunEvent) {
        self.progress.event(e);
        self.report.event(e);
    }

    fn rendered(&mut self, task: &ImageTask, r: &Rendered, output: &Path) {
        if self.verifier.is_none() && self.recorder.is_none() {
            return;
        }
        let c = Captured::rendered(task, r, output, &self.root);
        if let Some(v) = &mut self.verifier {
            v.check(&c);
        }
        if let Some(rec) = &mut self.recorder {
            if let Err(e) = rec.add(&c) {
                self.record_errors.push(e.to_string());
            }
        }
    }
}

/// Runs a manifest (see the module doc); `make` builds the generator once the plan is known.
pub fn execute(opts: &RunOptions, make: MakeGenerator<'_>) -> anyhow::Result<Status> {
    let started = Instant::now();
    let color = opts.color;
    let shown = opts.manifest.display().to_string();
    let mut m = match manifest::load(&opts.manifest) {
        Ok(m) => m,
        Err(d) => return Ok(fail(&d, color, &format!("{shown}: invalid"))),
    };
    if !m.warnings.is_empty() && !opts.quiet {
        eprintln!("{}", m.warnings.render(color));
    }
    let files = m.check_files();
    if files.has_errors() {
        return Ok(fail(&files, color, &format!("{shown}: cannot run")));
    }
    if let Some(root) = &opts.output_root {
        redirect(&mut m, root);
    }
    let root = m.settings.output_root.clone();
    let hasher = match TaskHasher::new(&m) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Status::Failed);
        }
    };

    // Golden files are checked before any work: a missing or existing folder fails fast.
    let mut verifier = None;
    let mut recorder = None;
    match &opts.golden {
        GoldenMode::Off => {}
        GoldenMode::Verify(dir) => {
            // The GPU part of the fingerprint is added below once the hardware is known.
            match Verifier::new(
                dir,
                &Fingerprint::this_machine(vec![]),
                Tolerance::default(),
            ) {
                Ok(v) => verifier = Some(v),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Status::Failed);
                }
            }
        }
        GoldenMode::Record { dir, force } => match Recorder::new(dir, *force) {
            Ok(r) => recorder = Some(r),
            Err(e) => {
                eprintln!("error: {e}");
                return Ok(Status::Failed);
            }
        },
    }

    let (lock, takeovers) = match RunLock::acquire(&root, opts.shard, Some(&opts.manifest)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(match e {
                lock::LockError::Held { .. } => Status::Locked,
                _ => Status::Error,
            });
        }
    };
    RUN.fetch_add(1, Ordering::SeqCst);
    STOP.store(false, Ordering::SeqCst);
    SIGNAL.store(0, Ordering::SeqCst);
    GRACE_MS.store(
        opts.grace.unwrap_or(DEFAULT_GRACE).as_millis() as u64,
        Ordering::SeqCst,
    );
    if let Ok(mut h) = HELD.lock() {
        *h = Some((lock.path().to_path_buf(), lock.info().clone()));
    }
    install_signals()?;

    let mut progress = Progress::new(ProgressMode::auto(opts.quiet)).with_color(color);
    for t in &takeovers {
        progress.warn(&t.to_string());
    }
    let force = opts.force || m.settings.overwrite || opts.output_root.is_some();
    let queue = Queue::new(&m, &hasher, opts.shard, force);
    let m = Arc::new(m);

    // Plan and build the pipeline only when something is to be made.
    let mut plan_value = None;
    let mut generator = None;
    let mut setup_error: Option<(String, Status)> = None;
    if !queue.to_run().is_empty() {
        let hw = match opts.hardware.resolve() {
            Ok(h) => h,
            Err(e) => {
                progress.finish();
                release(lock);
                return Err(e);
            }
        };
        let inventories = match plan::manifest::read_inventories(&m) {
            Ok(i) => i,
            Err(d) => {
                progress.finish();
                release(lock);
                return Ok(fail(&d, color, &format!("{shown}: cannot plan")));
            }
        };
        let request = plan::manifest::request(&m, &inventories);
        let p = match plan::plan(&request, &hw) {
            Ok(p) => Arc::new(p),
            Err(errors) => {
                progress.finish();
                release(lock);
                let d = plan::manifest::diagnostics(&m, &errors);
                return Ok(fail(
                    &d,
                    color,
                    &format!("{shown}: cannot be planned for this machine"),
                ));
            }
        };
        plan_value = Some((*p).clone());
        let hw = Arc::new(hw);
        if let Some(v) = &mut verifier {
            let compute: Vec<_> = m.models.values().map(|x| x.compute).collect();
            let gpus = golden::gpus_of(&hw, &compute);
            if !gpus.is_empty() {
                if let GoldenMode::Verify(dir) = &opts.golden {
                    *v = Verifier::new(dir, &Fingerprint::this_machine(gpus), Tolerance::default())
                        .context("reloading the golden files")?;
                }
            }
        }
        match make(m.clone(), p, hw) {
            Ok(g) => generator = Some(g),
            Err(e) => {
                let status = if is_input_error(&e) {
                    Status::Failed
                } else {
                    Status::Error
                };
                setup_error = Some((e.to_string(), status));
            }
        }
    }

    let mut watch = Watch {
        progress,
        report: ReportBuilder::new(
            opts.manifest.clone(),
            root.clone(),
            opts.shard.map(|s| s.to_string()),
            plan_value,
        ),
        root: root.clone(),
        verifier,
        recorder,
        record_errors: Vec::new(),
    };
    let outcome = match (&mut generator, &setup_error) {
        (Some(g), _) => queue.run(g.as_mut(), Some(&STOP), &mut watch),
        (None, None) => queue.run(&mut NothingToMake, Some(&STOP), &mut watch),
        (None, Some(_)) => {
            // The summary below says why; report every image as not run (refused ones as failed).
            let planned = RunEvent::Planned {
                tasks: queue.infos(),
                batches: 0,
                removed_temp: queue.removed_temp.clone(),
                temp_errors: queue.temp_errors.clone(),
            };
            watch.report.event(&planned);
            Outcome {
                status: queue
                    .selected
                    .iter()
                    .map(|s| match &s.action {
                        Action::Skip => TaskStatus::Skipped,
                        Action::Refuse(w) => TaskStatus::Failed(w.clone()),
                        Action::Run(_) => TaskStatus::NotRun,
                    })
                    .collect(),
                stop: None,
            }
        }
    };
    drop(generator);
    watch.progress.finish();

    // Golden: up-to-date images of a verifying run are compared from their files.
    let mut golden_report = None;
    if let Some(mut v) = watch.verifier.take() {
        for (s, st) in queue.selected.iter().zip(&outcome.status) {
            if *st == TaskStatus::Skipped {
                match Captured::from_file(&s.task, &root) {
                    Ok(c) => v.check(&c),
                    Err(e) => watch.progress.warn(&e),
                }
            }
        }
        let complete = opts.shard.is_none() && outcome.stop.is_none() && setup_error.is_none();
        golden_report = Some(v.finish(complete));
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut report = watch.report.finish(
        Some(&outcome),
        setup_error.as_ref().map(|(e, _)| e.as_str()),
        seconds,
        golden_report.clone(),
    );
    report.jobs = report::job_reports(&m);
    eprint!("{}", report::render_summary(&report));
    if let Some(g) = &golden_report {
        eprint!("{}", report::render_golden(g));
    }
    let mut status = match &setup_error {
        Some((_, s)) => *s,
        None => match status_of(&outcome, golden_report.as_ref()) {
            Status::Interrupted => stopped_status(),
            s => s,
        },
    };
    if let Some(rec) = watch.recorder.take() {
        let complete = outcome.stop.is_none()
            && setup_error.is_none()
            && outcome
                .status
                .iter()
                .all(|s| matches!(s, TaskStatus::Done { .. }));
        if !watch.record_errors.is_empty() || !complete {
            for e in &watch.record_errors {
                eprintln!("error: {e}");
            }
            eprintln!("golden files not recorded: every image must be made for a recording");
            status = status.worst(Status::Failed);
        } else {
            let gpus = plan_gpus(&m, opts);
            let dir = match &opts.golden {
                GoldenMode::Record { dir, .. } => dir.clone(),
                _ => unreachable!("a recorder exists only in record mode"),
            };
            match rec.finish(&opts.manifest, Fingerprint::this_machine(gpus)) {
                Ok(g) => eprintln!(
                    "recorded {} golden output{} in {}",
                    g.outputs.len(),
                    if g.outputs.len() == 1 { "" } else { "s" },
                    dir.display()
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    status = status.worst(Status::Failed);
                }
            }
        }
    }
    if let Some(path) = &opts.report {
        let json = serde_json::to_string_pretty(&report).expect("a RunReport always serialises");
        write_json(path, &json)
            .with_context(|| format!("writing the run report {}", path.display()))?;
    }
    if let Some(path) = &opts.html {
        let value = serde_json::to_value(&report).expect("a RunReport always serialises");
        // Outputs of golden runs live in a temporary folder: no links to them.
        report::html::write(path, &report, &value, opts.output_root.is_none())
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
        if !opts.quiet {
            eprintln!("wrote the HTML report {}", path.display());
        }
    }
    release(lock);
    Ok(status)
}

/// Writes JSON text (and a newline) to `path` atomically, or to stdout when `path` is `-`.
pub fn write_json(path: &Path, json: &str) -> std::io::Result<()> {
    if path == Path::new("-") {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(json.as_bytes())?;
        out.write_all(b"\n")?;
        return out.flush();
    }
    crate::output::write_atomic(path, |w| {
        w.write_all(json.as_bytes())?;
        w.write_all(b"\n")
    })
    .map_err(std::io::Error::other)
}

/// The GPUs that compute, for a recording's fingerprint (probe only when a model computes on
/// CUDA).
fn plan_gpus(m: &Manifest, opts: &RunOptions) -> Vec<golden::GpuFingerprint> {
    let compute: Vec<_> = m.models.values().map(|x| x.compute).collect();
    if !compute.iter().any(|d| d.is_cuda()) {
        return Vec::new();
    }
    opts.hardware
        .resolve()
        .map(|hw| golden::gpus_of(&hw, &compute))
        .unwrap_or_default()
}

fn release(lock: RunLock) {
    if let Ok(mut h) = HELD.lock() {
        *h = None;
    }
    if let Err(e) = lock.release() {
        eprintln!("warning: {e}");
    }
}

/// Stands in when every image is up to date (the queue never calls it).
struct NothingToMake;

impl Generator for NothingToMake {
    fn prepare(
        &mut self,
        _: &[ImageTask],
        _: &mut dyn FnMut(crate::exec::Event),
    ) -> Result<(), ExecError> {
        Err(ExecError::Other(
            "internal error: no pipeline was built because no image needed making".into(),
        ))
    }

    fn run_batch(
        &mut self,
        _: &[ImageTask],
        _: &mut dyn FnMut(crate::exec::Event),
    ) -> Result<Vec<Result<Rendered, crate::exec::JobError>>, ExecError> {
        Err(ExecError::Other(
            "internal error: no pipeline was built because no image needed making".into(),
        ))
    }

    fn max_batch(&self, _: &ImageTask) -> usize {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::queue::Stop;

    fn outcome(status: Vec<TaskStatus>, stop: Option<Stop>) -> Outcome {
        Outcome { status, stop }
    }

    #[test]
    fn exit_statuses() {
        let done = TaskStatus::Done {
            seconds: 1.0,
            sha256: String::new(),
        };
        assert_eq!(
            status_of(
                &outcome(vec![done.clone(), TaskStatus::Skipped], None),
                None
            ),
            Status::Ok
        );
        assert_eq!(
            status_of(
                &outcome(vec![done.clone(), TaskStatus::Failed("x".into())], None),
                None
            ),
            Status::Failed
        );
        assert_eq!(
            status_of(&outcome(vec![], Some(Stop::Interrupted)), None),
            Status::Interrupted
        );
        assert_eq!(
            status_of(
                &outcome(
                    vec![],
                    Some(Stop::Error(ExecError::Load("bad file".into())))
                ),
                None
            ),
            Status::Failed
        );
        assert_eq!(
            status_of(
                &outcome(vec![], Some(Stop::Error(ExecError::Other("bug".into())))),
                None
            ),
            Status::Error
        );
        let golden_fail = VerifyReport {
            dir: "g".into(),
            rule: golden::Rule::BitExact,
            fingerprint_differences: vec![],
            outputs: vec![],
            missing: vec!["a#0 → a.png".into()],
            ok: false,
        };
        assert_eq!(
            status_of(&outcome(vec![done], None), Some(&golden_fail)),
            Status::Failed
        );
    }
}
