//! The bytes of one placement unit, wherever they live, and their materialisation as tensors.
//!
//! A [`UnitData`] holds every canonical tensor of a unit as stored bytes: owned host memory
//! (patched, fused or copied-in weights) or a range of a memory-mapped file (`disk` homes,
//! untouched weights). [`UnitData::materialize`] turns them into candle tensors on a device in
//! the compute dtype; the resident path and every streaming path use this one function, so a
//! unit computes on the same values wherever it was stored (docs/decisions.md §4).

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

/// Stored bytes of one tensor.
#[derive(Debug, Clone)]
pub enum Bytes {
    /// Host memory owned by the executor.
    Owned(Arc<[u8]>),
    /// A range of a memory-mapped file, read on demand.
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(b) => b,
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Bytes::Owned(b) => b.len(),
            Bytes::Mapped { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether these are a range of a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped { .. })
    }

    /// Copies the bytes into `dst` on all cores; a mapped range is paged in, copied and its
    /// pages dropped piece by piece, so the file's pages do not stay resident beside the copy.
    pub fn copy_to(&self, dst: &mut [u8]) {
        super::hostmem::copy_from(dst, self.as_slice(), self.is_mapped());
    }

    /// An owned copy (moves a mapped range into host memory).
    pub fn to_owned_bytes(&self) -> Bytes {
        match self {
            Bytes::Owned(_) => self.clone(),
            Bytes::Mapped { .. } => {
                let src = self.as_slice();
                // Zeroed allocations of this size are fresh pages (no memset pass).
                // SAFETY: all-zero bytes are valid u8.
                let mut v: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(src.len()).assume_init() };
                let dst = Arc::get_mut(&mut v).expect("a fresh Arc is unique");
                self.copy_to(dst);
                Bytes::Owned(v)
            }
        }
    }
}

/// One tensor of a unit: its name relative to the unit (`img_attn.qkv.weight`), stored dtype,
/// shape and bytes.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub name: String,
    /// The stored element type; for a quantised tensor, the type it dequantises to.
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: Bytes,
    /// `Some(Q8_0 | Q4_K | …)`: `bytes` hold GGML blocks of that type; they travel quantised and are
    /// dequantised (to f32, then rounded to `dtype`) where they are used. `Some(F8_E4M3 |
    /// F8_E5M2)`: `bytes` hold one fp8 value per element, widened ([`widen_fp8`], with
    /// `scale`) to `dtype` where they are used.
    pub quant: Option<crate::weights::DType>,
    /// ComfyUI scaled fp8: the per-tensor scale an fp8 `quant` tensor is multiplied by (in
    /// f32) when widened. For an fp8-compute weight (`dtype` `F8E4M3`, no `quant`): its
    /// scale, handed to the model as `<name>_scale` ([`crate::models::fp8`]). `None` for every
    /// other tensor.
    pub scale: Option<f32>,
    /// `lora_mode = "on_dequant"`: the LoRA terms added to this GGML-block tensor each time it
    /// is dequantised (in f32, before the one rounding to `dtype`: the numbers `bake` makes),
    /// so that its homes keep the blocks. `None` for every other tensor.
    pub lora: Option<Arc<crate::weights::lora::TensorDelta>>,
}

