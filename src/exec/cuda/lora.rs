//! `lora_mode = "on_dequant"` on a GPU: a patched GGML tensor's LoRA terms, uploaded once
//! beside its streamed unit, and the kernel that dequantises its blocks and adds the terms in
//! one pass (`dequant_lora_<type>_bf16` in `src/exec/kernels/dequant.cu`), with the CPU's
//! f32 operations in the CPU's order: the bf16 bytes are those `bake` writes at load
//! (`--check-fp8` compares them).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr};
use candle_core::Device;

use super::super::engine::EngineError;
use super::cuda_err;
use crate::weights::lora::{DeltaKind, DeltaTerm, TensorDelta};
use crate::weights::DType as W;

/// One term as the kernel reads it (`struct LoraTerm` in dequant.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoraTerm {
    up: u64,
    down: u64,
    row0: u64,
    row1: u64,
    /// 0: a full difference in `up`.
    rank: u32,
    scale: f32,
}

const TERM_BYTES: usize = std::mem::size_of::<LoraTerm>();
const _: () = assert!(TERM_BYTES == 40);

/// A tensor's terms on the compute device.
pub(super) struct DeviceTerms {
    _factors: CudaSlice<f32>,
    _terms: CudaSlice<u8>,
    /// The `LoraTerm` array.
    ptr: sys::CUdeviceptr,
    n: u32,
    /// Values per row of the tensor.
    cols: u64,
}

/// Uploads `delta`'s factors (f32, as loaded) and its term table on `stream`.
pub(super) fn upload(
    stream: &Arc<CudaStream>,
    delta: &TensorDelta,
) -> Result<DeviceTerms, EngineError> {
    let mut data: Vec<f32> = Vec::new();
    let mut offsets = Vec::with_capacity(delta.terms.len());
    for t in &delta.terms {
        let up = data.len();
        let down = match &t.kind {
            DeltaKind::LowRank { up: u, down: d, .. } => {
                data.extend_from_slice(u);
                let at = data.len();
                data.extend_from_slice(d);
                at
            }
            DeltaKind::Full { diff } => {
                data.extend_from_slice(diff);
                up
            }
        };
        offsets.push((up, down));
    }
    if data.is_empty() {
        data.push(0.0);
    }
    let factors = stream
        .clone_htod(&data)
        .map_err(cuda_err("uploading LoRA factors"))?;
    let base = factors.device_ptr(stream).0;
    let mut table = Vec::with_capacity(delta.terms.len() * TERM_BYTES);
    for (t, &(up, down)) in delta.terms.iter().zip(&offsets) {
        let term = LoraTerm {
            up: base + 4 * up as u64,
            down: base + 4 * down as u64,
            row0: t.rows.start,
            row1: t.rows.end,
            rank: match t.kind {
                DeltaKind::LowRank { rank, .. } => rank as u32,
                DeltaKind::Full { .. } => 0,
            },
            scale: t.scale,
        };
        for v in [term.up, term.down, term.row0, term.row1] {
            table.extend_from_slice(&v.to_le_bytes());
        }
        table.extend_from_slice(&term.rank.to_le_bytes());
        table.extend_from_slice(&term.scale.to_le_bytes());
    }
    if table.is_empty() {
        table.resize(TERM_BYTES, 0);
    }
    let terms = stream
        .clone_htod(&table)
        .map_err(cuda_err("uploading LoRA terms"))?;
    let ptr = terms.device_ptr(stream).0;
    Ok(DeviceTerms {
        _factors: factors,
        _terms: terms,
        ptr,
        n: delta.terms.len() as u32,
        cols: delta.cols,
    })
}

