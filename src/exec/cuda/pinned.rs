//! Page-locked host homes: allocated and filled on all cores, given back off the critical
//! path.
//!
//! Measured on the H200 host (first-image.md): pinning 22 GiB one unit at a time with
//! `cuMemHostAlloc` ran at ≈ 1.5 GB/s, and freeing it cost ≈ 20 s between the last step and
//! the first image written. So:
//! - [`PinnedPool::fill_all`] pins every host-homed unit of an engine in parallel (one unit per
//!   task on rayon's threads, each with the context bound), pages the mapped source in with
//!   one call per piece, copies it, and drops the mapped pages (`hostmem::copy_from`) so the
//!   weights count once in the process's memory;
//! - two ways to get page-locked memory, chosen by `MGPU_PIN` (`register`, the default:
//!   ordinary memory filled first, then registered with `cuMemHostRegister`; `alloc`: the
//!   driver allocates it, `cuMemHostAlloc`, 13× slower to set up on the H200 host:
//!   benches/RESULTS.md). Both are measured by tools/gpu-first-image.sh;
//! - dropping an engine hands its page-locked buffers to a background thread
//!   ([`reap`]), so unpinning overlaps decoding and writing instead of preceding them.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaContext, PinnedHostSlice};
use rayon::prelude::*;

use super::super::engine::EngineError;
use super::super::unit::UnitData;
use super::cuda_err;
use super::layout::{fill_home_with, Layout};

/// How page-locked memory is obtained (`MGPU_PIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMode {
    /// `cuMemHostAlloc`, then filled.
    Alloc,
    /// Ordinary memory, filled, then `cuMemHostRegister`ed.
    Register,
}

impl PinMode {
    /// From `MGPU_PIN` (`alloc` or `register`); `register` when unset or unknown (measured on
    /// an H200 host: 22 GiB pinned in 1.7 s registered vs 22 s through `cuMemHostAlloc`).
    pub fn from_env() -> PinMode {
        match std::env::var("MGPU_PIN").as_deref() {
            Ok("alloc") => PinMode::Alloc,
            _ => PinMode::Register,
        }
    }
}

/// One page-locked buffer.
pub enum PinnedBuf {
    Alloc(PinnedHostSlice<u8>),
    Registered {
        ptr: *mut u8,
        len: usize,
        ctx: Arc<CudaContext>,
    },
}

// SAFETY: the registered buffer is plain host memory owned by this value; it is only read
// after construction (copies out of it), like `PinnedHostSlice`, which is Send + Sync.
unsafe impl Send for PinnedBuf {}
// SAFETY: as above.
unsafe impl Sync for PinnedBuf {}

const PAGE: usize = 4096;

