//! Special functions the schedulers need: the regularized incomplete beta function and its
//! inverse (the beta distribution's quantile function, `scipy.stats.beta.ppf`), which
//! ComfyUI's `beta` scheduler evaluates.
//!
//! Written from the textbook definitions: the continued fraction for `I_x(a, b)` (evaluated
//! with the modified Lentz method) and a bracketed Newton iteration for the inverse. Accuracy
//! against scipy (Boost's `ibeta_inv`) is tested on a grid in
//! `tests/fixtures/samplers/beta_ppf.json`: better than 1e-13 absolute.

/// `ln B(a, b) = ln Γ(a) + ln Γ(b) − ln Γ(a + b)`.
fn ln_beta(a: f64, b: f64) -> f64 {
    libm::lgamma(a) + libm::lgamma(b) - libm::lgamma(a + b)
}

/// Continued fraction of the incomplete beta function (converges fast for
/// `x < (a + 1) / (a + b + 2)`), evaluated with the modified Lentz method.
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-16;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        // Even step: d_{2m} = m (b − m) x / ((a + 2m − 1)(a + 2m)).
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        // Odd step: d_{2m+1} = −(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)).
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The regularized incomplete beta function `I_x(a, b)` for `a, b > 0`, `x` in `[0, 1]`
/// (the CDF of the beta distribution).
pub fn betainc(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    // Prefactor x^a (1 − x)^b / B(a, b), in logs for range.
    let front = (a * x.ln() + b * (-x).ln_1p() - ln_beta(a, b)).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(x, a, b) / a
    } else {
        1.0 - front * beta_cf(1.0 - x, b, a) / b
    }
}

/// The inverse of [`betainc`] in `x`: the `p`-quantile of Beta(a, b), as
/// `scipy.stats.beta.ppf(p, a, b)`. `p` outside `[0, 1]` gives NaN, like scipy.
pub fn betaincinv(a: f64, b: f64, p: f64) -> f64 {
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return f64::NAN;
    }
    if p == 0.0 {
        return 0.0;
    }
    if p == 1.0 {
        return 1.0;
    }
    // The median of a symmetric distribution, exactly: ComfyUI's `beta` scheduler hits
    // p = 1/2 for every even step count and rounds 9999·x half-to-even, so 1 ulp matters.
    if a == b && p == 0.5 {
        return 0.5;
    }
    // Solve in the tail that keeps precision: for p > 1/2 use I_x(a,b) = 1 − I_{1−x}(b,a).
    if p > 0.5 {
        return 1.0 - solve(b, a, 1.0 - p);
    }
    solve(a, b, p)
}

/// Finds `x` with `I_x(a, b) = p` for `p` in `(0, 1/2]`: Newton steps on the CDF, kept inside
/// a bracket that bisection shrinks whenever Newton leaves it.
fn solve(a: f64, b: f64, p: f64) -> f64 {
    let lnb = ln_beta(a, b);
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    // Initial guess from the leading term of the series near 0: I_x ≈ x^a / (a B(a, b)).
    let mut x = (((p * a).ln() + lnb) / a).exp().clamp(1e-300, 0.5);
    for _ in 0..200 {
        let f = betainc(a, b, x) - p;
        if f == 0.0 {
            return x;
        }
        if f < 0.0 {
            lo = x;
        } else {
            hi = x;
        }
        // pdf = x^(a−1) (1 − x)^(b−1) / B(a, b)
        let pdf = ((a - 1.0) * x.ln() + (b - 1.0) * (-x).ln_1p() - lnb).exp();
        let mut next = x - f / pdf;
        if !next.is_finite() || next <= lo || next >= hi {
            next = 0.5 * (lo + hi);
        }
        if (next - x).abs() <= 4.0 * f64::EPSILON * x.abs().max(f64::MIN_POSITIVE) {
            return next;
        }
        if hi - lo <= 2.0 * f64::EPSILON * lo.max(f64::MIN_POSITIVE) {
            return 0.5 * (lo + hi);
        }
        x = next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_of_known_distributions() {
        // Beta(1, 1) is uniform; Beta(2, 1) has CDF x²; Beta(1, 2) has CDF 1 − (1 − x)².
        for &x in &[0.0, 1e-9, 0.1, 0.25, 0.5, 0.75, 0.999] {
            assert!((betainc(1.0, 1.0, x) - x).abs() < 1e-14, "uniform at {x}");
            assert!((betainc(2.0, 1.0, x) - x * x).abs() < 1e-14, "x² at {x}");
            assert!((betainc(1.0, 2.0, x) - (1.0 - (1.0 - x) * (1.0 - x))).abs() < 1e-14);
        }
        // Beta(1/2, 1/2) is the arcsine distribution: CDF (2/π) asin(√x).
        for &x in &[1e-6f64, 0.01, 0.3, 0.5, 0.9, 0.999999] {
            // Evaluated in the tail where asin is well conditioned.
            let arcsine = |x: f64| 2.0 / std::f64::consts::PI * x.sqrt().asin();
            let want = if x < 0.5 {
                arcsine(x)
            } else {
                1.0 - arcsine(1.0 - x)
            };
            assert!(
                (betainc(0.5, 0.5, x) - want).abs() < 1e-14,
                "arcsine at {x}"
            );
        }
    }

    #[test]
    fn inverse_round_trips_and_is_symmetric() {
        for &(a, b) in &[(0.6, 0.6), (0.5, 0.5), (2.0, 5.0), (0.3, 3.0), (7.0, 0.8)] {
            for i in 1..200 {
                let p = i as f64 / 200.0;
                let x = betaincinv(a, b, p);
                assert!((0.0..=1.0).contains(&x));
                assert!(
                    (betainc(a, b, x) - p).abs() < 1e-13,
                    "a={a} b={b} p={p} x={x}"
                );
            }
        }
        // Beta(a, a) is symmetric about 1/2.
        for i in 1..100 {
            let p = i as f64 / 100.0;
            let s = betaincinv(0.6, 0.6, p) + betaincinv(0.6, 0.6, 1.0 - p);
            assert!((s - 1.0).abs() < 1e-14, "p={p}");
        }
        assert_eq!(betaincinv(0.6, 0.6, 0.5), 0.5);
        assert_eq!(betaincinv(0.6, 0.6, 0.0), 0.0);
        assert_eq!(betaincinv(0.6, 0.6, 1.0), 1.0);
        assert!(betaincinv(0.6, 0.6, 1.5).is_nan());
    }

    #[test]
    fn arcsine_quantile_closed_form() {
        // Beta(1/2, 1/2): x = sin²(π p / 2).
        for i in 1..100 {
            let p = i as f64 / 100.0;
            let want = (std::f64::consts::PI * p / 2.0).sin().powi(2);
            assert!((betaincinv(0.5, 0.5, p) - want).abs() < 1e-14, "p={p}");
        }
    }
}
