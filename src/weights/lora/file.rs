//! Reading LoRA files: tensors as f32, plus the adapter configuration peft/diffusers keep
//! outside the tensors (alpha when no `.alpha` tensor exists).
//!
//! [`read_tensors_f32`] reads through [`WeightFile`], the one door through which tensor bytes
//! leave files: the header is validated completely before any data is touched, and the data
//! is read from the memory map.

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;

use super::LoraError;
use crate::weights::{DType, MetaValue, WeightFile};

/// One LoRA tensor, converted to f32.
#[derive(Debug, Clone)]
pub(crate) struct LoraTensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: Vec<f32>,
}

pub(crate) struct LoraFile {
    pub metadata: BTreeMap<String, String>,
    pub tensors: Vec<LoraTensor>,
}

/// Reads every tensor of the weight file at `path` (safetensors normally; any format
/// [`WeightFile`] reads) as f32. LoRA tensors must be F32, F16 or BF16 and finite. String
/// metadata (safetensors `__metadata__`) is kept for the adapter configuration.
pub(crate) fn read_tensors_f32(path: &Path) -> Result<LoraFile, LoraError> {
    let file = WeightFile::open(path)?;
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        let bad = |message: String| LoraError::Tensor {
            path: path.to_path_buf(),
            tensor: info.name.clone(),
            message,
        };
        if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(bad(format!(
                "is {}; LoRA tensors must be F32, F16 or BF16",
                info.dtype
            )));
        }
        let data = file.to_f32(&info.name)?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "holds a non-finite value ({}) at element {i}: the LoRA is broken",
                data[i]
            )));
        }
        tensors.push(LoraTensor {
            name: info.name.clone(),
            shape: info.shape.clone(),
            data,
        });
    }
    let metadata = file
        .metadata()
        .iter()
        .filter_map(|(k, v)| match v {
            MetaValue::String(s) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect();
    Ok(LoraFile { metadata, tensors })
}

/// The parts of a peft `LoraConfig` that change the arithmetic.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeftConfig {
    pub lora_alpha: Option<f64>,
    /// `alpha_pattern`: (pattern, alpha), matched against the module path like peft does
    /// (`(.*\.)?(pattern)$`).
    pub alpha_pattern: Vec<(Regex, String, f64)>,
    pub use_rslora: bool,
    pub use_dora: bool,
}

impl PeftConfig {
    /// Parses the config keys that start with `prefix` (`"transformer."`, or `""` for a bare
    /// `adapter_config.json`). `None` when none of them is present.
    pub(crate) fn from_json(
        value: &serde_json::Value,
        prefix: &str,
    ) -> Result<Option<PeftConfig>, String> {
        let Some(obj) = value.as_object() else {
            return Err("is not a JSON object".into());
        };
        let get = |k: &str| obj.get(&format!("{prefix}{k}"));
        if get("lora_alpha").is_none() && get("r").is_none() && get("alpha_pattern").is_none() {
            return Ok(None);
        }
        let mut c = PeftConfig {
            lora_alpha: get("lora_alpha").and_then(|v| v.as_f64()),
            use_rslora: get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
            use_dora: get("use_dora").and_then(|v| v.as_bool()).unwrap_or(false),
            ..Default::default()
        };
        if let Some(p) = get("alpha_pattern").and_then(|v| v.as_object()) {
            for (k, v) in p {
                let alpha = v
                    .as_f64()
                    .ok_or_else(|| format!("`{prefix}alpha_pattern.{k}` is not a number"))?;
                let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$")).map_err(|e| {
                    format!("`{prefix}alpha_pattern` key `{k}` is not a pattern: {e}")
                })?;
                c.alpha_pattern.push((re, k.clone(), alpha));
            }
        }
        Ok(Some(c))
    }

    /// Alpha for the module at `path` (peft's module path, e.g. `transformer_blocks.0.attn.to_q`).
    pub(crate) fn alpha_for(&self, path: &str) -> Option<f64> {
        self.alpha_pattern
            .iter()
            .find(|(re, _, _)| re.is_match(path))
            .map(|(_, _, a)| *a)
            .or(self.lora_alpha)
    }
}

