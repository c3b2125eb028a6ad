//! Uploads of resident weights at the page-locked rate.
//!
//! `Tensor::from_raw_buffer` on a CUDA device copies from pageable memory, which the driver
//! stages through its own small buffers: 7.6 GB/s on the H200 host where page-locked copies
//! run at ≈ 50 GB/s (first-image.md, anchors.md). Here a tensor's stored bytes (usually a
//! range of a memory-mapped file) are copied on all cores into one of two reused page-locked
//! staging buffers while the previous chunk crosses the link, into a device tensor allocated
//! in the stored dtype; conversion to the compute dtype then runs on the device exactly as
//! before (`HostTensor::materialize`), so the values are unchanged.
//!
//! The staging buffers are per process and per device (allocated at the first upload, 2 × 64
//! MiB); uploads are serialised on them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{result, sys, CudaEvent, PinnedHostSlice};
use candle_core::{DType, Device, Tensor};

use super::super::hostmem;
use super::region_ptr;

/// Bytes per staging buffer (and per copy).
const CHUNK: usize = 64 << 20;

/// Tensors smaller than this go through candle's own copy (one call, no staging).
pub const STAGED_MIN: usize = 1 << 20;

struct Staging {
    bufs: [PinnedHostSlice<u8>; 2],
    done: [CudaEvent; 2],
    pending: [bool; 2],
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
    if let std::collections::hash_map::Entry::Vacant(slot) = all.entry(key) {
        let mk = || -> candle_core::Result<PinnedHostSlice<u8>> {
            // SAFETY: every byte copied out is written first.
            unsafe { ctx.alloc_pinned_with_flags::<u8>(CHUNK, sys::CU_MEMHOSTALLOC_PORTABLE) }
                .map_err(|e| err("allocating page-locked staging", e))
        };
        let ev = || {
            ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .map_err(|e| err("creating an event", e))
        };
        slot.insert(Staging {
            bufs: [mk()?, mk()?],
            done: [ev()?, ev()?],
            pending: [false, false],
        });
    }
    let st = all.get_mut(&key).ok_or_else(|| err("staging", "missing"))?;
    ctx.bind_to_thread().map_err(|e| err("binding", e))?;
    for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
        let b = i % 2;
        if st.pending[b] {
            st.done[b]
                .synchronize()
                .map_err(|e| err("waiting for a copy", e))?;
        }
        let host = st.bufs[b]
            .as_mut_slice()
            .map_err(|e| err("staging buffer", e))?;
        // Paged in on all cores, copied, and (for a file mapping) the chunk's pages dropped.
        hostmem::copy_from(&mut host[..chunk.len()], chunk, mapped);
        // SAFETY: `dst + i·CHUNK .. + len` lies inside the tensor's allocation (its size was
        // checked against `bytes`); the staging buffer is not written again before `done[b]`
        // (recorded right after this copy) has completed.
        unsafe {
            result::memcpy_htod_async(
                dst + (i * CHUNK) as u64,
                &host[..chunk.len()],
                stream.cu_stream(),
            )
        }
        .map_err(|e| err("copying", e))?;
        st.done[b]
            .record(&stream)
            .map_err(|e| err("recording", e))?;
        st.pending[b] = true;
    }
    // The tensor is complete once the last copy is: later kernels on the same stream see it;
    // the staging buffers are reused by the next upload after their events.
    stream
        .synchronize()
        .map_err(|e| err("finishing the upload", e))?;
    st.pending = [false, false];
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
    let t0 = std::time::Instant::now();
    for piece in src.chunks_exact(bytes) {
        drop(upload(piece, false, DType::BF16, &shape, device)?);
    }
    Ok((bytes * count) as f64 / t0.elapsed().as_secs_f64() / 1e9)
}

/// Whether `upload` is worth it for a tensor of `bytes` on `device`.
pub fn staged(device: &Device, bytes: usize) -> bool {
    device.is_cuda() && bytes >= STAGED_MIN
}
