//! How the benchmark's blocks are stored in their homes ([`Storage`]): as generated (bf16),
//! as GGUF Q8_0 blocks (`@q8_0`) or as ComfyUI scaled fp8 (`@fp8`); the compact forms travel
//! compact and are widened on the compute device (docs/weights.md, "What travels").

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::super::unit::{Bytes, HostTensor};
use crate::weights::DType as W;

/// How a placement's blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// As generated, in the compute dtype.
    Plain,
    /// GGUF Q8_0 matrices (`@q8_0`).
    Q8_0,
    /// ComfyUI scaled fp8 matrices (`@fp8`).
    Fp8,
    /// fp8 compute (`@fp8-compute`): the family's fp8 linears ([`crate::family::Family::
    /// fp8_linear`]) as e4m3fn weights with their scale, multiplied in e4m3 on the compute
    /// device; the other matrices as `@fp8`.
    Fp8Compute,
}

impl Storage {
    /// Index into per-storage arrays.
    pub fn index(self) -> usize {
        match self {
            Storage::Plain => 0,
            Storage::Q8_0 => 1,
            Storage::Fp8 => 2,
            Storage::Fp8Compute => 3,
        }
    }

    /// The placement suffix (`@q8_0`, `@fp8`, or nothing).
    pub fn suffix(self) -> &'static str {
        match self {
            Storage::Plain => "",
            Storage::Q8_0 => "@q8_0",
            Storage::Fp8 => "@fp8",
            Storage::Fp8Compute => "@fp8-compute",
        }
    }

    pub(super) fn progress(self) -> &'static str {
        match self {
            Storage::Plain => "copying blocks to host memory",
            Storage::Q8_0 => "quantising blocks to Q8_0 in host memory",
            Storage::Fp8 => "storing blocks as scaled fp8 in host memory",
            Storage::Fp8Compute => "storing blocks as fp8 for fp8 compute in host memory",
        }
    }
}

/// The host copy of one generated tensor: its bytes as stored; for `Q8_0`, Q8_0 blocks for
/// matrices (rank ≥ 2, whole blocks of 32), as city96's GGUF files store FLUX; for `Fp8`,
/// matrices as ComfyUI scaled fp8 (e4m3fn, scale = max|w| / 448, as `*_fp8_scaled` files);
/// for `Fp8Compute`, the same bytes, kept as e4m3 for the fp8 linears (`fp8_linear`).
pub(super) fn host_tensor(
    name: &str,
    shape: &[usize],
    t: &Tensor,
    dtype: DType,
    storage: Storage,
    fp8_linear: bool,
) -> candle_core::Result<HostTensor> {
    let numel: usize = shape.iter().product();
    if matches!(storage, Storage::Fp8 | Storage::Fp8Compute) && shape.len() >= 2 {
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let (q, scale) = crate::models::fp8::quantize_weight(&v);
        // fp8 compute keeps its linears' bytes e4m3 on the device; the rest are widened.
        let (dtype, quant) = if storage == Storage::Fp8Compute && fp8_linear && shape.len() == 2 {
            (DType::F8E4M3, None)
        } else {
            (dtype, Some(W::F8_E4M3))
        };
        return Ok(HostTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes: Bytes::Owned(Arc::from(q)),
            quant,
            scale: Some(scale),
        });
    }
    if storage == Storage::Q8_0 && shape.len() >= 2 && numel.is_multiple_of(32) {
        use rayon::prelude::*;
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let q: Vec<u8> = v
            .par_chunks(32 * 4096)
            .flat_map_iter(crate::weights::gguf::dequant::quantize_q8_0)
            .collect();
        return Ok(HostTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes: Bytes::Owned(Arc::from(q)),
            quant: Some(crate::weights::DType::Q8_0),
            scale: None,
        });
    }
    Ok(HostTensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        bytes: tensor_bytes(t)?,
        quant: None,
        scale: None,
    })
}

/// A CPU tensor's bytes, little-endian as stored.
pub(super) fn tensor_bytes(t: &Tensor) -> candle_core::Result<Bytes> {
    fn le_bytes<T: Copy>(v: &[T], to_le: impl Fn(&T) -> Vec<u8>) -> Vec<u8> {
        if cfg!(target_endian = "little") {
            // SAFETY: plain-old-data elements viewed as bytes; on a little-endian host the
            // in-memory order is the stored (little-endian) order.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
                .to_vec()
        } else {
            v.iter().flat_map(to_le).collect()
        }
    }
    let t = t.flatten_all()?;
    let v: Vec<u8> = match t.dtype() {
        DType::F32 => le_bytes(&t.to_vec1::<f32>()?, |x| x.to_le_bytes().to_vec()),
        DType::BF16 => le_bytes(&t.to_vec1::<half::bf16>()?, |x| x.to_le_bytes().to_vec()),
        DType::F16 => le_bytes(&t.to_vec1::<half::f16>()?, |x| x.to_le_bytes().to_vec()),
        d => candle_core::bail!("bench: dtype {d:?} is not generated"),
    };
    Ok(Bytes::Owned(Arc::from(v)))
}
