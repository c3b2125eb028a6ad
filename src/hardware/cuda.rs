//! The CUDA half of `mgpu probe` (feature `cuda` only): GPUs through cudarc's driver API
//! (name, total/free memory, compute capability, peer access) and, with `--bench`, measured
//! copy rates (pinned/pageable host→GPU, host→GPU staged as the loader uploads resident
//! weights, pinned GPU→host, GPU→GPU peer) and the bf16 matrix-product rate through candle's
//! cuBLAS path.
//!
//! Nothing here panics on a machine without GPUs: a driver that does not initialise is
//! reported as "no CUDA devices" with the driver's reason. (The CUDA build links `libcuda.so.1`
//! dynamically, as candle requires; without that library the binary cannot start at all, which
//! the loader reports before `main`.) Each failed measurement becomes a note, not an error.

use std::ffi::c_int;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DriverError, PinnedHostSlice};

use super::probe::{BenchResult, PeerAccess};
use super::Device;
use crate::device::DeviceName;
use crate::units::{ByteSize, GIB, MIB};

/// What the driver reports, without measuring anything.
pub struct CudaProbe {
    pub devices: Vec<Device>,
    pub peers: Vec<PeerAccess>,
    pub notes: Vec<String>,
    contexts: Vec<Arc<CudaContext>>,
}

/// Lists the CUDA devices. Never fails: problems become notes.
pub fn probe() -> CudaProbe {
    // cudarc reports driver failures as `DriverError`s; the unwind guard is for library
    // versions or link modes that panic instead (cudarc's dynamic-loading panics when the
    // library is missing).
    match std::panic::catch_unwind(probe_inner) {
        Ok(p) => p,
        Err(_) => CudaProbe {
            devices: vec![],
            peers: vec![],
            notes: vec!["no CUDA devices: the CUDA driver library could not be loaded".into()],
            contexts: vec![],
        },
    }
}

fn probe_inner() -> CudaProbe {
    let mut out = CudaProbe {
        devices: vec![],
        peers: vec![],
        notes: vec![],
        contexts: vec![],
    };
    let count = match CudaContext::device_count() {
        Ok(n) => n.max(0) as usize,
        Err(e) => {
            out.notes.push(format!(
                "no CUDA devices: the CUDA driver did not initialise ({})",
                describe(e)
            ));
            return out;
        }
    };
    if count == 0 {
        out.notes
            .push("no CUDA devices: the driver reports none".into());
    }
    for i in 0..count {
        match device(i) {
            Ok((dev, ctx)) => {
                out.devices.push(dev);
                out.contexts.push(ctx);
            }
            Err(e) => out
                .notes
                .push(format!("cuda:{i}: skipped: {}", describe(e))),
        }
    }
    for a in 0..out.contexts.len() {
        for b in 0..out.contexts.len() {
            if a == b {
                continue;
            }
            let mut can: c_int = 0;
            // SAFETY: both CUdevice handles come from live contexts; `can` is a valid out-pointer.
            let r = unsafe {
                sys::cuDeviceCanAccessPeer(
                    &mut can,
                    out.contexts[a].cu_device(),
                    out.contexts[b].cu_device(),
                )
            };
            let (from, to) = (out.devices[a].name, out.devices[b].name);
            match r.result() {
                Ok(()) => out.peers.push(PeerAccess {
                    from,
                    to,
                    possible: can != 0,
                }),
                Err(e) => out.notes.push(format!(
                    "{from} → {to}: peer access query failed: {}",
                    describe(e)
                )),
            }
        }
    }
    out
}

fn device(i: usize) -> Result<(Device, Arc<CudaContext>), DriverError> {
    let ctx = CudaContext::new(i)?;
    let label = ctx.name()?;
    let (major, minor) = ctx.compute_capability()?;
    let (free, total) = ctx.mem_get_info()?;
    let dev = Device {
        name: DeviceName::Cuda(i as u32),
        memory: ByteSize(total as u64),
        free: Some(ByteSize(free as u64)),
        tflops_bf16: None,
        label: Some(label),
        compute_capability: Some((major.max(0) as u32, minor.max(0) as u32)),
    };
    Ok((dev, ctx))
}

