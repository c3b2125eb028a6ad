//! The CUDA backend of the streaming engine: page-locked host homes, donor-GPU homes and disk
//! homes copied into K persistent slots on the compute GPU, on one copy stream per link, with
//! events ordering copy → compute → slot reuse.
//!
//! Layout: every streamed unit's tensors are grouped by dtype into *regions*; inside a region
//! each tensor starts at a 256-byte-aligned offset (the alignment of a fresh allocation, so
//! kernels choose the same algorithms as for resident tensors). A slot holds one candle tensor
//! per region dtype, allocated once and sized for the largest unit; the unit's tensors are
//! zero-copy views (`narrow` + `reshape`) into it. A unit's home mirrors the same layout, so a
//! fetch is one copy per region:
//! - `cpu`: one page-locked buffer per unit, filled once at distribution;
//! - `cuda:N` donor: one device buffer per unit on the donor, copied with `cuMemcpyPeerAsync`
//!   (NVLink/PCIe peer when peer access is on, staged by the driver otherwise);
//! - `disk`: a worker thread reads the memory-mapped bytes into the slot's page-locked staging
//!   buffer and enqueues the copy itself.
//!
//! Per slot, `ready` is recorded on the link's copy stream after its copies and waited on by
//! the compute stream before the unit's kernels; `free` is recorded on the compute stream
//! after the unit's kernels and waited on by the copy stream before the slot is overwritten.
//! The engine's host thread never blocks on a copy (except for `disk`, until the worker has
//! enqueued it). Stalls are measured on the device with timing events around each wait.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::cuda_backend::cudarc::driver::{
    result, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice,
};
use candle_core::{DType, Device, Storage, Tensor};

use super::engine::{Backend, EngineError, EngineUnit, Home};
use super::unit::UnitData;
use crate::device::UnitHome;

mod dequant;
mod device;
mod layout;
mod lora;
mod pinned;
pub mod sass;
pub mod upload;
mod widen;

pub use dequant::check_dequant;
use device::fp8_tables;
pub use device::{check_widen_fp8, keep_pool_memory, measure_h2d_gbps};
use layout::{fill_home, layout_of, region_keys, Layout};
pub use layout::{RegionKey, ALIGN};
pub use lora::{check as check_dequant_lora, time_q8_0 as time_dequant_lora};
use pinned::PinnedBuf;
pub use pinned::{h2d_gbps, PinMode, PinnedPool};

pub(super) fn cuda_err(what: &str) -> impl Fn(result::DriverError) -> EngineError + '_ {
    move |e| EngineError::Fetch {
        unit: String::new(),
        link: "cuda".into(),
        message: format!("{what}: {e:?}"),
    }
}

pub(super) fn candle_err(e: candle_core::Error) -> EngineError {
    EngineError::Candle(e)
}

/// The bytes of a unit in its home, mirroring its layout.
enum Source {
    Pinned(Arc<PinnedBuf>),
    Peer {
        /// Keeps the donor allocation alive; `ptr` points into it.
        _buf: CudaSlice<u8>,
        ptr: sys::CUdeviceptr,
        ctx: Arc<CudaContext>,
    },
    Disk(Arc<UnitData>),
}

struct StreamedUnit {
    layout: Layout,
    source: Source,
    link: usize,
    /// The per-tensor scales of its fp8-compute weights (`…weight_scale`), resident: a few
    /// bytes each, uploaded once instead of with every fetch.
    scales: Vec<(String, Tensor)>,
    /// Per tensor (layout order): the `on_dequant` LoRA terms added as its blocks are
    /// dequantised, resident.
    loras: Vec<Option<lora::DeviceTerms>>,
}

struct Region {
    tensor: Tensor,
    ptr: sys::CUdeviceptr,
    dtype: DType,
}

struct Slot {
    regions: Vec<Region>,
    ready: CudaEvent,
    free: CudaEvent,
    free_recorded: bool,
    staging: Option<Arc<StagingBuf>>,
    disk_done: Option<Receiver<Result<(), String>>>,
}

/// A page-locked staging buffer shared with the disk worker.
struct StagingBuf(std::sync::Mutex<PinnedHostSlice<u8>>);

struct Link {
    name: String,
    kind: UnitHome,
    stream: Arc<CudaStream>,
}

