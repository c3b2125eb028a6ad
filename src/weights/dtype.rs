//! Element types of stored tensors, for safetensors and GGUF alike: plain floats and integers,
//! fp8, and GGML block-quantised types (which store `block_elems` values in `block_bytes`).

use std::fmt;

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

    /// Bytes needed to store `numel` elements, or `None` if `numel` is not a whole number of
    /// blocks or the size overflows.
    pub fn storage_bytes(self, numel: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        if numel % elems != 0 {
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
        [Bool, U8, I8, I16, I32, I64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2]
            .into_iter()
            .find(|d| d.safetensors_name() == Some(s))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_bytes_table() {
        assert_eq!(DType::BF16.storage_bytes(10), Some(20));
        assert_eq!(DType::Q8_0.storage_bytes(64), Some(68));
        assert_eq!(DType::Q8_0.storage_bytes(33), None);
        assert_eq!(DType::Q6_K.storage_bytes(512), Some(420));
        assert_eq!(DType::F64.storage_bytes(u64::MAX), None);
    }

    #[test]
    fn safetensors_names_round_trip() {
        for n in ["F32", "BF16", "F8_E4M3", "F8_E5M2", "I64", "BOOL"] {
            assert_eq!(DType::from_safetensors_name(n).unwrap().name(), n);
        }
        assert_eq!(DType::from_safetensors_name("Q8_0"), None);
    }
}
