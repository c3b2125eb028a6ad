//! Queue logic with the fake generator: expansion, hashing, resume, `--force`, shards,
//! batching, failing images, generator errors, Ctrl-C, temporary files.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::fake::FakeGenerator;
use super::*;
use crate::manifest::{self, Manifest};

/// A project folder with (fake-content) model files and a manifest.
pub(crate) struct Project {
    pub dir: tempfile::TempDir,
}

pub(crate) const MANIFEST: &str = r#"
[settings]
output_root = "out"
compute = "cpu"

[models.flux]
family = "flux"
file = "flux.safetensors"
allocation = "cpu,50%;disk,50%"
loras = [{ file = "lora.safetensors", strength = 0.8 }]

[models.t5]
family = "t5"
file = "t5.safetensors"
tokenizer = "t5.json"

[models.clip]
family = "clip-l"
file = "clip.safetensors"
tokenizer = "clip.json"

[models.vae]
family = "flux-vae"
file = "ae.safetensors"

[pipelines.p]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"

[defaults]
width = 64
height = 64
steps = 2
output = "{job}-{seed}.png"

[[jobs]]
name = "a"
prompt = "a red fox"
seed = 1
count = 3

[[jobs]]
name = "b"
prompt = "a lighthouse"
seed = 10
width = 32

[[jobs]]
name = "c"
prompt = "a cube"
seed = 20
count = 2
"#;

impl Project {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (f, fill) in [
            ("flux.safetensors", 1u8),
            ("lora.safetensors", 2),
            ("t5.safetensors", 3),
            ("t5.json", 4),
            ("clip.safetensors", 5),
            ("clip.json", 6),
            ("ae.safetensors", 7),
        ] {
            std::fs::write(dir.path().join(f), vec![fill; 3000]).unwrap();
        }
        let p = Project { dir };
        p.write_manifest(MANIFEST);
        p
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write_manifest(&self, text: &str) {
        std::fs::write(self.path("m.toml"), text).unwrap();
    }

    pub fn manifest(&self) -> Manifest {
        manifest::load(&self.path("m.toml")).unwrap_or_else(|d| panic!("{}", d.render(false)))
    }

    /// The manifest with `from` replaced by `to` (must occur).
    pub fn edited(&self, from: &str, to: &str) -> Manifest {
        assert!(MANIFEST.contains(from), "{from}");
        self.write_manifest(&MANIFEST.replacen(from, to, 1));
        let m = self.manifest();
        self.write_manifest(MANIFEST);
        m
    }

    pub fn queue(&self, shard: Option<Shard>, force: bool) -> Queue {
        let m = self.manifest();
        let hasher = TaskHasher::new(&m).unwrap();
        Queue::new(&m, &hasher, shard, force || m.settings.overwrite)
    }

    pub fn out(&self) -> PathBuf {
        self.path("out")
    }
}

fn hashes(m: &Manifest) -> Vec<String> {
    let hasher = TaskHasher::new(m).unwrap();
    expand(m, &hasher).into_iter().map(|t| t.hash).collect()
}

/// Collects the events.
#[derive(Default)]
struct Log {
    events: Vec<String>,
    rendered: Vec<String>,
}

impl Observer for Log {
    fn event(&mut self, e: &RunEvent) {
        self.events.push(match e {
            RunEvent::Planned { tasks, batches, .. } => {
                format!("planned {} tasks, {batches} batches", tasks.len())
            }
            RunEvent::Batch { batch, tasks, .. } => format!("batch {batch} {tasks:?}"),
            RunEvent::Exec(ev) => format!("exec {ev:?}").chars().take(20).collect(),
            RunEvent::Written { task, .. } => format!("written {task}"),
            RunEvent::Failed { task, .. } => format!("failed {task}"),
            RunEvent::Stopping { reason } => format!("stopping: {reason}"),
        });
    }
    fn rendered(&mut self, task: &ImageTask, _: &Rendered, output: &Path) {
        assert!(output.is_file());
        self.rendered
            .push(format!("{}#{}", task.job.name, task.image.index));
    }
}

