//! Tests of the engine's ordering, slot reuse and error paths, on the CPU backend and on a
//! recording backend that checks the ring discipline call by call.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::cpu::CpuBackend;
use super::engine::{Backend, Engine, EngineError, EngineUnit, Home};
use super::unit::{Bytes, HostTensor, UnitData};

fn unit_data(name: &str, value: f32, n: usize) -> Arc<UnitData> {
    let bytes: Vec<u8> = (0..n)
        .flat_map(|i| (value + i as f32).to_le_bytes())
        .collect();
    Arc::new(UnitData {
        name: name.into(),
        tensors: vec![HostTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![n],
            bytes: Bytes::Owned(Arc::from(bytes)),
            quant: None,
            scale: None,
            lora: None,
        }],
    })
}

/// `n` units; unit i streams over link `i % 2` when `streamed(i)`, else is resident.
fn units(n: usize, streamed: impl Fn(usize) -> bool) -> Vec<EngineUnit> {
    (0..n)
        .map(|i| {
            let data = unit_data(&format!("blocks.{i}"), 100.0 * i as f32, 4);
            let name = data.name.clone();
            let home = if streamed(i) {
                Home::Streamed { data, link: i % 2 }
            } else {
                Home::Resident(Arc::new(
                    data.materialize(&Device::Cpu, DType::F32).unwrap(),
                ))
            };
            EngineUnit { name, home }
        })
        .collect()
}

fn links() -> Vec<String> {
    vec!["cpu→cpu".into(), "disk→cpu".into()]
}

#[test]
fn every_pass_sees_every_unit_with_its_values() {
    for slots in 1..4 {
        let b = CpuBackend::new(&links(), slots, DType::F32).unwrap();
        let mut e =
            Engine::new(units(7, |i| i % 3 != 0), slots, b, Device::Cpu, DType::F32).unwrap();
        for _pass in 0..3 {
            let stats = e
                .pass(|i, w| {
                    let v = w.tensors["w"].to_vec1::<f32>()?;
                    assert_eq!(v[0], 100.0 * i as f32, "unit {i}");
                    Ok::<_, EngineError>(())
                })
                .unwrap();
            assert_eq!(stats.fetched_units, 4, "one fetch per streamed use");
            assert_eq!(stats.link_bytes.iter().sum::<u64>(), 4 * 16);
        }
    }
}

/// Records calls and checks the ring discipline: at most `slots` in flight, a slot is only
/// issued after release, `ready` for the unit that was issued into that slot.
struct Recorder {
    slots: Vec<Option<(usize, bool)>>, // (unit, released)
    log: Vec<String>,
    data: HashMap<usize, Arc<UnitData>>,
    fail_unit: Option<usize>,
}

impl Backend for Recorder {
    fn issue(
        &mut self,
        slot: usize,
        unit: usize,
        data: &Arc<UnitData>,
        _link: usize,
    ) -> Result<(), EngineError> {
        if let Some((u, released)) = self.slots[slot] {
            assert!(
                released,
                "slot {slot} reissued while unit {u} still uses it"
            );
        }
        self.slots[slot] = Some((unit, false));
        self.data.insert(slot, data.clone());
        self.log.push(format!("issue {unit}@{slot}"));
        Ok(())
    }
    fn ready(&mut self, slot: usize, unit: usize) -> Result<HashMap<String, Tensor>, EngineError> {
        assert_eq!(self.slots[slot].map(|s| s.0), Some(unit));
        self.log.push(format!("ready {unit}@{slot}"));
        if self.fail_unit == Some(unit) {
            return Err(EngineError::Fetch {
                unit: unit.to_string(),
                link: "test".into(),
                message: "disk on fire".into(),
            });
        }
        Ok(self.data[&slot].materialize(&Device::Cpu, DType::F32)?)
    }
    fn release(&mut self, slot: usize) -> Result<(), EngineError> {
        if let Some(s) = self.slots[slot].as_mut() {
            s.1 = true;
        }
        self.log.push(format!("release @{slot}"));
        Ok(())
    }
    fn link_names(&self) -> Vec<String> {
        links()
    }
}

