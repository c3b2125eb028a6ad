//! Allocation → per-device byte quotas for one model, in the order the user wrote them.
//!
//! - bytes mode: entries are walked in the order written; each device gets
//!   `min(request, remaining)`; the wildcard then gets whatever is left.
//! - ratio mode: shares are normalised by their sum; with a wildcard, the written shares are
//!   percentages of the model (at most 100 in all) and the wildcard gets the rest.
//! - fraction mode: each device's quota is that fraction of its *total* memory, then walked in
//!   order like bytes mode.
//! - `virtual_vram = V`, `donor = D`: D gets V (at least, rounded up to whole blocks); the
//!   compute device keeps the rest.
//!
//! Quotas always add up to exactly the model's size, or the allocation is refused
//! ([`PlanError::QuotaShort`]). The device that absorbs rounding to whole blocks is the
//! wildcard, else the last entry.

use crate::alloc::{Allocation, Entry, ExpertAllocation, Mode, Value};
use crate::device::DeviceName;
use crate::hardware::Hardware;

use super::error::PlanError;

/// One device's share of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Quota {
    pub device: DeviceName,
    /// Bytes of the model this device holds (its resident share for the compute device).
    pub bytes: u64,
    /// What the user wrote for this device, in bytes, when it is an upper bound
    /// (`None` for a wildcard).
    pub written: Option<u64>,
    /// Index of the entry in the allocation string, if it came from one.
    pub entry: Option<usize>,
}

/// Quotas in entry order, and which of them absorbs rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct Quotas {
    pub list: Vec<Quota>,
    pub absorber: usize,
}

impl Quotas {
    pub fn get(&self, d: DeviceName) -> u64 {
        self.list
            .iter()
            .filter(|q| q.device == d)
            .map(|q| q.bytes)
            .sum()
    }
    pub fn absorber_device(&self) -> DeviceName {
        self.list[self.absorber].device
    }
}

/// Quotas for a model of `total` bytes computing on `compute`. `Auto` has no quotas (`None`).
pub fn quotas(
    model: &str,
    alloc: &Allocation,
    compute: DeviceName,
    total: u64,
    hw: &Hardware,
) -> Result<Option<Quotas>, PlanError> {
    match alloc {
        Allocation::Auto => Ok(None),
        Allocation::VirtualVram { bytes, donor } => {
            let v = bytes.0.min(total);
            Ok(Some(Quotas {
                list: vec![
                    Quota {
                        device: compute,
                        bytes: total - v,
                        written: None,
                        entry: None,
                    },
                    Quota {
                        device: *donor,
                        bytes: v,
                        written: None,
                        entry: None,
                    },
                ],
                // The donor takes at least V (rounded up to whole blocks): V is what the user
                // wants off the compute device.
                absorber: 1,
            }))
        }
        Allocation::Expert(e) => expert(model, e, total, hw).map(Some),
    }
}

fn expert(
    model: &str,
    e: &ExpertAllocation,
    total: u64,
    hw: &Hardware,
) -> Result<Quotas, PlanError> {
    let wildcard = e.entries.iter().position(|x| x.wildcard);
    let absorber = wildcard.unwrap_or(e.entries.len().saturating_sub(1));
    let requests: Vec<u64> = match e.mode {
        Mode::Bytes => e
            .entries
            .iter()
            .map(|x| value_bytes(x).unwrap_or(0))
            .collect(),
        Mode::Fraction => e
            .entries
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let f = match x.value {
                    Some(Value::Fraction(f)) => f,
                    _ => 0.0,
                };
                if x.device == DeviceName::Disk && f > 0.0 {
                    return Err(PlanError::FractionOfDisk {
                        model: model.to_string(),
                        entry: i,
                    });
                }
                let mem = hw.device(x.device).map_or(0, |d| d.memory.0);
                Ok((f.max(0.0) * mem as f64).floor() as u64)
            })
            .collect::<Result<_, _>>()?,
        Mode::Ratio => return ratio(model, e, total, wildcard, absorber),
    };
    // Walk in the order written.
    let mut remaining = total;
    let mut list: Vec<Quota> = e
        .entries
        .iter()
        .zip(&requests)
        .enumerate()
        .map(|(i, (x, &r))| {
            let give = r.min(remaining);
            remaining -= give;
            Quota {
                device: x.device,
                bytes: give,
                written: (!x.wildcard).then_some(r),
                entry: Some(i),
            }
        })
        .collect();
    match wildcard {
        Some(w) => list[w].bytes += remaining,
        None if remaining > 0 => {
            return Err(PlanError::QuotaShort {
                model: model.to_string(),
                held: total - remaining,
                total,
                fix: None,
            })
        }
        None => {}
    }
    Ok(Quotas { list, absorber })
}

