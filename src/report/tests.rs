//! The run report's JSON shape and the text renderings, from fake runs.

use std::sync::{Arc, Mutex};

use super::*;
use crate::exec::queue::fake::FakeGenerator;
use crate::exec::queue::tests::Project;
use crate::exec::queue::{Observer, RunEvent};

struct Both {
    progress: Progress,
    report: ReportBuilder,
}

impl Observer for Both {
    fn event(&mut self, e: &RunEvent) {
        self.progress.event(e);
        self.report.event(e);
    }
}

fn run(p: &Project, gen: &mut FakeGenerator) -> (RunReport, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut obs = Both {
        progress: Progress::with_sink(
            ProgressMode::Lines,
            Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
        ),
        report: ReportBuilder::new(p.path("m.toml"), p.out(), None, None),
    };
    let outcome = p.queue(None, false).run(gen, None, &mut obs);
    let report = obs.report.finish(Some(&outcome), None, 1.5, None);
    drop(obs);
    let lines = lines.lock().unwrap().clone();
    (report, lines)
}

#[test]
fn report_json_has_the_documented_fields() {
    let p = Project::new();
    let (r, _) = run(
        &p,
        &mut FakeGenerator {
            fail_seeds: [10].into(),
            ..Default::default()
        },
    );
    let v = serde_json::to_value(&r).unwrap();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "batches",
            "counts",
            "error",
            "format",
            "golden",
            "jobs",
            "manifest",
            "mgpu_version",
            "models",
            "output_root",
            "phases",
            "seconds",
            "shard",
            "started",
            "status",
            "tasks"
        ]
    );
    assert_eq!(v["format"], 1);
    assert_eq!(v["status"], "failed");
    assert_eq!(
        v["counts"],
        serde_json::json!({"images": 6, "made": 5, "skipped": 0, "failed": 1, "not_run": 0})
    );
    assert_eq!(
        keys(&v["tasks"][0]),
        [
            "batch", "error", "index", "job", "job_hash", "output", "position", "reason",
            "seconds", "seed", "sha256", "status"
        ]
    );
    assert_eq!(v["tasks"][0]["status"], "made");
    assert_eq!(v["tasks"][0]["reason"], "missing");
    assert_eq!(v["tasks"][3]["status"], "failed");
    assert!(v["tasks"][3]["error"].as_str().unwrap().contains("seed 10"));
    let sha = v["tasks"][0]["sha256"].as_str().unwrap();
    let file = std::fs::read(p.out().join("a-1.png")).unwrap();
    assert_eq!(sha, crate::exec::queue::sha256_hex(&file));
    assert_eq!(
        keys(&v["batches"][0]),
        ["seconds", "step_times", "steps", "tasks"]
    );
    assert_eq!(v["batches"][0]["tasks"], serde_json::json!([0, 1, 2, 4]));
    assert_eq!(
        keys(&v["batches"][0]["step_times"][0]),
        [
            "fetch_wait_seconds",
            "fetched_bytes",
            "fetched_units",
            "passes",
            "seconds",
            "step"
        ]
    );
    assert_eq!(v["batches"][0]["step_times"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["batches"][0]["step_times"][1]["fetch_wait_seconds"],
        0.001
    );
    assert_eq!(
        v["models"],
        serde_json::json!([{
            "name": "fake", "compute": null, "prefetch_slots": null,
            "predicted_step_seconds": null,
            "devices": [
                {"device": "cpu", "planned_bytes": null, "measured_bytes": 1000},
                {"device": "disk", "planned_bytes": null, "measured_bytes": 24}
            ]
        }])
    );
    // It reads back.
    let back: RunReport = serde_json::from_value(v).unwrap();
    assert_eq!(back, r);

    // The rerun: skipped images still report their file's hash.
    let (r2, _) = run(&p, &mut FakeGenerator::default());
    assert_eq!(r2.status, RunStatus::Ok);
    assert_eq!((r2.counts.made, r2.counts.skipped), (1, 5));
    assert_eq!(r2.tasks[0].status, TaskState::Skipped);
    assert_eq!(r2.tasks[0].sha256, r.tasks[0].sha256);
}