/// `CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)`.
fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Bytes per copy and repetitions for the copy benchmarks (256 MiB × 8 = 2 GiB per number).
const COPY_BYTES: usize = 256 * MIB as usize;
const COPY_REPS: usize = 8;
/// Matrix size for the bf16 product (as in anchors.md: 8192³).
const MATMUL_N: usize = 8192;
const MATMUL_REPS: usize = 20;

/// Measures copy and compute rates for every device found by [`probe`].
pub fn bench(p: &CudaProbe) -> (BenchResult, Vec<String>) {
    let mut r = BenchResult::default();
    let mut notes = Vec::new();
    for (dev, ctx) in p.devices.iter().zip(&p.contexts) {
        let name = dev.name;
        if dev.free.is_some_and(|f| f.0 < 2 * GIB) {
            notes.push(format!("{name}: less than 2 GiB free; benchmarks skipped"));
            continue;
        }
        match host_copies(ctx) {
            Ok((h2d_pinned, h2d_pageable, d2h_pinned, note)) => {
                r.h2d_pinned.push((name, h2d_pinned));
                r.h2d_pageable.push((name, h2d_pageable));
                r.d2h_pinned.push((name, d2h_pinned));
                notes.push(format!("{name}: {note}"));
            }
            Err(e) => notes.push(format!("{name}: host copy benchmark failed: {e}")),
        }
        match staged_upload(ctx.ordinal()) {
            Ok(g) => r.h2d_staged.push((name, g)),
            Err(e) => notes.push(format!("{name}: staged upload benchmark failed: {e}")),
        }
        match copy_beside_link(ctx) {
            Ok((copy, link)) => notes.push(format!(
                "{name}: host memory copy {copy:.1} GB/s while the link copied {link:.1} GB/s \
                 from page-locked memory (a staged upload needs both for every byte)"
            )),
            Err(e) => notes.push(format!("{name}: copy-beside-link benchmark failed: {e}")),
        }
        match matmul_tflops(ctx.ordinal()) {
            Ok(t) => r.tflops.push((name, t)),
            Err(e) => notes.push(format!("{name}: bf16 matrix-product benchmark failed: {e}")),
        }
    }
    if !r.h2d_staged.is_empty() {
        notes.push(
            "host→GPU: `mgpu run` uploads resident weights staged (tensors copied on all cores \
             through two reused 128 MiB page-locked buffers; only tensors under 1 MiB take a \
             plain pageable copy) and streams units from page-locked host homes at the pinned \
             rate, which plans use for the cpu → GPU link"
                .into(),
        );
    }
    for pa in p.peers.iter().filter(|pa| pa.possible) {
        let find = |n| p.devices.iter().position(|d| d.name == n);
        let (Some(a), Some(b)) = (find(pa.from), find(pa.to)) else {
            continue;
        };
        match peer_copy(&p.contexts[a], &p.contexts[b]) {
            Ok(g) => r.peer.push((pa.from, pa.to, g)),
            Err(e) => notes.push(format!(
                "{} → {}: peer copy benchmark failed: {}",
                pa.from,
                pa.to,
                describe(e)
            )),
        }
    }
    (r, notes)
}