/// Launches the dequantisation of `nblocks` blocks of `q` at `src` into bf16 at `dst` with
/// `terms` added, on `stream`. `dst` must be 16-byte aligned (slot regions are) and rows
/// whole groups of 8 values (GGML rows are whole blocks).
pub(super) fn launch(
    device: &Device,
    stream: &Arc<CudaStream>,
    q: W,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    nblocks: u64,
    terms: &DeviceTerms,
) -> Result<(), String> {
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    let stem = super::dequant::stem(q).ok_or_else(|| format!("{q} is not a GGML block type"))?;
    if !dst.is_multiple_of(16) || !terms.cols.is_multiple_of(8) {
        return Err(format!(
            "{q} with LoRA terms: the destination must be 16-byte aligned and rows whole groups of 8 values ({} per row)",
            terms.cols
        ));
    }
    let cdev = device.as_cuda_device().map_err(|e| e.to_string())?;
    let f = cdev
        .get_or_load_custom_func(
            &format!("dequant_lora_{stem}_bf16"),
            "mgpu_dequant",
            super::dequant::DEQUANT_PTX,
        )
        .map_err(|e| e.to_string())?;
    let numel = nblocks * q.block().0;
    if numel == 0 {
        return Ok(());
    }
    if terms.cols == 0 || !numel.is_multiple_of(terms.cols) {
        return Err(format!(
            "{numel} values are not whole rows of {} (LoRA terms of another tensor?)",
            terms.cols
        ));
    }
    let rows = numel / terms.cols;
    // Tiles of 64 rows × 128 columns (`dequant_lora_tile` in dequant.cu).
    let tiles = |n: u64, t: u64| u32::try_from(n.div_ceil(t));
    let (Ok(gx), Ok(gy)) = (tiles(terms.cols, 128), tiles(rows, 64)) else {
        return Err(format!(
            "{rows} × {} is too large for one launch",
            terms.cols
        ));
    };
    if gy > 65535 {
        return Err(format!("{rows} rows are too many for one launch"));
    }
    let cfg = LaunchConfig {
        grid_dim: (gx, gy, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = stream.launch_builder(&f);
    b.arg(&src)
        .arg(&dst)
        .arg(&rows)
        .arg(&terms.cols)
        .arg(&terms.ptr)
        .arg(&terms.n);
    // SAFETY: src holds nblocks whole blocks of `q`, dst room for their bf16 values (16-byte
    // aligned, checked above), `terms` a live table of `n` terms whose factors cover the rows
    // and columns of this tensor (`TensorDelta::check_shape` at load); the kernel reads and
    // writes only those ranges.
    unsafe { b.launch(cfg) }
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Compares the kernel with the CPU (`weights::convert::to_f32`, `TensorDelta::apply_f32`,
/// rounding to bf16) for every GGML type: 70 rows (a partial tile) of pseudo-random values,
/// 768 per row for the K-quants, 608 (a partial tile) for the 32-value types, with three terms
/// (rank 20 over rows 3–39: a full and a partial chunk of 16 ranks; a full difference over
/// rows 10–19; rank 1 over every row). Descriptions of the differences, empty if none.
pub fn check(device: &Device) -> Result<Vec<String>, EngineError> {
    let cdev = device.as_cuda_device().map_err(super::candle_err)?;
    let stream = cdev.cuda_stream();
    let mut fails = Vec::new();
    for (t, q) in super::dequant::BLOCK_TYPES.into_iter().enumerate() {
        let (elems, bytes) = q.block();
        let (rows, cols) = (70u64, if elems == 256 { 768u64 } else { 608 });
        let seed = 0x2545_f491_4f6c_dd1d + 3 * t as u64;
        let delta = TensorDelta {
            name: "check".into(),
            rows,
            cols,
            terms: vec![
                DeltaTerm::pseudo_random(3..40, cols, 20, 0.75, 0.3, seed),
                DeltaTerm::pseudo_random(10..20, cols, 0, 1.5, 0.01, seed + 1),
                DeltaTerm::pseudo_random(0..rows, cols, 1, -0.125, 1.0, seed + 2),
            ],
        };
        let terms = upload(&stream, &delta)?;
        let numel = (rows * cols) as usize;
        let nblocks = numel as u64 / elems;
        let mut blocks =
            super::dequant::pseudo_random_bytes((nblocks * bytes) as usize, 0x51ed_270b + t as u64);
        // Finite, small f16 scales (a NaN weight would hide the terms): clear the sign and
        // the top exponent bit of each (for types with one scale the second pair is data).
        let scale_at: &[usize] = match q {
            W::Q8_0 | W::Q4_0 | W::Q4_1 | W::Q5_0 | W::Q5_1 => &[0, 2],
            W::Q2_K => &[80, 82],
            W::Q3_K => &[108],
            W::Q4_K | W::Q5_K => &[0, 2],
            _ => &[208],
        };
        for b in blocks.chunks_exact_mut(bytes as usize) {
            for &at in scale_at {
                b[at + 1] &= 0x3f;
            }
        }
        let mut v = crate::weights::convert::to_f32(q, &blocks, numel);
        delta.apply_f32(&mut v).map_err(|m| EngineError::Fetch {
            unit: format!("{q} LoRA check"),
            link: "cuda".into(),
            message: m,
        })?;
        let want: Vec<u16> = crate::weights::convert::f32_to_bf16(&v)
            .into_iter()
            .map(|x| x.to_bits())
            .collect();
        let src = stream
            .clone_htod(&blocks)
            .map_err(cuda_err("uploading the blocks"))?;
        // SAFETY: fully written by the kernel before it is read back.
        let dst =
            unsafe { stream.alloc::<u16>(numel) }.map_err(cuda_err("allocating device memory"))?;
        launch(
            device,
            &stream,
            q,
            src.device_ptr(&stream).0,
            dst.device_ptr(&stream).0,
            nblocks,
            &terms,
        )
        .map_err(|m| EngineError::Fetch {
            unit: format!("{q} LoRA check"),
            link: "cuda".into(),
            message: m,
        })?;
        stream.synchronize().map_err(cuda_err("dequantising"))?;
        let got = stream.clone_dtoh(&dst).map_err(cuda_err("reading back"))?;
        let nan = |v: u16| v & 0x7fff > 0x7f80;
        if let Some(i) = (0..numel).find(|&i| got[i] != want[i] && !(nan(got[i]) && nan(want[i]))) {
            fails.push(format!(
                "{q} + LoRA terms → bf16: value {i} (row {}, column {}) is {:#06x}, the CPU gives {:#06x}",
                i as u64 / cols,
                i as u64 % cols,
                got[i],
                want[i]
            ));
        }
    }
    Ok(fails)
}

/// Times the Q8_0 dequantisation of one FLUX.1-dev `mlp.0` matrix (12 288 × 3 072) alone and
/// with one low-rank term over every row, rank 16 and 64 (median of 20 launches each, after a
/// warm-up): what `on_dequant` adds per fetch. Lines to print.
pub fn time_q8_0(device: &Device) -> Result<Vec<String>, EngineError> {
    use std::time::Instant;
    let cdev = device.as_cuda_device().map_err(super::candle_err)?;
    let stream = cdev.cuda_stream();
    let (rows, cols) = (12288u64, 3072u64);
    let nblocks = rows * cols / 32;
    let blocks = super::dequant::pseudo_random_bytes((nblocks * 34) as usize, 7);
    let src = stream
        .clone_htod(&blocks)
        .map_err(cuda_err("uploading the blocks"))?;
    // SAFETY: written by the kernels before any read (never read back).
    let dst = unsafe { stream.alloc::<u16>((rows * cols) as usize) }
        .map_err(cuda_err("allocating device memory"))?;
    let (s, d) = (src.device_ptr(&stream).0, dst.device_ptr(&stream).0);
    let fetch = |m: String| EngineError::Fetch {
        unit: "LoRA timing".into(),
        link: "cuda".into(),
        message: m,
    };
    let median = |f: &dyn Fn() -> Result<(), String>| -> Result<f64, EngineError> {
        f().map_err(fetch)?;
        stream.synchronize().map_err(cuda_err("timing"))?;
        let mut t = Vec::with_capacity(20);
        for _ in 0..20 {
            let t0 = Instant::now();
            f().map_err(fetch)?;
            stream.synchronize().map_err(cuda_err("timing"))?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        t.sort_by(f64::total_cmp);
        Ok(t[10])
    };
    let plain = median(&|| super::dequant::dequant(device, &stream, W::Q8_0, s, d, nblocks))?;
    let mut out = vec![format!(
        "Q8_0 → bf16, 12288 × 3072: {plain:.3} ms ({:.0} GB/s of bf16 written)",
        (rows * cols * 2) as f64 / plain / 1e6
    )];
    for rank in [16usize, 64] {
        let delta = TensorDelta {
            name: "timing".into(),
            rows,
            cols,
            terms: vec![DeltaTerm::pseudo_random(0..rows, cols, rank, 0.5, 0.02, 11)],
        };
        let terms = upload(&stream, &delta)?;
        let t = median(&|| launch(device, &stream, W::Q8_0, s, d, nblocks, &terms))?;
        out.push(format!(
            "Q8_0 → bf16 + rank-{rank} LoRA term, 12288 × 3072: {t:.3} ms ({:.2} × the plain kernel, {:.1} TFLOP/s of f32 in the term)",
            t / plain,
            delta.flops() as f64 / t / 1e9
        ));
    }
    Ok(out)
}
