//! The tensor types of a published diffusion GGUF, for planning before the file is downloaded
//! (`mgpu plan`, `plan::manifest::assumed_inventory`): the file type named in the file name
//! (`flux1-dev-Q4_K_S.gguf`) and which tensors such a file holds in which type.
//!
//! The rules are those of city96's ComfyUI-GGUF tools (`tools/convert.py` and the
//! `lcpp.patch` applied to llama.cpp's `llama-quantize`), which made the FLUX and Wan GGUF
//! files most users download:
//! - one-dimensional tensors and tensors of at most 1 024 values stay F32;
//! - `img_in`, `time_in.in_layer`, `vector_in.in_layer`, `guidance_in.in_layer` and
//!   `final_layer.linear` stay F32; the rest of `txt_in`, `time_in`, `vector_in`,
//!   `guidance_in`, `final_layer` and `time_embedding` stay F16; Wan's `…modulation` tensors F32;
//! - a matrix whose rows are not whole blocks of the type falls back to F16;
//! - the `_M` / `_L` mixes give the attention `qkv` matrices more bits (llama.cpp's rule for
//!   `attn_qkv`: Q3_K_M/L → Q4_K, Q4_K_M → Q5_K, Q5_K_M → Q6_K); FLUX and Wan have no
//!   tensor named as llama.cpp's other mix rules expect, so everything else is the base type.
//!
//! An assumption, not the file: a file made otherwise plans within a few percent of these
//! bytes, and `mgpu run` always reads the real header.

use std::fmt;

use super::Inventory;
use crate::weights::DType;

/// A llama.cpp file type (`Q4_K_M`): the base block type and the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub base: DType,
    pub mix: Mix,
}

/// The `_S` / `_M` / `_L` suffix of a K-quant file type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// No suffix (Q8_0, Q6_K, …) or `_S`: every quantised matrix in the base type.
    Small,
    Medium,
    Large,
}

/// File types as spelled in file names, longest first so that `q4_k_m` wins over `q4_k`.
const NAMES: [(&str, DType, Mix); 17] = [
    ("q3_k_s", DType::Q3_K, Mix::Small),
    ("q3_k_m", DType::Q3_K, Mix::Medium),
    ("q3_k_l", DType::Q3_K, Mix::Large),
    ("q4_k_s", DType::Q4_K, Mix::Small),
    ("q4_k_m", DType::Q4_K, Mix::Medium),
    ("q5_k_s", DType::Q5_K, Mix::Small),
    ("q5_k_m", DType::Q5_K, Mix::Medium),
    ("q2_k", DType::Q2_K, Mix::Small),
    ("q3_k", DType::Q3_K, Mix::Small),
    ("q4_k", DType::Q4_K, Mix::Small),
    ("q5_k", DType::Q5_K, Mix::Small),
    ("q6_k", DType::Q6_K, Mix::Small),
    ("q4_0", DType::Q4_0, Mix::Small),
    ("q4_1", DType::Q4_1, Mix::Small),
    ("q5_0", DType::Q5_0, Mix::Small),
    ("q5_1", DType::Q5_1, Mix::Small),
    ("q8_0", DType::Q8_0, Mix::Small),
];

impl FileType {
    /// The file type a file name names (case-insensitive), if any.
    pub fn in_file_name(name: &str) -> Option<FileType> {
        let lower = name.to_ascii_lowercase();
        NAMES
            .iter()
            .find(|(n, _, _)| lower.contains(n))
            .map(|&(_, base, mix)| FileType { base, mix })
    }

    /// The type a tensor `name` of `shape` (PyTorch order: rows last) has in such a file.
    pub fn tensor_type(self, name: &str, shape: &[u64]) -> DType {
        let numel: u64 = shape.iter().product();
        let has = |k: &str| name.contains(k);
        if shape.len() < 2
            || numel <= 1024
            || name.ends_with(".modulation")
            || ["img_in.", "time_in.in_layer.", "vector_in.in_layer."]
                .iter()
                .chain(&["guidance_in.in_layer.", "final_layer.linear."])
                .any(|k| has(k))
        {
            return DType::F32;
        }
        if [
            "txt_in.",
            "time_in.",
            "vector_in.",
            "guidance_in.",
            "final_layer.",
        ]
        .iter()
        .chain(&["time_embedding."])
        .any(|k| has(k))
        {
            return DType::F16;
        }
        let t = if has("attn.qkv.weight") {
            match (self.base, self.mix) {
                (DType::Q3_K, Mix::Medium | Mix::Large) => DType::Q4_K,
                (DType::Q4_K, Mix::Medium) => DType::Q5_K,
                (DType::Q5_K, Mix::Medium) => DType::Q6_K,
                (b, _) => b,
            }
        } else {
            self.base
        };
        let row = shape.last().copied().unwrap_or(0);
        if row % t.block().0 == 0 {
            t
        } else {
            DType::F16
        }
    }