fn outputs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".mgpu"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn expansion_order_seeds_and_paths() {
    let p = Project::new();
    let m = p.manifest();
    let tasks = expand(&m, &TaskHasher::new(&m).unwrap());
    let got: Vec<(String, u32, u64, String)> = tasks
        .iter()
        .map(|t| {
            (
                t.job.name.clone(),
                t.image.index,
                t.image.seed,
                t.image
                    .path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect();
    let want = [
        ("a", 0, 1, "a-1.png"),
        ("a", 1, 2, "a-2.png"),
        ("a", 2, 3, "a-3.png"),
        ("b", 0, 10, "b-10.png"),
        ("c", 0, 20, "c-20.png"),
        ("c", 1, 21, "c-21.png"),
    ];
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1, g.2, g.3.as_str()), w);
    }
    assert!(tasks.iter().all(|t| t.image.path.starts_with(p.out())));
    let unique: BTreeSet<_> = tasks.iter().map(|t| &t.hash).collect();
    assert_eq!(unique.len(), tasks.len(), "every image has its own hash");
    assert!(tasks.iter().all(|t| t.hash.len() == 64));
}

#[test]
fn hash_covers_what_decides_pixels() {
    let p = Project::new();
    let base = hashes(&p.manifest());
    let changes_all = [
        (
            "file = \"flux.safetensors\"",
            "file = \"flux.safetensors\"\ndtype = \"bf16\"",
        ),
        ("strength = 0.8", "strength = 0.7"),
        ("steps = 2", "steps = 3"),
        (
            "[pipelines.p]",
            "[models.x]\nfamily = \"flux-vae\"\nfile = \"ae.safetensors\"\n\n[pipelines.p]",
        ), // unused: no change (checked below)
    ];
    for (i, (from, to)) in changes_all.iter().enumerate() {
        let h = hashes(&p.edited(from, to));
        if i == 3 {
            assert_eq!(h, base, "an unused model changes nothing");
        } else {
            assert!(h.iter().zip(&base).all(|(a, b)| a != b), "{from} → {to}");
        }
    }
    // Per job: only that job's images change.
    let per_job = [
        (
            "prompt = \"a lighthouse\"",
            "prompt = \"a lighthouse at dusk\"",
        ),
        ("seed = 10", "seed = 11"),
        ("width = 32", "width = 48"),
        (
            "prompt = \"a lighthouse\"",
            "prompt = \"a lighthouse\"\nsampler = \"heun\"",
        ),
        (
            "prompt = \"a lighthouse\"",
            "prompt = \"a lighthouse\"\nscheduler = \"karras\"",
        ),
        (
            "prompt = \"a lighthouse\"",
            "prompt = \"a lighthouse\"\nguidance = 4.0",
        ),
    ];
    for (from, to) in per_job {
        let h = hashes(&p.edited(from, to));
        let changed: Vec<usize> = (0..base.len()).filter(|&i| h[i] != base[i]).collect();
        assert_eq!(changed, vec![3], "{from} → {to}");
    }
    // What does not decide pixels: placement, batches, names, paths, keep_loaded, strict.
    let same = [
        ("allocation = \"cpu,50%;disk,50%\"", "allocation = \"cpu,10%;disk,90%\""),
        ("allocation = \"cpu,50%;disk,50%\"", "allocation = \"auto\""),
        ("allocation = \"cpu,50%;disk,50%\"", "allocation = \"cpu,50%;disk,50%\"\nprefetch = 3\nkeep_loaded = true"),
        ("allocation = \"cpu,50%;disk,50%\"", "allocation = \"cpu,50%;disk,50%\"\noverrides = [{ pattern = \"double_blocks\\\\.0\\\\.\", device = \"disk\" }]"),
        ("strength = 0.8 }", "strength = 0.8, strict = false }"),
        ("steps = 2\n", "steps = 2\nbatch = 3\n"),
        ("output = \"{job}-{seed}.png\"", "output = \"x/{job}_{seed}.png\""),
        ("output_root = \"out\"", "output_root = \"elsewhere\""),
    ];
    for (from, to) in same {
        assert_eq!(hashes(&p.edited(from, to)), base, "{from} → {to}");
    }
    // Model, LoRA and tokenizer file contents; the hash reads the ends of big files.
    for f in [
        "flux.safetensors",
        "lora.safetensors",
        "t5.json",
        "ae.safetensors",
    ] {
        let path = p.path(f);
        let orig = std::fs::read(&path).unwrap();
        let mut changed = orig.clone();
        changed[10] ^= 1;
        std::fs::write(&path, &changed).unwrap();
        assert!(
            hashes(&p.manifest()).iter().zip(&base).all(|(a, b)| a != b),
            "{f}"
        );
        std::fs::write(&path, &orig).unwrap();
    }
    assert_eq!(hashes(&p.manifest()), base);
    // Moving the whole project keeps the hashes (paths are relative to the manifest).
    let moved = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(p.dir.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), moved.path().join(e.file_name())).unwrap();
    }
    let m = manifest::load(&moved.path().join("m.toml")).unwrap();
    assert_eq!(hashes(&m), base);
}

