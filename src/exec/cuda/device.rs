//! Device-wide helpers of the CUDA backend: the page-locked copy-rate measurement, the memory
//! pool setting that keeps freed activations mapped and the fp8 widening kernel (GGML blocks:
//! [`super::dequant`]).

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::Device;

use super::super::engine::EngineError;
use super::{candle_err, cuda_err};

/// Host→device GB/s from page-locked memory obtained as host homes are (`MGPU_PIN`: registered
/// by default), `bytes` per copy, `reps` copies: the link rate of host-homed units.
pub fn measure_h2d_gbps(device: &Device, bytes: usize, reps: usize) -> Result<f64, EngineError> {
    let cdev = device.as_cuda_device().map_err(candle_err)?;
    let ctx = cdev.cuda_stream().context().clone();
    super::pinned::h2d_gbps(&ctx, bytes, reps, super::PinMode::from_env())
}

/// Keeps freed device memory in the stream-ordered pool instead of returning it to the driver
/// at every synchronisation (the default release threshold is 0), so a step's activations are
/// not unmapped and re-mapped every step.
pub fn keep_pool_memory(device: &Device) -> Result<(), EngineError> {
    let cdev = device.as_cuda_device().map_err(candle_err)?;
    let ctx = cdev.cuda_stream().context().clone();
    ctx.bind_to_thread()
        .map_err(cuda_err("binding the context"))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold: u64 = u64::MAX;
    // SAFETY: plain driver calls with valid out-pointers on a live device.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(cuda_err("reading the memory pool"))?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(cuda_err("setting the pool's release threshold"))?;
    }
    Ok(())
}

/// PTX of `src/exec/kernels/widen.cu`, compiled by build.rs.
const WIDEN_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/widen.ptx"));

/// The CPU's fp8 → f32 tables (e4m3fn at 0, e5m2 at 256), as the widening kernel reads them:
/// the same values, NaN bits included, as `weights::lora::math::decode`.
pub(super) fn fp8_tables() -> Vec<f32> {
    use crate::weights::{lora::math, DType as W};
    let patterns: Vec<u8> = (0..=255u8).collect();
    let mut t = vec![0f32; 512];
    math::decode(W::F8_E4M3, &patterns, None, &mut t[..256]);
    math::decode(W::F8_E5M2, &patterns, None, &mut t[256..]);
    t
}

