//! Element types of stored tensors, for safetensors, GGUF and PyTorch checkpoints alike: plain
//! floats and integers, fp8, and GGML block-quantised types (which store `block_elems` values in
//! `block_bytes`). GGML type ids (the numbers GGUF files store) map to these in
//! [`DType::from_ggml`]; ids mgpu cannot dequantise are named by [`ggml_type_name`] so errors can
//! say what a file holds.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
    F8_E4M3,
    F8_E5M2,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl DType {
    /// (elements per block, bytes per block). Plain types have blocks of one element.
    pub const fn block(self) -> (u64, u64) {
        use DType::*;
        match self {
            Bool | U8 | I8 | F8_E4M3 | F8_E5M2 => (1, 1),
            I16 | F16 | BF16 => (1, 2),
            I32 | F32 => (1, 4),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
        }
    }

    pub const fn is_quantized(self) -> bool {
        self.block().0 > 1
    }

    /// Whether a tensor stored as `self` stays in its stored blocks after loading, to be
    /// dequantised where it is used: every GGML block type (Q4_0 … Q8_0, Q2_K … Q6_K) computed
    /// in bf16 and not patched by a LoRA (the GPU has a dequantisation kernel per type with the
    /// CPU's arithmetic: `src/exec/kernels/dequant.cu`). Every other quantised or fp8 tensor is
    /// converted to `compute` at load. The executor (`exec::load`) and the planner
    /// (`plan::manifest`) both decide by this.
    pub fn stays_quantized(self, compute: DType, patched: bool) -> bool {
        self.is_quantized() && compute == DType::BF16 && !patched
    }

    /// Bytes needed to store `numel` elements, or `None` if `numel` is not a whole number of
    /// blocks or the size overflows.
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        if !numel.is_multiple_of(elems) {
            return None;
        }
        (numel / elems).checked_mul(bytes)
    }

    /// The safetensors spelling (`F32`, `BF16`, `F8_E4M3`, …); `None` for GGML types.
    pub const fn safetensors_name(self) -> Option<&'static str> {
        use DType::*;
        Some(match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F16 => "F16",
            BF16 => "BF16",
            F32 => "F32",
            F64 => "F64",
            F8_E4M3 => "F8_E4M3",
            F8_E5M2 => "F8_E5M2",
            _ => return None,
        })
    }

    pub fn from_safetensors_name(s: &str) -> Option<Self> {
        use DType::*;
        [
            Bool, U8, I8, I16, I32, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2,
        ]
        .into_iter()
        .find(|d| d.safetensors_name() == Some(s))
    }

    /// The GGML type id of this dtype in GGUF files, `None` for types GGUF cannot store.
    pub const fn ggml_id(self) -> Option<u32> {
        use DType::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            Bool | U8 | F8_E4M3 | F8_E5M2 => return None,
        })
    }

    /// The dtype of GGML type id `id`, if mgpu can read it.
    pub fn from_ggml(id: u32) -> Option<Self> {
        GGML_SUPPORTED
            .iter()
            .copied()
            .find(|d| d.ggml_id() == Some(id))
    }

    pub const fn name(self) -> &'static str {
        use DType::*;
        match self.safetensors_name() {
            Some(n) => n,
            None => match self {
                Q4_0 => "Q4_0",
                Q4_1 => "Q4_1",
                Q5_0 => "Q5_0",
                Q5_1 => "Q5_1",
                Q8_0 => "Q8_0",
                Q2_K => "Q2_K",
                Q3_K => "Q3_K",
                Q4_K => "Q4_K",
                Q5_K => "Q5_K",
                Q6_K => "Q6_K",
                _ => "?",
            },
        }
    }
}

/// GGML types mgpu reads from GGUF files, in id order (for "supported: …" messages).
pub const GGML_SUPPORTED: &[DType] = &[
    DType::F32,
    DType::F16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q2_K,
    DType::Q3_K,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::I8,
    DType::I16,
    DType::I32,
    DType::I64,
    DType::F64,
    DType::BF16,
];

/// The name ggml gives type id `id` (`IQ4_XS`, `TQ1_0`, …), for every id ggml has defined,
/// supported or not; `None` for ids ggml never defined.
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    // ggml.h `enum ggml_type`; 4, 5 (Q4_2, Q4_3) and 31..33, 36..38 (repacked Q4_0/IQ4_NL
    // variants) were removed from ggml but may still appear in old files.
    const NAMES: &[&str] = &[
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
        "NVFP4",
        "Q1_0",
    ];
    NAMES.get(id as usize).copied()
}

/// `F32, F16, Q4_0, …` for messages.
pub fn ggml_supported_names() -> String {
    GGML_SUPPORTED
        .iter()
        .map(|d| d.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for DType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl DType {
    /// Every element type, in declaration order (for the JSON schema's list of names).
    pub const ALL: [DType; 22] = {
        use DType::*;
        [
            Bool, U8, I8, I16, I32, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2, Q4_0, Q4_1, Q5_0,
            Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
        ]
    };
}

impl JsonSchema for DType {
    fn schema_name() -> Cow<'static, str> {
        "DType".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        json_schema!({
            "description": "A tensor's element type: safetensors' spelling for plain and fp8 types, GGML's for block-quantised ones.",
            "type": "string",
            "enum": names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`DType::ALL`] lists every variant once, with distinct names (a new variant makes the
    /// match below fail to compile until it is added here and to `ALL`).
    #[test]
    fn all_lists_every_type() {
        let index = |d: DType| -> usize {
            use DType::*;
            match d {
                Bool | U8 | I8 | I16 | I32 | I64 | F16 | BF16 | F32 | F64 | F8_E4M3 | F8_E5M2
                | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K => d as usize,
            }
        };
        for (i, d) in DType::ALL.iter().enumerate() {
            assert_eq!(index(*d), i);
        }
        let names: std::collections::BTreeSet<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), DType::ALL.len());
        assert!(!names.contains("?"));
    }

    #[test]
    fn storage_bytes_table() {
        assert_eq!(DType::BF16.storage_bytes(10), Some(20));
        assert_eq!(DType::Q8_0.storage_bytes(64), Some(68));
        assert_eq!(DType::Q8_0.storage_bytes(33), None);
        assert_eq!(DType::Q6_K.storage_bytes(512), Some(420));
        assert_eq!(DType::F64.storage_bytes(u64::MAX), None);
    }

    #[test]
    fn ggml_ids_round_trip() {
        for d in GGML_SUPPORTED {
            let id = d.ggml_id().unwrap();
            assert_eq!(DType::from_ggml(id), Some(*d));
            assert_eq!(ggml_type_name(id), Some(d.name()), "{d}");
        }
        assert_eq!(DType::from_ggml(23), None);
        assert_eq!(ggml_type_name(23), Some("IQ4_XS"));
        assert_eq!(ggml_type_name(9999), None);
    }

    #[test]
    fn safetensors_names_round_trip() {
        for n in ["F32", "BF16", "F8_E4M3", "F8_E5M2", "I64", "BOOL"] {
            assert_eq!(DType::from_safetensors_name(n).unwrap().name(), n);
        }
        assert_eq!(DType::from_safetensors_name("Q8_0"), None);
    }
}