#[test]
fn file_fingerprint_reads_both_ends_and_whole_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let size = 3 * hash::SAMPLE_BYTES as usize;
    let mut bytes = vec![0u8; size];
    std::fs::write(&path, &bytes).unwrap();
    let base = FileFingerprint::of(&path, dir.path(), "weights file").unwrap();
    assert_eq!(base.path, "big.bin");
    assert_eq!(base.size, size as u64);
    // The middle is not read (documented), both ends are.
    for (at, differs) in [(size / 2, false), (5, true), (size - 5, true)] {
        bytes[at] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let f = FileFingerprint::of(&path, dir.path(), "weights file").unwrap();
        assert_eq!(f != base, differs, "byte {at}");
        bytes[at] = 0;
    }
    // A safetensors header longer than the sample is hashed whole.
    let header_len = 2 * hash::SAMPLE_BYTES;
    bytes[..8].copy_from_slice(&header_len.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let st = FileFingerprint::of(&path, dir.path(), "weights file").unwrap();
    bytes[size / 2] = 1;
    std::fs::write(&path, &bytes).unwrap();
    assert_ne!(
        FileFingerprint::of(&path, dir.path(), "weights file").unwrap(),
        st
    );
    let e = FileFingerprint::of(&dir.path().join("nope"), dir.path(), "LoRA file").unwrap_err();
    assert!(e.to_string().starts_with("cannot hash LoRA file "), "{e}");
}

#[test]
fn run_writes_every_image_then_resume_skips_them() {
    let p = Project::new();
    let q = p.queue(None, false);
    assert!(q
        .selected
        .iter()
        .all(|s| s.action == Action::Run(RunReason::Missing)));
    let mut gen = FakeGenerator::default();
    let mut log = Log::default();
    let out = q.run(&mut gen, None, &mut log);
    assert!(out.stop.is_none());
    assert!(out
        .status
        .iter()
        .all(|s| matches!(s, TaskStatus::Done { .. })));
    assert_eq!(gen.prepared.len(), 1, "prepare is called once");
    assert_eq!(gen.prepared[0].len(), 6);
    // Groups: a+c share 64×64 (one group, cut at 4), b is 32 wide.
    assert_eq!(
        gen.batches,
        vec![vec!["a#0", "a#1", "a#2", "c#0"], vec!["c#1"], vec!["b#0"]]
    );
    assert_eq!(log.rendered.len(), 6);
    assert_eq!(
        outputs(&p.out()),
        ["a-1.png", "a-2.png", "a-3.png", "b-10.png", "c-20.png", "c-21.png"]
            .map(String::from)
            .into()
    );
    // Each file: the fake's pixels, the task's hash in the record, the reported sha256.
    for (s, st) in q.selected.iter().zip(&out.status) {
        let meta = crate::output::read_png_metadata(&s.task.image.path).unwrap();
        assert_eq!(
            meta.record.unwrap().job_hash.as_deref(),
            Some(s.task.hash.as_str())
        );
        let img = image::open(&s.task.image.path).unwrap().to_rgb8();
        assert_eq!(img, FakeGenerator::image_of(&s.task).0);
        let TaskStatus::Done { sha256, .. } = st else {
            unreachable!()
        };
        assert_eq!(
            *sha256,
            sha256_hex(&std::fs::read(&s.task.image.path).unwrap())
        );
    }

    // Rerun: everything up to date, the generator is not even prepared.
    let q = p.queue(None, false);
    assert!(q.selected.iter().all(|s| s.action == Action::Skip));
    let mut gen = FakeGenerator::default();
    let out = q.run(&mut gen, None, &mut ());
    assert!(out.status.iter().all(|s| *s == TaskStatus::Skipped));
    assert!(gen.prepared.is_empty() && gen.batches.is_empty());

    // A changed job reruns alone.
    p.write_manifest(&MANIFEST.replace("a lighthouse", "a lighthouse at dusk"));
    let q = p.queue(None, false);
    let runs: Vec<_> = q
        .selected
        .iter()
        .filter(|s| s.action != Action::Skip)
        .map(|s| (s.task.job.name.as_str(), s.action.clone()))
        .collect();
    assert_eq!(runs, vec![("b", Action::Run(RunReason::Changed))]);
}

