use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::family::Family;
use crate::models::testutil::{recording, split_units, zero_cost};

/// The T5 v1.1-XXL encoder file layout, written from the architecture description (not from
/// the model code): 24 blocks of attention (q, k, v, o 4096×4096 as [out, in]) + RMS norm,
/// gated-GELU FF (wi_0, wi_1 10240×4096, wo 4096×10240) + RMS norm; block 0 owns the
/// 32-bucket × 64-head relative bias; `shared.weight` 32128×4096; final norm.
fn xxl_layout() -> Vec<(String, Vec<usize>)> {
    let mut v = vec![("shared.weight".to_string(), vec![32128, 4096])];
    for b in 0..24 {
        let p = format!("encoder.block.{b}.layer");
        for m in ["q", "k", "v", "o"] {
            v.push((format!("{p}.0.SelfAttention.{m}.weight"), vec![4096, 4096]));
        }
        if b == 0 {
            v.push((
                format!("{p}.0.SelfAttention.relative_attention_bias.weight"),
                vec![32, 64],
            ));
        }
        v.push((format!("{p}.0.layer_norm.weight"), vec![4096]));
        v.push((
            format!("{p}.1.DenseReluDense.wi_0.weight"),
            vec![10240, 4096],
        ));
        v.push((
            format!("{p}.1.DenseReluDense.wi_1.weight"),
            vec![10240, 4096],
        ));
        v.push((format!("{p}.1.DenseReluDense.wo.weight"), vec![4096, 10240]));
        v.push((format!("{p}.1.layer_norm.weight"), vec![4096]));
    }
    v.push(("encoder.final_layer_norm.weight".into(), vec![4096]));
    v
}

/// Builds the resident part and every block from `layout` (zero-cost tensors) and returns the
/// names read, by full name.
fn consume(cfg: &Config, layout: &[(String, Vec<usize>)]) -> candle_core::Result<BTreeSet<String>> {
    let tensors: HashMap<String, Tensor> = layout
        .iter()
        .map(|(n, s)| (n.clone(), zero_cost(s, DType::BF16)))
        .collect();
    let (resident, units) = split_units(Family::T5, tensors);
    let (vb, used) = recording(resident, DType::BF16);
    T5Encoder::new(cfg, vb)?;
    let mut all: BTreeSet<String> = used.lock().unwrap().clone();
    assert_eq!(
        units.keys().cloned().collect::<BTreeSet<_>>(),
        super::units(cfg).into_iter().collect()
    );
    for (i, unit) in super::units(cfg).iter().enumerate() {
        let (vb, used) = recording(units[unit].clone(), DType::BF16);
        Block::new(cfg, i, vb)?;
        all.extend(used.lock().unwrap().iter().map(|n| format!("{unit}.{n}")));
    }
    Ok(all)
}

#[test]
fn xxl_consumes_the_real_layout_exactly() {
    let layout = xxl_layout();
    assert_eq!(layout.len(), 219);
    let used = consume(&Config::xxl(), &layout).unwrap();
    let want: BTreeSet<String> = layout.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(used, want, "every tensor of the file is read, nothing else");
    // The tiny demo weights use the same layout code.
    let mut ours = tensor_shapes(&Config::xxl());
    ours.sort();
    let mut theirs = layout.clone();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn xxl_accepts_either_embedding_name() {
    // Only the tied copy (some conversions drop `shared.weight`).
    let mut layout = xxl_layout();
    layout[0].0 = "encoder.embed_tokens.weight".into();
    assert!(consume(&Config::xxl(), &layout)
        .unwrap()
        .contains("encoder.embed_tokens.weight"));
    // Both: `shared.weight` is read, the tied copy is left alone.
    let mut both = xxl_layout();
    both.push(("encoder.embed_tokens.weight".into(), vec![32128, 4096]));
    let used = consume(&Config::xxl(), &both).unwrap();
    assert!(used.contains("shared.weight") && !used.contains("encoder.embed_tokens.weight"));
    // Neither: a message naming both.
    let none: Vec<_> = xxl_layout().into_iter().skip(1).collect();
    let e = consume(&Config::xxl(), &none).unwrap_err().to_string();
    assert!(
        e.contains("expected `shared.weight` or `encoder.embed_tokens.weight` [32128, 4096]"),
        "{e}"
    );
}

#[test]
fn wrong_shapes_and_missing_tensors_are_errors() {
    let mut layout = xxl_layout();
    let i = layout
        .iter()
        .position(|(n, _)| n == "encoder.block.3.layer.1.DenseReluDense.wo.weight")
        .unwrap();
    layout[i].1 = vec![4096, 4096];
    let e = consume(&Config::xxl(), &layout).unwrap_err().to_string();
    assert!(e.contains("layer.1.DenseReluDense.wo.weight"), "{e}");
    let missing: Vec<_> = xxl_layout()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("block.5.layer.0.SelfAttention.k.weight"))
        .collect();
    let e = consume(&Config::xxl(), &missing).unwrap_err().to_string();
    assert!(e.contains("layer.0.SelfAttention.k.weight"), "{e}");
}

