//! The HTML report's tables: golden comparisons (with reference, new output and heat map),
//! the plan next to what was measured, and any JSON value as a table (`phases`).

use std::fmt::Write as _;
use std::path::Path;

use super::images::{heat_map, png_data_uri, scaled};
use super::{esc, plot::seconds_label};
use crate::golden::{OutputCheck, Verdict, VerifyReport};
use crate::report::{human_bytes, PhaseReport, RunReport};

/// Longest side of the pictures of a golden comparison.
const GOLDEN_PICTURE: u32 = 320;

pub fn golden(s: &mut String, g: &VerifyReport, output_root: &Path) {
    let _ = write!(
        s,
        "<section id=\"golden\" class=\"golden\"><h2>Golden comparison: {}</h2>\
         <p><b class=\"{}\">{}</b> · rule: {} · golden folder <code>{}</code></p>",
        if g.ok { "PASS" } else { "FAIL" },
        if g.ok { "ok" } else { "bad" },
        if g.ok {
            "every output matches"
        } else {
            "outputs differ"
        },
        esc(&g.rule.to_string()),
        esc(&g.dir.display().to_string())
    );
    for d in &g.fingerprint_differences {
        let _ = write!(
            s,
            "<p class=\"meta\">machine differs from the recording: {}</p>",
            esc(d)
        );
    }
    s.push_str(
        "<table><tr><th>output</th><th>verdict</th><th>max |Δ|</th><th>PSNR</th>\
         <th>latent max |Δ|</th><th>notes</th></tr>",
    );
    for c in &g.outputs {
        let (class, word) = verdict(c.verdict);
        let _ = write!(
            s,
            "<tr><td>{}#{} <code>{}</code></td><td><span class=\"badge {class}\">{word}</span></td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&c.job),
            c.index,
            esc(&c.output),
            c.max_pixel_diff,
            psnr(c),
            c.latent_max_abs_diff
                .map(|d| format!("{d:.3e}"))
                .unwrap_or_else(|| "—".into()),
            esc(&c.notes.join("; "))
        );
    }
    for m in &g.missing {
        let _ = write!(
            s,
            "<tr><td>{}</td><td><span class=\"badge mismatch\">missing</span></td>\
             <td></td><td></td><td></td><td>in the golden files, not made by this run</td></tr>",
            esc(m)
        );
    }
    s.push_str("</table>");
    for c in g
        .outputs
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Mismatch | Verdict::WithinTolerance))
    {
        comparison(s, c, &g.dir, output_root);
    }
    s.push_str("</section>\n");
}

fn verdict(v: Verdict) -> (&'static str, &'static str) {
    match v {
        Verdict::Match => ("match", "identical"),
        Verdict::WithinTolerance => ("match", "within tolerance"),
        Verdict::Mismatch => ("mismatch", "MISMATCH"),
        Verdict::NotInGolden => ("skipped", "not in golden files"),
    }
}

fn psnr(c: &OutputCheck) -> String {
    match c.psnr_db {
        Some(p) => format!("{p:.2} dB"),
        None if c.pixels_equal => "∞".into(),
        None => "—".into(),
    }
}

/// Reference, new output and heat map of one differing output.
fn comparison(s: &mut String, c: &OutputCheck, golden_dir: &Path, output_root: &Path) {
    let _ = write!(
        s,
        "<div class=\"comparison\" data-output=\"{}\"><h3>{}#{}: PSNR {}, max |Δ| {}</h3><div class=\"pics\">",
        esc(&c.output),
        esc(&c.job),
        c.index,
        psnr(c),
        c.max_pixel_diff
    );
    let reference = c
        .golden_png
        .as_ref()
        .map(|p| golden_dir.join(p))
        .ok_or_else(|| "no golden copy recorded".to_string())
        .and_then(|p| first_frame(&p));
    let now = first_frame(&output_root.join(&c.output));
    figure(s, "reference", reference.clone());
    figure(s, "this run", now.clone());
    let heat = match (&reference, &now) {
        (Ok(a), Ok(b)) => heat_map(a, b).ok_or_else(|| "the sizes differ".to_string()),
        _ => Err("needs both pictures".to_string()),
    };
    match heat {
        Ok((m, max)) => figure(s, &format!("difference (white = {max} levels)"), Ok(m)),
        Err(e) => figure(s, "difference", Err(e)),
    }
    s.push_str("</div></div>\n");
}

fn first_frame(p: &Path) -> Result<image::RgbImage, String> {
    if crate::output::needs_ffmpeg(p) {
        return Err("an MP4: compare the frames with `ffmpeg`".into());
    }
    crate::output::decode_apng_file(p)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} has no frames", p.display()))
}

fn figure(s: &mut String, caption: &str, img: Result<image::RgbImage, String>) {
    let body = match img.and_then(|i| png_data_uri(&scaled(&i, GOLDEN_PICTURE))) {
        Ok(uri) => format!("<img src=\"{uri}\" alt=\"{}\">", esc(caption)),
        Err(e) => format!("<div class=\"nothumb\">{}</div>", esc(&e)),
    };
    let _ = write!(
        s,
        "<figure>{body}<figcaption>{}</figcaption></figure>",
        esc(caption)
    );
}

