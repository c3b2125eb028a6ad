//! A short run of every fuzz target (docs/fuzzing.md): the committed corpus and a few
//! thousand mutations of it, each parser on its own thread with a bounded stack, so a panic,
//! a deep recursion or a hang fails the test with the target and the input's index.
//! Long runs: `cargo run --release --example fuzz -- TARGET --runs 1000000`.

mod fuzz_targets;

use std::path::Path;
use std::time::{Duration, Instant};

/// Inputs per target in `cargo test` (about a second or two each in a debug build).
const RUNS: u64 = 1500;

fn short_run(target: &'static str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz_targets::corpus(root, target);
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("input");
    let start = Instant::now();
    let handle = std::thread::Builder::new()
        // Parsers must not need more than a default thread's stack whatever the input.
        .stack_size(2 << 20)
        .spawn(move || {
            for i in 0..RUNS {
                let data = fuzz_targets::input(&corpus, 1, i);
                let t = Instant::now();
                let r = std::panic::catch_unwind(|| {
                    fuzz_targets::run(target, &data, root, &scratch)
                });
                assert!(
                    r.is_ok(),
                    "fuzz target `{target}` panicked on input {i} (seed 1); reproduce with `cargo run --release --example fuzz -- {target} --seed 1 --only {i}`"
                );
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "fuzz target `{target}` took {:?} on input {i} (seed 1)",
                    t.elapsed()
                );
            }
        })
        .unwrap();
    handle.join().unwrap();
    eprintln!("{target}: {RUNS} inputs in {:?}", start.elapsed());
}

#[test]
fn fuzz_manifest() {
    short_run("manifest");
}

#[test]
fn fuzz_alloc() {
    short_run("alloc");
}

#[test]
fn fuzz_safetensors() {
    short_run("safetensors");
}

#[test]
fn fuzz_gguf() {
    short_run("gguf");
}

#[test]
fn fuzz_lora() {
    short_run("lora");
}

#[test]
fn fuzz_pickle() {
    short_run("pickle");
}

/// Inputs that once crashed a target (`fuzz/regressions/<target>/`), replayed every time.
#[test]
fn fuzz_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("input");
    for target in fuzz_targets::TARGETS {
        let d = root.join("fuzz/regressions").join(target);
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let (root, scratch, path) = (root.to_path_buf(), scratch.clone(), e.path());
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || fuzz_targets::run(target, &data, &root, &scratch))
                .unwrap()
                .join()
                .unwrap_or_else(|_| panic!("{}", path.display()));
        }
    }
}
