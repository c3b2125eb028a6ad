//! Inventories: what a weight file holds (tensor names, shapes, dtypes, bytes), read from its
//! header only, and grouped into placement units in execution order.
//!
//! [`read`] detects the format from the file's first bytes (never its extension), reads the
//! header with [`crate::weights`], detects the model family from key names when none is given
//! ([`group::detect_family`]), and groups tensors into units ([`group::group`]): one
//! [`UnitKind::Resident`] unit for everything outside the transformer blocks (embeddings,
//! final layers, norms: always kept on the compute device) and one [`UnitKind::Block`] unit per
//! block (`double_blocks.3`, `encoder.block.7`, …). The planner ([`crate::plan`]) places units;
//! `mgpu inspect` prints inventories.

pub mod gguf_layout;
pub mod group;
pub mod synthetic;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::family::Family;
use crate::weights::{TensorInfo, WeightsError};

pub use group::{canonical_name, detect_family, Grouping};

/// A weight file's contents, without its data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inventory {
    pub path: PathBuf,
    pub format: Format,
    /// As given by the caller, else as detected from key names.
    pub family: Option<Family>,
    /// How `family` was decided.
    pub family_source: FamilySource,
    /// How tensors were grouped into units.
    pub grouping: Grouping,
    /// Tensors as stored (raw names), sorted by offset.
    pub tensors: Vec<TensorInfo>,
    /// Units in execution order (`units[i].order == i`): the resident unit first, if any.
    pub units: Vec<Unit>,
}

/// A file format, recognised by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Safetensors,
    Gguf,
    /// A `torch.save` zip archive, read without running code.
    PyTorch,
    /// Built in memory by [`Inventory::synthetic`] (tests, benchmarks, examples).
    Synthetic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilySource {
    Given,
    Detected,
    Unknown,
}

/// Whether a unit stays on the compute device or may be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnitKind {
    /// Everything outside the blocks: small, used at every step, always on the compute device.
    Resident,
    /// One transformer block (or VAE half): the unit of placement and streaming.
    Block,
}

/// A placement unit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Unit {
    /// `resident`, or the canonical block name (`double_blocks.3`).
    pub name: String,
    pub kind: UnitKind,
    /// Bytes as stored.
    pub bytes: u64,
    /// Number of parameters (elements).
    pub params: u64,
    /// Indices into [`Inventory::tensors`].
    pub tensors: Vec<usize>,
    /// Position in execution order.
    pub order: usize,
}

/// The name of the resident unit.
pub const RESIDENT: &str = "resident";

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{}: {format} files are not supported yet: {hint}", path.display())]
    Unsupported {
        path: PathBuf,
        format: &'static str,
        hint: &'static str,
    },
    #[error("{}: not a safetensors or GGUF file (it starts with bytes {magic}); mgpu reads .safetensors and .gguf weights", path.display())]
    UnknownFormat { path: PathBuf, magic: String },
    #[error("{}: the file holds no tensors", path.display())]
    Empty { path: PathBuf },
    #[error("{}: the manifest says family `{family}` but none of the file's {count} tensors (like `{example}`) belongs to a {family} block, and its names match no family mgpu knows; point `file` at a {family} diffusion model", path.display())]
    NoBlocks {
        path: PathBuf,
        family: Family,
        count: usize,
        example: String,
    },
    #[error("{}: the manifest says family `{given}` but the file looks like `{detected}` (it has `{evidence}`); fix `family` or `file`", path.display())]
    FamilyMismatch {
        path: PathBuf,
        given: Family,
        detected: Family,
        evidence: String,
    },
}

/// Reads the header of the weight file at `path` (safetensors, a sharded safetensors index,
/// GGUF, or a PyTorch zip checkpoint read by the restricted unpickler) and groups its tensors
/// into units. `family` is what the manifest says; when `None` it is detected from key names.
pub fn read(path: &Path, family: Option<Family>) -> Result<Inventory, InventoryError> {
    let file = crate::weights::WeightFile::open(path)?;
    let format = match file.format() {
        crate::weights::Format::Safetensors | crate::weights::Format::SafetensorsSharded { .. } => {
            Format::Safetensors
        }
        crate::weights::Format::Gguf { .. } => Format::Gguf,
        crate::weights::Format::PyTorch => Format::PyTorch,
    };
    Inventory::build(path.to_path_buf(), format, family, file.tensors().to_vec())
}

