//! The HTML run report (`mgpu run --html FILE`, `mgpu golden verify --html FILE`,
//! `mgpu report RUN.json --html FILE`): one self-contained page built from a [`RunReport`].
//!
//! Sections: the run (status, counts, time); a gallery with one card per image or video
//! (thumbnail embedded as a `data:` URI, prompt, negative prompt, seed, size, steps, sampler,
//! models and LoRAs, status with its error); for golden verification (shown first) the
//! reference, the new output and a difference heat map of every output that is not
//! identical, with PSNR; per
//! batch an SVG plot of step times with fetch waits; the plan (bytes per device and model,
//! planned vs measured, predicted vs measured step time); and a `phases` table when the
//! report carries one (rendered generically from the JSON, whatever its fields).
//!
//! Nothing is fetched: CSS, script and plots are inline and a Content-Security-Policy forbids
//! every other source, so the page works offline and from an archive. Thumbnails are read
//! from the output files when the page is written (from the report's absolute output paths).

mod images;
mod plot;
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use images::{heat_map, thumbnail, Picture};
pub use plot::step_plot;

use super::{human_seconds, JobReport, RunReport, RunStatus, TaskReport, TaskState};

/// How the page is written.
#[derive(Debug, Clone, Default)]
pub struct PageOptions {
    /// The folder the page is written to: links to outputs are relative to it.
    pub page_dir: Option<PathBuf>,
    /// Whether to link each card to its output file (not when the outputs live in a
    /// temporary folder, as in `mgpu golden verify`).
    pub link_outputs: bool,
}

/// The page for `report`. `json` is the report as JSON as written (or read): fields this
/// version does not model (`phases`) are rendered from it.
pub fn render(report: &RunReport, json: &serde_json::Value, opts: &PageOptions) -> String {
    let mut s = String::with_capacity(64 << 10);
    let title = format!("mgpu — {}", report.manifest.display());
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; \
         style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{}</title><style>{CSS}</style></head><body>\n",
        esc(&title)
    );
    header(&mut s, report);
    if let Some(g) = &report.golden {
        tables::golden(&mut s, g, &report.output_root);
    }
    gallery(&mut s, report, opts);
    batches(&mut s, report);
    tables::plan(&mut s, report);
    if !report.phases.is_empty() {
        tables::phases(&mut s, &report.phases);
    } else if let Some(p) = json
        .get("phases")
        .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
    {
        // A newer report's layout this version does not model: shown as it is.
        s.push_str("<section id=\"phases\"><h2>Phases</h2>");
        tables::value_table(&mut s, p);
        s.push_str("</section>\n");
    }
    let _ = write!(
        s,
        "<footer>written by mgpu {} from a run report (format {}); self-contained: \
         nothing on this page is fetched</footer>\n<script>{JS}</script></body></html>\n",
        esc(&report.mgpu_version),
        report.format
    );
    s
}

/// Writes the page to `path` atomically.
pub fn write(
    path: &Path,
    report: &RunReport,
    json: &serde_json::Value,
    link_outputs: bool,
) -> Result<(), crate::output::OutputError> {
    let page_dir = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        })
        .and_then(|d| std::path::absolute(d).ok());
    let html = render(
        report,
        json,
        &PageOptions {
            page_dir,
            link_outputs,
        },
    );
    crate::output::write_atomic(path, |w| w.write_all(html.as_bytes()))
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn header(s: &mut String, r: &RunReport) {
    let c = &r.counts;
    let _ = write!(
        s,
        "<header><h1>{}</h1><p class=\"run {}\"><b>{}</b>: {} made, {} up to date, {} failed",
        esc(&r.manifest.display().to_string()),
        match r.status {
            RunStatus::Ok => "ok",
            _ => "bad",
        },
        super::status_word(r),
        c.made,
        c.skipped,
        c.failed
    );
    if c.not_run > 0 {
        let _ = write!(s, ", {} not run", c.not_run);
    }
    let _ = write!(
        s,
        " in {}</p><p class=\"meta\">started {} · output root <code>{}</code> · mgpu {}",
        human_seconds(r.seconds),
        esc(&r.started),
        esc(&r.output_root.display().to_string()),
        esc(&r.mgpu_version)
    );
    if let Some(shard) = &r.shard {
        let _ = write!(s, " · shard {}", esc(shard));
    }
    s.push_str("</p>");
    if let Some(e) = &r.error {
        let _ = write!(s, "<p class=\"error\">{}</p>", esc(e));
    }
    s.push_str("</header>\n");
}

fn state_class(t: &TaskReport) -> (&'static str, &'static str) {
    match t.status {
        TaskState::Made => ("made", "made"),
        TaskState::Skipped => ("skipped", "up to date"),
        TaskState::Failed => ("failed", "failed"),
        TaskState::NotRun => ("not_run", "not run"),
    }
}