/// GB/s of `reps` copies issued by `copy` on `stream`, after one warm-up copy.
fn time_copies(
    stream: &Arc<CudaStream>,
    bytes: usize,
    mut copy: impl FnMut() -> Result<(), DriverError>,
) -> Result<f64, DriverError> {
    copy()?;
    stream.synchronize()?;
    let t = Instant::now();
    for _ in 0..COPY_REPS {
        copy()?;
    }
    stream.synchronize()?;
    Ok((bytes * COPY_REPS) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

type CopyBuffers = (Arc<CudaStream>, CudaSlice<u8>, PinnedHostSlice<u8>);

/// A new stream of `ctx`, a device buffer and a filled page-locked host buffer of
/// [`COPY_BYTES`] each, for the copy benchmarks.
fn copy_buffers(ctx: &Arc<CudaContext>) -> Result<CopyBuffers, DriverError> {
    let stream = ctx.new_stream()?;
    let dev: CudaSlice<u8> = stream.alloc_zeros::<u8>(COPY_BYTES)?;
    // SAFETY: the pinned buffer is written (filled) before any copy reads it.
    let mut pinned =
        unsafe { ctx.alloc_pinned_with_flags::<u8>(COPY_BYTES, sys::CU_MEMHOSTALLOC_PORTABLE) }?;
    pinned.as_mut_slice()?.fill(1);
    Ok((stream, dev, pinned))
}

/// (pinned host→GPU, pageable host→GPU, pinned GPU→host) in GB/s, and a note with the
/// host→GPU rate from the other kind of page-locked memory. "Pinned" host→GPU is measured
/// from memory obtained the way the engine pins host homes (`MGPU_PIN`, registered by default:
/// `exec::cuda::h2d_gbps`), since plans use it as the rate units stream at.
fn host_copies(ctx: &Arc<CudaContext>) -> Result<(f64, f64, f64, String), String> {
    use crate::exec::cuda::{h2d_gbps, PinMode};
    let mode = PinMode::from_env();
    let h2d_pinned = h2d_gbps(ctx, COPY_BYTES, COPY_REPS, mode).map_err(|e| e.to_string())?;
    let (other, label) = match mode {
        PinMode::Register => (PinMode::Alloc, ("registered", "cuMemHostAlloc")),
        PinMode::Alloc => (PinMode::Register, ("cuMemHostAlloc", "registered")),
    };
    let note = match h2d_gbps(ctx, COPY_BYTES, COPY_REPS, other) {
        Ok(g) => format!(
            "pinned host→GPU {h2d_pinned:.1} GB/s from {} memory (as host homes are pinned, \
             MGPU_PIN); {g:.1} GB/s from {} memory",
            label.0, label.1
        ),
        Err(e) => format!("pinned host→GPU from {} memory: {e}", label.1),
    };
    let d = describe;
    let (stream, mut dev, mut pinned) = copy_buffers(ctx).map_err(d)?;
    let pageable = vec![1u8; COPY_BYTES];
    let h2d_pageable = time_copies(&stream, COPY_BYTES, || {
        stream.memcpy_htod(&pageable, &mut dev)
    })
    .map_err(d)?;
    let d2h_pinned = time_copies(&stream, COPY_BYTES, || {
        stream.memcpy_dtoh(&dev, &mut pinned)
    })
    .map_err(d)?;
    Ok((h2d_pinned, h2d_pageable, d2h_pinned, note))
}

/// The host's memory-copy rate on every core ([`super::cpu_bench::host_copy_gbps`]) measured
/// while the link copies from page-locked memory, and the link's rate meanwhile (GB/s both).
/// A staged upload ([`staged_upload`]) needs both for each byte (copied into a staging buffer,
/// then read by the DMA), and both use the host's memory, so together they bound it.
fn copy_beside_link(ctx: &Arc<CudaContext>) -> Result<(f64, f64), String> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const PASSES: usize = 16;
    let bytes = super::cpu_bench::COPY_BYTES;
    let d = describe;
    let (stream, mut dev, pinned) = copy_buffers(ctx).map_err(d)?;
    // both written first, so no page faults are timed
    let src = vec![0x5au8; bytes];
    let mut dst = vec![1u8; bytes];
    let stop = AtomicBool::new(false);
    let copies = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let link = scope.spawn(|| -> Result<(), DriverError> {
            ctx.bind_to_thread()?;
            while !stop.load(Ordering::Relaxed) {
                stream.memcpy_htod(&pinned, &mut dev)?;
                stream.synchronize()?;
                copies.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        // the link's copies run before the host's are timed, and through all of them
        while copies.load(Ordering::Relaxed) < 2 && !link.is_finished() {
            std::thread::yield_now();
        }
        let (c0, t0) = (copies.load(Ordering::Relaxed), Instant::now());
        for _ in 0..PASSES {
            super::cpu_bench::parallel_copy(&mut dst, &src);
            std::hint::black_box(&dst);
        }
        let secs = t0.elapsed().as_secs_f64();
        let c1 = copies.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        link.join()
            .map_err(|_| "the copying thread failed".to_string())?
            .map_err(d)?;
        Ok((
            (PASSES * bytes) as f64 / secs / 1e9,
            ((c1 - c0) * COPY_BYTES) as f64 / secs / 1e9,
        ))
    })
}

/// Bytes per tensor of the staged-upload benchmark: a FLUX linear weight (3072 × 12288 bf16
/// is 72 MiB), 14 of them (1 GiB) per number.
const STAGED_TENSOR: usize = 72 * MIB as usize;
const STAGED_COUNT: usize = 14;

/// GB/s of uploading resident weights as `mgpu run` does (`exec::cuda::upload`).
fn staged_upload(ordinal: usize) -> candle_core::Result<f64> {
    let dev = candle_core::Device::new_cuda_with_stream(ordinal)?;
    crate::exec::cuda::upload::measure_gbps(&dev, STAGED_TENSOR, STAGED_COUNT)
}

/// Turns on direct access between two GPUs in both directions, for memory from `cuMemAlloc`
/// (peer access of the contexts) *and* from the stream-ordered pools (`cuMemAllocAsync`, what
/// cudarc and candle allocate from): `cuCtxEnablePeerAccess` does not cover pool memory, whose
/// access is granted per pool. Without the pool grant, `cuMemcpyPeerAsync` between pool
/// allocations still works but is staged through host memory: 37 GB/s instead of 390 GB/s
/// over an H100 pair's NVLink (measured 2026-11-26, benches/RESULTS.md).
/// Returns `Ok(false)` when the hardware has no peer path (copies then stay staged).
pub fn enable_peer(a: &Arc<CudaContext>, b: &Arc<CudaContext>) -> Result<bool, DriverError> {
    let mut can = 0i32;
    // SAFETY: a plain driver query on two valid devices.
    unsafe { sys::cuDeviceCanAccessPeer(&mut can, a.cu_device(), b.cu_device()) }.result()?;
    if can == 0 {
        return Ok(false);
    }
    for (x, y) in [(a, b), (b, a)] {
        x.bind_to_thread()?;
        // SAFETY: enabling access from the current context `x` to the live context `y`.
        let r = unsafe { sys::cuCtxEnablePeerAccess(y.cu_ctx(), 0) };
        if r != sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED {
            r.result()?;
        }
        // Device `y` may read and write `x`'s default pool.
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let desc = sys::CUmemAccessDesc {
            location: sys::CUmemLocation {
                type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
                id: y.cu_device(),
            },
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: valid out-pointer; `desc` lives across the call; count 1 matches.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, x.cu_device()).result()?;
            sys::cuMemPoolSetAccess(pool, &desc, 1).result()?;
        }
    }
    Ok(true)
}

/// GB/s of copies from `src`'s memory into `dst`'s, issued on a stream of `dst`.
fn peer_copy(src: &Arc<CudaContext>, dst: &Arc<CudaContext>) -> Result<f64, DriverError> {
    enable_peer(src, dst)?;
    let src_stream = src.new_stream()?;
    let from: CudaSlice<u8> = src_stream.alloc_zeros::<u8>(COPY_BYTES)?;
    src_stream.synchronize()?;
    let stream = dst.new_stream()?;
    let mut to: CudaSlice<u8> = stream.alloc_zeros::<u8>(COPY_BYTES)?;
    time_copies(&stream, COPY_BYTES, || stream.memcpy_dtod(&from, &mut to))
}

/// bf16 TFLOP/s of an N×N×N product through candle (cuBLAS), as the models will run it.
fn matmul_tflops(ordinal: usize) -> candle_core::Result<f64> {
    use candle_core::{DType, Tensor};
    let dev = candle_core::Device::new_cuda(ordinal)?;
    let a = Tensor::randn(0f32, 1f32, (MATMUL_N, MATMUL_N), &dev)?.to_dtype(DType::BF16)?;
    let b = Tensor::randn(0f32, 1f32, (MATMUL_N, MATMUL_N), &dev)?.to_dtype(DType::BF16)?;
    drop(a.matmul(&b)?);
    dev.synchronize()?;
    let t = Instant::now();
    for _ in 0..MATMUL_REPS {
        drop(a.matmul(&b)?);
    }
    dev.synchronize()?;
    let flops = 2.0 * (MATMUL_N as f64).powi(3) * MATMUL_REPS as f64;
    Ok(flops / t.elapsed().as_secs_f64() / 1e12)
}