/// The adapter configurations a LoRA file carries: diffusers' `lora_adapter_metadata`
/// (keys prefixed by component, `transformer.lora_alpha`), or peft's `adapter_config.json`
/// beside an `adapter_model.safetensors`.
#[derive(Debug, Clone, Default)]
pub(crate) struct AdapterConfigs {
    /// (component prefix as in the keys, e.g. `transformer.`, config)
    pub by_prefix: Vec<(String, PeftConfig)>,
    pub source: Option<String>,
}

impl AdapterConfigs {
    pub(crate) fn load(
        path: &Path,
        metadata: &BTreeMap<String, String>,
    ) -> Result<AdapterConfigs, LoraError> {
        let bad = |message: String| LoraError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut out = AdapterConfigs::default();
        if let Some(raw) = metadata.get("lora_adapter_metadata") {
            let v: serde_json::Value = serde_json::from_str(raw)
                .map_err(|e| bad(format!("`lora_adapter_metadata` is not JSON: {e}")))?;
            for prefix in [
                "transformer.",
                "unet.",
                "text_encoder.",
                "text_encoder_2.",
                "",
            ] {
                if let Some(c) = PeftConfig::from_json(&v, prefix)
                    .map_err(|m| bad(format!("`lora_adapter_metadata`: {m}")))?
                {
                    out.by_prefix.push((prefix.to_string(), c));
                }
            }
            out.source = Some("safetensors metadata `lora_adapter_metadata`".into());
        } else if path
            .file_name()
            .is_some_and(|n| n == "adapter_model.safetensors")
        {
            let cfg = path.with_file_name("adapter_config.json");
            if cfg.exists() {
                let text = std::fs::read_to_string(&cfg).map_err(|e| LoraError::Io {
                    path: cfg.clone(),
                    source: e,
                })?;
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| LoraError::Config {
                        path: cfg.clone(),
                        message: format!("not JSON: {e}"),
                    })?;
                if let Some(c) = PeftConfig::from_json(&v, "").map_err(|m| LoraError::Config {
                    path: cfg.clone(),
                    message: m,
                })? {
                    out.by_prefix.push((String::new(), c));
                }
                out.source = Some(format!("{}", cfg.display()));
            }
        }
        Ok(out)
    }

    /// The config for a module key (`transformer.transformer_blocks.0.attn.to_q`), and the
    /// module path peft matched patterns against.
    pub(crate) fn for_module<'a>(&self, module: &'a str) -> Option<(&PeftConfig, &'a str)> {
        // Longest matching prefix wins; the unprefixed config applies to anything.
        self.by_prefix
            .iter()
            .filter(|(p, _)| module.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(p, c)| {
                let path = module.strip_prefix(p.as_str()).unwrap_or(module);
                (c, path.strip_prefix("base_model.model.").unwrap_or(path))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_config_alpha_patterns() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"attn.to_k": 2, "single_transformer_blocks.1.proj_mlp": 16}, "text_encoder.lora_alpha": 3}"#,
        )
        .unwrap();
        let c = PeftConfig::from_json(&v, "transformer.").unwrap().unwrap();
        assert_eq!(c.alpha_for("transformer_blocks.0.attn.to_q"), Some(8.0));
        assert_eq!(c.alpha_for("transformer_blocks.0.attn.to_k"), Some(2.0));
        assert_eq!(
            c.alpha_for("single_transformer_blocks.1.proj_mlp"),
            Some(16.0)
        );
        assert_eq!(
            c.alpha_for("single_transformer_blocks.11.proj_mlp"),
            Some(8.0)
        );
        let t = PeftConfig::from_json(&v, "text_encoder.").unwrap().unwrap();
        assert_eq!(
            t.alpha_for("text_model.encoder.layers.0.self_attn.q_proj"),
            Some(3.0)
        );
        assert!(PeftConfig::from_json(&v, "unet.").unwrap().is_none());

        let mut metadata = BTreeMap::new();
        metadata.insert("lora_adapter_metadata".to_string(), v.to_string());
        let all = AdapterConfigs::load(Path::new("x.safetensors"), &metadata).unwrap();
        let (c, path) = all
            .for_module("transformer.transformer_blocks.0.attn.to_k")
            .unwrap();
        assert_eq!(
            (c.alpha_for(path), path),
            (Some(2.0), "transformer_blocks.0.attn.to_k")
        );
        assert!(all.for_module("lora_unet_x").is_none());
    }
}
