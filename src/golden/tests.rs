//! Golden record/verify with the fake generator: match, mismatch with numbers, fingerprint
//! rules, refusing to overwrite, missing and extra outputs, sharded runs.

use std::path::{Path, PathBuf};

use super::*;
use crate::exec::queue::fake::FakeGenerator;
use crate::exec::queue::tests::Project;
use crate::exec::queue::{Observer, RunEvent};

/// Captures every rendered image of a run.
struct Capture {
    root: PathBuf,
    images: Vec<Captured>,
}

impl Observer for Capture {
    fn event(&mut self, _: &RunEvent) {}
    fn rendered(&mut self, task: &ImageTask, r: &Rendered, output: &Path) {
        self.images
            .push(Captured::rendered(task, r, output, &self.root));
    }
}

fn run(p: &Project, gen: &mut FakeGenerator) -> Vec<Captured> {
    let mut cap = Capture {
        root: p.out(),
        images: Vec::new(),
    };
    p.queue(None, true).run(gen, None, &mut cap);
    cap.images
}

fn record(p: &Project, dir: &Path) -> GoldenFile {
    let images = run(p, &mut FakeGenerator::default());
    let mut rec = Recorder::new(dir, false).unwrap();
    for c in &images {
        rec.add(c).unwrap();
    }
    rec.finish(&p.path("m.toml"), Fingerprint::this_machine(vec![]))
        .unwrap()
}

fn verify(dir: &Path, images: &[Captured], here: &Fingerprint, complete: bool) -> VerifyReport {
    let mut v = Verifier::new(dir, here, Tolerance::default()).unwrap();
    for c in images {
        v.check(c);
    }
    v.finish(complete)
}

#[test]
fn record_writes_hashes_copies_and_latents() {
    let p = Project::new();
    let dir = p.path("golden/m");
    let g = record(&p, &dir);
    assert_eq!(g.manifest, "m.toml");
    assert_eq!(g.outputs.len(), 6);
    let o = &g.outputs[0];
    assert_eq!((o.job.as_str(), o.index, o.seed), ("a", 0, 1));
    assert_eq!(o.output, "a-1.png");
    assert_eq!(o.png, "outputs/a-1.png");
    assert_eq!(o.latent, "outputs/a-1.latent.npy");
    assert_eq!(o.latent_shape, vec![1, 16, 8, 8]);
    // The hashes are of the raw pixels and latent bytes.
    let written = image::open(p.out().join("a-1.png")).unwrap().to_rgb8();
    assert_eq!(o.pixels_sha256, sha256_hex(written.as_raw()));
    let copy = image::open(dir.join(&o.png)).unwrap().to_rgb8();
    assert_eq!(copy, written);
    let npy = npy::read_f32(&std::fs::read(dir.join(&o.latent)).unwrap()).unwrap();
    assert_eq!(npy.shape, vec![1, 16, 8, 8]);
    assert_eq!(latent_sha256(&npy.data), o.latent_sha256);
    assert_eq!(load(&dir).unwrap(), g);
    // No staging folders left behind.
    let leftovers: Vec<_> = std::fs::read_dir(p.path("golden"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("m")]);
}

#[test]
fn record_refuses_to_overwrite_without_force_and_replaces_with_it() {
    let p = Project::new();
    let dir = p.path("golden/m");
    let first = record(&p, &dir);
    let e = Recorder::new(&dir, false).unwrap_err().to_string();
    assert!(
        e.contains("already holds golden files") && e.contains("--force"),
        "{e}"
    );
    // With force: a drifted recording replaces the old one completely.
    let images = run(
        &p,
        &mut FakeGenerator {
            pixel_delta: 1,
            ..Default::default()
        },
    );
    let mut rec = Recorder::new(&dir, true).unwrap();
    for c in &images[..2] {
        rec.add(c).unwrap();
    }
    let second = rec
        .finish(&p.path("m.toml"), Fingerprint::this_machine(vec![]))
        .unwrap();
    assert_eq!(second.outputs.len(), 2);
    assert_ne!(
        second.outputs[0].pixels_sha256,
        first.outputs[0].pixels_sha256
    );
    assert!(!dir.join("outputs/c-21.png").exists(), "old files are gone");
    assert_eq!(load(&dir).unwrap(), second);
}