struct DiskJob {
    data: Arc<UnitData>,
    layout: Layout,
    staging: Arc<StagingBuf>,
    /// (device pointer of the region in the slot) per layout region, in layout order.
    dst: Vec<sys::CUdeviceptr>,
    stream: Arc<CudaStream>,
    free: Option<Arc<EventCell>>,
    ready: Arc<EventCell>,
    done: mpsc::SyncSender<Result<(), String>>,
}

/// An event shared with the disk worker (the engine thread records `free`, the worker waits
/// for it on the disk stream and records `ready`).
struct EventCell(CudaEvent);

/// Backend for a CUDA compute device.
pub struct CudaBackend {
    device: Device,
    ctx: Arc<CudaContext>,
    compute: Arc<CudaStream>,
    links: Vec<Link>,
    slots: Vec<Slot>,
    units: HashMap<usize, StreamedUnit>,
    disk_tx: Option<Sender<DiskJob>>,
    disk_thread: Option<JoinHandle<()>>,
    /// Timing events around each stall in the current pass.
    stall_events: Vec<(CudaEvent, CudaEvent)>,
    stalls_used: usize,
    /// Shared events for disk slots (ready/free), by slot.
    disk_events: Vec<(Arc<EventCell>, Arc<EventCell>)>,
    /// The fp8 → f32 tables of the widening kernel (e4m3fn, then e5m2), on the device.
    _fp8_tables: CudaSlice<f32>,
    fp8_tables_ptr: sys::CUdeviceptr,
}

