//! Long fuzz runs on stable Rust (docs/fuzzing.md):
//!
//! ```text
//! cargo run --release --example fuzz -- TARGET [--runs N] [--seed S] [--batch B] [--timeout SECS]
//! cargo run --release --example fuzz -- TARGET --seed S --only I     # reproduce input I
//! ```
//!
//! Inputs are run in child processes of `B` inputs each (a watchdog): a panic, an abort (a
//! stack overflow, an allocation failure) or a batch slower than `--timeout` is bisected down
//! to the one input, which is saved under `fuzz/crashes/TARGET/`. Targets: manifest, alloc,
//! safetensors, gguf, lora, pickle.

#[path = "../tests/fuzz_targets/mod.rs"]
mod fuzz_targets;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

struct Args {
    target: String,
    runs: u64,
    seed: u64,
    batch: u64,
    timeout: u64,
    only: Option<u64>,
    worker: Option<(u64, u64)>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let target = it.next().ok_or(
        "usage: fuzz TARGET [--runs N] [--seed S] [--batch B] [--timeout SECS] [--only I]",
    )?;
    let mut a = Args {
        target,
        runs: 1_000_000,
        seed: 1,
        batch: 20_000,
        timeout: 600,
        only: None,
        worker: None,
    };
    let num = |v: Option<String>, what: &str| -> Result<u64, String> {
        v.and_then(|v| v.replace('_', "").parse().ok())
            .ok_or(format!("{what} needs a whole number"))
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => a.runs = num(it.next(), "--runs")?,
            "--seed" => a.seed = num(it.next(), "--seed")?,
            "--batch" => a.batch = num(it.next(), "--batch")?.max(1),
            "--timeout" => a.timeout = num(it.next(), "--timeout")?,
            "--only" => a.only = Some(num(it.next(), "--only")?),
            "--worker" => {
                a.worker = Some((num(it.next(), "--worker")?, num(it.next(), "--worker")?))
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if !fuzz_targets::TARGETS.contains(&a.target.as_str()) {
        return Err(format!(
            "unknown target `{}` (known: {})",
            a.target,
            fuzz_targets::TARGETS.join(", ")
        ));
    }
    Ok(a)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs inputs `from..to` in this process (a child of the watchdog).
fn work(a: &Args, from: u64, to: u64) {
    let root = root();
    let corpus = fuzz_targets::corpus(&root, &a.target);
    let scratch =
        std::env::temp_dir().join(format!("mgpu-fuzz-{}-{}", a.target, std::process::id()));
    for i in from..to {
        let data = fuzz_targets::input(&corpus, a.seed, i);
        fuzz_targets::run(&a.target, &data, &root, &scratch);
    }
    let _ = std::fs::remove_file(&scratch);
}

/// Whether a child running `from..to` finishes cleanly within the timeout.
fn child_ok(a: &Args, from: u64, to: u64) -> bool {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(_) => return false,
    };
    let mut child = match Command::new(exe)
        .args([
            &a.target,
            "--seed",
            &a.seed.to_string(),
            "--worker",
            &from.to_string(),
            &to.to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => return false,
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}

/// The first failing input of a failing range, by bisection.
fn bisect(a: &Args, mut from: u64, mut to: u64) -> u64 {
    while to - from > 1 {
        let mid = from + (to - from) / 2;
        if !child_ok(a, from, mid) {
            to = mid;
        } else {
            from = mid;
        }
    }
    from
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some((from, to)) = a.worker {
        work(&a, from, to);
        return ExitCode::SUCCESS;
    }
    if let Some(i) = a.only {
        let corpus = fuzz_targets::corpus(&root(), &a.target);
        let data = fuzz_targets::input(&corpus, a.seed, i);
        eprintln!("input {i} of seed {}: {} bytes", a.seed, data.len());
        let scratch = std::env::temp_dir().join("mgpu-fuzz-only");
        fuzz_targets::run(&a.target, &data, &root(), &scratch);
        eprintln!("no crash");
        return ExitCode::SUCCESS;
    }
    let start = Instant::now();
    let mut crashes = Vec::new();
    let mut from = 0;
    while from < a.runs {
        let to = (from + a.batch).min(a.runs);
        if child_ok(&a, from, to) {
            from = to;
        } else {
            let bad = bisect(&a, from, to);
            let corpus = fuzz_targets::corpus(&root(), &a.target);
            let data = fuzz_targets::input(&corpus, a.seed, bad);
            let dir = root().join("fuzz/crashes").join(&a.target);
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("seed-{}-input-{bad}", a.seed));
            let _ = std::fs::write(&path, &data);
            eprintln!(
                "{}: input {bad} fails; saved to {}",
                a.target,
                path.display()
            );
            crashes.push(bad);
            from = bad + 1;
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{}: {from}/{} inputs, {secs:.0} s ({:.0}/s), {} crashes",
            a.target,
            a.runs,
            from as f64 / secs.max(1e-9),
            crashes.len()
        );
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {} inputs (seed {}) in {secs:.1} s, {} crashes{}",
        a.target,
        a.runs,
        a.seed,
        crashes.len(),
        if crashes.is_empty() {
            String::new()
        } else {
            format!(" at inputs {crashes:?}")
        }
    );
    if crashes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