#[test]
fn verify_matches_bit_exactly_on_the_same_machine() {
    let p = Project::new();
    let dir = p.path("golden/m");
    record(&p, &dir);
    let here = Fingerprint::this_machine(vec![]);
    let r = verify(&dir, &run(&p, &mut FakeGenerator::default()), &here, true);
    assert_eq!(r.rule, Rule::BitExact);
    assert!(r.ok, "{r:?}");
    assert!(r.outputs.iter().all(|c| c.verdict == Verdict::Match
        && c.psnr_db.is_none()
        && c.latent_max_abs_diff == Some(0.0)));
}

#[test]
fn mismatches_say_which_and_by_how_much() {
    let p = Project::new();
    let dir = p.path("golden/m");
    record(&p, &dir);
    let here = Fingerprint::this_machine(vec![]);
    let drifted = run(
        &p,
        &mut FakeGenerator {
            pixel_delta: 2,
            latent_delta: 5e-4,
            ..Default::default()
        },
    );
    let r = verify(&dir, &drifted, &here, true);
    assert!(!r.ok);
    let c = &r.outputs[0];
    assert_eq!(c.verdict, Verdict::Mismatch);
    assert!(!c.pixels_equal && c.latent_equal == Some(false));
    assert_eq!(c.max_pixel_diff, 2);
    // One value in 7 off by 2: MSE = 4/7 → PSNR = 10 log10(255² · 7 / 4) ≈ 50.56 dB.
    let psnr = c.psnr_db.unwrap();
    assert!((psnr - 50.56).abs() < 0.05, "{psnr}");
    let d = c.latent_max_abs_diff.unwrap();
    assert!((d - 5e-4).abs() < 1e-5, "{d}");

    // Another machine: the same drift is within the tolerance, and the report says why.
    let mut other = here.clone();
    other.cpu = "Another CPU".into();
    let r = verify(&dir, &drifted, &other, true);
    assert!(matches!(r.rule, Rule::Tolerance(_)));
    assert_eq!(r.fingerprint_differences.len(), 1);
    assert!(r.ok, "{r:?}");
    assert!(r
        .outputs
        .iter()
        .all(|c| c.verdict == Verdict::WithinTolerance));
    // …but a bigger drift is not.
    let far = run(
        &p,
        &mut FakeGenerator {
            pixel_delta: 40,
            ..Default::default()
        },
    );
    let r = verify(&dir, &far, &other, true);
    assert!(!r.ok);
    assert!(r.outputs[0].psnr_db.unwrap() < 40.0);
    let r = verify(
        &dir,
        &run(
            &p,
            &mut FakeGenerator {
                latent_delta: 0.01,
                ..Default::default()
            },
        ),
        &other,
        true,
    );
    assert!(!r.ok, "latent beyond 1e-3 fails even with identical pixels");
    assert!(r.outputs[0].pixels_equal);
}

#[test]
fn missing_and_extra_outputs() {
    let p = Project::new();
    let dir = p.path("golden/m");
    record(&p, &dir);
    let here = Fingerprint::this_machine(vec![]);
    let images = run(&p, &mut FakeGenerator::default());
    // A full run that made only some (images come in batch order: a, a, a, c, c, b): missing
    // ones fail; a shard's run does not miss them.
    let r = verify(&dir, &images[..4], &here, true);
    assert!(!r.ok);
    assert_eq!(r.missing, vec!["b#0 → b-10.png", "c#1 → c-21.png"]);
    assert!(verify(&dir, &images[..4], &here, false).ok);
    // An output the golden files do not know.
    let mut extra = images[0].clone();
    extra.job = "new".into();
    let r = verify(&dir, &[extra], &here, false);
    assert_eq!(r.outputs[0].verdict, Verdict::NotInGolden);
    assert!(!r.ok);
    // Images read back from their files (up to date in a run): pixels only.
    let c = Captured {
        latent: None,
        ..images[1].clone()
    };
    let r = verify(&dir, &[c], &here, false);
    assert!(r.ok);
    assert_eq!(r.outputs[0].latent_equal, None);
    assert!(r.outputs[0].notes[0].starts_with("latent not compared"));
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("no golden files") && e.contains("mgpu golden record"),
        "{e}"
    );
    std::fs::write(dir.path().join(GOLDEN_FILE), "{\"format\": 1}").unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("golden.json is not a valid golden file"), "{e}");
    assert_eq!(
        default_dir(Path::new("manifests/demo.toml")),
        Path::new("golden/demo")
    );
}