fn recorder(slots: usize) -> Recorder {
    Recorder {
        slots: vec![None; slots],
        log: vec![],
        data: HashMap::new(),
        fail_unit: None,
    }
}

#[test]
fn ring_prefetches_k_ahead_across_passes() {
    // Units 1, 2, 4 stream; 2 slots.
    let mut e = Engine::new(
        units(5, |i| [1, 2, 4].contains(&i)),
        2,
        recorder(2),
        Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for _ in 0..2 {
        e.pass(|_, _| Ok::<_, EngineError>(())).unwrap();
    }
    let log = &e_backend_log(&e);
    assert_eq!(
        log[..8],
        [
            "issue 1@0",
            "issue 2@1",
            "ready 1@0",
            "release @0",
            "issue 4@0",
            "ready 2@1",
            "release @1",
            "issue 1@1"
        ]
    );
    // The next pass's first streamed unit was issued during this pass (cyclic prefetch).
    let first_ready_pass2 = log.iter().rposition(|l| l == "ready 1@1").unwrap();
    let issue = log.iter().position(|l| l == "issue 1@1").unwrap();
    assert!(issue < first_ready_pass2);
}

fn e_backend_log(e: &Engine<Recorder>) -> Vec<String> {
    e.backend_ref().log.clone()
}

#[test]
fn fetch_errors_poison_the_engine() {
    let mut r = recorder(2);
    r.fail_unit = Some(2);
    let mut e = Engine::new(units(4, |i| i >= 1), 2, r, Device::Cpu, DType::F32).unwrap();
    let err = e
        .pass(|_, _| Ok::<_, EngineError>(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk on fire"), "{err}");
    let err = e
        .pass(|_, _| Ok::<_, EngineError>(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("stopped after an earlier error"), "{err}");
}

#[test]
fn a_failing_compute_skips_the_rest_of_the_pass_and_keeps_order() {
    let b = CpuBackend::new(&links(), 2, DType::F32).unwrap();
    let mut e = Engine::new(units(6, |i| i % 2 == 1), 2, b, Device::Cpu, DType::F32).unwrap();
    let err = e
        .pass(|i, _| {
            if i == 2 {
                Err(EngineError::NoSlots)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, EngineError::NoSlots));
    let mut seen = vec![];
    e.pass(|i, w| {
        seen.push((i, w.tensors["w"].to_vec1::<f32>()?[0]));
        Ok::<_, EngineError>(())
    })
    .unwrap();
    assert_eq!(
        seen,
        (0..6).map(|i| (i, 100.0 * i as f32)).collect::<Vec<_>>()
    );
}

#[test]
fn out_of_order_use_is_an_error() {
    let b = CpuBackend::new(&links(), 1, DType::F32).unwrap();
    let mut e = Engine::new(units(3, |_| true), 1, b, Device::Cpu, DType::F32).unwrap();
    let err = e.acquire(1).err().unwrap().to_string();
    assert!(err.contains("expected `blocks.0`"), "{err}");
}

#[test]
fn corrupt_unit_bytes_fail_at_fetch_not_panic() {
    let mut u = units(2, |_| true);
    if let Home::Streamed { data, .. } = &mut u[1].home {
        let mut d = (**data).clone();
        d.tensors[0].shape = vec![1000];
        *data = Arc::new(d);
    }
    let b = CpuBackend::new(&links(), 2, DType::F32).unwrap();
    let mut e = Engine::new(u, 2, b, Device::Cpu, DType::F32).unwrap();
    let err = e
        .pass(|_, _| Ok::<_, EngineError>(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 4000 bytes"), "{err}");
}

#[test]
fn streaming_without_slots_is_refused() {
    let b = CpuBackend::new(&links(), 0, DType::F32).unwrap();
    assert!(matches!(
        Engine::new(units(2, |_| true), 0, b, Device::Cpu, DType::F32),
        Err(EngineError::NoSlots)
    ));
}
