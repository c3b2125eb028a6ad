//! The page from hand-made reports: escaping, cards of outputs that are gone or failed,
//! relative links, generic `phases` tables and the run-status words.

use super::*;

fn report(dir: &Path) -> (RunReport, serde_json::Value) {
    let img = image::RgbImage::from_pixel(40, 20, image::Rgb([200, 30, 30]));
    img.save(dir.join("a-1.png")).unwrap();
    let v = serde_json::json!({
        "format": 1, "mgpu_version": "0.1.0", "manifest": "m <&> \"x\".toml",
        "output_root": dir, "shard": null, "started": "2026-12-03T00:00:00Z", "seconds": 2.0,
        "status": "failed", "error": null,
        "counts": {"images": 3, "made": 1, "skipped": 0, "failed": 1, "not_run": 1},
        "tasks": [
            {"job": "a", "index": 0, "seed": 1, "output": dir.join("a-1.png"), "job_hash": "h",
             "position": 0, "status": "made", "reason": "missing", "batch": 0, "seconds": 0.5,
             "sha256": "s", "error": null},
            {"job": "a", "index": 1, "seed": 2, "output": dir.join("a-2.png"), "job_hash": "h",
             "position": 1, "status": "failed", "reason": "missing", "batch": 0, "seconds": null,
             "sha256": null, "error": "out of <memory>"},
            {"job": "b", "index": 0, "seed": 3, "output": dir.join("gone.png"), "job_hash": "h",
             "position": 2, "status": "not_run", "reason": null, "batch": null, "seconds": null,
             "sha256": null, "error": null}
        ],
        "batches": [{"tasks": [0, 1], "steps": 2, "seconds": 0.3, "step_times": [
            {"step": 1, "seconds": 0.2, "fetch_wait_seconds": 0.05, "passes": 1,
             "fetched_units": 2, "fetched_bytes": 100},
            {"step": 2, "seconds": 0.1, "fetch_wait_seconds": 0.0, "passes": 1,
             "fetched_units": 0, "fetched_bytes": 0}]}],
        "models": [{"name": "flux", "compute": "cpu", "prefetch_slots": 2,
                    "predicted_step_seconds": 0.12,
                    "devices": [{"device": "cpu", "planned_bytes": 2048, "measured_bytes": 2048},
                                {"device": "disk", "planned_bytes": 1024, "measured_bytes": null}]}],
        "golden": null,
        "jobs": [{"name": "a", "pipeline": "p", "prompt": "a <b>fox</b>", "negative_prompt": "blur",
                  "width": 40, "height": 20, "frames": 1, "fps": null, "steps": 2,
                  "sampler": "euler", "scheduler": "simple", "guidance": 3.5, "cfg": 1.0,
                  "models": [{"name": "flux", "family": "flux", "file": "/m/flux.safetensors"}],
                  "loras": [{"model": "flux", "file": "/m/style.safetensors", "strength": 0.8}]}],
        "phases": [{"phase": "read", "model": "flux", "seconds": 1.25, "bytes": 0},
                   {"phase": "upload", "model": "flux", "seconds": 0.5, "bytes": 4096}]
    });
    (serde_json::from_value(v.clone()).unwrap(), v)
}

#[test]
fn cards_escape_text_and_say_why_a_picture_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (r, v) = report(dir.path());
    let page = render(
        &r,
        &v,
        &PageOptions {
            page_dir: Some(dir.path().join("reports")),
            link_outputs: true,
        },
    );
    assert!(page.contains("<h1>m &lt;&amp;&gt; &quot;x&quot;.toml</h1>"));
    assert!(page.contains("<dd>a &lt;b&gt;fox&lt;/b&gt;</dd>"));
    assert!(!page.contains("<b>fox</b>"));
    assert_eq!(page.matches("<article class=\"card\"").count(), 3);
    assert_eq!(page.matches("data:image/png;base64,").count(), 1);
    assert!(page.contains("<div class=\"nothumb\">failed</div>"));
    assert!(page.contains("<p class=\"error\">out of &lt;memory&gt;</p>"));
    assert!(page.contains("<div class=\"nothumb\">not made</div>"));
    assert!(page.contains("<dt>negative</dt><dd>blur</dd>"));
    assert!(page.contains("style:0.8"));
    assert!(page.contains("href=\"../a-1.png\""));
    assert!(page.contains("finished with failures"));
    // The plan: planned and measured bytes, predicted and measured step time.
    assert!(page.contains("<td>cpu</td><td class=\"n\">2.00 KiB</td><td class=\"n\">2.00 KiB</td>"));
    assert!(page.contains("120 ms"));
    assert!(page.contains("150 ms <small>(mean of 2 steps, batch of 2)</small>"));
    // The phases: a row per phase and model.
    assert!(page.contains("<tr><th>phase</th><th>model</th><th>seconds</th><th>bytes</th></tr>"));
    assert!(page.contains(
        "<tr><td>upload</td><td>flux</td><td class=\"n\">0.500</td><td class=\"n\">4.00 KiB</td></tr>"
    ));
}

#[test]
fn links_are_relative_and_escaped() {
    assert_eq!(
        link(Path::new("/a/out/x y#1.png"), Some(Path::new("/a/rep"))),
        "../out/x%20y%231.png"
    );
    assert_eq!(link(Path::new("/a/x.png"), None), "file:///a/x.png");
}
