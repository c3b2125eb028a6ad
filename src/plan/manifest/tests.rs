//! Tests of the manifest → plan-request step: held dtypes, per-unit device bytes, assumed
//! layouts, workloads and LoRA modes.

use super::*;

/// A GGUF whose blocks mix K-quants: each unit counts its own values in bf16 (the Q4_K
/// unit 512 bytes per 144 stored, the Q6_K unit 512 per 210), neither the model's average
/// (which under-counted the Q4_K unit by a sixth) nor the largest ratio (which over-counted
/// the Q6_K unit by 46 %).
#[test]
fn each_unit_counts_its_own_device_bytes() {
    let m = flux_manifest("dtype = \"bf16\"", &[None]);
    let model = &m.models["flux"];
    let t = |name: &str, d: DType| (name.to_string(), d, vec![3072u64, 3072]);
    let inv = Inventory::synthetic(
        Some(crate::family::Family::Flux),
        &[
            t("double_blocks.0.img_mlp.0.weight", DType::Q4_K),
            t("double_blocks.1.img_mlp.0.weight", DType::Q6_K),
        ],
    );
    assert_eq!(inv.units.len(), 2, "{:?}", inv.units);
    let stored: Vec<u64> = inv.units.iter().map(|u| u.bytes).collect();
    assert_eq!(stored, [3072 * 3072 / 256 * 144, 3072 * 3072 / 256 * 210]);
    assert_eq!(device_bytes(model, &inv), [2 * 3072 * 3072; 2]);
}

#[test]
fn converted_dtypes_follow_the_executor() {
    use DType::*;
    // (stored, compute, loras) → held as
    let table = [
        (BF16, BF16, false, None),
        (BF16, F32, true, None),
        (F16, BF16, true, None),
        (Q8_0, BF16, false, None),
        (Q8_0, BF16, true, Some(BF16)),
        (Q8_0, F32, false, Some(F32)),
        // Every GGML block type computed in bf16 stays in its blocks (issue 13).
        (Q4_K, BF16, false, None),
        (Q6_K, BF16, false, None),
        (Q4_K, BF16, true, Some(BF16)),
        (Q2_K, F32, false, Some(F32)),
        (Q4_0, F16, true, Some(F16)),
        (Q4_0, F16, false, Some(F16)),
        // fp8 stays fp8 (widened on the compute device), with or without LoRAs.
        (F8_E4M3, BF16, false, None),
        (F8_E4M3, BF16, true, None),
        (F8_E5M2, F32, false, None),
        (I64, BF16, true, None),
    ];
    for (stored, compute, loras, want) in table {
        assert_eq!(
            loaded_dtype(stored, compute, loras),
            want,
            "{stored:?} {compute:?} {loras}"
        );
    }
}