/// The plan next to the measurements: per model its compute device, prefetch slots,
/// predicted and measured seconds per step, and per device the planned and measured bytes.
pub fn plan(s: &mut String, r: &RunReport) {
    if r.models.is_empty() {
        return;
    }
    let steps: Vec<f64> = r
        .batches
        .iter()
        .flat_map(|b| b.step_times.iter().map(|p| p.seconds))
        .collect();
    let sizes: Vec<String> = {
        let mut v: Vec<usize> = r.batches.iter().map(|b| b.tasks.len()).collect();
        v.sort_unstable();
        v.dedup();
        v.iter().map(|n| n.to_string()).collect()
    };
    s.push_str(
        "<section id=\"plan\"><h2>Plan and measurements</h2><table><tr><th>model</th>\
         <th>compute</th><th>prefetch slots</th><th>device</th><th>planned</th><th>measured</th>\
         <th>predicted s/step</th><th>measured s/step</th></tr>",
    );
    for m in &r.models {
        let rows = m.devices.len().max(1);
        let measured = match (m.predicted_step_seconds, steps.is_empty()) {
            (Some(_), false) => format!(
                "{} <small>(mean of {} steps, batch{} of {})</small>",
                seconds_label(steps.iter().sum::<f64>() / steps.len() as f64),
                steps.len(),
                if sizes.len() == 1 { "" } else { "es" },
                sizes.join(", ")
            ),
            _ => "—".into(),
        };
        let _ = write!(
            s,
            "<tr><td rowspan=\"{rows}\">{}</td><td rowspan=\"{rows}\">{}</td>\
             <td rowspan=\"{rows}\" class=\"n\">{}</td>",
            esc(&m.name),
            esc(m.compute.as_deref().unwrap_or("—")),
            m.prefetch_slots
                .map(|p| p.to_string())
                .unwrap_or_else(|| "—".into())
        );
        let bytes = |b: Option<u64>| b.map(human_bytes).unwrap_or_else(|| "—".into());
        for (i, d) in m.devices.iter().enumerate() {
            if i > 0 {
                s.push_str("<tr>");
            }
            let _ = write!(
                s,
                "<td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                esc(&d.device),
                bytes(d.planned_bytes),
                bytes(d.measured_bytes)
            );
            if i == 0 {
                let _ = write!(
                    s,
                    "<td rowspan=\"{rows}\" class=\"n\">{}</td><td rowspan=\"{rows}\">{measured}</td>",
                    m.predicted_step_seconds
                        .map(seconds_label)
                        .unwrap_or_else(|| "—".into())
                );
            }
            s.push_str("</tr>");
        }
        if m.devices.is_empty() {
            let _ = write!(
                s,
                "<td>—</td><td></td><td></td><td class=\"n\">{}</td><td>{measured}</td></tr>",
                m.predicted_step_seconds
                    .map(seconds_label)
                    .unwrap_or_else(|| "—".into())
            );
        }
    }
    s.push_str("</table></section>\n");
}

/// Any JSON value as HTML: an array of objects is a table with a column per key (the union,
/// in first-seen order); an object of objects is the same with the keys as a first column;
/// other objects are two-column tables; scalars are text.
/// Where the run's time went: one row per phase and model, seconds and bytes.
pub fn phases(s: &mut String, phases: &[PhaseReport]) {
    s.push_str(
        "<section id=\"phases\"><h2>Phases</h2><table><tr><th>phase</th><th>model</th>\
         <th>seconds</th><th>bytes</th></tr>",
    );
    for p in phases {
        let bytes = if p.bytes > 0 {
            human_bytes(p.bytes)
        } else {
            String::new()
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{:.3}</td><td class=\"n\">{}</td></tr>",
            p.phase,
            esc(&p.model),
            p.seconds,
            bytes
        );
    }
    s.push_str("</table></section>\n");
}

pub fn value_table(s: &mut String, v: &serde_json::Value) {
    use serde_json::Value;
    type Row<'v> = (Option<String>, &'v serde_json::Map<String, Value>);
    let rows: Option<Vec<Row>> = match v {
        Value::Array(a) => a.iter().map(|x| x.as_object().map(|o| (None, o))).collect(),
        Value::Object(o) if o.values().all(Value::is_object) && !o.is_empty() => Some(
            o.iter()
                .filter_map(|(k, x)| x.as_object().map(|x| (Some(k.clone()), x)))
                .collect(),
        ),
        _ => None,
    };
    match (rows, v) {
        (Some(rows), _) if !rows.is_empty() => {
            let mut cols: Vec<&String> = Vec::new();
            for (_, o) in &rows {
                for k in o.keys() {
                    if !cols.contains(&k) {
                        cols.push(k);
                    }
                }
            }
            let named = rows.iter().any(|(k, _)| k.is_some());
            s.push_str("<table><tr>");
            if named {
                s.push_str("<th></th>");
            }
            for c in &cols {
                let _ = write!(s, "<th>{}</th>", esc(c));
            }
            s.push_str("</tr>");
            for (k, o) in &rows {
                s.push_str("<tr>");
                if named {
                    let _ = write!(s, "<th>{}</th>", esc(k.as_deref().unwrap_or("")));
                }
                for c in &cols {
                    let cell = o.get(*c).map(scalar).unwrap_or_default();
                    let _ = write!(s, "<td class=\"n\">{}</td>", esc(&cell));
                }
                s.push_str("</tr>");
            }
            s.push_str("</table>");
        }
        (_, Value::Object(o)) => {
            s.push_str("<table>");
            for (k, x) in o {
                let _ = write!(s, "<tr><th>{}</th><td>", esc(k));
                if x.is_object() || x.is_array() {
                    value_table(s, x);
                } else {
                    s.push_str(&esc(&scalar(x)));
                }
                s.push_str("</td></tr>");
            }
            s.push_str("</table>");
        }
        (_, x) => {
            let _ = write!(s, "<pre>{}</pre>", esc(&x.to_string()));
        }
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "—".into(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            _ => n.to_string(),
        },
        x => x.to_string(),
    }
}