fn region_ptr(t: &Tensor, stream: &CudaStream) -> Result<sys::CUdeviceptr, EngineError> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else {
        return Err(EngineError::Candle(candle_core::Error::Msg(
            "slot region is not on a CUDA device".into(),
        )));
    };
    let base = match t.dtype() {
        DType::BF16 => {
            cs.as_cuda_slice::<half::bf16>()
                .map_err(candle_err)?
                .device_ptr(stream)
                .0
        }
        DType::F16 => {
            cs.as_cuda_slice::<half::f16>()
                .map_err(candle_err)?
                .device_ptr(stream)
                .0
        }
        DType::F32 => {
            cs.as_cuda_slice::<f32>()
                .map_err(candle_err)?
                .device_ptr(stream)
                .0
        }
        DType::U8 => {
            cs.as_cuda_slice::<u8>()
                .map_err(candle_err)?
                .device_ptr(stream)
                .0
        }
        DType::F8E4M3 => {
            cs.as_cuda_slice::<float8::F8E4M3>()
                .map_err(candle_err)?
                .device_ptr(stream)
                .0
        }
        d => {
            return Err(EngineError::Candle(candle_core::Error::Msg(format!(
                "dtype {d:?} cannot stream on CUDA (supported: bf16, f16, f32, u8, f8e4m3)"
            ))))
        }
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

impl CudaBackend {
    /// Prepares slots, links and homes for `units` on the CUDA compute `device`.
    /// `link_kinds[i]` says where link i's units live; `slots` is the ring size.
    /// Host homes are copied into page-locked memory and peer homes uploaded to their donor
    /// here, once (this is the "distribute" step for streamed units).
    pub fn new(
        device: &Device,
        units: &[EngineUnit],
        link_names: &[String],
        link_kinds: &[UnitHome],
        slots: usize,
        pool: &mut PinnedPool,
    ) -> Result<Self, EngineError> {
        let cdev = device.as_cuda_device().map_err(candle_err)?;
        let compute = cdev.cuda_stream();
        let ctx = compute.context().clone();
        let mut links = Vec::new();
        for (name, kind) in link_names.iter().zip(link_kinds) {
            let stream = ctx
                .new_stream()
                .map_err(cuda_err("creating a copy stream"))?;
            links.push(Link {
                name: name.clone(),
                kind: *kind,
                stream,
            });
        }
        // Region dtypes and sizes: the union over streamed units, each sized for the largest.
        let mut region_keys_all: Vec<RegionKey> = Vec::new();
        for u in units {
            if let Home::Streamed { data, .. } = &u.home {
                for k in region_keys(data) {
                    if !region_keys_all.contains(&k) {
                        region_keys_all.push(k);
                    }
                }
            }
        }
        // Host homes first, every unit at once (pinning is the slow part of distributing).
        let mut host_units = Vec::new();
        for u in units {
            if let Home::Streamed { data, link } = &u.home {
                if link_kinds.get(*link) == Some(&UnitHome::Host) {
                    host_units.push((u.name.as_str(), layout_of(data, &region_keys_all)?, data));
                }
            }
        }
        pool.fill_all(
            &ctx,
            host_units
                .iter()
                .map(|(n, l, d)| (*n, l, d.as_ref()))
                .collect(),
        )?;
        let mut region_bytes = vec![0usize; region_keys_all.len()];
        let mut streamed = HashMap::new();
        let mut peer_ctxs: HashMap<usize, Arc<CudaContext>> = HashMap::new();
        for (i, u) in units.iter().enumerate() {
            let Home::Streamed { data, link } = &u.home else {
                continue;
            };
            let layout = layout_of(data, &region_keys_all)?;
            for (r, &used) in layout.region_sizes.iter().enumerate() {
                region_bytes[r] = region_bytes[r].max(used);
            }
            let kind = &links[*link].kind;
            let source = match kind {
                UnitHome::Host => Source::Pinned(pool.get(&u.name, &layout).ok_or_else(|| {
                    EngineError::Fetch {
                        unit: u.name.clone(),
                        link: links[*link].name.clone(),
                        message: "no page-locked home was made (a bug in the backend)".into(),
                    }
                })?),
                UnitHome::Donor(ord) => {
                    let ord = *ord as usize;
                    let pctx = match peer_ctxs.get(&ord) {
                        Some(c) => c.clone(),
                        None => {
                            let c =
                                CudaContext::new(ord).map_err(cuda_err("opening the donor GPU"))?;
                            enable_peer_access(&ctx, &c);
                            peer_ctxs.insert(ord, c.clone());
                            c
                        }
                    };
                    let mut host = vec![0u8; layout.home_bytes.max(1)];
                    fill_home(&layout, data, &mut host);
                    let s = pctx.default_stream();
                    let buf = s
                        .clone_htod(&host)
                        .map_err(cuda_err("uploading to the donor GPU"))?;
                    s.synchronize()
                        .map_err(cuda_err("uploading to the donor GPU"))?;
                    // Taken once, on the donor's own stream: copies are ordered by our events.
                    let ptr = buf.device_ptr(&s).0;
                    Source::Peer {
                        _buf: buf,
                        ptr,
                        ctx: pctx,
                    }
                }
                UnitHome::Disk => Source::Disk(data.clone()),
                UnitHome::Compute => {
                    return Err(EngineError::Fetch {
                        unit: u.name.clone(),
                        link: links[*link].name.clone(),
                        message:
                            "a resident unit has no link to stream from (a bug in the executor)"
                                .into(),
                    })
                }
            };
            let scales = super::unit::fp8_scales(data, device).map_err(candle_err)?;
            let loras = data
                .tensors
                .iter()
                .map(|t| {
                    t.lora
                        .as_ref()
                        .map(|d| lora::upload(&compute, d))
                        .transpose()
                })
                .collect::<Result<Vec<_>, _>>()?;
            streamed.insert(
                i,
                StreamedUnit {
                    layout,
                    source,
                    link: *link,
                    scales,
                    loras,
                },
            );
        }
        let max_home = streamed
            .values()
            .map(|u| u.layout.home_bytes)
            .max()
            .unwrap_or(0);
        let has_disk = link_kinds.contains(&UnitHome::Disk);
        let mut slot_vec = Vec::with_capacity(slots);
        let mut disk_events = Vec::new();
        for _ in 0..slots {
            let mut regions = Vec::new();
            for (k, &b) in region_keys_all.iter().zip(&region_bytes) {
                let d = k.dtype;
                let n = (b / d.size_in_bytes()).max(1);
                let tensor = Tensor::zeros(n, d, device).map_err(candle_err)?;
                let ptr = region_ptr(&tensor, &compute)?;
                regions.push(Region {
                    tensor,
                    ptr,
                    dtype: d,
                });
            }
            let staging = if has_disk {
                // SAFETY: staging is written by the disk worker before each copy.
                let s = unsafe {
                    ctx.alloc_pinned_with_flags::<u8>(
                        max_home.max(1),
                        sys::CU_MEMHOSTALLOC_PORTABLE,
                    )
                }
                .map_err(cuda_err("allocating the disk staging buffer"))?;
                Some(Arc::new(StagingBuf(std::sync::Mutex::new(s))))
            } else {
                None
            };
            disk_events.push((
                Arc::new(EventCell(
                    ctx.new_event(None).map_err(cuda_err("creating an event"))?,
                )),
                Arc::new(EventCell(
                    ctx.new_event(None).map_err(cuda_err("creating an event"))?,
                )),
            ));
            slot_vec.push(Slot {
                regions,
                ready: ctx.new_event(None).map_err(cuda_err("creating an event"))?,
                free: ctx.new_event(None).map_err(cuda_err("creating an event"))?,
                free_recorded: false,
                staging,
                disk_done: None,
            });
        }
        let fp8_tables = compute
            .clone_htod(&fp8_tables())
            .map_err(cuda_err("uploading the fp8 tables"))?;
        let fp8_tables_ptr = fp8_tables.device_ptr(&compute).0;
        // Slot regions were zero-filled on the compute stream: finish that before copies land.
        compute
            .synchronize()
            .map_err(cuda_err("initialising slots"))?;
        let (disk_tx, disk_thread) = if has_disk {
            let (tx, rx) = mpsc::channel::<DiskJob>();
            let wctx = ctx.clone();
            let t = std::thread::Builder::new()
                .name("mgpu-disk-fetch".into())
                .spawn(move || disk_worker(wctx, rx))
                .map_err(|e| EngineError::Fetch {
                    unit: String::new(),
                    link: "disk".into(),
                    message: format!("cannot start the disk thread: {e}"),
                })?;
            (Some(tx), Some(t))
        } else {
            (None, None)
        };
        Ok(CudaBackend {
            device: device.clone(),
            ctx,
            compute,
            links,
            slots: slot_vec,
            units: streamed,
            disk_tx,
            disk_thread,
            stall_events: Vec::new(),
            stalls_used: 0,
            disk_events,
            _fp8_tables: fp8_tables,
            fp8_tables_ptr,
        })
    }

    /// Bytes of page-locked host memory held for `cpu` homes.
    pub fn pinned_bytes(&self) -> u64 {
        self.units
            .values()
            .filter(|u| matches!(u.source, Source::Pinned(_)))
            .map(|u| u.layout.home_bytes as u64)
            .sum()
    }

    /// Bytes of the K slots on the compute device.
    pub fn slot_bytes(&self) -> u64 {
        self.slots
            .iter()
            .flat_map(|s| &s.regions)
            .map(|r| (r.tensor.elem_count() * r.dtype.size_in_bytes()) as u64)
            .sum()
    }
}

/// Turns on direct access between the compute GPU and a donor, pool memory included
/// ([`crate::hardware::cuda::enable_peer`]); without it `cuMemcpyPeerAsync` still works,
/// staged through host memory by the driver, so a failure is a warning, not an error.
fn enable_peer_access(compute: &Arc<CudaContext>, donor: &Arc<CudaContext>) {
    match crate::hardware::cuda::enable_peer(compute, donor) {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "warning: GPUs {} and {} have no peer path: copies between them go through host memory",
            compute.ordinal(),
            donor.ordinal()
        ),
        Err(e) => eprintln!(
            "warning: enabling peer access between GPUs {} and {} failed ({e}): copies between them go through host memory",
            compute.ordinal(),
            donor.ordinal()
        ),
    }
    // Later work of this thread runs on the compute context.
    let _ = compute.bind_to_thread();
}

