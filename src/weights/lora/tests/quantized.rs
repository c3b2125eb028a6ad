//! LoRAs on fp8, scaled-fp8 and quantised (GGUF) bases: `bake` and `on_dequant` agree, only
//! patched rows change, and the FLUX double-block memory trade-off of the two modes.

use super::*;

#[test]
fn scaled_fp8_and_fp8_bases() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::F8_E4M3);
    let (a, b) = (vals(4, 1), vals(8, 2));
    let p = write(
        dir.path(),
        "f.safetensors",
        &[
            t("lora_unet_img_in.lora_down.weight", &[2, 2], a.clone()),
            t("lora_unet_img_in.lora_up.weight", &[4, 2], b.clone()),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(p, 1.0)], Family::Flux, &l, true).unwrap();
    let stored: Vec<u8> = vals(8, 3)
        .iter()
        .map(|v| float8::F8E4M3::from_f32(v * 40.0).to_bits())
        .collect();
    for scale in [None, Some(0.025f32)] {
        let got = set
            .patch(
                "img_in.weight",
                BaseTensor {
                    dtype: DType::F8_E4M3,
                    shape: &[4, 2],
                    bytes: &stored,
                    scale,
                },
            )
            .unwrap()
            .unwrap();
        let mut w = vec![0f32; 8];
        math::decode(DType::F8_E4M3, &stored, scale, &mut w);
        let patched = reference(&w, 2, 0..4, &b, &a, 2, 1.0);
        let mut want = vec![0u8; 8];
        math::encode(DType::F8_E4M3, &patched, scale, &mut want);
        assert_eq!(got.bytes, want, "scale {scale:?}");
        assert_eq!(got.saturated, 0);
    }
    let e = set
        .patch(
            "img_in.weight",
            BaseTensor {
                dtype: DType::Q8_0,
                shape: &[4, 2],
                bytes: &[],
                scale: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("use `bake` or `delta`"), "{e}");
    let e = set
        .patch(
            "img_in.weight",
            BaseTensor {
                dtype: DType::F32,
                shape: &[2, 4],
                bytes: &[0; 32],
                scale: None,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("shape [2, 4] does not match"), "{e}");
}

#[test]
fn bake_and_on_dequant_agree() {
    let dir = tempfile::tempdir().unwrap();
    // The layout's dtype does not matter to bake/delta: the executor dequantises.
    let l = layout(DType::F32);
    let p = write(
        dir.path(),
        "q.safetensors",
        &[
            t(
                "lora_unet_double_blocks_0_img_mlp_0.lora_down.weight",
                &[2, 4],
                vals(8, 1),
            ),
            t(
                "lora_unet_double_blocks_0_img_mlp_0.lora_up.weight",
                &[8, 2],
                vals(16, 2),
            ),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(p, 0.9)], Family::Flux, &l, true).unwrap();
    let name = "double_blocks.0.img_mlp.0.weight";
    let dequantized = vals(32, 4);
    // Bake: patch once, keep bf16.
    let mut w = dequantized.clone();
    let baked = set
        .bake(name, &[8, 4], &mut w, DType::BF16)
        .unwrap()
        .unwrap();
    assert_eq!((baked.dtype, baked.bytes.len()), (DType::BF16, 64));
    // On dequant: the same f32 delta, applied to each dequantised copy.
    let d = set.delta(name).unwrap();
    let mut again = dequantized.clone();
    d.apply_f32(&mut again).unwrap();
    assert_eq!(again, w);
    let mut rounded = vec![0u8; 64];
    math::encode(DType::BF16, &again, None, &mut rounded);
    assert_eq!(rounded, baked.bytes);
    assert_eq!(d.factor_bytes(), (8 * 2 + 2 * 4) * 4);
    assert_eq!(d.flops(), 8 * 4 * (2 * 2 + 2));
    assert!(set
        .bake("img_in.weight", &[4, 2], &mut [0.0; 8], DType::BF16)
        .unwrap()
        .is_none());
}

#[test]
fn patched_rows_only_and_same_bytes_on_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let l = layout(DType::BF16);
    let p = write(
        dir.path(),
        "r.safetensors",
        &[
            t(
                "transformer.transformer_blocks.0.attn.add_k_proj.lora_A.weight",
                &[1, 4],
                vals(4, 1),
            ),
            t(
                "transformer.transformer_blocks.0.attn.add_k_proj.lora_B.weight",
                &[4, 1],
                vals(4, 2),
            ),
        ],
        None,
    );
    let (set, _) = LoraSet::load(&[(p, 1.0)], Family::Flux, &l, true).unwrap();
    let base: Vec<u8> = (0..12 * 4 * 2)
        .map(|i| (i * 7 % 251) as u8 & 0x3f)
        .collect();
    let bt = BaseTensor {
        dtype: DType::BF16,
        shape: &[12, 4],
        bytes: &base,
        scale: None,
    };
    let a = set
        .patch("double_blocks.0.txt_attn.qkv.weight", bt)
        .unwrap()
        .unwrap();
    let b = set
        .patch("double_blocks.0.txt_attn.qkv.weight", bt)
        .unwrap()
        .unwrap();
    assert_eq!(a, b);
    let row = 4 * 2;
    assert_eq!(a.bytes[..4 * row], base[..4 * row], "q rows untouched");
    assert_eq!(a.bytes[8 * row..], base[8 * row..], "v rows untouched");
    assert_ne!(
        a.bytes[4 * row..8 * row],
        base[4 * row..8 * row],
        "k rows patched"
    );
}

