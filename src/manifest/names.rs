//! Small name types of the manifest: compute dtype, FLUX variant, LoRA mode. Each is one type
//! with `FromStr` (with "did you mean"), `Display`, serde and `JsonSchema`, like
//! [`crate::sample::Sampler`].

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sample::names::{suggest, NameError};

/// Generates a name enum: canonical names, accepted aliases, trait impls.
macro_rules! names {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $schema_doc:literal,
     { $($(#[$vdoc:meta])* $var:ident => $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty { $($(#[$vdoc])* $var),+ }

        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$var),+];
            pub const fn name(self) -> &'static str {
                match self { $($ty::$var => $s),+ }
            }
            pub fn parse(s: &str) -> Result<Self, NameError> {
                let t = s.trim().to_ascii_lowercase();
                match t.as_str() {
                    $($s $(| $alias)* => return Ok($ty::$var),)+
                    _ => {}
                }
                Err(NameError {
                    what: $what,
                    name: s.to_string(),
                    suggestion: suggest(&t, Self::ALL.iter().map(|v| v.name())),
                    valid: Self::ALL.iter().map(|v| v.name()).collect::<Vec<_>>().join(", "),
                })
            }
        }
        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> { Self::parse(s) }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.name()) }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> { s.serialize_str(self.name()) }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Cow::<str>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> { stringify!($ty).into() }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                let names: Vec<&str> = vec![$($s $(, $alias)*),+];
                json_schema!({ "description": $schema_doc, "type": "string", "enum": names })
            }
        }
    };
}

names!(
    /// The floating-point type a model computes in (its weights are converted to it as they
    /// reach the compute device).
    ComputeDtype, "dtype",
    "Compute dtype: bf16, f16 or f32 (also bfloat16, fp16/float16, fp32/float32). Default: bf16 when the compute device is a CUDA GPU, f32 on the CPU.",
    {
        Bf16 => "bf16" | "bfloat16",
        F16 => "f16" | "fp16" | "float16",
        F32 => "f32" | "fp32" | "float32",
    }
);

names!(
    /// Which FLUX.1 model a `flux` checkpoint is: guidance-distilled dev, or step-distilled
    /// schnell (no guidance input).
    FluxVariant, "FLUX variant",
    "FLUX.1 variant: dev (guidance-distilled; uses `guidance`) or schnell (few-step; ignores `guidance`). Omit it to detect the variant from the weights (schnell has no guidance_in tensors).",
    {
        Dev => "dev",
        Schnell => "schnell",
    }
);

names!(
    /// How LoRAs are applied to a model's weights.
    LoraMode, "LoRA mode",
    "How LoRAs are applied. bake (default): once at load, in f32 on the compute device, rounded once to the stored dtype (output identical to a single-device run). on_dequant: GGUF weights stay quantized and the LoRA delta is added each time a block is dequantised (less memory, more compute per step).",
    {
        Bake => "bake",
        OnDequant => "on_dequant" | "on-dequant",
    }
);

impl ComputeDtype {
    /// The default for a compute device: bf16 on CUDA, f32 on the CPU.
    pub fn default_for(device: crate::device::DeviceName) -> Self {
        if device.is_cuda() {
            ComputeDtype::Bf16
        } else {
            ComputeDtype::F32
        }
    }

    /// The stored-tensor dtype of the same name.
    pub fn dtype(self) -> crate::weights::DType {
        match self {
            ComputeDtype::Bf16 => crate::weights::DType::BF16,
            ComputeDtype::F16 => crate::weights::DType::F16,
            ComputeDtype::F32 => crate::weights::DType::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        assert_eq!(ComputeDtype::parse("FP16"), Ok(ComputeDtype::F16));
        assert_eq!(LoraMode::parse("on-dequant"), Ok(LoraMode::OnDequant));
        for v in ComputeDtype::ALL {
            assert_eq!(ComputeDtype::parse(v.name()), Ok(*v));
        }
        let e = FluxVariant::parse("schnel").unwrap_err();
        assert_eq!(e.suggestion.as_deref(), Some("schnell"));
        assert_eq!(
            ComputeDtype::default_for(crate::device::DeviceName::Cuda(1)),
            ComputeDtype::Bf16
        );
        assert_eq!(
            ComputeDtype::default_for(crate::device::DeviceName::Cpu),
            ComputeDtype::F32
        );
    }
}