fn disk_worker(ctx: Arc<CudaContext>, rx: Receiver<DiskJob>) {
    for job in rx {
        let r = (|| -> Result<(), String> {
            ctx.bind_to_thread().map_err(|e| format!("{e:?}"))?;
            let mut staging = job
                .staging
                .0
                .lock()
                .map_err(|_| "staging buffer poisoned".to_string())?;
            // The previous copy out of this staging buffer must have finished.
            job.ready.0.synchronize().map_err(|e| format!("{e:?}"))?;
            {
                let buf = staging.as_mut_slice().map_err(|e| format!("{e:?}"))?;
                fill_home(&job.layout, &job.data, buf);
            }
            if let Some(free) = &job.free {
                job.stream.wait(&free.0).map_err(|e| format!("{e:?}"))?;
            }
            let buf = staging.as_slice().map_err(|e| format!("{e:?}"))?;
            for (&(_, used, home), &dst) in job.layout.regions.iter().zip(&job.dst) {
                // SAFETY: dst is a live slot region at least `used` bytes long; the staging
                // buffer stays locked until the copy is recorded and is not rewritten before
                // `ready` completes (checked above on the next use).
                unsafe {
                    result::memcpy_htod_async(dst, &buf[home..home + used], job.stream.cu_stream())
                }
                .map_err(|e| format!("{e:?}"))?;
            }
            job.ready
                .0
                .record(&job.stream)
                .map_err(|e| format!("{e:?}"))?;
            Ok(())
        })();
        let _ = job.done.send(r);
    }
}