/// The numbers in docs/lora.md's bake/on_dequant table, from the real FLUX.1-dev layout.
#[test]
fn flux_double_block_tradeoff() {
    let dir = tempfile::tempdir().unwrap();
    let infos: Vec<TensorInfo> = FluxDims::DEV
        .bfl_tensors()
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            len: 0,
            name,
            dtype: DType::BF16,
            shape,
            offset: 0,
        })
        .collect();
    let l = canonicalize(Family::Flux, &infos).unwrap();
    let block: Vec<&crate::weights::keymap::CanonicalTensor> = l
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("double_blocks.0."))
        .collect();
    let bytes = |big: DType| -> u64 {
        block
            .iter()
            .map(|t| {
                let d = if t.shape.len() == 2 { big } else { DType::F32 };
                d.storage_bytes(t.numel()).unwrap()
            })
            .sum()
    };
    let bf16_all: u64 = block
        .iter()
        .map(|t| DType::BF16.storage_bytes(t.numel()).unwrap())
        .sum();
    assert_eq!(bf16_all, 679_662_592);
    assert_eq!(bytes(DType::Q8_0), 361_342_976);
    assert_eq!(bytes(DType::Q4_K), 191_473_664);
    assert_eq!(
        bytes(DType::BF16),
        679_847_936,
        "bake: matrices bf16, biases/norms f32"
    );

    let rank = 16;
    let mut ts = Vec::new();
    for t in block.iter().filter(|t| t.shape.len() == 2) {
        let m = t.name.strip_suffix(".weight").unwrap();
        let (out, inp) = (t.shape[0] as usize, t.shape[1] as usize);
        let key = format!("lora_unet_{}", m.replace('.', "_"));
        ts.push(T {
            name: format!("{key}.lora_down.weight"),
            shape: vec![rank, inp],
            data: vec![0.0; rank * inp],
            dtype: safetensors::Dtype::BF16,
        });
        ts.push(T {
            name: format!("{key}.lora_up.weight"),
            shape: vec![out, rank],
            data: vec![0.0; out * rank],
            dtype: safetensors::Dtype::BF16,
        });
    }
    assert_eq!(ts.len(), 20);
    let p = write(dir.path(), "r16.safetensors", &ts, None);
    let (set, _) = LoraSet::load(&[(p, 1.0)], Family::Flux, &l, true).unwrap();
    let deltas: Vec<&TensorDelta> = set.patched_names().map(|n| set.delta(n).unwrap()).collect();
    assert_eq!(deltas.len(), 10);
    assert_eq!(
        deltas.iter().map(|d| d.factor_bytes()).sum::<u64>(),
        9_043_968
    );
    assert_eq!(
        deltas.iter().map(|d| d.flops()).sum::<u64>(),
        11_551_113_216
    );
}