#[test]
fn force_and_overwrite_rerun_everything() {
    let p = Project::new();
    p.queue(None, false)
        .run(&mut FakeGenerator::default(), None, &mut ());
    let q = p.queue(None, true);
    assert!(q
        .selected
        .iter()
        .all(|s| s.action == Action::Run(RunReason::Forced)));
    p.write_manifest(&MANIFEST.replace(
        "compute = \"cpu\"\n",
        "compute = \"cpu\"\noverwrite = true\n",
    ));
    let q = p.queue(None, false);
    assert!(q
        .selected
        .iter()
        .all(|s| s.action == Action::Run(RunReason::Forced)));
    let mut gen = FakeGenerator::default();
    q.run(&mut gen, None, &mut ());
    assert_eq!(gen.prepared[0].len(), 6);
}

/// #12 defect 5: a FIFO at an output path is refused at once (reading it would block
/// forever), with and without --force; the other images are made.
#[test]
fn a_fifo_at_an_output_path_is_refused_not_read() {
    let p = Project::new();
    std::fs::create_dir_all(p.out()).unwrap();
    let fifo = p.out().join("a-2.png");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for force in [false, true] {
        let q = p.queue(None, force);
        let a = &q.selected[1].action;
        assert!(
            matches!(a, Action::Refuse(m) if m.contains("not a regular file")),
            "{a:?}"
        );
    }
    let out = p
        .queue(None, false)
        .run(&mut FakeGenerator::default(), None, &mut Log::default());
    assert_eq!(out.failed(), 1);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn foreign_files_are_never_overwritten_without_force() {
    let p = Project::new();
    std::fs::create_dir_all(p.out()).unwrap();
    std::fs::write(p.out().join("a-2.png"), b"my holiday photo").unwrap();
    // A PNG without an mgpu record, and one from an older mgpu without a job hash.
    let plain = image::RgbImage::new(4, 4);
    plain.save(p.out().join("b-10.png")).unwrap();
    let mut record = FakeGenerator::default();
    let q0 = p.queue(None, false);
    let c0 = &q0.selected[4].task;
    let mut rec = record
        .run_batch(std::slice::from_ref(c0), &mut |_| {})
        .unwrap()
        .remove(0)
        .unwrap()
        .record;
    rec.job_hash = None;
    crate::output::write_png(&c0.image.path, &image::RgbImage::new(64, 64), &rec).unwrap();

    let q = p.queue(None, false);
    let actions: Vec<_> = q.selected.iter().map(|s| s.action.clone()).collect();
    assert!(
        matches!(&actions[1], Action::Refuse(m) if m.contains("not a readable PNG") && m.contains("--force")),
        "{actions:?}"
    );
    assert!(
        matches!(&actions[3], Action::Refuse(m) if m.contains("not written by mgpu")),
        "{actions:?}"
    );
    assert_eq!(actions[4], Action::Run(RunReason::NoHash));
    let mut log = Log::default();
    let out = q.run(&mut FakeGenerator::default(), None, &mut log);
    assert_eq!(out.failed(), 2);
    assert_eq!(
        std::fs::read(p.out().join("a-2.png")).unwrap(),
        b"my holiday photo"
    );
    assert!(log.events.iter().any(|e| e == "failed 1"));
    let q = p.queue(None, true);
    assert!(q
        .selected
        .iter()
        .all(|s| s.action == Action::Run(RunReason::Forced)));
}

#[test]
fn shards_partition_the_images_and_share_a_root() {
    let p = Project::new();
    for n in 1..=4u32 {
        let mut seen = Vec::new();
        for i in 0..n {
            let q = p.queue(Some(Shard::new(i, n).unwrap()), false);
            for s in &q.selected {
                assert_eq!(s.position as u32 % n, i);
                seen.push(s.position);
            }
        }
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>(), "{n} shards");
    }
    // Three shards into one root: every image made exactly once.
    let mut made = Vec::new();
    for i in 0..3 {
        let q = p.queue(Some(Shard::new(i, 3).unwrap()), false);
        let mut gen = FakeGenerator::default();
        let out = q.run(&mut gen, None, &mut ());
        assert!(out
            .status
            .iter()
            .all(|s| matches!(s, TaskStatus::Done { .. })));
        made.extend(gen.prepared.concat());
    }
    made.sort();
    assert_eq!(made, ["a#0", "a#1", "a#2", "b#0", "c#0", "c#1"]);
    assert_eq!(outputs(&p.out()).len(), 6);
    // The shard is positional: it does not move when outputs exist.
    let q = p.queue(Some(Shard::new(1, 3).unwrap()), false);
    assert_eq!(
        q.selected.iter().map(|s| s.position).collect::<Vec<_>>(),
        vec![1, 4]
    );
    assert!(q.selected.iter().all(|s| s.action == Action::Skip));
}