impl Backend for CudaBackend {
    fn issue(
        &mut self,
        slot: usize,
        unit: usize,
        data: &Arc<UnitData>,
        link: usize,
    ) -> Result<(), EngineError> {
        let u = self.units.get(&unit).ok_or_else(|| EngineError::Fetch {
            unit: data.name.clone(),
            link: "cuda".into(),
            message: "unit has no prepared home".into(),
        })?;
        let l = &self.links[link];
        let s = &mut self.slots[slot];
        let fetch_err = |m: String| EngineError::Fetch {
            unit: data.name.clone(),
            link: l.name.clone(),
            message: m,
        };
        match &u.source {
            Source::Pinned(buf) => {
                if s.free_recorded {
                    l.stream
                        .wait(&s.free)
                        .map_err(|e| fetch_err(format!("{e:?}")))?;
                }
                let host = buf.as_slice().map_err(|e| fetch_err(e.to_string()))?;
                for &(r, used, home) in &u.layout.regions {
                    // SAFETY: region r of the slot holds at least `used` bytes (sized for the
                    // largest unit); the pinned buffer lives as long as the backend.
                    unsafe {
                        result::memcpy_htod_async(
                            s.regions[r].ptr,
                            &host[home..home + used],
                            l.stream.cu_stream(),
                        )
                    }
                    .map_err(|e| fetch_err(format!("{e:?}")))?;
                }
                s.ready
                    .record(&l.stream)
                    .map_err(|e| fetch_err(format!("{e:?}")))?;
            }
            Source::Peer { ptr: src, ctx, .. } => {
                let src = *src;
                if s.free_recorded {
                    l.stream
                        .wait(&s.free)
                        .map_err(|e| fetch_err(format!("{e:?}")))?;
                }
                for &(r, used, home) in &u.layout.regions {
                    // SAFETY: both ranges are live device allocations of at least `used` bytes.
                    unsafe {
                        result::memcpy_peer_async(
                            self.ctx.cu_ctx(),
                            s.regions[r].ptr,
                            ctx.cu_ctx(),
                            src + home as u64,
                            used,
                            l.stream.cu_stream(),
                        )
                    }
                    .map_err(|e| fetch_err(format!("{e:?}")))?;
                }
                s.ready
                    .record(&l.stream)
                    .map_err(|e| fetch_err(format!("{e:?}")))?;
            }
            Source::Disk(d) => {
                let (ready, free) = &self.disk_events[slot];
                if s.free_recorded {
                    free.0
                        .record(&self.compute)
                        .map_err(|e| fetch_err(format!("{e:?}")))?;
                }
                let (done_tx, done_rx) = mpsc::sync_channel(1);
                let job = DiskJob {
                    data: d.clone(),
                    layout: u.layout.clone(),
                    staging: s
                        .staging
                        .clone()
                        .ok_or_else(|| fetch_err("no staging buffer".into()))?,
                    dst: u
                        .layout
                        .regions
                        .iter()
                        .map(|&(r, _, _)| s.regions[r].ptr)
                        .collect(),
                    stream: l.stream.clone(),
                    free: s.free_recorded.then(|| free.clone()),
                    ready: ready.clone(),
                    done: done_tx,
                };
                self.disk_tx
                    .as_ref()
                    .ok_or_else(|| fetch_err("no disk thread".into()))?
                    .send(job)
                    .map_err(|_| fetch_err("the disk thread has stopped".into()))?;
                s.disk_done = Some(done_rx);
            }
        }
        Ok(())
    }

