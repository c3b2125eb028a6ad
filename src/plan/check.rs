//! What a model asks of the machine before anything is placed: the devices its entry names
//! exist, its compute device can compute, and a GPU computing fp8 has fp8 tensor cores.

use super::{Allocation, Location, ModelRequest, PlanError};
use crate::device::DeviceName;
use crate::hardware::Hardware;

/// Every error of `m` against `hw` (empty: the model's devices are usable).
pub(super) fn check_devices(m: &ModelRequest, hw: &Hardware) -> Vec<PlanError> {
    let mut out = Vec::new();
    let mut need = |d: DeviceName, at: Location| {
        if !hw.has(d) {
            out.push(PlanError::UnknownDevice {
                model: m.name.clone(),
                device: d,
                at,
                available: hw.names(),
            });
        }
    };
    need(m.compute, Location::Compute);
    match &m.allocation {
        Allocation::Auto => {}
        Allocation::VirtualVram { donor, .. } => need(*donor, Location::Donor),
        Allocation::Expert(e) => {
            for (i, x) in e.entries.iter().enumerate() {
                need(x.device, Location::Entry(i));
            }
        }
    }
    for (i, o) in m.overrides.iter().enumerate() {
        need(o.device, Location::Override(i));
    }
    if m.compute == DeviceName::Disk {
        out.push(PlanError::DiskCannotCompute {
            model: m.name.clone(),
        });
    }
    // fp8 compute needs fp8 tensor cores (compute capability 8.9+) on a GPU; the CPU computes
    // the reference arithmetic. An unknown capability (a hand-written hardware file) passes.
    if m.workload.fp8_linears && matches!(m.compute, DeviceName::Cuda(_)) {
        if let Some(d) = hw.device(m.compute) {
            if let Some(cap) = d.compute_capability.filter(|&c| c < (8, 9)) {
                out.push(PlanError::Fp8Unsupported {
                    model: m.name.clone(),
                    device: m.compute,
                    label: d.label.clone(),
                    capability: cap,
                });
            }
        }
    }
    out
}
