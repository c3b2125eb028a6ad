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

    /// For a mapped range whose bytes now live in their home: drops its pages from the
    /// process's resident memory ([`super::hostmem::release`]). Owned bytes are untouched.
    pub fn release_mapped(&self) {
        if let Bytes::Mapped { .. } = self {
            super::hostmem::release(self.as_slice());
        }
    }

    /// An owned copy (moves a mapped range into host memory).
    pub fn to_owned_bytes(&self) -> Bytes {
        match self {
            Bytes::Owned(_) => self.clone(),
            Bytes::Mapped { .. } => {
                let src = self.as_slice();
                super::hostmem::populate(src);
                // Zeroed allocations of this size are fresh pages (no memset pass).
                // SAFETY: all-zero bytes are valid u8.
                let mut v: Arc<[u8]> = unsafe { Arc::new_zeroed_slice(src.len()).assume_init() };
                let dst = Arc::get_mut(&mut v).expect("a fresh Arc is unique");
                super::hostmem::par_copy(dst, src);
                self.release_mapped();
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
    /// `Some(Q8_0 …)`: `bytes` hold GGML blocks of that type; they travel quantised and are
    /// dequantised (to f32, then rounded to `dtype`) where they are used.
    pub quant: Option<crate::weights::DType>,
}

impl HostTensor {
    /// The tensor on `device` in `dtype`. Floating-point tensors are converted to `dtype`;
    /// integer tensors keep their type.
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
            let v = crate::weights::convert::to_f32(q, self.bytes.as_slice(), numel);
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
            super::cuda::upload::upload(self.bytes.as_slice(), self.dtype, &self.shape, device)?
        } else {
            Tensor::from_raw_buffer(self.bytes.as_slice(), self.dtype, &self.shape, device)?
        };
        #[cfg(not(feature = "cuda"))]
        let t = Tensor::from_raw_buffer(self.bytes.as_slice(), self.dtype, &self.shape, device)?;
        if self.dtype.is_float() && self.dtype != dtype {
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

    /// Every tensor on `device` in `dtype`, by relative name.
    pub fn materialize(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<HashMap<String, Tensor>> {
        self.tensors
            .iter()
            .map(|t| Ok((t.name.clone(), t.materialize(device, dtype)?)))
            .collect()
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
}
