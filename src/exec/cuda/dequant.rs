//! GGML blocks → bf16 on the compute GPU (`src/exec/kernels/dequant.cu`): the launcher the
//! backend calls per fetch, and the check `mgpu bench --check-fp8` runs, which compares every
//! kernel's bytes with the CPU dequantisation (`weights::gguf::dequant`, rounded to bf16).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaStream};
use candle_core::Device;

use super::super::engine::EngineError;
use super::{candle_err, cuda_err};
use crate::weights::DType as W;

/// PTX of `src/exec/kernels/dequant.cu`, compiled by build.rs.
pub(super) const DEQUANT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/dequant.ptx"));

/// Every GGML block type the kernels handle, in the order the checks go through them.
pub(super) const BLOCK_TYPES: [W; 10] = [
    W::Q8_0,
    W::Q4_0,
    W::Q4_1,
    W::Q5_0,
    W::Q5_1,
    W::Q2_K,
    W::Q3_K,
    W::Q4_K,
    W::Q5_K,
    W::Q6_K,
];

/// The kernel-name stem of a GGML block type (`None`: not a block type).
pub(super) fn stem(q: W) -> Option<&'static str> {
    Some(match q {
        W::Q4_0 => "q4_0",
        W::Q4_1 => "q4_1",
        W::Q5_0 => "q5_0",
        W::Q5_1 => "q5_1",
        W::Q8_0 => "q8_0",
        W::Q2_K => "q2_k",
        W::Q3_K => "q3_k",
        W::Q4_K => "q4_k",
        W::Q5_K => "q5_k",
        W::Q6_K => "q6_k",
        _ => return None,
    })
}

/// Which kernel of a type: the tuned Q8_0 kernels or the generic ones (every type, Q8_0
/// included, so the check can compare the two).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kernel {
    /// The one a fetch uses: Q8_0's tuned kernels, the generic ones for the other types.
    Default,
    /// The generic kernel (`dequant_x8`/`dequant_x1` over a per-type functor).
    Generic,
}

/// Launches the dequantisation of `nblocks` blocks of `q` at `src` into bf16 at `dst` on
/// `stream`: 8 values per thread when `dst` is 16-byte aligned (always, for slot regions),
/// else one per thread; the same values either way.
pub(super) fn dequant(
    device: &Device,
    stream: &Arc<CudaStream>,
    q: W,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    nblocks: u64,
) -> Result<(), String> {
    launch(device, stream, q, Kernel::Default, src, dst, nblocks)
}

fn launch(
    device: &Device,
    stream: &Arc<CudaStream>,
    q: W,
    kernel: Kernel,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    nblocks: u64,
) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    let stem = stem(q).ok_or_else(|| format!("{q} is not a GGML block type"))?;
    let cdev = device.as_cuda_device().map_err(|e| e.to_string())?;
    let wide = dst.is_multiple_of(16);
    let elems = q.block().0;
    let name = match (q, kernel, wide) {
        (W::Q8_0, Kernel::Default, true) => "dequant_q8_0_bf16_x8".to_string(),
        (W::Q8_0, Kernel::Default, false) => "dequant_q8_0_bf16".to_string(),
        (W::Q8_0, Kernel::Generic, w) => format!("dequant_q8_0_generic_bf16_{}", x(w)),
        (_, _, w) => format!("dequant_{stem}_bf16_{}", x(w)),
    };
    let per_block = if wide { elems / 8 } else { elems };
    let f = cdev
        .get_or_load_custom_func(&name, "mgpu_dequant", DEQUANT_PTX)
        .map_err(|e| e.to_string())?;
    if nblocks == 0 {
        return Ok(());
    }
    let n = nblocks * per_block;
    let threads = 256u32;
    let grid = u32::try_from(n.div_ceil(threads as u64))
        .map_err(|_| format!("{n} threads are too many for one launch"))?;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&src).arg(&dst).arg(&nblocks);
    // SAFETY: src holds nblocks whole blocks of `q` and dst room for their bf16 values inside
    // live device allocations (slot regions sized by the layout; dst 16-byte aligned for the
    // 8-wide kernels, checked above); the kernel reads and writes only those ranges.
    unsafe { b.launch(cfg) }
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