/// `t` as an fp8-compute weight: `F8E4M3` bytes with their per-tensor scale. An e4m3fn
/// tensor keeps its bytes (and scale, 1 when unscaled); any other is materialised to f32 on
/// the CPU (the one conversion every path uses) and quantised by
/// [`crate::models::fp8::quantize_weight`].
pub fn to_fp8_compute(t: HostTensor) -> candle_core::Result<HostTensor> {
    if t.quant == Some(crate::weights::DType::F8_E4M3) {
        return Ok(HostTensor {
            dtype: DType::F8E4M3,
            quant: None,
            scale: Some(t.scale.unwrap_or(1.0)),
            ..t
        });
    }
    if t.dtype == DType::F8E4M3 {
        return Ok(t);
    }
    let v = t
        .materialize(&Device::Cpu, DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (q, scale) = crate::models::fp8::quantize_weight(&v);
    Ok(HostTensor {
        name: t.name,
        dtype: DType::F8E4M3,
        shape: t.shape,
        bytes: Bytes::Owned(Arc::from(q)),
        quant: None,
        scale: Some(scale),
        lora: None,
    })
}

/// The `<name>_scale` tensors (one f32 each, on `device`) of a unit's fp8-compute weights.
pub fn fp8_scales(data: &UnitData, device: &Device) -> candle_core::Result<Vec<(String, Tensor)>> {
    data.tensors
        .iter()
        .filter(|t| t.dtype == DType::F8E4M3 && t.quant.is_none())
        .map(|t| {
            let s = Tensor::new(&[t.scale.unwrap_or(1.0)], device)?;
            Ok((format!("{}{}", t.name, crate::models::fp8::SCALE_SUFFIX), s))
        })
        .collect()
}

/// Whether `q` is an fp8 type (one byte per value, widened by [`widen_fp8`]).
pub fn is_fp8(q: crate::weights::DType) -> bool {
    matches!(
        q,
        crate::weights::DType::F8_E4M3 | crate::weights::DType::F8_E5M2
    )
}

/// The stored dtype of a floating-point compute dtype (bf16, f16 or f32).
pub fn stored_of(c: DType) -> Option<crate::weights::DType> {
    use crate::weights::DType as W;
    match c {
        DType::F32 => Some(W::F32),
        DType::F16 => Some(W::F16),
        DType::BF16 => Some(W::BF16),
        _ => None,
    }
}

/// Scales the fp8 widening is checked with (none, a power of two, an odd one, one that makes
/// denormals, a negative one), on the CPU and against the CUDA kernel (`--check-fp8`).
pub const FP8_CHECK_SCALES: [Option<f32>; 5] = [
    None,
    Some(0.015625),
    Some(3.7e-3),
    Some(1.0e-30),
    Some(-2.5e4),
];

/// fp8 bytes (`fp8`: e4m3fn or e5m2) widened to `out` (bf16, f16 or f32), little-endian:
/// each value exactly to f32, times `scale` in f32 when given (one f32 rounding), then
/// rounded once to `out` (round to nearest, ties to even) — `weights::lora::math::decode`
/// then `encode`, the loader's host-side widening, split into chunks across threads (the
/// arithmetic is per element, so the split cannot change a bit). `None` for a dtype pair
/// this does not handle.
pub fn widen_fp8(
    fp8: crate::weights::DType,
    bytes: &[u8],
    scale: Option<f32>,
    out: DType,
) -> Option<Vec<u8>> {
    use crate::weights::lora::math;
    use rayon::prelude::*;
    let store = stored_of(out)?;
    if !is_fp8(fp8) {
        return None;
    }
    let w = out.size_in_bytes();
    let mut dst = vec![0u8; bytes.len() * w];
    const CHUNK: usize = 1 << 16;
    let run = |(src, dst): (&[u8], &mut [u8])| {
        let mut f = vec![0f32; src.len()];
        math::decode(fp8, src, scale, &mut f);
        math::encode(store, &f, None, dst);
    };
    if bytes.len() > 1 << 20 {
        bytes
            .par_chunks(CHUNK)
            .zip(dst.par_chunks_mut(CHUNK * w))
            .for_each(run);
    } else {
        bytes
            .chunks(CHUNK)
            .zip(dst.chunks_mut(CHUNK * w))
            .for_each(run);
    }
    Some(dst)
}

impl HostTensor {
    /// The tensor on `device` in `dtype`. Floating-point tensors are converted to `dtype`;
    /// integer tensors and fp8-compute weights (`F8E4M3`) keep their type.
    pub fn materialize(&self, device: &Device, dtype: DType) -> candle_core::Result<Tensor> {
        let numel: usize = self.shape.iter().product();
        if let Some(q) = self.quant {
            let want = q.storage_bytes(numel as u64);
            if want != Some(self.bytes.len() as u64) {
                candle_core::bail!(
                    "tensor `{}`: {:?} of {q} needs {want:?} bytes, the store holds {}",
                    self.name,
                    self.shape,
                    self.bytes.len()
                )
            }
            if is_fp8(q) {
                let b = widen_fp8(q, self.bytes.as_slice(), self.scale, self.dtype).ok_or_else(
                    || {
                        candle_core::Error::Msg(format!(
                            "tensor `{}`: {q} cannot be widened to {:?} (supported: bf16, f16, f32)",
                            self.name, self.dtype
                        ))
                    },
                )?;
                let t = Tensor::from_raw_buffer(&b, self.dtype, &self.shape, device)?;
                return if self.dtype != dtype {
                    t.to_dtype(dtype)
                } else {
                    Ok(t)
                };
            }
            let mut v = crate::weights::convert::to_f32(q, self.bytes.as_slice(), numel);
            if let Some(d) = &self.lora {
                // `on_dequant`: the LoRA terms in f32, in `bake`'s order, before the rounding.
                d.apply_f32(&mut v)
                    .map_err(|e| candle_core::Error::Msg(format!("tensor `{}`: {e}", self.name)))?;
            }
            // Round to the tensor's type first (as the device-side dequantisation does), then
            // to the compute dtype.
            let t =
                Tensor::from_vec(v, self.shape.as_slice(), &Device::Cpu)?.to_dtype(self.dtype)?;
            let t = if self.dtype != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            return t.to_device(device);
        }
        let want = numel * self.dtype.size_in_bytes();
        if want != self.bytes.len() {
            candle_core::bail!(
                "tensor `{}`: {:?} of {:?} needs {want} bytes, the store holds {}",
                self.name,
                self.shape,
                self.dtype,
                self.bytes.len()
            )
        }
        #[cfg(feature = "cuda")]
        let t = if super::cuda::upload::staged(device, want) {
            super::cuda::upload::upload(
                self.bytes.as_slice(),
                self.bytes.is_mapped(),
                self.dtype,
                &self.shape,
                device,
            )?
        } else {
            Tensor::from_raw_buffer(self.bytes.as_slice(), self.dtype, &self.shape, device)?
        };
        #[cfg(not(feature = "cuda"))]
        let t = Tensor::from_raw_buffer(self.bytes.as_slice(), self.dtype, &self.shape, device)?;
        if self.dtype.is_float() && self.dtype != dtype && self.dtype != DType::F8E4M3 {
            t.to_dtype(dtype)
        } else {
            Ok(t)
        }
    }
}

/// All tensors of one placement unit.
#[derive(Debug, Clone)]
pub struct UnitData {
    /// The unit's name (`double_blocks.3`), or the empty string for the resident rest.
    pub name: String,
    pub tensors: Vec<HostTensor>,
}

impl UnitData {
    /// Stored bytes of the unit (what crosses a link when it is streamed).
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes.len() as u64).sum()
    }

    /// Bytes of the `on_dequant` LoRA factors its tensors carry (f32), which stay with the
    /// compute device while the unit streams.
    pub fn lora_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter_map(|t| t.lora.as_ref())
            .map(|d| d.factor_bytes())
            .sum()
    }

    /// Every tensor on `device` in `dtype`, by relative name.
    pub fn materialize(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = self
            .tensors
            .iter()
            .map(|t| Ok((t.name.clone(), t.materialize(device, dtype)?)))
            .collect::<candle_core::Result<HashMap<_, _>>>()?;
        out.extend(fp8_scales(self, device)?);
        Ok(out)
    }

    /// The same unit with every mapped range copied into host memory.
    pub fn to_owned_data(&self) -> UnitData {
        UnitData {
            name: self.name.clone(),
            tensors: self
                .tensors
                .iter()
                .map(|t| HostTensor {
                    bytes: t.bytes.to_owned_bytes(),
                    ..t.clone()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_tensor(name: &str, vals: &[f32]) -> HostTensor {
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        HostTensor {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![vals.len()],
            bytes: Bytes::Owned(Arc::from(bytes)),
            quant: None,
            scale: None,
            lora: None,
        }
    }

    #[test]
    fn materialize_converts_floats_and_checks_sizes() {
        let u = UnitData {
            name: "u".into(),
            tensors: vec![f32_tensor("w", &[1.0, 2.5])],
        };
        assert_eq!(u.bytes(), 8);
        let m = u.materialize(&Device::Cpu, DType::BF16).unwrap();
        assert_eq!(m["w"].dtype(), DType::BF16);
        assert_eq!(
            m["w"]
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [1.0, 2.5]
        );
        let mut bad = f32_tensor("b", &[1.0]);
        bad.shape = vec![2];
        let e = bad
            .materialize(&Device::Cpu, DType::F32)
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 8 bytes, the store holds 4"), "{e}");
    }

    /// Every fp8 bit pattern, widened with and without a scale to every compute dtype, gives
    /// the bytes of the independent reference: the `float8` crate's value × scale in f32,
    /// rounded by candle's `to_dtype` (what the loader's host-side widening produced).
    #[test]
    fn widen_fp8_matches_the_reference_for_every_pattern() {
        use crate::weights::DType as W;
        let bytes: Vec<u8> = (0..=255u8).collect();
        for fp8 in [W::F8_E4M3, W::F8_E5M2] {
            for scale in FP8_CHECK_SCALES {
                let f: Vec<f32> = bytes
                    .iter()
                    .map(|&b| {
                        let v = match fp8 {
                            W::F8_E4M3 => float8::F8E4M3::from_bits(b).to_f32(),
                            _ => float8::F8E5M2::from_bits(b).to_f32(),
                        };
                        scale.map_or(v, |s| v * s)
                    })
                    .collect();
                for out in [DType::BF16, DType::F16, DType::F32] {
                    let want = Tensor::from_vec(f.clone(), 256, &Device::Cpu)
                        .unwrap()
                        .to_dtype(out)
                        .unwrap();
                    let want_bytes = match out {
                        DType::BF16 => want
                            .to_vec1::<half::bf16>()
                            .unwrap()
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect::<Vec<u8>>(),
                        DType::F16 => want
                            .to_vec1::<half::f16>()
                            .unwrap()
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect(),
                        _ => want
                            .to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect(),
                    };
                    let got = widen_fp8(fp8, &bytes, scale, out).unwrap();
                    assert_eq!(got, want_bytes, "{fp8} × {scale:?} → {out:?}");
                }
            }
        }
        assert!(widen_fp8(W::Q8_0, &bytes, None, DType::BF16).is_none());
        assert!(widen_fp8(W::F8_E4M3, &bytes, None, DType::U8).is_none());
    }

    /// A compact fp8 tensor materialises to the same bytes as the host-widened tensor the
    /// loader used to store, large enough to take the threaded path.
    #[test]
    fn compact_fp8_materializes_like_the_widened_tensor() {
        use crate::weights::DType as W;
        let n = (1 << 20) + 4099;
        let bytes: Vec<u8> = (0..n).map(|i| ((i * 2654435761usize) >> 7) as u8).collect();
        for (fp8, scale) in [(W::F8_E4M3, Some(0.02f32)), (W::F8_E5M2, None)] {
            let compact = HostTensor {
                name: "w".into(),
                dtype: DType::BF16,
                shape: vec![n],
                bytes: Bytes::Owned(Arc::from(bytes.clone())),
                quant: Some(fp8),
                scale,
                lora: None,
            };
            let mut f = vec![0f32; n];
            crate::weights::lora::math::decode(fp8, &bytes, scale, &mut f);
            let mut wide = vec![0u8; 2 * n];
            crate::weights::lora::math::encode(W::BF16, &f, None, &mut wide);
            let widened = HostTensor {
                bytes: Bytes::Owned(Arc::from(wide)),
                quant: None,
                scale: None,
                ..compact.clone()
            };
            for dt in [DType::BF16, DType::F32] {
                let a = compact.materialize(&Device::Cpu, dt).unwrap();
                let b = widened.materialize(&Device::Cpu, dt).unwrap();
                let a = a.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
                let b = b.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&a) == bits(&b), "{fp8} {dt:?}");
            }
        }
    }
}