fn gallery(s: &mut String, r: &RunReport, opts: &PageOptions) {
    let _ = write!(
        s,
        "<section id=\"gallery\"><h2>Outputs ({})</h2><nav class=\"filters\">\
         <button data-filter=\"all\">all</button><button data-filter=\"made\">made</button>\
         <button data-filter=\"skipped\">up to date</button>\
         <button data-filter=\"failed\">failed</button></nav><div class=\"cards\">",
        r.tasks.len()
    );
    for t in &r.tasks {
        card(s, t, r.jobs.iter().find(|j| j.name == t.job), opts);
    }
    s.push_str("</div></section>\n");
}

fn card(s: &mut String, t: &TaskReport, job: Option<&JobReport>, opts: &PageOptions) {
    let (class, word) = state_class(t);
    let _ = write!(
        s,
        "<article class=\"card\" data-status=\"{class}\" data-job=\"{}\" data-index=\"{}\">",
        esc(&t.job),
        t.index
    );
    let exists = t.output.is_file();
    let pic = if exists && t.status != TaskState::Failed {
        Some(thumbnail(&t.output))
    } else {
        None
    };
    match &pic {
        Some(Ok(p)) => {
            let _ = write!(
                s,
                "<img class=\"thumb\" src=\"{}\" alt=\"{}\" title=\"click to enlarge\">",
                p.data_uri,
                esc(&format!("{}#{}", t.job, t.index))
            );
        }
        Some(Err(e)) => {
            let _ = write!(s, "<div class=\"nothumb\">{}</div>", esc(e));
        }
        None => {
            let why = match t.status {
                TaskState::Failed => "failed",
                TaskState::NotRun => "not made",
                _ => "the file is gone",
            };
            let _ = write!(s, "<div class=\"nothumb\">{why}</div>");
        }
    }
    let _ = write!(
        s,
        "<div class=\"body\"><h3>{}#{} <span class=\"badge {class}\">{word}</span></h3>",
        esc(&t.job),
        t.index
    );
    if let Some(e) = &t.error {
        let _ = write!(s, "<p class=\"error\">{}</p>", esc(e));
    }
    s.push_str("<dl>");
    let mut row = |k: &str, v: String| {
        let _ = write!(s, "<dt>{k}</dt><dd>{v}</dd>");
    };
    if let Some(j) = job {
        row("prompt", esc(&j.prompt));
        if let Some(n) = j.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            row("negative", esc(n));
        }
    }
    row("seed", t.seed.to_string());
    if let Some(j) = job {
        let mut size = format!("{}×{}", j.width, j.height);
        if j.frames > 1 {
            let _ = write!(size, ", {} frames", j.frames);
            if let Some(fps) = j.fps {
                let _ = write!(size, " at {fps} fps");
            }
        }
        row("size", size);
        row(
            "steps",
            format!("{} · {} · {}", j.steps, esc(&j.sampler), esc(&j.scheduler)),
        );
        let mut g = format!("guidance {}", j.guidance);
        if j.cfg != 1.0 {
            let _ = write!(g, ", cfg {}", j.cfg);
        }
        row("guidance", g);
        let models: Vec<String> = j
            .models
            .iter()
            .map(|m| {
                format!(
                    "<span title=\"{}\">{} <small>({})</small></span>",
                    esc(&m.file.display().to_string()),
                    esc(&file_name(&m.file)),
                    esc(&m.family)
                )
            })
            .collect();
        row("models", models.join(", "));
        if !j.loras.is_empty() {
            let loras: Vec<String> = j
                .loras
                .iter()
                .map(|l| {
                    format!(
                        "<span title=\"{} on {}\">{}:{}</span>",
                        esc(&l.file.display().to_string()),
                        esc(&l.model),
                        esc(&file_stem(&l.file)),
                        l.strength
                    )
                })
                .collect();
            row("LoRAs", loras.join(", "));
        }
    }
    if let Some(sec) = t.seconds {
        row("time", human_seconds(sec));
    }
    if opts.link_outputs && exists {
        let href = link(&t.output, opts.page_dir.as_deref());
        row(
            "file",
            format!(
                "<a href=\"{}\">{}</a>",
                esc(&href),
                esc(&file_name(&t.output))
            ),
        );
    } else {
        row("file", esc(&file_name(&t.output)));
    }
    s.push_str("</dl></div></article>\n");
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// A link to `target` from a page in `page_dir`: relative when both are absolute, `/`
/// separated and percent-escaped where a URL needs it.
fn link(target: &Path, page_dir: Option<&Path>) -> String {
    let rel = page_dir
        .and_then(|d| pathdiff::diff_paths(target, d))
        .unwrap_or_else(|| target.to_path_buf());
    let text: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "/")
        .collect();
    let joined = text.join("/");
    let prefix = if rel.is_absolute() { "file:///" } else { "" };
    let mut out = String::from(prefix);
    for ch in joined.chars() {
        match ch {
            ' ' => out.push_str("%20"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

fn batches(s: &mut String, r: &RunReport) {
    if r.batches.is_empty() {
        return;
    }
    s.push_str(
        "<section id=\"batches\"><h2>Batches</h2><p class=\"legend\"><span class=\"k step\"></span> \
         step time <span class=\"k wait\"></span> waiting for streamed weights</p>",
    );
    for (i, b) in r.batches.iter().enumerate() {
        let names: Vec<String> = b
            .tasks
            .iter()
            .filter_map(|&t| r.tasks.get(t))
            .map(|t| format!("{}#{}", t.job, t.index))
            .collect();
        let wait: f64 = b.step_times.iter().map(|p| p.fetch_wait_seconds).sum();
        let mean = if b.step_times.is_empty() {
            0.0
        } else {
            b.seconds / b.step_times.len() as f64
        };
        let _ = writeln!(
            s,
            "<div class=\"batch\"><h3>batch {} of {}: {} ({} image{}), {} steps</h3>\
             <p>{} in steps, mean {} per step, {} waiting for weights</p>{}</div>",
            i + 1,
            r.batches.len(),
            esc(&names.join(", ")),
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            b.steps,
            plot::seconds_label(b.seconds),
            plot::seconds_label(mean),
            plot::seconds_label(wait),
            step_plot(&b.step_times)
        );
    }
    s.push_str("</section>\n");
}

const CSS: &str = r#"
:root{--bg:#fafafa;--fg:#1d1d1f;--mute:#6b6b70;--line:#dcdce0;--ok:#1a7f37;--bad:#c62828;--step:#1f6feb;--wait:#f08c00}
*{box-sizing:border-box}body{margin:0;padding:24px 32px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;background:var(--bg);color:var(--fg)}
h1{font-size:20px;margin:0 0 4px;word-break:break-all}h2{font-size:17px;margin:28px 0 10px;border-bottom:1px solid var(--line);padding-bottom:4px}h3{font-size:14px;margin:0 0 6px}
.run.ok b,b.ok{color:var(--ok)}.run.bad b,b.bad{color:var(--bad)}.meta,.legend,footer{color:var(--mute)}.error{color:var(--bad);white-space:pre-wrap}
code{font-size:12px}.filters button{margin-right:6px;border:1px solid var(--line);background:#fff;border-radius:4px;padding:2px 10px;cursor:pointer}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:14px}
.card{background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden}
.card img.thumb{display:block;width:100%;height:240px;object-fit:contain;image-rendering:pixelated;background:#eee;cursor:zoom-in}
.card img.big{position:fixed;inset:4vh 4vw;width:92vw;height:92vh;object-fit:contain;z-index:9;background:rgba(0,0,0,.85);cursor:zoom-out}
.nothumb{height:120px;display:flex;align-items:center;justify-content:center;background:#f0f0f2;color:var(--mute);padding:8px;text-align:center}
.body{padding:10px 12px}dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:0}dt{color:var(--mute)}dd{margin:0;word-break:break-word}
.badge{font-weight:normal;font-size:12px;padding:1px 7px;border-radius:9px;color:#fff;background:var(--mute)}
.badge.made{background:var(--ok)}.badge.failed,.badge.mismatch{background:var(--bad)}.badge.skipped{background:#57606a}.badge.match{background:var(--ok)}
.batch{margin-bottom:16px}svg.plot{background:#fff;border:1px solid var(--line);border-radius:6px;max-width:100%;height:auto}
svg .axis{stroke:#888}svg .grid{stroke:#eee}svg .tick{font-size:10px;fill:var(--mute)}
svg polyline.step{fill:none;stroke:var(--step);stroke-width:1.6}svg circle.step{fill:var(--step)}svg rect.wait{fill:var(--wait)}
.k{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px;vertical-align:middle}.k.step{background:var(--step)}.k.wait{background:var(--wait)}
table{border-collapse:collapse;background:#fff;margin-bottom:12px}th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.golden .pics{display:flex;gap:10px;flex-wrap:wrap}.golden figure{margin:0}.golden figure img{width:200px;image-rendering:pixelated;border:1px solid var(--line)}
footer{margin-top:32px;font-size:12px}
"#;

/// Filters, click-to-enlarge, and marks for the browser test (`data-ready`, the number of
/// cards, the drawn width of each plot's line: 0 would mean the SVG did not render).
const JS: &str = r#"
(function(){
  var cards=document.querySelectorAll('.card');
  document.querySelectorAll('button[data-filter]').forEach(function(b){
    b.addEventListener('click',function(){
      var f=b.getAttribute('data-filter');
      cards.forEach(function(c){c.hidden=(f!=='all'&&c.getAttribute('data-status')!==f);});
    });
  });
  document.querySelectorAll('.card img.thumb').forEach(function(i){
    i.addEventListener('click',function(){i.classList.toggle('big');});
  });
  document.querySelectorAll('svg.plot').forEach(function(s){
    var p=s.querySelector('polyline');
    s.setAttribute('data-drawn-width',p?String(Math.round(p.getBBox().width)):'0');
  });
  document.body.setAttribute('data-cards',String(cards.length));
  document.body.setAttribute('data-ready','1');
})();
"#;

#[cfg(test)]
mod tests;