impl PinnedBuf {
    /// `len` bytes (at least 1) filled by `fill`, page-locked per `mode`.
    fn new(
        ctx: &Arc<CudaContext>,
        len: usize,
        mode: PinMode,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<PinnedBuf, EngineError> {
        let len = len.max(1);
        match mode {
            PinMode::Alloc => {
                // SAFETY: the buffer is fully written by `fill` before any use.
                let mut buf = unsafe {
                    ctx.alloc_pinned_with_flags::<u8>(len, sys::CU_MEMHOSTALLOC_PORTABLE)
                }
                .map_err(cuda_err("allocating page-locked memory"))?;
                fill(
                    buf.as_mut_slice()
                        .map_err(cuda_err("mapping page-locked memory"))?,
                );
                Ok(PinnedBuf::Alloc(buf))
            }
            PinMode::Register => {
                let layout = std::alloc::Layout::from_size_align(len.div_ceil(PAGE) * PAGE, PAGE)
                    .map_err(|e| EngineError::Fetch {
                    unit: String::new(),
                    link: "cpu".into(),
                    message: format!("page-locked buffer of {len} bytes: {e}"),
                })?;
                // SAFETY: the layout has a non-zero size.
                let ptr = unsafe { std::alloc::alloc(layout) };
                if ptr.is_null() {
                    return Err(EngineError::Fetch {
                        unit: String::new(),
                        link: "cpu".into(),
                        message: format!("out of host memory allocating {len} bytes"),
                    });
                }
                // SAFETY: `ptr` is a fresh allocation of at least `len` bytes.
                fill(unsafe { std::slice::from_raw_parts_mut(ptr, len) });
                ctx.bind_to_thread()
                    .map_err(cuda_err("binding the context"))?;
                // SAFETY: the range is a live allocation owned by this value.
                let r = unsafe {
                    sys::cuMemHostRegister_v2(
                        ptr.cast(),
                        layout.size(),
                        sys::CU_MEMHOSTREGISTER_PORTABLE,
                    )
                }
                .result();
                if let Err(e) = r {
                    // SAFETY: allocated above with this layout.
                    unsafe { std::alloc::dealloc(ptr, layout) };
                    return Err(cuda_err("registering page-locked memory")(e));
                }
                Ok(PinnedBuf::Registered {
                    ptr,
                    len,
                    ctx: ctx.clone(),
                })
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            PinnedBuf::Alloc(b) => b.len(),
            PinnedBuf::Registered { len, .. } => *len,
        }
    }

    pub fn as_slice(&self) -> Result<&[u8], EngineError> {
        match self {
            PinnedBuf::Alloc(b) => b.as_slice().map_err(cuda_err("reading page-locked memory")),
            // SAFETY: a live allocation of `len` bytes, only read after construction.
            PinnedBuf::Registered { ptr, len, .. } => {
                Ok(unsafe { std::slice::from_raw_parts(*ptr, *len) })
            }
        }
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        if let PinnedBuf::Registered { ptr, len, ctx } = self {
            let _ = ctx.bind_to_thread();
            // SAFETY: registered and allocated in `new` with this size and alignment; no copy
            // reads it any more (the owning backend synchronised its streams before dropping).
            unsafe {
                let _ = sys::cuMemHostUnregister((*ptr).cast());
                let layout = std::alloc::Layout::from_size_align_unchecked(
                    (*len).max(1).div_ceil(PAGE) * PAGE,
                    PAGE,
                );
                std::alloc::dealloc(*ptr, layout);
            }
        }
    }
}

/// Host→device GB/s of `reps` copies of `bytes` from page-locked memory obtained the way
/// `mode` says (as host homes are), on a new stream of `ctx`, after one untimed copy; timed by
/// events. The engine streams host-homed units from such memory, so plans use this rate for
/// its mode (on the H200 host both kinds measured the same: 55.5 registered, 55.4
/// `cuMemHostAlloc`, benches/RESULTS.md 2026-12-04).
pub fn h2d_gbps(
    ctx: &Arc<CudaContext>,
    bytes: usize,
    reps: usize,
    mode: PinMode,
) -> Result<f64, EngineError> {
    use candle_core::cuda_backend::cudarc::driver::{result, DevicePtr};
    let host = PinnedBuf::new(ctx, bytes, mode, |b| b.fill(1))?;
    let host = host.as_slice()?;
    let stream = ctx.new_stream().map_err(cuda_err("creating a stream"))?;
    // SAFETY: contents are irrelevant to a bandwidth measurement.
    let dev =
        unsafe { stream.alloc::<u8>(host.len()) }.map_err(cuda_err("allocating device memory"))?;
    let dst = dev.device_ptr(&stream).0;
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = ctx
        .new_event(flags)
        .map_err(cuda_err("creating an event"))?;
    let end = ctx
        .new_event(flags)
        .map_err(cuda_err("creating an event"))?;
    let copy = || {
        // SAFETY: `dst` holds `host.len()` bytes; `host` outlives the copies (synchronised
        // below before it is dropped).
        unsafe { result::memcpy_htod_async(dst, host, stream.cu_stream()) }
            .map_err(cuda_err("copying"))
    };
    copy()?;
    start.record(&stream).map_err(cuda_err("recording"))?;
    for _ in 0..reps {
        copy()?;
    }
    end.record(&stream).map_err(cuda_err("recording"))?;
    end.synchronize().map_err(cuda_err("synchronising"))?;
    let ms = start.elapsed_ms(&end).map_err(cuda_err("reading timers"))? as f64;
    Ok((host.len() * reps) as f64 / (ms / 1e3) / 1e9)
}

/// Page-locked copies of units, by unit name, kept across engines: pinning costs time per
/// GiB, so a run pins each host-homed unit once and every engine built later reuses it. A
/// copy is reused only for the same layout (places and sizes): the same unit stored another
/// way (the benchmark's `@fp8` and `@fp8-compute` hold the same bytes in other regions) is
/// pinned again.
#[derive(Default)]
pub struct PinnedPool {
    bufs: HashMap<String, Entry>,
}

/// A pooled copy: its layout's key ([`layout_key`]) and the buffer.
type Entry = (u64, Arc<PinnedBuf>);

/// What a home buffer's layout is, as one number: its places (names, shapes, regions, offsets,
/// compact types) and size.
fn layout_key(layout: &Layout) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}", layout.places).hash(&mut h);
    layout.home_bytes.hash(&mut h);
    h.finish()
}

impl PinnedPool {
    /// Total page-locked bytes held.
    pub fn bytes(&self) -> u64 {
        self.bufs.values().map(|b| b.1.len() as u64).sum()
    }

    /// The buffer of unit `name` if the pool holds one with `layout`.
    pub(super) fn get(&self, name: &str, layout: &Layout) -> Option<Arc<PinnedBuf>> {
        self.bufs
            .get(name)
            .filter(|(k, b)| *k == layout_key(layout) && b.len() == layout.home_bytes.max(1))
            .map(|(_, b)| b.clone())
    }

    /// Pins every unit of `todo` (name, layout, data) not already held, in parallel.
    pub(super) fn fill_all(
        &mut self,
        ctx: &Arc<CudaContext>,
        todo: Vec<(&str, &Layout, &UnitData)>,
    ) -> Result<(), EngineError> {
        let mode = PinMode::from_env();
        let todo: Vec<_> = todo
            .into_iter()
            .filter(|(n, l, _)| self.get(n, l).is_none())
            .collect();
        let made: Vec<Result<(String, Entry), EngineError>> = todo
            .into_par_iter()
            .map(|(name, layout, data)| {
                ctx.bind_to_thread()
                    .map_err(cuda_err("binding the context"))?;
                // Mapped bytes are paged in, copied and dropped piece by piece, so the file's
                // pages never pile up beside the pinned copy.
                let buf = PinnedBuf::new(ctx, layout.home_bytes, mode, |dst| {
                    fill_home_with(layout, data, dst, |d, b| b.copy_to(d))
                })?;
                Ok((name.to_string(), (layout_key(layout), Arc::new(buf))))
            })
            .collect();
        for m in made {
            let (name, buf) = m?;
            self.bufs.insert(name, buf);
        }
        Ok(())
    }
}

/// Drops page-locked buffers on a background thread (unpinning runs at about the speed of
/// pinning; nothing waits for it). If the process exits first, the kernel unpins them.
pub(super) fn reap(bufs: Vec<Arc<PinnedBuf>>) {
    if bufs.is_empty() {
        return;
    }
    // When no thread can be started, the closure (and with it the buffers) is dropped here:
    // unpinned inline, as before.
    let _ = std::thread::Builder::new()
        .name("mgpu-unpin".into())
        .spawn(move || bufs.into_par_iter().for_each(drop));
}