#[test]
fn batch_limits_from_the_job_and_the_generator() {
    let p = Project::new();
    p.write_manifest(&MANIFEST.replace("seed = 1\ncount = 3", "seed = 1\ncount = 3\nbatch = 2"));
    let q = p.queue(None, false);
    let mut gen = FakeGenerator {
        max_batch: 3,
        ..Default::default()
    };
    q.run(&mut gen, None, &mut ());
    // a (batch 2) and c (generator: 3) share a group: a batch holding an `a` image has ≤ 2.
    assert_eq!(
        gen.batches,
        vec![
            vec!["a#0", "a#1"],
            vec!["a#2", "c#0"],
            vec!["c#1"],
            vec!["b#0"]
        ]
    );
    let tasks: Vec<ImageTask> = q.selected.iter().map(|s| s.task.clone()).collect();
    let one = batches(&tasks, &[0, 1, 2, 3, 4, 5], |_| 1);
    assert_eq!(one.len(), 6);
    let zero = batches(&tasks, &[5, 4, 0], |_| 0);
    assert_eq!(
        zero,
        vec![vec![5], vec![4], vec![0]],
        "limit 0 counts as 1, order kept"
    );
}

#[test]
fn images_do_not_depend_on_their_batch() {
    let run = |max_batch: usize| {
        let p = Project::new();
        p.queue(None, false).run(
            &mut FakeGenerator {
                max_batch,
                ..Default::default()
            },
            None,
            &mut (),
        );
        outputs(&p.out())
            .into_iter()
            .map(|f| std::fs::read(p.out().join(f)).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(3), "byte-identical files in batches of 1 and 3");
}

#[test]
fn a_failing_image_fails_alone() {
    let p = Project::new();
    let q = p.queue(None, false);
    let mut gen = FakeGenerator {
        fail_seeds: [2, 21].into(),
        ..Default::default()
    };
    let mut log = Log::default();
    let out = q.run(&mut gen, None, &mut log);
    assert!(out.stop.is_none());
    assert_eq!(out.failed(), 2);
    assert!(matches!(&out.status[1], TaskStatus::Failed(m) if m.contains("seed 2 is too long")));
    assert!(!p.out().join("a-2.png").exists());
    assert_eq!(outputs(&p.out()).len(), 4);
    // The rerun makes only the failed ones.
    let mut gen = FakeGenerator::default();
    p.queue(None, false).run(&mut gen, None, &mut ());
    assert_eq!(gen.prepared, vec![vec!["a#1", "c#1"]]);
}

#[test]
fn generator_errors_stop_the_run_after_what_was_written() {
    let p = Project::new();
    let q = p.queue(None, false);
    let mut gen = FakeGenerator {
        fail_on_batch: Some(1),
        ..Default::default()
    };
    let mut log = Log::default();
    let out = q.run(&mut gen, None, &mut log);
    assert!(matches!(&out.stop, Some(Stop::Error(ExecError::Other(m))) if m.contains("batch 1")));
    let done = out.count(|s| matches!(s, TaskStatus::Done { .. }));
    let not_run = out.count(|s| *s == TaskStatus::NotRun);
    assert_eq!((done, not_run), (4, 2));
    assert!(log
        .events
        .last()
        .unwrap()
        .starts_with("stopping: fake: the engine failed"));

    let mut gen = FakeGenerator {
        fail_prepare: true,
        ..Default::default()
    };
    let p = Project::new();
    let out = p.queue(None, false).run(&mut gen, None, &mut ());
    assert!(matches!(out.stop, Some(Stop::Error(ExecError::Load(_)))));
    assert!(out.status.iter().all(|s| *s == TaskStatus::NotRun));
}

#[test]
fn ctrl_c_stops_after_the_current_batch() {
    let p = Project::new();
    let flag = Arc::new(AtomicBool::new(false));
    let mut gen = FakeGenerator {
        interrupt_after: Some((0, flag.clone())),
        ..Default::default()
    };
    let out = p.queue(None, false).run(&mut gen, Some(&flag), &mut ());
    assert!(matches!(out.stop, Some(Stop::Interrupted)));
    assert_eq!(gen.batches.len(), 1);
    assert_eq!(
        outputs(&p.out()).len(),
        4,
        "the first batch's images are kept"
    );
}

#[test]
fn killed_run_leftovers_are_cleaned_and_resumed() {
    let p = Project::new();
    // A first run dies in its second batch, after writing the first one.
    let mut gen = FakeGenerator {
        fail_on_batch: Some(1),
        ..Default::default()
    };
    p.queue(None, false).run(&mut gen, None, &mut ());
    // What a kill mid-write leaves: a temporary file next to an unfinished output, plus one
    // of an image that is already complete.
    std::fs::write(p.out().join(".c-21.png.Ab12Cd.tmp"), b"half a png").unwrap();
    std::fs::write(p.out().join(".a-1.png.Zz99Yy.tmp"), b"half a png").unwrap();
    std::fs::write(p.out().join(".unrelated.png.Zz99Yy.tmp"), b"not ours").unwrap();
    let q = p.queue(None, false);
    assert_eq!(q.removed_temp.len(), 2);
    let mut gen = FakeGenerator::default();
    let out = q.run(&mut gen, None, &mut ());
    assert_eq!(gen.prepared, vec![vec!["b#0", "c#1"]]);
    assert!(out
        .status
        .iter()
        .all(|s| matches!(s, TaskStatus::Done { .. } | TaskStatus::Skipped)));
    let names = outputs(&p.out());
    assert_eq!(names.len(), 7, "{names:?}"); // 6 images + the unrelated file
    assert!(names.contains(".unrelated.png.Zz99Yy.tmp"));
    for s in &q.selected {
        let meta = crate::output::read_png_metadata(&s.task.image.path).unwrap();
        assert_eq!(meta.record.unwrap().job_hash.unwrap(), s.task.hash);
    }
}
