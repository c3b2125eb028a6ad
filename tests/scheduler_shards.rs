//! #12: shards under a scheduler, killed and restarted. Three `mgpu run --shard auto`
//! processes (the real binary and tiny demo pipeline) share one output root with Slurm's array
//! variables set — the command line of deploy/slurm/mgpu-array.sbatch — and are stopped with
//! SIGTERM and SIGKILL at seeded random moments and restarted, some restarts as PID 1 of a new
//! PID namespace (`unshare --pid --fork --mount-proc`, where this machine permits it) so the
//! next run finds a lock "held by PID 1". Then every image must exist exactly once, decode,
//! and equal the unsharded run's file byte for byte, with no lock or temporary file left.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::ExitStatusExt;

const SHARDS: u32 = 3;

/// xorshift64*: the test's only randomness, seeded so a failure replays.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// The `mgpu run` arguments of deploy/slurm/mgpu-array.sbatch's `srun` line, with the
/// script's variables filled in.
fn slurm_script_args(manifest: &Path, report: &Path) -> Vec<String> {
    let script =
        std::fs::read_to_string(common::repo_root().join("deploy/slurm/mgpu-array.sbatch"))
            .unwrap();
    let line = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("srun mgpu run "))
        .expect("the Slurm script runs `srun mgpu run …`");
    line.trim_start_matches("srun mgpu ")
        .split_whitespace()
        .map(|w| {
            w.trim_matches('"')
                .replace("${MANIFEST}", manifest.to_str().unwrap())
                .replace("${REPORT}", report.to_str().unwrap())
        })
        .collect()
}