    /// `inv` as a GGUF of this file type would hold it.
    pub fn apply(self, inv: &Inventory) -> Inventory {
        let specs: Vec<(String, DType, Vec<u64>)> = inv
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    self.tensor_type(&t.name, &t.shape),
                    t.shape.clone(),
                )
            })
            .collect();
        Inventory::synthetic(inv.family, &specs)
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let suffix = match (self.mix, self.base.block().0) {
            (_, 32) => "",
            (Mix::Medium, _) => "_M",
            (Mix::Large, _) => "_L",
            (Mix::Small, _) if matches!(self.base, DType::Q3_K | DType::Q4_K | DType::Q5_K) => "_S",
            (Mix::Small, _) => "",
        };
        write!(f, "{}{suffix}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::synthetic;

    #[test]
    fn file_names_name_their_type() {
        let table = [
            ("flux1-dev-Q8_0.gguf", Some("Q8_0")),
            ("flux1-dev-Q4_K_S.gguf", Some("Q4_K_S")),
            ("flux1-dev-q4_k_m.gguf", Some("Q4_K_M")),
            ("wan2.1-t2v-14b-Q3_K_L.gguf", Some("Q3_K_L")),
            ("flux1-dev-Q6_K.gguf", Some("Q6_K")),
            ("flux1-dev-Q5_1.gguf", Some("Q5_1")),
            ("flux1-dev-Q2_K.gguf", Some("Q2_K")),
            ("flux1-dev-Q4_K.gguf", Some("Q4_K_S")),
            ("flux1-dev-F16.gguf", None),
            ("flux1-dev-IQ4_XS.gguf", None),
        ];
        for (name, want) in table {
            let got = FileType::in_file_name(name).map(|t| t.to_string());
            assert_eq!(got.as_deref(), want, "{name}");
        }
    }

    /// The city96 FLUX.1-dev files' sizes (Hugging Face `city96/FLUX.1-dev-gguf`: Q8_0 12.7 GB,
    /// Q6_K 9.86, Q5_K_S 8.29, Q5_1 9.01, Q5_0 8.27, Q4_K_S 6.81, Q4_1 7.53, Q4_0 6.79,
    /// Q3_K_S 5.23, Q2_K 4.03 GB, the file sizes as listed, headers included): these rules
    /// give every one within 1 %.
    #[test]
    fn flux_dev_files_have_the_published_sizes() {
        let bf16 = synthetic::flux_dev(DType::BF16);
        let table = [
            ("Q8_0", 12.7),
            ("Q6_K", 9.86),
            ("Q5_K_S", 8.29),
            ("Q5_1", 9.01),
            ("Q5_0", 8.27),
            ("Q4_K_S", 6.81),
            ("Q4_1", 7.53),
            ("Q4_0", 6.79),
            ("Q3_K_S", 5.23),
            ("Q2_K", 4.03),
        ];
        for (name, gb) in table {
            let t = FileType::in_file_name(name).unwrap();
            let inv = t.apply(&bf16);
            assert_eq!(inv.total_params(), bf16.total_params());
            let got = inv.total_bytes() as f64 / 1e9;
            assert!(
                (got / gb - 1.0).abs() < 0.01,
                "{name}: {got:.3} GB, published {gb}"
            );
        }
    }

    #[test]
    fn tensors_keep_their_published_types() {
        let q4km = FileType::in_file_name("x-Q4_K_M.gguf").unwrap();
        let m = [3072u64, 3072];
        let table: [(&str, &[u64], DType); 10] = [
            (
                "double_blocks.0.img_attn.qkv.weight",
                &[9216, 3072],
                DType::Q5_K,
            ),
            ("double_blocks.0.img_attn.proj.weight", &m, DType::Q4_K),
            ("double_blocks.0.img_attn.proj.bias", &[3072], DType::F32),
            (
                "single_blocks.0.linear1.weight",
                &[21504, 3072],
                DType::Q4_K,
            ),
            ("img_in.weight", &[3072, 64], DType::F32),
            ("txt_in.weight", &[3072, 4096], DType::F16),
            (
                "final_layer.adaLN_modulation.1.weight",
                &[6144, 3072],
                DType::F16,
            ),
            ("blocks.0.modulation", &[1, 6, 5120], DType::F32),
            ("patch_embedding.weight", &[5120, 16, 1, 2, 2], DType::F16),
            ("blocks.0.ffn.2.weight", &[5120, 13824], DType::Q4_K),
        ];
        for (name, shape, want) in table {
            assert_eq!(q4km.tensor_type(name, shape), want, "{name}");
        }
        // Rows that are not whole blocks: F16 (Q4_K's blocks are 256 values, Q8_0's 32).
        assert_eq!(q4km.tensor_type("x.weight", &[64, 96]), DType::F16);
        let q8 = FileType::in_file_name("x-Q8_0.gguf").unwrap();
        assert_eq!(q8.tensor_type("x.weight", &[64, 96]), DType::Q8_0);
    }
}
