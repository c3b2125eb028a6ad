//! The CPU backend of the streaming engine: one worker thread per source link copies a unit's
//! stored bytes into fresh tensors in the compute dtype (the "slot"), and hands them back
//! through that slot's channel.
//!
//! On a CPU the copy is a real copy (bytes → tensor, with the dtype conversion) from host
//! memory or from the memory-mapped file (page faults read the disk), done in the background
//! while the compute thread runs earlier units. Slot *memory* is not reused here (candle CPU
//! tensors own their storage; the allocator recycles it); slot *order* and error paths are
//! exactly the CUDA backend's.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{DType, Device, Tensor};

use super::engine::{Backend, EngineError};
use super::unit::UnitData;

type Fetched = Result<HashMap<String, Tensor>, String>;

struct Job {
    data: Arc<UnitData>,
    reply: SyncSender<Fetched>,
}

struct Link {
    name: String,
    tx: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

/// Worker-thread backend for a CPU compute device.
pub struct CpuBackend {
    links: Vec<Link>,
    replies: Vec<(SyncSender<Fetched>, Receiver<Fetched>)>,
}

impl CpuBackend {
    /// One worker per link name (e.g. `["cpu→cpu", "disk→cpu"]`), `slots` reply channels;
    /// tensors are materialised in `dtype`.
    pub fn new(link_names: &[String], slots: usize, dtype: DType) -> Result<Self, EngineError> {
        let mut links = Vec::with_capacity(link_names.len());
        for name in link_names {
            let (tx, rx) = mpsc::channel::<Job>();
            let thread = std::thread::Builder::new()
                .name(format!("mgpu-fetch {name}"))
                .spawn(move || {
                    for job in rx {
                        let r = job
                            .data
                            .materialize(&Device::Cpu, dtype)
                            .map_err(|e| e.to_string());
                        // The engine may be gone (dropped mid-run); nothing to report then.
                        let _ = job.reply.send(r);
                    }
                })
                .map_err(|e| EngineError::Fetch {
                    unit: String::new(),
                    link: name.clone(),
                    message: format!("cannot start the fetch thread: {e}"),
                })?;
            links.push(Link {
                name: name.clone(),
                tx: Some(tx),
                thread: Some(thread),
            });
        }
        let replies = (0..slots).map(|_| mpsc::sync_channel(1)).collect();
        Ok(CpuBackend { links, replies })
    }
}

impl Backend for CpuBackend {
    fn issue(
        &mut self,
        slot: usize,
        unit: usize,
        data: &Arc<UnitData>,
        link: usize,
    ) -> Result<(), EngineError> {
        let l = &self.links[link];
        let job = Job {
            data: data.clone(),
            reply: self.replies[slot].0.clone(),
        };
        let sent =
            l.tx.as_ref()
                .map(|tx| tx.send(job).is_ok())
                .unwrap_or(false);
        if !sent {
            return Err(EngineError::Fetch {
                unit: format!("#{unit} ({})", data.name),
                link: l.name.clone(),
                message: "the fetch thread has stopped".into(),
            });
        }
        Ok(())
    }

    fn ready(&mut self, slot: usize, unit: usize) -> Result<HashMap<String, Tensor>, EngineError> {
        match self.replies[slot].1.recv() {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(message)) => Err(EngineError::Fetch {
                unit: format!("#{unit}"),
                link: format!("slot {slot}"),
                message,
            }),
            Err(_) => Err(EngineError::Fetch {
                unit: format!("#{unit}"),
                link: format!("slot {slot}"),
                message: "the fetch thread stopped before delivering".into(),
            }),
        }
    }

    fn release(&mut self, _slot: usize) -> Result<(), EngineError> {
        Ok(())
    }

    fn link_names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }
}

impl Drop for CpuBackend {
    fn drop(&mut self) {
        for l in &mut self.links {
            l.tx.take();
        }
        // Unblock workers waiting to deliver into a full reply channel.
        self.replies.clear();
        for l in &mut self.links {
            if let Some(t) = l.thread.take() {
                let _ = t.join();
            }
        }
    }
}
