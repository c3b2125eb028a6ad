//! The golden verification table: the rule that applied (and why), one line per output with
//! its numbers when it differs, the golden outputs the run did not make, and a verdict line.

use crate::golden::{Verdict, VerifyReport};

/// Renders a [`VerifyReport`].
pub fn render_golden(r: &VerifyReport) -> String {
    let mut s = format!("golden {}: rule {}\n", r.dir.display(), r.rule);
    for d in &r.fingerprint_differences {
        s.push_str(&format!("  machine differs from the recording: {d}\n"));
    }
    let (mut matched, mut within, mut mismatched, mut unknown) = (0, 0, 0, 0);
    for c in &r.outputs {
        let tag = match c.verdict {
            Verdict::Match => {
                matched += 1;
                "ok"
            }
            Verdict::WithinTolerance => {
                within += 1;
                "ok (tol.)"
            }
            Verdict::Mismatch => {
                mismatched += 1;
                "MISMATCH"
            }
            Verdict::NotInGolden => {
                unknown += 1;
                "NEW"
            }
        };
        let mut line = format!("  {tag:<9} {}#{}  {}", c.job, c.index, c.output);
        if matches!(c.verdict, Verdict::WithinTolerance | Verdict::Mismatch) {
            let mut parts = Vec::new();
            if c.pixels_equal {
                parts.push("pixels identical".to_string());
            } else if let Some(p) = c.psnr_db {
                parts.push(format!(
                    "pixels max |Δ| {}, PSNR {p:.2} dB",
                    c.max_pixel_diff
                ));
            }
            match (c.latent_equal, c.latent_max_abs_diff) {
                (Some(true), _) => parts.push("latent identical".into()),
                (Some(false), Some(d)) => parts.push(format!("latent max |Δ| {d:.3e}")),
                _ => {}
            }
            if !parts.is_empty() {
                line.push_str(&format!(": {}", parts.join("; ")));
            }
        }
        s.push_str(&line);
        s.push('\n');
        for n in &c.notes {
            s.push_str(&format!("            {n}\n"));
        }
    }
    for m in &r.missing {
        s.push_str(&format!(
            "  MISSING   {m} (in the golden files, not made by this run)\n"
        ));
    }
    let mut counts = vec![format!("{matched} identical")];
    if within > 0 {
        counts.push(format!("{within} within tolerance"));
    }
    if mismatched > 0 {
        counts.push(format!("{mismatched} differ"));
    }
    if unknown > 0 {
        counts.push(format!("{unknown} not in the golden files"));
    }
    if !r.missing.is_empty() {
        counts.push(format!("{} missing", r.missing.len()));
    }
    s.push_str(&format!(
        "golden: {} → {}\n",
        counts.join(", "),
        if r.ok { "PASS" } else { "FAIL" }
    ));
    s
}