#[test]
fn plain_lines_and_summary() {
    let p = Project::new();
    let (r, lines) = run(
        &p,
        &mut FakeGenerator {
            fail_seeds: [21].into(),
            ..Default::default()
        },
    );
    let text = lines.join("\n");
    assert_eq!(lines[0], "6 images: 6 to make, 0 up to date (3 batches)");
    assert!(text.contains("fake: loading"), "{text}");
    assert!(
        text.contains("fake: ready (cpu 1000 B, disk 24 B)"),
        "{text}"
    );
    assert!(
        text.contains("batch 1/3: 4 images (a#0, a#1, a#2, c#0), 2 steps"),
        "{text}"
    );
    assert!(text.contains("  step 2/2  "), "{text}");
    assert!(text.contains("fetch wait 0.001s (10%)"), "{text}");
    assert!(
        text.contains("failed: c#1 (seed 21): fake: the prompt of seed 21 is too long"),
        "{text}"
    );
    assert!(
        text.contains(&format!("wrote {}", p.out().join("a-1.png").display())),
        "{text}"
    );
    let summary = render_summary(&r);
    let first = summary.lines().next().unwrap();
    assert_eq!(
        first,
        "finished with failures: 5 made, 0 up to date, 1 failed in 1.5s"
    );
    assert!(
        summary.contains("failed images:\n  c#1 (seed 21) → "),
        "{summary}"
    );
}

#[test]
fn quiet_shows_only_failures() {
    let p = Project::new();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut progress = Progress::with_sink(
        ProgressMode::Quiet,
        Box::new(move |l| sink.lock().unwrap().push(l.to_string())),
    );
    struct P<'a>(&'a mut Progress);
    impl Observer for P<'_> {
        fn event(&mut self, e: &RunEvent) {
            self.0.event(e)
        }
    }
    p.queue(None, false).run(
        &mut FakeGenerator {
            fail_seeds: [1].into(),
            ..Default::default()
        },
        None,
        &mut P(&mut progress),
    );
    let got = lines.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("failed: a#0 (seed 1): "));
}

#[test]
fn units() {
    assert_eq!(human_bytes(0), "0 B");
    assert_eq!(human_bytes(1536), "1.50 KiB");
    assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    assert_eq!(human_seconds(12.34), "12.3s");
    assert_eq!(human_seconds(75.3), "1m15s");
    assert_eq!(human_seconds(7300.0), "2h01m");
    assert_eq!(human_seconds(f64::NAN), "?");
}

#[test]
fn bars_mode_takes_every_event() {
    // Not a terminal here, so indicatif draws nothing, but the templates are parsed and
    // every event goes through the bar code; lines printed above the bars reach the sink
    // only when no bar exists.
    let p = Project::new();
    let mut progress = Progress::with_sink(ProgressMode::Bars, Box::new(|_| {}));
    struct P<'a>(&'a mut Progress);
    impl Observer for P<'_> {
        fn event(&mut self, e: &RunEvent) {
            self.0.event(e)
        }
    }
    let out = p.queue(None, false).run(
        &mut FakeGenerator {
            fail_seeds: [20].into(),
            ..Default::default()
        },
        None,
        &mut P(&mut progress),
    );
    // Issue 14: the images bar reaches its end and no loading stage is left in its message.
    let (pos, len, msg) = progress.images_bar().expect("bars were drawn");
    assert_eq!(Some(pos), len, "every image counted");
    assert!(!msg.contains(':'), "stale stage message {msg:?}");
    progress.finish();
    assert_eq!(out.failed(), 1);
}

#[test]
fn bar_rates_and_colors() {
    assert_eq!(progress::rate_text(4.5654), "4.57 it/s");
    assert_eq!(progress::rate_text(0.5), "2.00 s/it");
    assert_eq!(progress::rate_text(0.0), "? it/s");
    let (a, b) = progress::bar_templates(false);
    assert!(!a.contains(".cyan") && !b.contains(".green"), "{a} {b}");
    assert!(!b.contains("per_sec"));
    let (a, _) = progress::bar_templates(true);
    assert!(a.contains("{bar:30.cyan/blue}"));
    for t in [a, b] {
        indicatif::ProgressStyle::with_template(&t).unwrap();
    }
}

#[test]
fn a_golden_failure_with_every_image_made_says_so() {
    let p = Project::new();
    let (mut r, _) = run(&p, &mut FakeGenerator::default());
    r.status = RunStatus::Failed;
    r.golden = Some(crate::golden::VerifyReport {
        dir: "g".into(),
        rule: crate::golden::Rule::BitExact,
        fingerprint_differences: vec![],
        outputs: vec![],
        missing: vec!["a#0 → a.png".into()],
        ok: false,
    });
    assert!(render_summary(&r).starts_with("done, but the golden comparison failed: "));
    r.counts.failed = 1;
    assert!(render_summary(&r).starts_with("finished with failures: "));
}
