//! How the benchmark's blocks are stored in their homes ([`Storage`]): as generated (bf16),
//! as GGUF Q8_0 or Q4_K blocks (`@q8_0`, `@q4_k`) or as ComfyUI scaled fp8 (`@fp8`); the
//! compact forms travel compact and are widened on the compute device (docs/weights.md,
//! "What travels").

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::super::unit::{Bytes, HostTensor};
use crate::weights::lora::{DeltaTerm, TensorDelta};
use crate::weights::DType as W;

/// How a placement's blocks are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Storage {
    /// As generated, in the compute dtype.
    Plain,
    /// GGUF Q8_0 matrices (`@q8_0`).
    Q8_0,
    /// GGUF Q4_K matrices (`@q4_k`: a K-quant, 4.5 bits per weight), quantised by
    /// [`crate::weights::gguf::quantize::quantize_q4_k`].
    #[allow(non_camel_case_types)] // GGML's spelling, as `weights::DType::Q4_K`
    Q4_K,
    /// ComfyUI scaled fp8 matrices (`@fp8`).
    Fp8,
    /// fp8 compute (`@fp8-compute`): the family's fp8 linears ([`crate::family::Family::
    /// fp8_linear`]) as e4m3fn weights with their scale, multiplied in e4m3 on the compute
    /// device; the other matrices as `@fp8`.
    Fp8Compute,
}

impl Storage {
    /// Every storage, in [`Storage::index`] order.
    pub const ALL: [Storage; 5] = [
        Storage::Plain,
        Storage::Q8_0,
        Storage::Q4_K,
        Storage::Fp8,
        Storage::Fp8Compute,
    ];

    /// Index into per-storage arrays.
    pub fn index(self) -> usize {
        match self {
            Storage::Plain => 0,
            Storage::Q8_0 => 1,
            Storage::Q4_K => 2,
            Storage::Fp8 => 3,
            Storage::Fp8Compute => 4,
        }
    }

    /// The placement suffix (`@q8_0`, `@q4_k`, `@fp8`, `@fp8-compute`, or nothing).
    pub fn suffix(self) -> &'static str {
        match self {
            Storage::Plain => "",
            Storage::Q8_0 => "@q8_0",
            Storage::Q4_K => "@q4_k",
            Storage::Fp8 => "@fp8",
            Storage::Fp8Compute => "@fp8-compute",
        }
    }

    /// The GGML block type of the matrices (`@q8_0`, `@q4_k`).
    pub fn ggml(self) -> Option<W> {
        match self {
            Storage::Q8_0 => Some(W::Q8_0),
            Storage::Q4_K => Some(W::Q4_K),
            _ => None,
        }
    }

    /// Whether the matrices are stored as (scaled) fp8 (`@fp8`, `@fp8-compute`).
    pub fn is_fp8(self) -> bool {
        matches!(self, Storage::Fp8 | Storage::Fp8Compute)
    }

    /// The stored type of a tensor of `shape` under this storage, `None` for the generated
    /// dtype: GGML blocks for matrices whose rows are whole blocks (a Q4_K matrix whose rows
    /// are not whole 256-value blocks falls back to Q5_0, as llama.cpp's quantiser does), fp8
    /// for matrices.
    pub fn stored(self, shape: &[usize]) -> Option<W> {
        if shape.len() < 2 {
            return None;
        }
        if let Some(q) = self.ggml() {
            let row = shape.last().copied().unwrap_or(0) as u64;
            let fallback = if q == W::Q4_K { Some(W::Q5_0) } else { None };
            return [Some(q), fallback]
                .into_iter()
                .flatten()
                .find(|t| row.is_multiple_of(t.block().0));
        }
        self.is_fp8().then_some(W::F8_E4M3)
    }

    pub(super) fn progress(self) -> &'static str {
        match self {
            Storage::Plain => "copying blocks to host memory",
            Storage::Q8_0 => "quantising blocks to Q8_0 in host memory",
            Storage::Q4_K => "quantising blocks to Q4_K in host memory",
            Storage::Fp8 => "storing blocks as scaled fp8 in host memory",
            Storage::Fp8Compute => "storing blocks as fp8 for fp8 compute in host memory",
        }
    }
}

/// The host copy of one generated tensor: its bytes as stored; for `Q8_0` and `Q4_K`, blocks
/// for matrices whose rows are whole blocks, as city96's GGUF files store FLUX; for `Fp8`,
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
    let stored = storage.stored(shape);
    if stored == Some(W::F8_E4M3) {
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
            lora: None,
        });
    }
    if let Some(q) = stored.filter(|q| q.is_quantized()) {
        use rayon::prelude::*;
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let quantize = match q {
            W::Q4_K => crate::weights::gguf::quantize::quantize_q4_k,
            W::Q5_0 => crate::weights::gguf::quantize::quantize_q5_0,
            _ => crate::weights::gguf::dequant::quantize_q8_0,
        };
        let bytes: Vec<u8> = v
            .par_chunks(q.block().0 as usize * 4096)
            .flat_map_iter(quantize)
            .collect();
        return Ok(HostTensor {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            bytes: Bytes::Owned(Arc::from(bytes)),
            quant: Some(q),
            scale: None,
            lora: None,
        });
    }
    Ok(HostTensor {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        bytes: tensor_bytes(t)?,
        quant: None,
        scale: None,
        lora: None,
    })
}

/// A deterministic rank-`rank` LoRA term over every row of a `rows × cols` matrix, seeded by
/// `name`, its factors as small as a trained LoRA's (|up|, |down| < 0.01, scale 1): what
/// `mgpu bench --lora-rank` attaches to GGML-stored block matrices, as `lora_mode =
/// "on_dequant"` does, to measure the terms' cost per fetch.
pub(super) fn synthetic_lora(name: &str, rows: u64, cols: u64, rank: usize) -> TensorDelta {
    let seed = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    TensorDelta {
        name: name.to_string(),
        rows,
        cols,
        terms: vec![DeltaTerm::pseudo_random(
            0..rows,
            cols,
            rank,
            1.0,
            0.02,
            seed,
        )],
    }
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
