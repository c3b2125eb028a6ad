//! Uploads of resident weights through reused page-locked staging buffers (22 GB/s measured on
//! the H200 host, against 54 GB/s from page-locked memory and 6 GB/s pageable).
//!
//! `Tensor::from_raw_buffer` on a CUDA device copies from pageable memory, which the driver
//! stages through its own small buffers: 7.6 GB/s on the H200 host where page-locked copies
//! run at ≈ 50 GB/s (first-image.md, anchors.md). Here a tensor's stored bytes (usually a
//! range of a memory-mapped file) are copied on all cores into one of the reused page-locked
//! staging buffers while the previous chunk crosses the link, into a device tensor allocated
//! in the stored dtype; conversion to the compute dtype then runs on the device exactly as
//! before (`HostTensor::materialize`), so the values are unchanged.
//!
//! The staging buffers are per process and per device (allocated at the first upload, 2 × 128
//! MiB by default; `MGPU_STAGING=MIB,COUNT` changes both, for measuring); uploads are serialised
//! on them. An upload returns once its last chunk is queued, not copied: the next upload's
//! first chunk is copied on the cores while the previous one crosses the link (the tensor is
//! complete before any later work on the device's stream reads it), so a unit's many tensors
//! form one pipeline instead of one stall per tensor.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaEvent, PinnedHostSlice};
use candle_core::{DType, Device, Tensor};

use super::super::hostmem;
use super::region_ptr;

/// Bytes per staging buffer (and per copy) and how many, unless `MGPU_STAGING` says otherwise.
/// 128 MiB × 2: measured best on the H200 host (benches/RESULTS.md, issue 11: 22.1–22.8 GB/s
/// for 128–256 MiB chunks against 15.6–19.7 for 64 MiB, 9.3 for 16 MiB; the copy into the
/// buffer splits a chunk into 8 MiB pieces, one per core, so a small chunk leaves cores idle).
const CHUNK: usize = 128 << 20;
const BUFFERS: usize = 2;

/// (bytes per buffer, buffers): `MGPU_STAGING=MIB,COUNT` (1..=1024 MiB, 2..=16 buffers), else
/// the defaults; read once per process.
fn staging_shape() -> (usize, usize) {
    static SHAPE: OnceLock<(usize, usize)> = OnceLock::new();
    *SHAPE.get_or_init(|| {
        let parsed = std::env::var("MGPU_STAGING").ok().and_then(|v| {
            let (mib, count) = v.split_once(',')?;
            let mib: usize = mib.trim().parse().ok()?;
            let count: usize = count.trim().parse().ok()?;
            ((1..=1024).contains(&mib) && (2..=16).contains(&count)).then_some((mib << 20, count))
        });
        parsed.unwrap_or((CHUNK, BUFFERS))
    })
}

/// Tensors smaller than this go through candle's own copy (one call, no staging).
pub const STAGED_MIN: usize = 1 << 20;

struct Staging {
    bufs: Vec<PinnedHostSlice<u8>>,
    /// Recorded after each copy out of the buffer (an event never recorded is complete).
    done: Vec<CudaEvent>,
    /// The buffer the next chunk goes through (round robin across uploads).
    next: usize,
}

// SAFETY: the page-locked buffers and events are only used under the mutex that owns them.
unsafe impl Send for Staging {}

fn stagings() -> &'static Mutex<HashMap<usize, Staging>> {
    static S: OnceLock<Mutex<HashMap<usize, Staging>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("uploading weights: {what}: {e:?}"))
}