/// Launches the fp8 → `out` widening of `n` values at `src` into `dst` on `stream`:
/// `table` points at the 256 f32 values of the fp8 type ([`fp8_tables`]), `scale` is the
/// ComfyUI scale (multiplied in f32) when given.
#[allow(clippy::too_many_arguments)]
pub(super) fn widen_fp8(
    device: &Device,
    stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    n: u64,
    table: sys::CUdeviceptr,
    scale: Option<f32>,
    out: candle_core::DType,
) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    // 8 values per thread for 2-byte outputs when both ends are aligned (slot regions are);
    // the same bytes either way (`check_widen_fp8` runs both).
    let wide = src.is_multiple_of(8) && dst.is_multiple_of(16);
    let (name, per_thread) = match (out, wide) {
        (candle_core::DType::BF16, true) => ("widen_fp8_bf16_x8", 8),
        (candle_core::DType::F16, true) => ("widen_fp8_f16_x8", 8),
        (candle_core::DType::BF16, false) => ("widen_fp8_bf16", 1),
        (candle_core::DType::F16, false) => ("widen_fp8_f16", 1),
        (candle_core::DType::F32, _) => ("widen_fp8_f32", 1),
        (d, _) => return Err(format!("fp8 cannot be widened to {d:?} on the GPU")),
    };
    let cdev = device.as_cuda_device().map_err(|e| e.to_string())?;
    let f = cdev
        .get_or_load_custom_func(name, "mgpu_widen", WIDEN_PTX)
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(());
    }
    let threads = 256u32;
    let grid = u32::try_from(n.div_ceil(per_thread).div_ceil(threads as u64))
        .map_err(|_| format!("{n} values are too many for one launch"))?;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let s = scale.unwrap_or(1.0);
    let scaled = i32::from(scale.is_some());
    let mut b = stream.launch_builder(&f);
    b.arg(&src)
        .arg(&dst)
        .arg(&table)
        .arg(&s)
        .arg(&scaled)
        .arg(&n);
    // SAFETY: src holds n fp8 bytes and dst n values of `out` inside live slot regions (sized
    // by the layout); table holds 256 f32 values; the kernel reads and writes only those.
    unsafe { b.launch(cfg) }
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Widens every fp8 bit pattern of both types (repeated over several kernel blocks), without
/// and with scales (tiny, odd, negative), to bf16, f16 and f32 with the kernel and compares
/// the bytes with the CPU widening (`exec::unit::widen_fp8`). Returns one line per
/// combination that differs (empty: bit-identical).
pub fn check_widen_fp8(device: &Device) -> Result<Vec<String>, EngineError> {
    use crate::weights::DType as W;
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let cdev = device.as_cuda_device().map_err(candle_err)?;
    let stream = cdev.cuda_stream();
    let tables = stream
        .clone_htod(&fp8_tables())
        .map_err(cuda_err("uploading the fp8 tables"))?;
    let tables_ptr = tables.device_ptr(&stream).0;
    let patterns: Vec<u8> = (0..4099u32).map(|i| (i * 7 % 256) as u8).collect();
    let src = stream
        .clone_htod(&patterns)
        .map_err(cuda_err("uploading the patterns"))?;
    let src_ptr = src.device_ptr(&stream).0;
    let mut fails = Vec::new();
    // From the start of the buffer (8 values per thread for bf16 and f16, a partial last
    // group) and from its second byte (not 8-byte aligned: one value per thread).
    for skip in [0usize, 1] {
        let patterns = &patterns[skip..];
        let src_ptr = src_ptr + skip as u64;
        let n = patterns.len();
        for (fp8, table_off) in [(W::F8_E4M3, 0u64), (W::F8_E5M2, 256 * 4)] {
            for scale in crate::exec::unit::FP8_CHECK_SCALES {
                for out in [
                    candle_core::DType::BF16,
                    candle_core::DType::F16,
                    candle_core::DType::F32,
                ] {
                    let bytes = n * out.size_in_bytes();
                    // SAFETY: fully written by the kernel before it is read back.
                    let dst = unsafe { stream.alloc::<u8>(bytes) }
                        .map_err(cuda_err("allocating device memory"))?;
                    let dst_ptr = dst.device_ptr(&stream).0;
                    widen_fp8(
                        device,
                        &stream,
                        src_ptr,
                        dst_ptr,
                        n as u64,
                        tables_ptr + table_off,
                        scale,
                        out,
                    )
                    .map_err(|m| EngineError::Fetch {
                        unit: "fp8 check".into(),
                        link: "cuda".into(),
                        message: m,
                    })?;
                    stream.synchronize().map_err(cuda_err("widening"))?;
                    let got = stream.clone_dtoh(&dst).map_err(cuda_err("reading back"))?;
                    let want =
                        crate::exec::unit::widen_fp8(fp8, patterns, scale, out).unwrap_or_default();
                    if got != want {
                        let w = out.size_in_bytes();
                        let first = (0..n)
                            .find(|&i| got[i * w..(i + 1) * w] != want[i * w..(i + 1) * w])
                            .unwrap_or(0);
                        fails.push(format!(
                        "{fp8} × {scale:?} → {out:?} (from byte {skip}): value {first} (pattern {:#04x}) is {:02x?}, the CPU gives {:02x?}",
                        patterns[first],
                        &got[first * w..(first + 1) * w],
                        &want[first * w..(first + 1) * w]
                    ));
                    }
                }
            }
        }
    }
    Ok(fails)
}