fn value_bytes(e: &Entry) -> Option<u64> {
    match e.value {
        Some(Value::Bytes(b)) => Some(b.0),
        _ => None,
    }
}

fn ratio(
    model: &str,
    e: &ExpertAllocation,
    total: u64,
    wildcard: Option<usize>,
    absorber: usize,
) -> Result<Quotas, PlanError> {
    let shares: Vec<f64> = e
        .entries
        .iter()
        .map(|x| match x.value {
            Some(Value::Percent(p)) if p.is_finite() => p.max(0.0),
            _ => 0.0,
        })
        .collect();
    let sum: f64 = shares.iter().sum();
    let (shares, denom) = match wildcard {
        Some(w) => {
            if sum > 100.0 + 1e-9 {
                return Err(PlanError::RatioOverflow {
                    model: model.to_string(),
                    sum,
                });
            }
            let mut s = shares;
            s[w] += 100.0 - sum;
            (s, 100.0)
        }
        None if sum <= 0.0 => {
            return Err(PlanError::ZeroShares {
                model: model.to_string(),
            })
        }
        None => (shares, sum),
    };
    let mut list: Vec<Quota> = e
        .entries
        .iter()
        .zip(&shares)
        .enumerate()
        .map(|(i, (x, s))| Quota {
            device: x.device,
            bytes: (total as f64 * s / denom).floor() as u64,
            written: (!x.wildcard).then(|| (total as f64 * s / denom).ceil() as u64),
            entry: Some(i),
        })
        .collect();
    let given: u64 = list.iter().map(|q| q.bytes).sum();
    list[absorber].bytes += total - given.min(total);
    Ok(Quotas { list, absorber })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::Device;
    use crate::units::{ByteSize, GIB};

    fn hw() -> Hardware {
        let d = |n: &str, g| Device {
            name: n.parse().unwrap(),
            memory: ByteSize::gib(g),
            free: None,
            tflops_bf16: None,
            label: None,
            compute_capability: None,
        };
        Hardware {
            devices: vec![d("cuda:0", 24), d("cuda:1", 80), d("cpu", 64)],
            links: vec![],
        }
    }

    fn entry(dev: &str, value: Option<Value>, wildcard: bool) -> Entry {
        Entry {
            device: dev.parse().unwrap(),
            value,
            wildcard,
            span: Default::default(),
        }
    }
    fn b(g: f64) -> Option<Value> {
        Some(Value::Bytes(ByteSize((g * GIB as f64) as u64)))
    }
    fn q(mode: Mode, entries: Vec<Entry>, total: u64) -> Result<Vec<(String, u64)>, String> {
        let a = Allocation::Expert(ExpertAllocation { mode, entries });
        quotas("m", &a, DeviceName::Cuda(0), total, &hw())
            .map(|q| {
                q.unwrap()
                    .list
                    .iter()
                    .map(|x| (x.device.to_string(), x.bytes))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }
    fn g(x: f64) -> u64 {
        (x * GIB as f64) as u64
    }

    #[test]
    fn bytes_mode_walks_in_written_order() {
        // DisTorch would fill GPUs first; here cpu, written first, is served first.
        let r = q(
            Mode::Bytes,
            vec![
                entry("cpu", b(10.0), false),
                entry("cuda:0", b(20.0), false),
            ],
            g(22.0),
        )
        .unwrap();
        assert_eq!(r, [("cpu".into(), g(10.0)), ("cuda:0".into(), g(12.0))]);
        let r = q(
            Mode::Bytes,
            vec![entry("cuda:0", b(2.5), false), entry("cpu", None, true)],
            g(22.0),
        )
        .unwrap();
        assert_eq!(r, [("cuda:0".into(), g(2.5)), ("cpu".into(), g(19.5))]);
        // `cpu,5gb*`: a value and the wildcard.
        let r = q(
            Mode::Bytes,
            vec![
                entry("cuda:0", b(0.5), false),
                entry("cuda:1", b(3.0), false),
                entry("cpu", b(5.0), true),
            ],
            g(22.0),
        )
        .unwrap();
        assert_eq!(r[2].1, g(18.5));
        // The wildcard may come first: it still takes only what the others leave.
        let r = q(
            Mode::Bytes,
            vec![entry("cpu", None, true), entry("cuda:0", b(20.0), false)],
            g(22.0),
        )
        .unwrap();
        assert_eq!(r, [("cpu".into(), g(2.0)), ("cuda:0".into(), g(20.0))]);
        let e = q(
            Mode::Bytes,
            vec![entry("cuda:0", b(8.0), false), entry("cpu", b(10.0), false)],
            g(22.0),
        )
        .unwrap_err();
        assert!(
            e.contains("holds 18.0 GiB of the model's 22.0 GiB")
                && e.contains("remaining 4.00 GiB"),
            "{e}"
        );
    }

    #[test]
    fn ratio_mode_normalises_or_fills_to_100() {
        let p = |x| Some(Value::Percent(x));
        let r = q(
            Mode::Ratio,
            vec![
                entry("cuda:0", p(25.0), false),
                entry("cpu", p(75.0), false),
            ],
            1000,
        )
        .unwrap();
        assert_eq!(r, [("cuda:0".into(), 250), ("cpu".into(), 750)]);
        let r = q(
            Mode::Ratio,
            vec![
                entry("cuda:0", p(8.0), false),
                entry("cuda:1", p(8.0), false),
                entry("cpu", p(4.0), false),
            ],
            1000,
        )
        .unwrap();
        assert_eq!(
            r,
            [
                ("cuda:0".into(), 400),
                ("cuda:1".into(), 400),
                ("cpu".into(), 200)
            ]
        );
        let r = q(
            Mode::Ratio,
            vec![entry("cuda:0", p(50.0), false), entry("cpu", None, true)],
            1001,
        )
        .unwrap();
        assert_eq!(r, [("cuda:0".into(), 500), ("cpu".into(), 501)]);
        let e = q(
            Mode::Ratio,
            vec![
                entry("cuda:0", p(80.0), false),
                entry("cuda:1", p(30.0), false),
                entry("cpu", None, true),
            ],
            10,
        )
        .unwrap_err();
        assert!(e.contains("add up to 110%"), "{e}");
        let e = q(Mode::Ratio, vec![entry("cuda:0", p(0.0), false)], 10).unwrap_err();
        assert!(e.contains("every share is 0%"), "{e}");
    }

    #[test]
    fn fraction_mode_is_of_total_memory() {
        let f = |x| Some(Value::Fraction(x));
        // 0.5 of cuda:0's 24 GiB = 12 GiB, then 0.5 of cpu's 64 GiB caps at what is left.
        let r = q(
            Mode::Fraction,
            vec![entry("cuda:0", f(0.5), false), entry("cpu", f(0.5), false)],
            g(22.0),
        )
        .unwrap();
        assert_eq!(r, [("cuda:0".into(), g(12.0)), ("cpu".into(), g(10.0))]);
        let e = q(
            Mode::Fraction,
            vec![entry("cuda:0", f(0.1), false), entry("cpu", f(0.1), false)],
            g(22.0),
        )
        .unwrap_err();
        assert!(e.contains("holds 8.80 GiB"), "{e}");
        let e = q(
            Mode::Fraction,
            vec![entry("cuda:0", f(0.1), false), entry("disk", f(0.5), false)],
            g(22.0),
        )
        .unwrap_err();
        assert!(e.contains("`disk` has no memory"), "{e}");
    }

    #[test]
    fn virtual_vram_moves_bytes_to_the_donor() {
        let a = Allocation::VirtualVram {
            bytes: ByteSize::gib(4),
            donor: DeviceName::Cpu,
        };
        let qs = quotas("m", &a, DeviceName::Cuda(0), g(22.0), &hw())
            .unwrap()
            .unwrap();
        assert_eq!(qs.get(DeviceName::Cuda(0)), g(18.0));
        assert_eq!(qs.get(DeviceName::Cpu), g(4.0));
        assert_eq!(qs.absorber_device(), DeviceName::Cpu);
        assert_eq!(
            quotas("m", &Allocation::Auto, DeviceName::Cuda(0), 1, &hw()).unwrap(),
            None
        );
    }
}
