//! Small name types of the manifest: compute dtype, FLUX variant, LoRA mode. Each is one type
//! with `FromStr` (with "did you mean"), `Display`, serde and `JsonSchema`, like
//! [`crate::sample::Sampler`].

crate::sample::names::name_enum!(
    /// The floating-point type a model computes in (its weights are converted to it as they
    /// reach the compute device).
    ComputeDtype, "dtype",
    "Compute dtype: bf16, f16 or f32 (also bfloat16, fp16/float16, fp32/float32), or fp8 (also fp8_e4m3fn_fast): the block projections and MLPs of FLUX and Wan models multiply in e4m3 on the tensor cores (compute capability 8.9+; emulated on the CPU), everything else in bf16; not equal to bf16, bit-identical across placements. Default: bf16 when the compute device is a CUDA GPU, f32 on the CPU.",
    {
        Bf16 => "bf16" | "bfloat16",
        F16 => "f16" | "fp16" | "float16",
        F32 => "f32" | "fp32" | "float32",
        Fp8 => "fp8" | "fp8_e4m3fn_fast" | "fp8-e4m3fn-fast",
    }
);

crate::sample::names::name_enum!(
    /// Which FLUX.1 model a `flux` checkpoint is: guidance-distilled dev, or step-distilled
    /// schnell (no guidance input).
    FluxVariant, "FLUX variant",
    "FLUX.1 variant: dev (guidance-distilled; uses `guidance`) or schnell (few-step; ignores `guidance`). Omit it to detect the variant from the weights (schnell has no guidance_in tensors).",
    {
        Dev => "dev",
        Schnell => "schnell",
    }
);

crate::sample::names::name_enum!(
    /// How LoRAs are applied to a model's weights.
    LoraMode, "LoRA mode",
    "How LoRAs are applied. bake (default): once at load, in f32 on the compute device, rounded once to the stored dtype (output identical to a single-device run). on_dequant (GGUF bases computed in bf16): keep the patched weights in their GGML blocks in every home and on the link, and add the LoRA terms each time they are dequantised, with bake's f32 operations in bake's order (the same output, bit for bit); the LoRA factors stay resident on the compute device. Computing in another dtype it computes as bake and a note says so.",
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

    /// The stored-tensor dtype of the activations (and of every weight that is not an fp8
    /// linear): bf16 for `fp8`.
    pub fn dtype(self) -> crate::weights::DType {
        match self {
            ComputeDtype::Bf16 | ComputeDtype::Fp8 => crate::weights::DType::BF16,
            ComputeDtype::F16 => crate::weights::DType::F16,
            ComputeDtype::F32 => crate::weights::DType::F32,
        }
    }

    /// Whether the family's fp8 linears ([`crate::family::Family::fp8_linear`]) keep e4m3
    /// weights and multiply in e4m3 ([`crate::models::fp8`]).
    pub fn fp8_linears(self) -> bool {
        self == ComputeDtype::Fp8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_round_trip() {
        assert_eq!(ComputeDtype::parse("FP16"), Ok(ComputeDtype::F16));
        assert_eq!(
            ComputeDtype::parse("fp8_e4m3fn_fast"),
            Ok(ComputeDtype::Fp8)
        );
        assert!(ComputeDtype::Fp8.fp8_linears() && !ComputeDtype::Bf16.fp8_linears());
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