/// fp8 compute (`dtype = "fp8"`): the family's fp8 linears are held as e4m3, one byte per
/// value, in every unit (FLUX's block projections and MLPs, Wan's attention projections
/// and feed-forward; a bf16 file's weights are quantised at load); every other tensor
/// keeps its bytes, and the compute device holds what the homes hold. The layouts are
/// the ones `mgpu plan` assumes for the missing FLUX.1-dev and Wan 2.1 1.3B files.
#[test]
fn fp8_compute_holds_the_fp8_linears_at_one_byte() {
    let flux = flux_dev_on_cuda("DTYPE");
    let wan = r#"
[settings]
compute = "cuda:0"
[models.wan]
family = "wan"
file = "wan2.1_t2v_1.3B_bf16.safetensors"
DTYPE
[models.umt5]
family = "umt5"
file = "umt5_xxl_fp16.safetensors"
tokenizer = "umt5-tokenizer.json"
[models.vae]
family = "wan-vae"
file = "wan_2.1_vae.safetensors"
[pipelines.t2v]
diffusion = "wan"
text_encoders = ["umt5"]
vae = "vae"
[[jobs]]
prompt = "p"
frames = 81
"#;
    let dir = tempfile::tempdir().unwrap();
    for (name, text, per_block) in [("flux", flux.as_str(), [8, 2]), ("wan", wan, [10, 10])] {
        let loaded = |dtype: &str| {
            let text = text.replace("DTYPE", &format!("dtype = \"{dtype}\""));
            let m = crate::manifest::load_str(&dir.path().join("m.toml"), &text).unwrap();
            let model = &m.models[name];
            let (inv, _) = assumed_inventory(model).unwrap();
            let inv = as_loaded(model, Arc::new(inv));
            let held = device_bytes(model, &inv);
            (inv, held, workload(&m, model).fp8_linears)
        };
        let ((ia, ha, wa), (ib, hb, wb)) = (loaded("bf16"), loaded("fp8"));
        assert!(wb && !wa, "{name}");
        // The compute device holds the e4m3 bytes too: each unit as its home does (Wan's
        // f32 modulations shrink to bf16 there).
        for (i, (ua, ub)) in ia.units.iter().zip(&ib.units).enumerate() {
            assert!(ha[i] <= ua.bytes && hb[i] <= ub.bytes, "{name} {}", ua.name);
            assert_eq!(ua.bytes - ha[i], ub.bytes - hb[i], "{name} {}", ua.name);
        }
        let family = ia.family.unwrap();
        for (ta, tb) in ia.tensors.iter().zip(&ib.tensors) {
            let canonical = crate::inventory::canonical_name(Some(family), &ta.name);
            if family.fp8_linear(&canonical) {
                assert_eq!(
                    (tb.dtype, tb.len),
                    (DType::F8_E4M3, ta.numel()),
                    "{}",
                    ta.name
                );
            } else {
                assert_eq!((tb.dtype, tb.len), (ta.dtype, ta.len), "{}", ta.name);
            }
        }
        // Every block holds its fp8 linears at one byte per value (bf16: two).
        let mut blocks = 0;
        for (ua, ub) in ia.units.iter().zip(&ib.units) {
            let linears: Vec<&TensorInfo> = ia
                .tensors_of(ua)
                .filter(|t| {
                    family.fp8_linear(&crate::inventory::canonical_name(Some(family), &t.name))
                })
                .collect();
            let numel: u64 = linears.iter().map(|t| t.numel()).sum();
            assert_eq!(ub.bytes, ua.bytes - numel, "{name} {}", ua.name);
            if ua.kind == crate::inventory::UnitKind::Block {
                assert!(per_block.contains(&linears.len()), "{name} {}", ua.name);
                blocks += 1;
            } else {
                assert!(linears.is_empty(), "{name} {}", ua.name);
            }
        }
        assert!(blocks >= 30, "{name}: {blocks} blocks");
    }
}

#[test]
fn a_corrupt_lora_fails_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("style.safetensors"),
        b"\x10\0\0\0\0\0\0\0{not json at all",
    )
    .unwrap();
    let text = flux_dev_on_cuda("loras = [{ file = \"style.safetensors\" }]");
    let m = crate::manifest::load_str(&dir.path().join("m.toml"), &text).unwrap();
    let Err(e) = read_inventories_assuming(&m) else {
        panic!("plan accepted a corrupt LoRA");
    };
    let e = e.to_string();
    assert!(e.contains("model `flux`: LoRA"), "{e}");
    assert!(e.contains("style.safetensors"), "{e}");
    assert!(e.contains("m.toml:7:"), "{e}");
}

/// A FLUX.1-dev pipeline on cuda:0 with the published file names (`mgpu plan` assumes
/// their layouts); `flux_extra` is the seventh line, more keys of `[models.flux]`.
fn flux_dev_on_cuda(flux_extra: &str) -> String {
    format!(
        r#"
[settings]
compute = "cuda:0"
[models.flux]
family = "flux"
file = "flux1-dev.safetensors"
{flux_extra}
[models.t5]
family = "t5"
file = "t5xxl_fp16.safetensors"
tokenizer = "t5-tokenizer.json"
[models.clip]
family = "clip-l"
file = "clip_l.safetensors"
tokenizer = "clip-tokenizer.json"
[models.vae]
family = "flux-vae"
file = "ae.safetensors"
[pipelines.dev]
diffusion = "flux"
text_encoders = ["clip", "t5"]
vae = "vae"
[[jobs]]
prompt = "p"
"#
    )
}