fn x(wide: bool) -> &'static str {
    if wide {
        "x8"
    } else {
        "x1"
    }
}

/// Deterministic bytes (a 64-bit LCG's high byte): every bit pattern of scales and quants
/// turns up over a few thousand blocks, NaN and infinite f16 scales included.
pub(super) fn pseudo_random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect()
}

/// Dequantises blocks of every GGML type through every kernel that handles it (8 values per
/// thread and one per thread; Q8_0's tuned kernels and the generic one) and compares the bf16
/// bytes with the CPU's (`weights::convert::to_f32`, rounded to nearest even). Q8_0 blocks
/// carry every one of the 65 536 f16 scales with q cycling through all 256 byte values; the
/// other types 8 192 blocks of pseudo-random bytes. A NaN may come back as another NaN pattern
/// (the CPU keeps the payload, CUDA's rounding gives the canonical NaN: no real file has one)
/// and counts as equal. Descriptions of the differences, empty if none.
pub fn check_dequant(device: &Device) -> Result<Vec<String>, EngineError> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let cdev = device.as_cuda_device().map_err(candle_err)?;
    let stream = cdev.cuda_stream();
    let mut fails = Vec::new();
    for (t, q) in BLOCK_TYPES.into_iter().enumerate() {
        let (elems, bytes) = q.block();
        let (elems, bytes) = (elems as usize, bytes as usize);
        let blocks = if q == W::Q8_0 {
            let mut b = Vec::with_capacity(65536 * 34);
            for s in 0..65536usize {
                b.extend_from_slice(&(s as u16).to_le_bytes());
                b.extend((0..32).map(|i| ((s * 7 + i * 13) % 256) as u8));
            }
            b
        } else {
            pseudo_random_bytes(8192 * bytes, 0x9e37_79b9 + t as u64)
        };
        let nblocks = blocks.len() / bytes;
        let numel = nblocks * elems;
        let want: Vec<u16> = crate::weights::convert::f32_to_bf16(
            &crate::weights::convert::to_f32(q, &blocks, numel),
        )
        .into_iter()
        .map(|v| v.to_bits())
        .collect();
        let src = stream
            .clone_htod(&blocks)
            .map_err(cuda_err("uploading the blocks"))?;
        let src_ptr = src.device_ptr(&stream).0;
        let kernels: &[Kernel] = if q == W::Q8_0 {
            &[Kernel::Default, Kernel::Generic]
        } else {
            &[Kernel::Default]
        };
        for &kernel in kernels {
            for x1 in [false, true] {
                // SAFETY: fully written by the kernel before it is read back.
                let dst = unsafe { stream.alloc::<u16>(numel + 8) }
                    .map_err(cuda_err("allocating device memory"))?;
                // The one-per-thread kernels are the fallback for a destination not 16-byte
                // aligned.
                let dst_ptr = dst.device_ptr(&stream).0 + if x1 { 2 } else { 0 };
                launch(device, &stream, q, kernel, src_ptr, dst_ptr, nblocks as u64).map_err(
                    |m| EngineError::Fetch {
                        unit: format!("{q} check"),
                        link: "cuda".into(),
                        message: m,
                    },
                )?;
                stream.synchronize().map_err(cuda_err("dequantising"))?;
                let got = stream.clone_dtoh(&dst).map_err(cuda_err("reading back"))?;
                let got = &got[usize::from(x1)..usize::from(x1) + numel];
                let nan = |v: u16| v & 0x7fff > 0x7f80;
                if let Some(i) =
                    (0..numel).find(|&i| got[i] != want[i] && !(nan(got[i]) && nan(want[i])))
                {
                    let b = i / elems;
                    fails.push(format!(
                        "{q} → bf16 ({kernel:?} kernel, {} per thread): value {i} (block {b}: {:02x?}) is {:#06x}, the CPU gives {:#06x}",
                        if x1 { 1 } else { 8 },
                        &blocks[b * bytes..(b + 1) * bytes],
                        got[i],
                        want[i]
                    ));
                }
            }
        }
    }
    Ok(fails)
}