/// The stored bytes of one tensor as a device tensor of `dtype` and `shape` on `device` (a CUDA
/// device), copied through page-locked staging buffers.
pub fn upload(
    bytes: &[u8],
    mapped: bool,
    dtype: DType,
    shape: &[usize],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let numel: usize = shape.iter().product();
    if numel * dtype.size_in_bytes() != bytes.len() {
        candle_core::bail!(
            "{shape:?} of {dtype:?} needs {} bytes, got {}",
            numel * dtype.size_in_bytes(),
            bytes.len()
        )
    }
    let cdev = device.as_cuda_device()?;
    let stream = cdev.cuda_stream();
    let ctx = stream.context().clone();
    let t = Tensor::zeros(shape, dtype, device)?;
    let dst = region_ptr(&t, &stream).map_err(|e| err("device pointer", e))?;
    let mut all = stagings().lock().unwrap_or_else(|p| p.into_inner());
    let key = Arc::as_ptr(&ctx) as usize;
    let (chunk_bytes, count) = staging_shape();
    if let std::collections::hash_map::Entry::Vacant(slot) = all.entry(key) {
        let mut st = Staging {
            bufs: Vec::with_capacity(count),
            done: Vec::with_capacity(count),
            next: 0,
        };
        for _ in 0..count {
            // SAFETY: every byte copied out is written first.
            st.bufs.push(
                unsafe {
                    ctx.alloc_pinned_with_flags::<u8>(chunk_bytes, sys::CU_MEMHOSTALLOC_PORTABLE)
                }
                .map_err(|e| err("allocating page-locked staging", e))?,
            );
            st.done.push(
                ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                    .map_err(|e| err("creating an event", e))?,
            );
        }
        slot.insert(st);
    }
    let st = all.get_mut(&key).ok_or_else(|| err("staging", "missing"))?;
    ctx.bind_to_thread().map_err(|e| err("binding", e))?;
    for (i, chunk) in bytes.chunks(chunk_bytes).enumerate() {
        let b = st.next;
        st.next = (b + 1) % st.bufs.len();
        st.done[b]
            .synchronize()
            .map_err(|e| err("waiting for a copy", e))?;
        let host = st.bufs[b]
            .as_mut_slice()
            .map_err(|e| err("staging buffer", e))?;
        // Paged in on all cores, copied, and (for a file mapping) the chunk's pages dropped.
        hostmem::copy_from(&mut host[..chunk.len()], chunk, mapped);
        // SAFETY: `dst + i·chunk_bytes .. + len` lies inside the tensor's allocation (its size
        // was checked against `bytes`); the staging buffer is not written again before
        // `done[b]` (recorded right after this copy) has completed.
        unsafe {
            result::memcpy_htod_async(
                dst + (i * chunk_bytes) as u64,
                &host[..chunk.len()],
                stream.cu_stream(),
            )
        }
        .map_err(|e| err("copying", e))?;
        st.done[b]
            .record(&stream)
            .map_err(|e| err("recording", e))?;
    }
    // The last copies may still be in flight: later kernels on the same stream see the tensor
    // complete, and the staging buffers are reused only after their events. `bytes` is not
    // read after this point (every chunk was copied into a staging buffer above). Readers on
    // other streams: none (staged uploads place compute-device residents, read only by work on
    // this stream; donor homes are uploaded and synchronised by the CUDA engine itself).
    drop(all);
    Ok(t)
}

/// Host→device GB/s the way resident weights are uploaded: [`upload`] of `count` bf16
/// tensors of `bytes` each, from consecutive ranges of one ordinary (pageable, resident)
/// buffer, wall-clock time including the device allocations, after one untimed upload
/// (staging buffers allocated, kernels loaded). `mgpu probe --bench` reports it as "staged".
pub fn measure_gbps(device: &Device, bytes: usize, count: usize) -> candle_core::Result<f64> {
    let bytes = bytes & !1;
    let src = vec![1u8; bytes * count];
    let shape = [bytes / 2];
    drop(upload(&src[..bytes], false, DType::BF16, &shape, device)?);
    device.synchronize()?;
    let t0 = std::time::Instant::now();
    for piece in src.chunks_exact(bytes) {
        drop(upload(piece, false, DType::BF16, &shape, device)?);
    }
    device.synchronize()?;
    Ok((bytes * count) as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

/// Whether `upload` is worth it for a tensor of `bytes` on `device`.
pub fn staged(device: &Device, bytes: usize) -> bool {
    device.is_cuda() && bytes >= STAGED_MIN
}