    fn ready(&mut self, slot: usize, unit: usize) -> Result<HashMap<String, Tensor>, EngineError> {
        let u = self.units.get(&unit).ok_or_else(|| EngineError::Fetch {
            unit: format!("#{unit}"),
            link: "cuda".into(),
            message: "unit has no prepared home".into(),
        })?;
        let s = &mut self.slots[slot];
        let link = &self.links[u.link];
        let err = |m: String| EngineError::Fetch {
            unit: format!("#{unit}"),
            link: link.name.clone(),
            message: m,
        };
        // Timing events around the compute stream's wait measure the stall on the device.
        if self.stalls_used == self.stall_events.len() {
            let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
            self.stall_events.push((
                self.ctx
                    .new_event(flags)
                    .map_err(|e| err(format!("{e:?}")))?,
                self.ctx
                    .new_event(flags)
                    .map_err(|e| err(format!("{e:?}")))?,
            ));
        }
        let (before, after) = &self.stall_events[self.stalls_used];
        self.stalls_used += 1;
        before
            .record(&self.compute)
            .map_err(|e| err(format!("{e:?}")))?;
        if let Some(done) = s.disk_done.take() {
            done.recv()
                .map_err(|_| err("the disk thread stopped".into()))?
                .map_err(err)?;
            self.compute
                .wait(&self.disk_events[slot].0 .0)
                .map_err(|e| err(format!("{e:?}")))?;
        } else {
            self.compute
                .wait(&s.ready)
                .map_err(|e| err(format!("{e:?}")))?;
        }
        after
            .record(&self.compute)
            .map_err(|e| err(format!("{e:?}")))?;
        // The compact tensors are widened here, on the compute stream, in series with the
        // units' compute: on a stream of their own they measured no faster (docs/gpu.md).
        let ops = widen::ops(&s.regions, &u.layout, &u.loras);
        widen::launch(&self.device, &self.compute, self.fp8_tables_ptr, &ops).map_err(&err)?;
        let mut out = HashMap::with_capacity(u.layout.places.len());
        for p in &u.layout.places {
            let r = &s.regions[p.region];
            let size = r.dtype.size_in_bytes();
            let numel: usize = p.shape.iter().product();
            let t = r
                .tensor
                .narrow(0, p.offset / size, numel)
                .and_then(|t| t.reshape(p.shape.as_slice()))
                .map_err(candle_err)?;
            out.insert(p.name.clone(), t);
        }
        for (name, t) in &u.scales {
            out.insert(name.clone(), t.clone());
        }
        Ok(out)
    }

    fn release(&mut self, slot: usize) -> Result<(), EngineError> {
        let s = &mut self.slots[slot];
        s.free
            .record(&self.compute)
            .map_err(cuda_err("recording slot release"))?;
        s.free_recorded = true;
        Ok(())
    }

    fn link_names(&self) -> Vec<String> {
        self.links.iter().map(|l| l.name.clone()).collect()
    }

    fn end_pass(&mut self) -> Result<Option<f64>, EngineError> {
        self.compute
            .synchronize()
            .map_err(cuda_err("finishing the pass"))?;
        let mut stall = 0.0f64;
        for (b, a) in &self.stall_events[..self.stalls_used] {
            stall += f64::from(b.elapsed_ms(a).map_err(cuda_err("reading stall timers"))?) / 1e3;
        }
        self.stalls_used = 0;
        Ok(Some(stall))
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        self.disk_tx.take();
        if let Some(t) = self.disk_thread.take() {
            let _ = t.join();
        }
        let _ = self.compute.synchronize();
        for l in &self.links {
            let _ = l.stream.synchronize();
        }
        // No copy reads the homes any more: unpin them in the background.
        let pinned = self
            .units
            .drain()
            .filter_map(|(_, u)| match u.source {
                Source::Pinned(b) => Some(b),
                _ => None,
            })
            .collect();
        pinned::reap(pinned);
    }
}
