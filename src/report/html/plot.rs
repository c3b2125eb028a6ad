//! Inline SVG plots for the HTML report: a batch's step times (a line) with the time each step
//! waited for streamed weights (bars under it), drawn in Rust so the page needs no library.

use std::fmt::Write as _;

use super::esc;
use crate::report::StepReport;

const W: f64 = 560.0;
const H: f64 = 170.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;

/// The step-time plot of one batch: `<svg class="plot" data-points=N>` with a polyline of step
/// seconds, one bar per step of fetch wait, axes with the largest value and the step count,
/// and a `<title>` per step (hover text).
pub fn step_plot(steps: &[StepReport]) -> String {
    let n = steps.len();
    let mut s = format!(
        "<svg class=\"plot\" data-points=\"{n}\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         role=\"img\" aria-label=\"step times\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    if n == 0 {
        s.push_str("<text x=\"10\" y=\"20\">no steps recorded</text></svg>");
        return s;
    }
    let max = steps
        .iter()
        .map(|p| p.seconds.max(p.fetch_wait_seconds))
        .fold(0.0f64, f64::max);
    let ymax = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |i: usize| {
        if n == 1 {
            LEFT + pw / 2.0
        } else {
            LEFT + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64| TOP + ph * (1.0 - v / ymax);
    // Axes and grid.
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\"/>\
         <line class=\"axis\" x1=\"{LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\"/>",
        TOP + ph,
        LEFT + pw
    );
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{x2}\" y2=\"{yy:.1}\"/>\
             <text class=\"tick\" x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{}</text>",
            seconds_label(v),
            yy = y(v),
            x2 = LEFT + pw,
            tx = LEFT - 4.0,
            ty = y(v) + 4.0
        );
    }
    let _ = write!(
        s,
        "<text class=\"tick\" x=\"{LEFT}\" y=\"{by}\" text-anchor=\"middle\">1</text>\
         <text class=\"tick\" x=\"{rx}\" y=\"{by}\" text-anchor=\"middle\">{n}</text>\
         <text class=\"tick\" x=\"{mx}\" y=\"{by}\" text-anchor=\"middle\">step</text>",
        by = H - 10.0,
        rx = LEFT + pw,
        mx = LEFT + pw / 2.0
    );
    // Fetch waits: bars.
    let bw = (pw / n as f64 * 0.6).clamp(1.0, 18.0);
    for (i, p) in steps.iter().enumerate() {
        if p.fetch_wait_seconds > 0.0 {
            let _ = write!(
                s,
                "<rect class=\"wait\" x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{:.1}\"/>",
                x(i) - bw / 2.0,
                y(p.fetch_wait_seconds),
                (TOP + ph - y(p.fetch_wait_seconds)).max(0.5)
            );
        }
    }
    // Step times: a line with a point (and hover text) per step.
    let points: Vec<String> = steps
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.seconds)))
        .collect();
    let _ = write!(
        s,
        "<polyline class=\"step\" points=\"{}\"/>",
        points.join(" ")
    );
    for (i, p) in steps.iter().enumerate() {
        let _ = write!(
            s,
            "<circle class=\"step\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\"><title>{}</title></circle>",
            x(i),
            y(p.seconds),
            esc(&format!(
                "step {}: {}, fetch wait {}, {} fetched",
                p.step,
                seconds_label(p.seconds),
                seconds_label(p.fetch_wait_seconds),
                crate::report::human_bytes(p.fetched_bytes)
            ))
        );
    }
    s.push_str("</svg>");
    s
}

/// `0.0123` → `12.3 ms`; from one second on, `1.23 s`.
pub fn seconds_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v < 1.0 {
        let ms = format!("{:.3}", v * 1000.0);
        format!("{} ms", ms.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{v:.2} s")
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k that is ≥ `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= v * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(i: u32, s: f64, w: f64) -> StepReport {
        StepReport {
            step: i,
            seconds: s,
            fetch_wait_seconds: w,
            passes: 1,
            fetched_units: 1,
            fetched_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_plot_has_a_point_per_step_and_bars_for_waits() {
        let svg = step_plot(&[step(1, 0.2, 0.0), step(2, 0.1, 0.05), step(3, 0.15, 0.01)]);
        assert!(svg.starts_with("<svg class=\"plot\" data-points=\"3\""));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert_eq!(svg.matches("<rect class=\"wait\"").count(), 2);
        // The y axis tops out at 0.2 s: the slowest step touches the top of the plot area.
        assert!(svg.contains(&format!("{LEFT:.1},{TOP:.1}")), "{svg}");
        assert!(svg.contains("<title>step 2: 100 ms, fetch wait 50 ms, 1.00 MiB fetched</title>"));
        assert!(step_plot(&[]).contains("no steps recorded"));
    }

    #[test]
    fn axis_ceilings_and_labels() {
        assert_eq!(nice_ceiling(0.17), 0.2);
        assert_eq!(nice_ceiling(2.2), 2.5);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(seconds_label(0.0123), "12.3 ms");
        assert_eq!(seconds_label(0.25), "250 ms");
        assert_eq!(seconds_label(1.5), "1.50 s");
    }
}
