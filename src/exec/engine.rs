//! The streaming engine: brings each placement unit to the compute device just before it is
//! needed, overlapping the copy of unit i+K with the compute of unit i.
//!
//! The engine owns the *order*: units are visited in execution order, pass after pass (one
//! pass = one model evaluation for a whole batch). Resident units are handed over at once.
//! Streamed units are issued into a ring of K slots in their cyclic order, so the first
//! streamed units of the next pass are already on their way while the last ones of this pass
//! compute. A slot is reused only after the compute device released it.
//!
//! *How* bytes move is a [`Backend`]: [`super::cpu::CpuBackend`] copies on worker threads (one
//! per source link), the CUDA backend issues asynchronous copies on one copy stream per link
//! and orders them with events. Both see the same calls in the same order, so the CPU tests
//! exercise the ordering, slot reuse and error paths the GPU uses.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::unit::UnitData;

/// Errors of the streaming engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("fetching unit `{unit}` from {link} failed: {message}")]
    Fetch {
        unit: String,
        link: String,
        message: String,
    },
    #[error("unit `{got}` was requested out of order: the engine expected `{expected}` (a bug in the executor)")]
    Order { expected: String, got: String },
    #[error("the engine stopped after an earlier error: {0}")]
    Poisoned(String),
    #[error("prefetch needs at least one slot")]
    NoSlots,
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Where a unit lives during the run.
#[derive(Debug, Clone)]
pub enum Home {
    /// On the compute device for the whole run: tensors built once.
    Resident(Arc<HashMap<String, Tensor>>),
    /// Elsewhere: fetched through link `link` (an index into the engine's links) at every use.
    Streamed { data: Arc<UnitData>, link: usize },
}

/// One placement unit as the engine sees it.
#[derive(Debug, Clone)]
pub struct EngineUnit {
    pub name: String,
    pub home: Home,
}

/// How one backend moves bytes. Calls arrive in this order for every streamed use:
/// `issue(slot, unit)` … `ready(slot, unit)` … `release(slot)`; a slot is issued again only
/// after it was released.
pub trait Backend {
    /// Starts bringing `data` into `slot` over link `link`. Must not wait for the copy.
    fn issue(
        &mut self,
        slot: usize,
        unit: usize,
        data: &Arc<UnitData>,
        link: usize,
    ) -> Result<(), EngineError>;
    /// Waits until `slot` holds `unit` and returns its tensors on the compute device, in the
    /// compute dtype, by name relative to the unit.
    fn ready(&mut self, slot: usize, unit: usize) -> Result<HashMap<String, Tensor>, EngineError>;
    /// All work reading `slot`'s tensors has been submitted; the slot may be refilled once it
    /// has completed.
    fn release(&mut self, slot: usize) -> Result<(), EngineError>;
    /// Human names of the links, by index (`cpu→cpu`, `disk→cuda:0`, …).
    fn link_names(&self) -> Vec<String>;
    /// The pass has been submitted: wait for the device to finish it and return the seconds
    /// the compute device stalled waiting for fetches, when the backend measures that on the
    /// device (CUDA). `None`: the engine's host-side wait time is the stall time (CPU).
    fn end_pass(&mut self) -> Result<Option<f64>, EngineError> {
        Ok(None)
    }
}

impl<T: Backend + ?Sized> Backend for Box<T> {
    fn issue(
        &mut self,
        slot: usize,
        unit: usize,
        data: &Arc<UnitData>,
        link: usize,
    ) -> Result<(), EngineError> {
        (**self).issue(slot, unit, data, link)
    }
    fn ready(&mut self, slot: usize, unit: usize) -> Result<HashMap<String, Tensor>, EngineError> {
        (**self).ready(slot, unit)
    }
    fn release(&mut self, slot: usize) -> Result<(), EngineError> {
        (**self).release(slot)
    }
    fn link_names(&self) -> Vec<String> {
        (**self).link_names()
    }
    fn end_pass(&mut self) -> Result<Option<f64>, EngineError> {
        (**self).end_pass()
    }
}