/// A CPU manifest with FLUX (`flux_extra`: more keys of `[models.flux]`), T5, CLIP and
/// the VAE, one pipeline per entry of `pipelines` (its `max_sequence_length`) and one job
/// per pipeline.
fn flux_manifest(flux_extra: &str, pipelines: &[Option<u32>]) -> Manifest {
    let mut text = format!(
        r#"
[settings]
compute = "cpu"
[models.flux]
family = "flux"
file = "flux.safetensors"
{flux_extra}
[models.t5]
family = "t5"
file = "t5.safetensors"
tokenizer = "t5.json"
[models.clip]
family = "clip-l"
file = "clip.safetensors"
tokenizer = "clip.json"
[models.vae]
family = "flux-vae"
file = "ae.safetensors"
"#
    );
    for (i, n) in pipelines.iter().enumerate() {
        text += &format!(
            "[pipelines.p{i}]\ndiffusion = \"flux\"\ntext_encoders = [\"clip\", \"t5\"]\nvae = \"vae\"\n"
        );
        if let Some(n) = n {
            text += &format!("max_sequence_length = {n}\n");
        }
    }
    for i in 0..pipelines.len() {
        text += &format!("[[jobs]]\npipeline = \"p{i}\"\nprompt = \"x\"\n");
    }
    crate::manifest::load_str(std::path::Path::new("m.toml"), &text).unwrap()
}

/// With a LoRA, `bake` holds a GGUF's blocks dequantised (the planner assumes every one is
/// patched); `on_dequant` in bf16 keeps them as stored, adds the LoRA's factors (f32) to
/// the compute device's resident bytes and the terms' operations to every widening.
#[test]
fn on_dequant_plans_the_blocks_and_the_lora_factors() {
    let lora = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/tiny/lora-tiny.safetensors");
    let factors: u64 = crate::weights::WeightFile::open(&lora)
        .unwrap()
        .tensors()
        .iter()
        .map(|t| 4 * t.numel())
        .sum();
    assert!(factors > 0);
    let planned = |mode: &str| {
        let text = format!(
            "[settings]\ncompute = \"cuda:0\"\n[models.flux]\nfamily = \"flux\"\nfile = \"flux1-dev-Q8_0.gguf\"\ndtype = \"bf16\"\nlora_mode = \"{mode}\"\nloras = [{{ file = \"{}\" }}]\n",
            lora.display()
        );
        let m = crate::manifest::load_str(std::path::Path::new("m.toml"), &text).unwrap();
        let model = &m.models["flux"];
        let (inv, _) = assumed_inventory(model).unwrap();
        let inv = as_loaded(model, Arc::new(inv));
        let cost = on_dequant_cost(model, &inv);
        let held = with_factors(&inv, device_bytes(model, &inv), cost);
        let flops = cost.flops_per_value;
        (inv, held, flops)
    };
    let (baked, baked_held, baked_flops) = planned("bake");
    let (kept, kept_held, kept_flops) = planned("on_dequant");
    // The tiny LoRA is rank 4: 2·4 + 2 operations per value at each widening.
    assert_eq!((baked_flops, kept_flops), (0.0, 10.0));
    assert!(baked.tensors.iter().all(|t| !t.dtype.is_quantized()));
    let q8 = kept
        .tensors
        .iter()
        .filter(|t| t.dtype == DType::Q8_0)
        .count();
    assert_eq!(q8, 19 * 2 * 5 + 38 * 3, "every block matrix");
    assert!(2 * kept.total_bytes() < baked.total_bytes() + baked.total_bytes() / 10);
    let resident = kept
        .units
        .iter()
        .position(|u| u.kind == crate::inventory::UnitKind::Resident)
        .unwrap();
    for (i, (a, b)) in baked_held.iter().zip(&kept_held).enumerate() {
        let extra = if i == resident { factors } else { 0 };
        assert_eq!(*a + extra, *b, "unit {i}");
    }
}

/// T5's token count in the workload: the pipeline's `max_sequence_length`, else 512 for
/// dev and 256 for schnell; the longest over the jobs that use the model.
#[test]
fn text_tokens_follow_max_sequence_length() {
    let m = flux_manifest;
    let table: &[(&str, &[Option<u32>], u32)] = &[
        ("", &[None], 512),
        ("variant = \"schnell\"", &[None], 256),
        ("", &[Some(32)], 32),
        ("variant = \"schnell\"", &[Some(77)], 77),
        ("variant = \"schnell\"", &[Some(32), None], 256),
        ("", &[Some(32), Some(300)], 300),
    ];
    for (variant, pipelines, want) in table {
        let m = m(variant, pipelines);
        for name in ["flux", "t5"] {
            assert_eq!(
                workload(&m, &m.models[name]).text_tokens,
                *want,
                "{variant} {pipelines:?} ({name})"
            );
        }
    }
}
