//! The HTML report (issue 14) through the binary: `mgpu run --html`, `mgpu report --html`,
//! `mgpu golden verify --html`, `--report -`; and the page in a real headless browser
//! (Debian's `chromium`): it loads without console messages, shows one card per image, and
//! its plots render. Without a browser the browser test is skipped with a note, unless
//! `MGPU_REQUIRE_BROWSER=1` (which .ci/run sets after installing one).
//! `MGPU_REPORT_SCREENSHOT=FILE` also saves a screenshot of the demo's page (docs/report.png).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{demo, mgpu, stderr};

/// Runs the demo with `--report run.json --html report.html` in a fresh copy.
fn demo_report() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (dir, m) = demo();
    let json = dir.path().join("run.json");
    let html = dir.path().join("report.html");
    let o = mgpu(&[
        "run",
        m.to_str().unwrap(),
        "--quiet",
        "--report",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (dir, json, html)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn run_writes_a_self_contained_page_and_report_rebuilds_it() {
    let (dir, json, html) = demo_report();
    let page = read(&html);
    assert_eq!(page.matches("<article class=\"card\"").count(), 4);
    assert_eq!(
        page.matches("<img class=\"thumb\" src=\"data:image/png;base64,")
            .count(),
        4
    );
    assert_eq!(
        page.matches("<svg class=\"plot\"").count(),
        3,
        "one plot per batch"
    );
    assert!(page.contains("a red fox in snow") && page.contains("lora-tiny:0.8"));
    assert!(page.contains("id=\"plan\""), "the plan table");
    // Nothing is fetched: no URL other than the SVG namespace and data: URIs.
    let without_ns = page.replace("http://www.w3.org/2000/svg", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    assert!(!page.contains(" src=\"http") && !page.contains("<link rel=\"stylesheet\""));

    // The JSON carries what the page needs: the same page again from it.
    let rebuilt = dir.path().join("sub/rebuilt.html");
    std::fs::create_dir_all(rebuilt.parent().unwrap()).unwrap();
    let o = mgpu(&[
        "report",
        json.to_str().unwrap(),
        "--html",
        rebuilt.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = read(&rebuilt);
    assert_eq!(again.matches("<article class=\"card\"").count(), 4);
    // Links to the outputs are relative to the page's folder.
    assert!(again.contains("href=\"../out/tiny/fox-42.png\""), "{again}");

    // The run's phases (where its time went) are in the report and on the page, a row per
    // phase and model.
    let v: serde_json::Value = serde_json::from_str(&read(&json)).unwrap();
    let phases = v["phases"].as_array().expect("the report has phases");
    for want in ["read", "encode", "sample", "decode", "write"] {
        assert!(
            phases.iter().any(|p| p["phase"] == want),
            "no `{want}` phase in {phases:?}"
        );
    }
    assert!(again.contains("<section id=\"phases\">"));
    assert!(again.contains("<tr><th>phase</th><th>model</th><th>seconds</th><th>bytes</th></tr>"));
    assert!(
        again.contains("<tr><td>sample</td><td>flux</td>"),
        "{again}"
    );

    // Not a report: a clear error, exit 2.
    let o = mgpu(&[
        "report",
        html.to_str().unwrap(),
        "--html",
        rebuilt.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is not JSON"), "{}", stderr(&o));
}

#[test]
fn report_dash_writes_json_to_stdout() {
    let (dir, m) = demo();
    let o = mgpu(&["run", m.to_str().unwrap(), "--quiet", "--report", "-"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.path().join("-").exists(), "no file named `-`");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON on stdout");
    assert_eq!(v["counts"]["made"], 4);
    assert_eq!(v["jobs"][0]["prompt"], "a red fox in snow");
}

#[test]
fn golden_verify_html_shows_reference_new_output_and_heat_map() {
    let (dir, m) = demo();
    let gdir = dir.path().join("golden");
    let o = mgpu(&[
        "golden",
        "record",
        m.to_str().unwrap(),
        "--quiet",
        "--dir",
        gdir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A changed LoRA strength changes every image and the job hash.
    let text = read(&m).replace("strength = 0.8", "strength = 0.5");
    assert_ne!(text, read(&m));
    std::fs::write(&m, text).unwrap();
    let html = dir.path().join("verify.html");
    let o = mgpu(&[
        "golden",
        "verify",
        m.to_str().unwrap(),
        "--quiet",
        "--dir",
        gdir.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the job hash changed since the recording"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints the report");
    assert_eq!(v["golden"]["ok"], false);
    let page = read(&html);
    let comparisons = page.matches("<div class=\"comparison\"").count();
    assert_eq!(comparisons, 4, "one comparison per differing image");
    // Reference, this run and the heat map, each a picture.
    let first = &page[page.find("<div class=\"comparison\"").unwrap()..];
    let first = &first[..first.find("</div></div>").unwrap()];
    assert_eq!(
        first.matches("<img src=\"data:image/png;base64,").count(),
        3,
        "{first}"
    );
    assert!(first.contains("PSNR ") && first.contains(" dB"), "{first}");
    assert!(page.contains("MISMATCH"));
}

/// The browser to drive: `MGPU_BROWSER`, else the first of chromium, chromium-browser,
/// google-chrome on PATH.
fn browser() -> Option<PathBuf> {
    if let Some(b) = std::env::var_os("MGPU_BROWSER") {
        return Some(PathBuf::from(b));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Headless Chromium with a throwaway profile; returns (stdout, stderr).
fn chromium(browser: &Path, profile: &Path, args: &[&str]) -> (String, String) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("the browser starts");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
    Some(&tag[at..at + tag[at..].find('"')?])
}

#[test]
fn the_page_renders_in_a_headless_browser() {
    let Some(browser) = browser() else {
        if std::env::var("MGPU_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
            panic!("no browser (chromium) found and MGPU_REQUIRE_BROWSER=1");
        }
        eprintln!(
            "SKIPPED: no headless browser (install Debian's `chromium`, or set MGPU_BROWSER)"
        );
        return;
    };
    let (dir, _json, html) = demo_report();
    let url = format!("file://{}", html.display());
    let profile = dir.path().join("profile");
    let (dom, log) = chromium(
        &browser,
        &profile,
        &["--virtual-time-budget=3000", "--dump-dom", &url],
    );
    // Console messages (errors, uncaught exceptions, CSP violations) are logged as
    // `INFO:CONSOLE(…)`; the page writes none.
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    let body = &dom[dom.find("<body").expect("a body")..];
    let body_tag = &body[..body.find('>').unwrap()];
    assert_eq!(
        attr(body_tag, "data-ready"),
        Some("1"),
        "the script ran: {body_tag}"
    );
    assert_eq!(
        attr(body_tag, "data-cards"),
        Some("4"),
        "one card per image"
    );
    let plots: Vec<&str> = dom
        .match_indices("<svg class=\"plot\"")
        .map(|(i, _)| &dom[i..i + dom[i..].find('>').unwrap()])
        .collect();
    assert_eq!(plots.len(), 3);
    for p in plots {
        let points: usize = attr(p, "data-points").unwrap().parse().unwrap();
        let drawn: f64 = attr(p, "data-drawn-width")
            .unwrap_or_else(|| panic!("plot not measured: {p}"))
            .parse()
            .unwrap();
        assert!(
            points >= 2 && drawn > 100.0,
            "a plot with data renders: {p}"
        );
    }
    if let Some(shot) = std::env::var_os("MGPU_REPORT_SCREENSHOT") {
        let shot = std::path::absolute(PathBuf::from(shot)).unwrap();
        let (_, log) = chromium(
            &browser,
            &profile,
            &[
                "--window-size=1200,1500",
                &format!("--screenshot={}", shot.display()),
                &url,
            ],
        );
        assert!(shot.is_file(), "no screenshot: {log}");
    }
}