/// What one pass cost.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PassStats {
    /// Wall time from `begin_pass` to `end_pass`.
    pub seconds: f64,
    /// Time spent waiting for fetches (the part of `seconds` not hidden behind compute).
    pub wait_seconds: f64,
    /// Bytes issued per link during the pass (by link index).
    pub link_bytes: Vec<u64>,
    /// Units fetched (issued) during the pass.
    pub fetched_units: usize,
}

impl PassStats {
    /// Wall time minus waiting: the time the compute device was busy (or launching work).
    pub fn compute_seconds(&self) -> f64 {
        (self.seconds - self.wait_seconds).max(0.0)
    }
}

/// The weights of one unit, ready for model code.
pub struct UnitWeights {
    pub tensors: HashMap<String, Tensor>,
    dtype: DType,
    device: Device,
}

impl UnitWeights {
    /// A `VarBuilder` over the unit's tensors (names relative to the unit).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), self.dtype, &self.device)
    }
}

#[derive(Debug, Clone, Copy)]
struct Issued {
    unit: usize,
    slot: usize,
}

/// The engine for one model on one compute device.
pub struct Engine<B: Backend> {
    units: Vec<EngineUnit>,
    /// Indices of streamed units, in execution order.
    streamed: Vec<usize>,
    slots: usize,
    backend: B,
    device: Device,
    dtype: DType,
    /// Position in the cyclic sequence of streamed units of the next issue.
    next_issue: usize,
    /// Issued and not yet acquired, in order.
    in_flight: VecDeque<Issued>,
    free_slots: Vec<usize>,
    /// The next unit `acquire` must be called for.
    expected: usize,
    /// The unit acquired and not yet released, with its slot if streamed.
    held: Option<(usize, Option<usize>)>,
    poisoned: Option<String>,
    pass_start: Option<Instant>,
    wait: Duration,
    link_bytes: Vec<u64>,
    fetched: usize,
}

impl<B: Backend> Engine<B> {
    /// Builds the engine and issues the first `slots` fetches.
    pub fn new(
        units: Vec<EngineUnit>,
        slots: usize,
        backend: B,
        device: Device,
        dtype: DType,
    ) -> Result<Self, EngineError> {
        let streamed: Vec<usize> = units
            .iter()
            .enumerate()
            .filter(|(_, u)| matches!(u.home, Home::Streamed { .. }))
            .map(|(i, _)| i)
            .collect();
        if !streamed.is_empty() && slots == 0 {
            return Err(EngineError::NoSlots);
        }
        let links = backend.link_names().len();
        let mut engine = Engine {
            units,
            streamed,
            slots,
            backend,
            device,
            dtype,
            next_issue: 0,
            in_flight: VecDeque::new(),
            free_slots: (0..slots).rev().collect(),
            expected: 0,
            held: None,
            poisoned: None,
            pass_start: None,
            wait: Duration::ZERO,
            link_bytes: vec![0; links],
            fetched: 0,
        };
        while let Some(slot) = engine.free_slots.pop() {
            if engine.streamed.is_empty() {
                break;
            }
            engine.issue_next(slot)?;
        }
        Ok(engine)
    }