#[test]
fn umt5_has_a_bias_table_in_every_block() {
    let cfg = Config::umt5_xxl();
    let shapes = tensor_shapes(&cfg);
    let tables = shapes
        .iter()
        .filter(|(n, _)| n.ends_with("relative_attention_bias.weight"))
        .count();
    assert_eq!(tables, 24);
    let used = consume(&cfg, &shapes).unwrap();
    assert_eq!(used.len(), shapes.len());
}

#[test]
fn buckets_follow_t5() {
    // Spot values of transformers' `_relative_position_bucket(…, True, 32, 128)`; the fixture
    // test checks every position in −300…300.
    let b = |r| relative_position_bucket(r, 32, 128);
    assert_eq!(
        [b(0), b(-1), b(1), b(-7), b(7), b(-8), b(8)],
        [0, 1, 17, 7, 23, 8, 24]
    );
    assert_eq!(
        [b(-16), b(16), b(-127), b(-128), b(-1000), b(1000)],
        [10, 26, 15, 15, 15, 31]
    );
}

fn tiny_model(dtype: DType) -> (T5Encoder, HashMap<String, HashMap<String, Tensor>>) {
    let weights: HashMap<String, Tensor> = tiny_weights(5).unwrap().into_iter().collect();
    let (resident, units) = split_units(Family::T5, weights);
    let enc = T5Encoder::new(
        &Config::tiny(),
        VarBuilder::from_tensors(resident, dtype, &Device::Cpu),
    )
    .unwrap();
    (enc, units.into_iter().collect())
}

fn run(
    enc: &T5Encoder,
    units: &HashMap<String, HashMap<String, Tensor>>,
    ids: &[u32],
    dtype: DType,
) -> Tensor {
    enc.forward(ids, &mut |i| {
        Ok(VarBuilder::from_tensors(
            units[&format!("encoder.block.{i}")].clone(),
            dtype,
            &Device::Cpu,
        ))
    })
    .unwrap()
}

#[test]
fn tiny_runs_deterministically_and_unit_by_unit() {
    let (enc, units) = tiny_model(DType::F32);
    let ids = [5u32, 9, 40, 1, 0, 0];
    let a = run(&enc, &units, &ids, DType::F32);
    assert_eq!(a.dims(), &[1, 6, 32]);
    let b = run(&enc, &units, &ids, DType::F32);
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    // Same weights from the same seed.
    let again: Vec<_> = tiny_weights(5).unwrap();
    let first: HashMap<_, _> = tiny_weights(5).unwrap().into_iter().collect();
    for (n, t) in again {
        let d = (t - &first[&n])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{n}");
    }
    // Units out of order, or finishing early, are errors.
    let mut s = enc.prepare(&ids).unwrap();
    let vb1 = VarBuilder::from_tensors(units["encoder.block.1"].clone(), DType::F32, &Device::Cpu);
    let e = enc.run_unit(1, vb1, &mut s).unwrap_err().to_string();
    assert!(
        e.contains("expected encoder.block.0, got encoder.block.1"),
        "{e}"
    );
    let e = enc.finish(s).unwrap_err().to_string();
    assert!(e.contains("finish after 0 of 2 blocks"), "{e}");
    let e = enc
        .prepare(&[7, Config::tiny().vocab_size as u32])
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the embedding"), "{e}");
}

#[test]
fn reduced_precision_stays_close_to_f32() {
    let ids = [5u32, 9, 40, 12, 33, 1, 0, 0];
    let (enc, units) = tiny_model(DType::F32);
    let want = run(&enc, &units, &ids, DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        let (enc, units) = tiny_model(dtype);
        let got = run(&enc, &units, &ids, dtype);
        assert_eq!(
            got.dtype(),
            DType::F32,
            "output is f32 whatever the compute dtype"
        );
        let (err, scale) = crate::models::testutil::max_err_and_scale(&got, &want);
        assert!(err / scale < 0.05, "{dtype:?}: max error {err} of {scale}");
    }
}