/// Every file under `root` (relative path → bytes), but the fingerprint cache.
fn images(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, into: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.ends_with(".mgpu-cache") {
                continue; // the file-fingerprint cache (holds modification times)
            }
            if p.is_dir() {
                walk(&p, root, into);
            } else {
                let name = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                into.insert(name, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(root, root, &mut m);
    m
}

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Term,
    Kill,
    /// As PID 1 of a new PID namespace, then SIGKILL (the namespace dies with it).
    Pid1Kill,
    /// Run to the end.
    Finish,
    /// Run to the end as PID 1 of a new PID namespace.
    Pid1Finish,
}

struct Shard {
    index: u32,
    dir: PathBuf,
    manifest: PathBuf,
}

impl Shard {
    fn command(&self, as_pid1: bool, run: usize) -> (Command, PathBuf) {
        let report = self.dir.join(format!("report-{}-{run}.json", self.index));
        let args = slurm_script_args(&self.manifest, &report);
        let mut c = if as_pid1 {
            let mut c = Command::new("unshare");
            c.args(["--pid", "--fork", "--mount-proc", "--kill-child"])
                .arg(env!("CARGO_BIN_EXE_mgpu"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_mgpu"))
        };
        c.args(&args)
            .current_dir(&self.dir)
            .env("NO_COLOR", "1")
            .env("SLURM_ARRAY_TASK_ID", self.index.to_string())
            .env("SLURM_ARRAY_TASK_MIN", "0")
            .env("SLURM_ARRAY_TASK_MAX", (SHARDS - 1).to_string())
            .env("SLURM_ARRAY_TASK_COUNT", SHARDS.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        (c, report)
    }

    /// Runs this shard through `plan`, stopping each run as planned; returns what happened.
    fn live(&self, plan: &[Stop], rng: &mut Rng, log: &mut Vec<String>) {
        let lock = self.dir.join(format!(
            "out/tiny/.mgpu-shard-{}-of-{SHARDS}.lock",
            self.index
        ));
        for (run, stop) in plan.iter().enumerate() {
            let pid1 = matches!(stop, Stop::Pid1Kill | Stop::Pid1Finish);
            let stale_before = lock.exists();
            let (mut cmd, report) = self.command(pid1, run);
            let child = cmd.spawn().unwrap();
            let out: Output = match stop {
                Stop::Finish | Stop::Pid1Finish => child.wait_with_output().unwrap(),
                Stop::Term | Stop::Kill | Stop::Pid1Kill => {
                    std::thread::sleep(rng.millis(150, 1500));
                    let sig = if matches!(stop, Stop::Term) {
                        libc::SIGTERM
                    } else {
                        libc::SIGKILL
                    };
                    // SAFETY: signals our own child.
                    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
                    child.wait_with_output().unwrap()
                }
            };
            let st: ExitStatus = out.status;
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            log.push(format!(
                "shard {} run {run} {stop:?}: {:?} signal {:?}",
                self.index,
                st.code(),
                st.signal()
            ));
            match stop {
                Stop::Finish | Stop::Pid1Finish => {
                    assert_eq!(st.code(), Some(0), "shard {} {stop:?}: {err}", self.index);
                    if stale_before {
                        assert!(err.contains("taking over the stale lock"), "{err}");
                    }
                    assert!(!lock.exists(), "the lock is released");
                }
                Stop::Term => {
                    // Stopped after its batch (143, report written), finished first (0), or
                    // hit before its handler was installed (killed by the signal).
                    let ok = matches!(st.code(), Some(0) | Some(143)) || st.signal() == Some(15);
                    assert!(ok, "shard {} SIGTERM: {st:?}: {err}", self.index);
                    if st.code() == Some(143) {
                        let r: serde_json::Value =
                            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
                        assert_eq!(r["status"], "interrupted");
                        assert!(!lock.exists(), "SIGTERM releases the lock");
                    }
                }
                Stop::Kill | Stop::Pid1Kill => {
                    assert!(
                        st.code() == Some(0) || st.signal() == Some(9),
                        "shard {} {stop:?}: {st:?}: {err}",
                        self.index
                    );
                }
            }
        }
    }
}

#[test]
fn shards_killed_and_restarted_make_every_image_once_and_exactly() {
    let t0 = Instant::now();
    let edit = |t: String| t.replace("count = 2", "count = 30");
    // The reference: one unsharded run.
    let (ref_dir, ref_manifest) = common::demo_with(edit);
    let o = Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(["run", ref_manifest.to_str().unwrap(), "-q"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = images(&ref_dir.path().join("out/tiny"));
    assert!(
        want.len() > 30,
        "30 foxes and the other jobs: {:?}",
        want.keys()
    );

    let (dir, manifest) = common::demo_with(edit);
    let pid1 = unshare_works();
    if !pid1 {
        println!("note: `unshare --pid --fork --mount-proc` is not permitted here: the PID 1 restarts run as ordinary processes");
    }
    let p1 = |s: Stop| match (s, pid1) {
        (Stop::Pid1Kill, false) => Stop::Kill,
        (Stop::Pid1Finish, false) => Stop::Finish,
        (s, _) => s,
    };
    let plans: [Vec<Stop>; SHARDS as usize] = [
        vec![Stop::Term, Stop::Kill, Stop::Finish],
        vec![Stop::Kill, p1(Stop::Pid1Kill), p1(Stop::Pid1Finish)],
        vec![Stop::Term, p1(Stop::Pid1Kill), Stop::Finish],
    ];
    let seed = 0x5EED_0012_u64;
    let logs: Vec<Vec<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let shard = Shard {
                    index: i as u32,
                    dir: dir.path().to_path_buf(),
                    manifest: manifest.clone(),
                };
                s.spawn(move || {
                    let mut rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let mut log = Vec::new();
                    shard.live(plan, &mut rng, &mut log);
                    log
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for l in logs.iter().flatten() {
        println!("{l}");
    }
    let got = images(&dir.path().join("out/tiny"));
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&got),
        names(&want),
        "exactly the images, no lock or temporary file"
    );
    for (name, bytes) in &want {
        assert!(got[name] == *bytes, "{name} differs from the unsharded run");
        image::load_from_memory(&got[name]).unwrap();
    }
    println!("seed {seed:#x}, {:.1} s", t0.elapsed().as_secs_f64());
}

/// The `mgpu` arguments of deploy/kubernetes/indexed-job.yaml (its `args:` line is a JSON-style
/// flow list) run as its pods would: JOB_COMPLETION_INDEX per pod, MGPU_SHARD_COUNT from the
/// yaml, on the demo; then deploy/github/golden-verify.yml's verify line against golden/tiny.
#[test]
fn deploy_examples_run_as_written() {
    let repo = common::repo_root();
    let yaml = std::fs::read_to_string(repo.join("deploy/kubernetes/indexed-job.yaml")).unwrap();
    let args_line = yaml
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("args: "))
        .expect("the Job's container has `args: [...]`");
    let args: Vec<String> = serde_json::from_str(args_line).unwrap();
    let count = yaml
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("completions: "))
        .unwrap()
        .to_string();
    let env_count = yaml
        .split("name: MGPU_SHARD_COUNT")
        .nth(1)
        .and_then(|r| r.lines().nth(1))
        .and_then(|l| l.trim().strip_prefix("value: "))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap();
    assert_eq!(env_count, count, "MGPU_SHARD_COUNT must equal completions");
    let (dir, manifest) = common::demo();
    let n: u32 = count.parse().unwrap();
    for i in 0..n {
        let report = dir.path().join(format!("report-{i}.json"));
        let a: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("/shared/jobs/flux.toml", manifest.to_str().unwrap())
                    .replace("/shared/reports/flux.json", report.to_str().unwrap())
            })
            .collect();
        let o = Command::new(env!("CARGO_BIN_EXE_mgpu"))
            .args(&a)
            .current_dir(dir.path())
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .env("MGPU_SHARD_COUNT", &env_count)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "pod {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["shard"], format!("{i}/{n}"));
    }

    // The workflow's verify step, in its working directory, on a copy of the demo and goldens.
    let wf = std::fs::read_to_string(repo.join("deploy/github/golden-verify.yml")).unwrap();
    let line = wf
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("run: ../target/release/mgpu "))
        .expect("the workflow runs ../target/release/mgpu");
    let work = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        Command::new("cp")
            .arg("-r")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
    };
    assert!(copy(&repo.join("manifests"), work.path()).success());
    assert!(copy(&repo.join("golden"), work.path()).success());
    let _ = std::fs::remove_dir_all(work.path().join("manifests/out"));
    let o = Command::new(env!("CARGO_BIN_EXE_mgpu"))
        .args(line.split_whitespace())
        .current_dir(work.path().join("manifests"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        work.path().join("mgpu-report.json").is_file(),
        "the report the workflow uploads"
    );
}
