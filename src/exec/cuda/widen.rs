//! Widening a fetched unit's compact tensors (GGML blocks, fp8) into its slot's compute-dtype
//! regions: the kernel launches a fetch needs ([`ops`]) and launching them ([`launch`], on the
//! compute stream just before the unit is used).

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{sys, CudaStream};
use candle_core::Device;

use super::layout::Layout;
use super::lora::DeviceTerms;
use super::Region;
use crate::weights::DType as W;

/// One widening kernel launch: `len` compact bytes of type `q` at `src` into `out` values at
/// `dst` (fp8: times `scale`).
#[derive(Clone, Copy)]
pub(super) struct Op<'a> {
    q: W,
    src: sys::CUdeviceptr,
    dst: sys::CUdeviceptr,
    len: usize,
    scale: Option<f32>,
    out: candle_core::DType,
    /// `on_dequant` LoRA terms added while dequantising GGML blocks.
    lora: Option<&'a DeviceTerms>,
}

/// The launches that widen a unit laid out as `layout` into the slot `regions`; `loras[i]`:
/// the LoRA terms of `layout.places[i]`, if any.
pub(super) fn ops<'a>(
    regions: &[Region],
    layout: &Layout,
    loras: &'a [Option<DeviceTerms>],
) -> Vec<Op<'a>> {
    layout
        .places
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let (q, src_region, src_off, len) = p.quant?;
            let r = &regions[p.region];
            Some(Op {
                q,
                src: regions[src_region].ptr + src_off as u64,
                dst: r.ptr + p.offset as u64,
                len,
                scale: p.scale,
                out: r.dtype,
                lora: loras.get(i).and_then(|l| l.as_ref()),
            })
        })
        .collect()
}

/// Launches `ops` on `stream`; `fp8_tables` is the device copy of
/// [`super::device::fp8_tables`].
pub(super) fn launch(
    device: &Device,
    stream: &Arc<CudaStream>,
    fp8_tables: sys::CUdeviceptr,
    ops: &[Op<'_>],
) -> Result<(), String> {
    for op in ops {
        match op.q {
            W::F8_E4M3 | W::F8_E5M2 => {
                let table = fp8_tables + if op.q == W::F8_E5M2 { 256 * 4 } else { 0 };
                super::device::widen_fp8(
                    device,
                    stream,
                    op.src,
                    op.dst,
                    op.len as u64,
                    table,
                    op.scale,
                    op.out,
                )?
            }
            q if q.is_quantized() && op.out == candle_core::DType::BF16 => {
                let nblocks = (op.len as u64) / q.block().1;
                match op.lora {
                    Some(terms) => {
                        super::lora::launch(device, stream, q, op.src, op.dst, nblocks, terms)?
                    }
                    None => super::dequant::dequant(device, stream, q, op.src, op.dst, nblocks)?,
                }
            }
            q => return Err(format!("{q} cannot be widened to {:?} on the GPU", op.out)),
        }
    }
    Ok(())
}