fn tiny_umt5_model() -> (T5Encoder, HashMap<String, HashMap<String, Tensor>>) {
    let weights: HashMap<String, Tensor> = tiny_umt5_weights(8).unwrap().into_iter().collect();
    let (resident, units) = split_units(Family::UmT5, weights);
    let enc = T5Encoder::new(
        &Config::tiny_umt5(),
        VarBuilder::from_tensors(resident, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (enc, units.into_iter().collect())
}

fn run_state(
    enc: &T5Encoder,
    units: &HashMap<String, HashMap<String, Tensor>>,
    mut state: State,
) -> Tensor {
    for i in 0..enc.config().num_layers {
        let vb = VarBuilder::from_tensors(
            units[&format!("encoder.block.{i}")].clone(),
            DType::F32,
            &Device::Cpu,
        );
        enc.run_unit(i, vb, &mut state).unwrap();
    }
    enc.finish(state).unwrap()
}

#[test]
fn masked_encoding_equals_the_unpadded_prompt_and_zeroes_padding() {
    let (enc, units) = tiny_umt5_model();
    assert_eq!(
        tensor_shapes(&Config::tiny_umt5())
            .iter()
            .filter(|(n, _)| n.ends_with("relative_attention_bias.weight"))
            .count(),
        2
    );
    let prompt = [300u32, 41, 7, 290, 1];
    let mut padded = prompt.to_vec();
    padded.resize(12, 0);
    let masked = run_state(&enc, &units, enc.prepare_masked(&padded, 5).unwrap());
    assert_eq!(masked.dims(), &[1, 12, 32]);
    let alone = run_state(&enc, &units, enc.prepare(&prompt).unwrap());
    let valid = masked.narrow(1, 0, 5).unwrap();
    let (err, scale) = crate::models::testutil::max_err_and_scale(&valid, &alone);
    assert!(err / scale < 1e-6, "valid rows: {err} of {scale}");
    let tail: Vec<f32> = masked
        .narrow(1, 5, 7)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(tail.iter().all(|&v| v == 0.0), "padded rows are zeros");
    // Without the mask the padding changes the prompt's rows.
    let unmasked = run_state(&enc, &units, enc.prepare(&padded).unwrap());
    let (err, _) =
        crate::models::testutil::max_err_and_scale(&unmasked.narrow(1, 0, 5).unwrap(), &alone);
    assert!(err > 1e-3, "padding must matter without a mask ({err})");
    // valid_len = L masks nothing: bit-identical to the plain path.
    let full = run_state(&enc, &units, enc.prepare_masked(&padded, 12).unwrap());
    assert_eq!(
        full.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        unmasked.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    for bad in [0, 13] {
        let e = enc.prepare_masked(&padded, bad).unwrap_err().to_string();
        assert!(e.contains("must be between 1 and the 12 token ids"), "{e}");
    }
}

#[test]
fn masked_encoding_in_reduced_precision() {
    let (enc32, units32) = tiny_umt5_model();
    let ids = [300u32, 41, 7, 1, 0, 0, 0, 0];
    let want = run_state(&enc32, &units32, enc32.prepare_masked(&ids, 4).unwrap());
    let weights: HashMap<String, Tensor> = tiny_umt5_weights(8).unwrap().into_iter().collect();
    let (resident, units) = split_units(Family::UmT5, weights);
    for dtype in [DType::BF16, DType::F16] {
        let enc = T5Encoder::new(
            &Config::tiny_umt5(),
            VarBuilder::from_tensors(resident.clone(), dtype, &Device::Cpu),
        )
        .unwrap();
        let mut state = enc.prepare_masked(&ids, 4).unwrap();
        for i in 0..2 {
            let vb = VarBuilder::from_tensors(
                units[&format!("encoder.block.{i}")].clone(),
                dtype,
                &Device::Cpu,
            );
            enc.run_unit(i, vb, &mut state).unwrap();
        }
        let got = enc.finish(state).unwrap();
        let (err, scale) = crate::models::testutil::max_err_and_scale(&got, &want);
        assert!(err / scale < 0.05, "{dtype:?}: {err} of {scale}");
    }
}
