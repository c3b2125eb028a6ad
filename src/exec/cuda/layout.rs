//! Slot and home layouts of streamed units (CPU-side bookkeeping of the CUDA backend): which
//! regions a unit's tensors need (one per stored dtype, plus the compact bytes and a
//! dequantisation/widening target for GGUF blocks and fp8 tensors), where each tensor sits in
//! its region (256-byte aligned, as a fresh allocation would be), and how a unit's home buffer
//! mirrors those regions so that a fetch is one copy per region.

use candle_core::DType;

use super::super::engine::EngineError;
use super::super::unit::UnitData;

/// Alignment of every tensor inside a region, in bytes.
pub const ALIGN: usize = 256;

pub(super) fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// One tensor's place in a unit layout.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    /// The region holding the tensor's values as the model reads them (for a quantised
    /// tensor: the dequantised values).
    pub(super) region: usize,
    /// Byte offset inside the region.
    pub(super) offset: usize,
    /// Byte offset of the copied bytes inside the unit's mirrored host/donor buffer.
    pub(super) home_offset: usize,
    /// For a compact tensor (GGML blocks, fp8): its type and where its bytes land (region, byte
    /// offset, length) before the dequantisation or widening kernel writes `region`. The
    /// compact region of each slot is the per-slot staging area of those bytes.
    pub(super) quant: Option<(crate::weights::DType, usize, usize, usize)>,
    /// The scaled-fp8 scale of an fp8 tensor.
    pub(super) scale: Option<f32>,
}

/// A slot region: a dtype, and whether copies fill it (`Copied`) or the dequantisation
/// kernel does (`Dequant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionKey {
    pub dtype: DType,
    pub copied: bool,
}

/// The region keys a unit's tensors need.
pub(super) fn region_keys(data: &UnitData) -> Vec<RegionKey> {
    let mut keys = Vec::new();
    for t in &data.tensors {
        let ks: &[RegionKey] = &match t.quant {
            None => vec![RegionKey {
                dtype: t.dtype,
                copied: true,
            }],
            Some(_) => vec![
                RegionKey {
                    dtype: DType::U8,
                    copied: true,
                },
                RegionKey {
                    dtype: t.dtype,
                    copied: false,
                },
            ],
        };
        for k in ks {
            if !keys.contains(k) {
                keys.push(*k);
            }
        }
    }
    keys
}

/// A unit's layout: its tensors' places and, per region, the bytes it uses and where that
/// region starts in the unit's home buffer.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) places: Vec<Place>,
    /// Copied regions: (region index, bytes used, offset in the home buffer).
    pub(super) regions: Vec<(usize, usize, usize)>,
    pub(super) home_bytes: usize,
    /// Bytes used per region (copied or dequantised), for sizing the slots.
    pub(super) region_sizes: Vec<usize>,
}

pub(super) fn layout_of(data: &UnitData, keys: &[RegionKey]) -> Result<Layout, EngineError> {
    let mut used = vec![0usize; keys.len()];
    let find = |k: RegionKey, name: &str| {
        keys.iter()
            .position(|x| *x == k)
            .ok_or_else(|| EngineError::Fetch {
                unit: data.name.clone(),
                link: "cuda".into(),
                message: format!("tensor `{name}` ({:?}) has no slot region", k.dtype),
            })
    };
    let mut places = Vec::with_capacity(data.tensors.len());
    for t in &data.tensors {
        let numel: usize = t.shape.iter().product();
        let (region, len, quant) = match t.quant {
            None => (
                find(
                    RegionKey {
                        dtype: t.dtype,
                        copied: true,
                    },
                    &t.name,
                )?,
                t.bytes.len(),
                None,
            ),
            Some(q) => {
                let ggml = q.is_quantized() && t.dtype == DType::BF16;
                let fp8 = super::super::unit::is_fp8(q)
                    && matches!(t.dtype, DType::BF16 | DType::F16 | DType::F32);
                if !(ggml || fp8) {
                    return Err(EngineError::Fetch {
                        unit: data.name.clone(),
                        link: "cuda".into(),
                        message: format!(
                            "tensor `{}`: {q} → {:?} cannot be dequantised on the GPU (supported: GGML blocks → bf16, fp8 → bf16/f16/f32); dequantise it at load",
                            t.name, t.dtype
                        ),
                    });
                }
                let src = find(
                    RegionKey {
                        dtype: DType::U8,
                        copied: true,
                    },
                    &t.name,
                )?;
                let off = used[src];
                used[src] = align(off + t.bytes.len());
                let dst = find(
                    RegionKey {
                        dtype: t.dtype,
                        copied: false,
                    },
                    &t.name,
                )?;
                (
                    dst,
                    numel * t.dtype.size_in_bytes(),
                    Some((q, src, off, t.bytes.len())),
                )
            }
        };
        let offset = used[region];
        used[region] = align(offset + len);
        places.push(Place {
            name: t.name.clone(),
            shape: t.shape.clone(),
            region,
            offset,
            home_offset: 0,
            quant,
            scale: t.scale,
        });
    }
    let mut regions = Vec::new();
    let mut home = 0usize;
    let mut region_home = vec![0usize; keys.len()];
    for (r, &u) in used.iter().enumerate() {
        if u > 0 && keys[r].copied {
            regions.push((r, u, home));
            region_home[r] = home;
            home += u;
        }
    }
    for p in &mut places {
        p.home_offset = match p.quant {
            Some((_, src, off, _)) => region_home[src] + off,
            None => region_home[p.region] + p.offset,
        };
    }
    // The dequantisation regions' sizes matter for the slots too.
    let sizes = used;
    Ok(Layout {
        places,
        regions,
        home_bytes: home,
        region_sizes: sizes,
    })
}

/// Writes a unit's stored bytes into its home buffer at their layout offsets.
pub(super) fn fill_home(layout: &Layout, data: &UnitData, dst: &mut [u8]) {
    fill_home_with(layout, data, dst, |d, s| d.copy_from_slice(s.as_slice()))
}

/// [`fill_home`] with the copy done by `copy` (e.g. a parallel copy).
pub(super) fn fill_home_with(
    layout: &Layout,
    data: &UnitData,
    dst: &mut [u8],
    copy: impl Fn(&mut [u8], &crate::exec::unit::Bytes),
) {
    for (p, t) in layout.places.iter().zip(&data.tensors) {
        let n = t.bytes.len();
        copy(&mut dst[p.home_offset..p.home_offset + n], &t.bytes);
    }
}