impl Inventory {
    /// Groups `tensors` (any order) into units; detects the family if `family` is `None` and
    /// checks a given family against the keys.
    pub fn build(
        path: PathBuf,
        format: Format,
        family: Option<Family>,
        mut tensors: Vec<TensorInfo>,
    ) -> Result<Self, InventoryError> {
        if tensors.is_empty() {
            return Err(InventoryError::Empty { path });
        }
        tensors.sort_by(|a, b| (a.offset, &a.name).cmp(&(b.offset, &b.name)));
        let detected = detect_family(&tensors);
        let (family, family_source) = match (family, detected) {
            (Some(given), Some((d, evidence))) if !compatible(given, d) => {
                return Err(InventoryError::FamilyMismatch {
                    path,
                    given,
                    detected: d,
                    evidence,
                });
            }
            (Some(given), _) => (Some(given), FamilySource::Given),
            (None, Some((d, _))) => (Some(d), FamilySource::Detected),
            (None, None) => (None, FamilySource::Unknown),
        };
        let (units, grouping) = group::group(family, &tensors);
        // A diffusion model is its blocks: a file with none (one unrelated tensor named as
        // `flux`) is not one, whatever the manifest says.
        let diffusion = family.filter(|f| f.role() == crate::family::Role::Diffusion);
        if let (Some(family), false) = (diffusion, units.iter().any(|u| u.kind == UnitKind::Block))
        {
            return Err(InventoryError::NoBlocks {
                path,
                family,
                count: tensors.len(),
                example: tensors
                    .first()
                    .map(|t| t.name.chars().take(80).collect())
                    .unwrap_or_default(),
            });
        }
        Ok(Inventory {
            path,
            format,
            family,
            family_source,
            grouping,
            tensors,
            units,
        })
    }

    /// An inventory of tensors that exist only in memory, laid out back to back: for tests,
    /// benchmarks and examples. `family` is used as given (never detected).
    pub fn synthetic(
        family: Option<Family>,
        tensors: &[(String, crate::weights::DType, Vec<u64>)],
    ) -> Self {
        let mut offset = 0;
        let tensors: Vec<TensorInfo> = tensors
            .iter()
            .map(|(name, dtype, shape)| {
                let numel: u64 = shape.iter().product();
                let len = dtype
                    .storage_bytes(numel)
                    .expect("synthetic shapes fit their dtype");
                let t = TensorInfo {
                    name: name.clone(),
                    dtype: *dtype,
                    shape: shape.clone(),
                    offset,
                    len,
                };
                offset += len;
                t
            })
            .collect();
        let (units, grouping) = group::group(family, &tensors);
        let family_source = if family.is_some() {
            FamilySource::Given
        } else {
            FamilySource::Unknown
        };
        Inventory {
            path: PathBuf::from("<synthetic>"),
            format: Format::Synthetic,
            family,
            family_source,
            grouping,
            tensors,
            units,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.units.iter().map(|u| u.bytes).sum()
    }

    pub fn total_params(&self) -> u64 {
        self.units.iter().map(|u| u.params).sum()
    }

    /// Bytes of the resident unit (0 if there is none).
    pub fn resident_bytes(&self) -> u64 {
        self.units
            .iter()
            .filter(|u| u.kind == UnitKind::Resident)
            .map(|u| u.bytes)
            .sum()
    }

    pub fn blocks(&self) -> impl Iterator<Item = &Unit> {
        self.units.iter().filter(|u| u.kind == UnitKind::Block)
    }

    pub fn unit(&self, name: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.name == name)
    }

    /// The tensors of a unit.
    pub fn tensors_of<'a>(&'a self, unit: &'a Unit) -> impl Iterator<Item = &'a TensorInfo> + 'a {
        unit.tensors.iter().map(move |&i| &self.tensors[i])
    }
}

