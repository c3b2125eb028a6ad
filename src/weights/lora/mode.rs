//! How LoRAs meet a quantised (GGUF) base: the manifest's `lora_mode` value.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `bake`: dequantise each patched tensor once at load, add the LoRAs, keep it as bf16 (more
/// memory and more bytes on the link). `on_dequant`: keep the quantised weight and the LoRA
/// factors; add the delta after every dequantisation with `bake`'s f32 operations (the same
/// bytes; less memory, a cost per use). Bases stored as f32/f16/bf16/fp8 are always patched in
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum QuantizedLora {
    #[default]
    Bake,
    OnDequant,
}

const NAMES: &[&str] = &["bake", "on_dequant"];

impl QuantizedLora {
    pub const fn name(self) -> &'static str {
        match self {
            QuantizedLora::Bake => "bake",
            QuantizedLora::OnDequant => "on_dequant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown LoRA mode `{0}`: expected `bake` (dequantise, patch, keep bf16) or `on_dequant` (apply after every dequantisation)")]
pub struct QuantizedLoraError(pub String);

impl FromStr for QuantizedLora {
    type Err = QuantizedLoraError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "bake" | "baked" => Ok(QuantizedLora::Bake),
            "on_dequant" | "at_dequant" | "on_dequantize" | "on_dequantise" => {
                Ok(QuantizedLora::OnDequant)
            }
            _ => Err(QuantizedLoraError(s.to_string())),
        }
    }
}

impl fmt::Display for QuantizedLora {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for QuantizedLora {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for QuantizedLora {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = QuantizedLora;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`bake` or `on_dequant`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<QuantizedLora, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl JsonSchema for QuantizedLora {
    fn schema_name() -> Cow<'static, str> {
        "QuantizedLora".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How LoRAs are applied to a quantised (GGUF) base. bake: dequantise once at load, patch, keep as bf16 (exact, more memory). on_dequant: keep the quantised weight and the LoRA factors, add the delta after every dequantisation with bake's arithmetic (same output, less memory, a per-step cost).",
            "type": "string",
            "enum": NAMES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_serde_table() {
        for (s, want) in [
            ("bake", Some(QuantizedLora::Bake)),
            ("BAKE", Some(QuantizedLora::Bake)),
            ("on_dequant", Some(QuantizedLora::OnDequant)),
            ("on-dequant", Some(QuantizedLora::OnDequant)),
            (" at_dequant ", Some(QuantizedLora::OnDequant)),
            ("lazy", None),
            ("", None),
        ] {
            assert_eq!(s.parse::<QuantizedLora>().ok(), want, "{s:?}");
        }
        for m in [QuantizedLora::Bake, QuantizedLora::OnDequant] {
            assert_eq!(m.to_string().parse::<QuantizedLora>(), Ok(m));
            let j = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<QuantizedLora>(&j).unwrap(), m);
        }
        let e = serde_json::from_str::<QuantizedLora>("\"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected `bake`"), "{e}");
        let e = serde_json::from_str::<QuantizedLora>("3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`bake` or `on_dequant`"), "{e}");
        let schema = serde_json::to_value(schemars::schema_for!(QuantizedLora)).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["bake", "on_dequant"]));
    }
}