    pub fn units(&self) -> &[EngineUnit] {
        &self.units
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn link_names(&self) -> Vec<String> {
        self.backend.link_names()
    }

    pub fn backend_ref(&self) -> &B {
        &self.backend
    }

    fn issue_next(&mut self, slot: usize) -> Result<(), EngineError> {
        let unit = self.streamed[self.next_issue % self.streamed.len()];
        self.next_issue += 1;
        let Home::Streamed { data, link } = &self.units[unit].home else {
            unreachable!("streamed list holds only streamed units")
        };
        let (data, link) = (data.clone(), *link);
        if let Some(b) = self.link_bytes.get_mut(link) {
            *b += data.bytes();
        }
        self.fetched += 1;
        self.backend.issue(slot, unit, &data, link)?;
        self.in_flight.push_back(Issued { unit, slot });
        Ok(())
    }

    fn check(&self) -> Result<(), EngineError> {
        match &self.poisoned {
            Some(m) => Err(EngineError::Poisoned(m.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, r: Result<T, EngineError>) -> Result<T, EngineError> {
        if let Err(e) = &r {
            self.poisoned.get_or_insert_with(|| e.to_string());
        }
        r
    }

    /// Starts timing a pass.
    pub fn begin_pass(&mut self) {
        self.pass_start = Some(Instant::now());
        self.wait = Duration::ZERO;
        self.link_bytes.iter_mut().for_each(|b| *b = 0);
        self.fetched = 0;
    }

    /// Ends the pass started by `begin_pass` (waiting for the device to finish it) and
    /// returns what it cost.
    pub fn end_pass(&mut self) -> PassStats {
        let device_wait = match self.backend.end_pass() {
            Ok(w) => w,
            Err(e) => {
                self.poisoned.get_or_insert_with(|| e.to_string());
                None
            }
        };
        let seconds = self
            .pass_start
            .take()
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        PassStats {
            seconds,
            wait_seconds: device_wait.unwrap_or(self.wait.as_secs_f64()),
            link_bytes: self.link_bytes.clone(),
            fetched_units: self.fetched,
        }
    }

    /// The weights of unit `index`, which must be the next unit in execution order. Blocks
    /// (CPU) or orders the compute stream (CUDA) until a streamed unit has arrived.
    pub fn acquire(&mut self, index: usize) -> Result<UnitWeights, EngineError> {
        self.check()?;
        if index != self.expected || self.held.is_some() {
            let expected = self.units[self.expected].name.clone();
            let got = self
                .units
                .get(index)
                .map(|u| u.name.clone())
                .unwrap_or_default();
            return self.poison(Err(EngineError::Order { expected, got }));
        }
        let tensors = match &self.units[index].home {
            Home::Resident(t) => {
                self.held = Some((index, None));
                (**t).clone()
            }
            Home::Streamed { .. } => {
                let Some(issued) = self.in_flight.pop_front() else {
                    unreachable!("a streamed unit is always in flight when it is next")
                };
                debug_assert_eq!(issued.unit, index);
                let t0 = Instant::now();
                let r = self.backend.ready(issued.slot, index);
                self.wait += t0.elapsed();
                let t = self.poison(r)?;
                self.held = Some((index, Some(issued.slot)));
                t
            }
        };
        Ok(UnitWeights {
            tensors,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }

    /// The compute device is done with unit `index` (its work has been submitted): its slot
    /// is refilled with the next streamed unit in cyclic order.
    pub fn release(&mut self, index: usize) -> Result<(), EngineError> {
        self.check()?;
        match self.held.take() {
            Some((held, slot)) if held == index => {
                self.expected = (index + 1) % self.units.len();
                if let Some(slot) = slot {
                    let r = self.backend.release(slot);
                    self.poison(r)?;
                    let r = self.issue_next(slot);
                    self.poison(r)?;
                }
                Ok(())
            }
            other => {
                self.held = other;
                let expected = self.units[self.expected].name.clone();
                let got = self
                    .units
                    .get(index)
                    .map(|u| u.name.clone())
                    .unwrap_or_default();
                self.poison(Err(EngineError::Order { expected, got }))
            }
        }
    }

    /// Runs `f` on every unit of one pass in order (acquire → f → release), timing the pass.
    /// If `f` fails, the rest of the pass is skipped (its units are still taken through the
    /// ring, so the engine stays in order for the next pass) and `f`'s error is returned.
    pub fn pass<E: From<EngineError>>(
        &mut self,
        mut f: impl FnMut(usize, &UnitWeights) -> Result<(), E>,
    ) -> Result<PassStats, E> {
        self.begin_pass();
        for i in 0..self.units.len() {
            let w = self.acquire(i)?;
            let r = f(i, &w);
            drop(w);
            if let Err(e) = r {
                self.abort_pass()?;
                self.end_pass();
                return Err(e);
            }
            self.release(i)?;
        }
        Ok(self.end_pass())
    }

    /// Ends the current pass early: releases the held unit, then takes the remaining units of
    /// the pass through the ring without computing, so the next pass starts in order.
    pub fn abort_pass(&mut self) -> Result<(), EngineError> {
        self.check()?;
        if let Some((held, _)) = self.held {
            self.release(held)?;
        }
        while self.expected != 0 {
            let i = self.expected;
            self.acquire(i)?;
            self.release(i)?;
        }
        Ok(())
    }
}