/// Whether a given family is consistent with the detected one (T5 and umT5 share key names;
/// detection tells them apart only by a heuristic).
fn compatible(given: Family, detected: Family) -> bool {
    given == detected
        || matches!(
            (given, detected),
            (Family::T5, Family::UmT5) | (Family::UmT5, Family::T5)
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;
    use std::io::Write;

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    /// A real safetensors file with the given tensors (zeros).
    fn safetensors_file(tensors: &[(&str, &str, &[u64])]) -> tempfile::NamedTempFile {
        let mut header = serde_json::Map::new();
        let mut off = 0u64;
        for (name, dtype, shape) in tensors {
            let n: u64 = shape.iter().product::<u64>()
                * DType::from_safetensors_name(dtype).unwrap().block().1;
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}),
            );
            off += n;
        }
        let h = serde_json::to_string(&header).unwrap();
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(h.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, off as usize));
        write(&bytes)
    }

    #[test]
    fn one_unrelated_tensor_is_not_a_flux_model() {
        let f = safetensors_file(&[("whatever.weight", "F32", &[4])]);
        let e = read(f.path(), Some(Family::Flux)).unwrap_err().to_string();
        assert!(
            e.contains("the manifest says family `flux` but none of the file's 1 tensors (like `whatever.weight`)"),
            "{e}"
        );
        // Without a family it is an unknown file, as before.
        assert!(read(f.path(), None).is_ok());
    }

    #[test]
    fn reads_a_safetensors_file_and_detects_flux() {
        let f = safetensors_file(&[
            ("model.diffusion_model.img_in.weight", "BF16", &[8, 4]),
            (
                "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
                "BF16",
                &[24, 8],
            ),
            (
                "model.diffusion_model.double_blocks.1.img_attn.qkv.weight",
                "BF16",
                &[24, 8],
            ),
            (
                "model.diffusion_model.single_blocks.0.linear1.weight",
                "BF16",
                &[8, 8],
            ),
            (
                "model.diffusion_model.double_blocks.10.img_attn.qkv.weight",
                "BF16",
                &[24, 8],
            ),
            (
                "model.diffusion_model.double_blocks.2.img_attn.qkv.weight",
                "BF16",
                &[24, 8],
            ),
        ]);
        let inv = read(f.path(), None).unwrap();
        assert_eq!(inv.family, Some(Family::Flux));
        assert_eq!(inv.family_source, FamilySource::Detected);
        assert_eq!(inv.format, Format::Safetensors);
        let names: Vec<&str> = inv.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "resident",
                "double_blocks.0",
                "double_blocks.1",
                "double_blocks.2",
                "double_blocks.10",
                "single_blocks.0"
            ]
        );
        assert!(inv.units.iter().enumerate().all(|(i, u)| u.order == i));
        assert_eq!(inv.units[1].bytes, 24 * 8 * 2);
        assert_eq!(
            inv.total_bytes(),
            inv.tensors.iter().map(|t| t.len).sum::<u64>()
        );
        let e = read(f.path(), Some(Family::T5)).unwrap_err().to_string();
        assert!(
            e.contains("says family `t5` but the file looks like `flux`"),
            "{e}"
        );
    }

    #[test]
    fn format_is_decided_by_magic_bytes() {
        let cases: &[(&[u8], &str)] = &[
            (b"GGUF\x03\0\0\0rest of a gguf file", "header declares"),
            (
                b"PK\x03\x04zip archive........",
                "not a readable zip archive",
            ),
            (
                b"\x80\x02pickle protocol 2......",
                "legacy PyTorch serialization",
            ),
            (
                b"hello world, not weights",
                "unrecognised format (first bytes 68 65 6c 6c",
            ),
            (b"abc", "unrecognised format"),
        ];
        for (bytes, want) in cases {
            let e = read(write(bytes).path(), None).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = read(Path::new("/nonexistent/x.safetensors"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.safetensors"), "{e}");
        let f = safetensors_file(&[]);
        let e = read(f.path(), None).unwrap_err().to_string();
        assert!(e.contains("holds no tensors"), "{e}");
    }
}
