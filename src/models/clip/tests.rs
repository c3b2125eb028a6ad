use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::family::Family;
use crate::models::testutil::{recording, split_units, zero_cost};

/// ComfyUI's `clip_l.safetensors` layout, written from the architecture description (not from
/// the model code): token (49408×768) and position (77×768) embeddings; 12 layers of q/k/v/out
/// projections (768×768 + bias), two LayerNorms (weight + bias), fc1 3072×768 and fc2
/// 768×3072 with biases; final LayerNorm; `text_projection` 768×768.
fn clip_l_layout() -> Vec<(String, Vec<usize>)> {
    let mut v = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![49408, 768],
        ),
        (
            "text_model.embeddings.position_embedding.weight".to_string(),
            vec![77, 768],
        ),
    ];
    for l in 0..12 {
        let p = format!("text_model.encoder.layers.{l}");
        for m in ["q", "k", "v", "out"] {
            v.push((format!("{p}.self_attn.{m}_proj.weight"), vec![768, 768]));
            v.push((format!("{p}.self_attn.{m}_proj.bias"), vec![768]));
        }
        for n in ["layer_norm1", "layer_norm2"] {
            v.push((format!("{p}.{n}.weight"), vec![768]));
            v.push((format!("{p}.{n}.bias"), vec![768]));
        }
        v.push((format!("{p}.mlp.fc1.weight"), vec![3072, 768]));
        v.push((format!("{p}.mlp.fc1.bias"), vec![3072]));
        v.push((format!("{p}.mlp.fc2.weight"), vec![768, 3072]));
        v.push((format!("{p}.mlp.fc2.bias"), vec![768]));
    }
    v.push(("text_model.final_layer_norm.weight".into(), vec![768]));
    v.push(("text_model.final_layer_norm.bias".into(), vec![768]));
    v.push(("text_projection.weight".into(), vec![768, 768]));
    v
}

fn consume(
    cfg: &Config,
    tensors: HashMap<String, Tensor>,
) -> candle_core::Result<(BTreeSet<String>, bool)> {
    let (resident, units) = split_units(Family::ClipL, tensors);
    let (vb, used) = recording(resident, DType::BF16);
    let model = ClipTextModel::new(cfg, vb)?;
    let mut all: BTreeSet<String> = used.lock().unwrap().clone();
    assert_eq!(
        units.keys().cloned().collect::<BTreeSet<_>>(),
        super::units(cfg).into_iter().collect()
    );
    for unit in super::units(cfg) {
        let (vb, used) = recording(units[&unit].clone(), DType::BF16);
        Layer::new(cfg, vb)?;
        all.extend(used.lock().unwrap().iter().map(|n| format!("{unit}.{n}")));
    }
    Ok((all, model.projection.is_some()))
}

fn zero_layout(layout: &[(String, Vec<usize>)]) -> HashMap<String, Tensor> {
    layout
        .iter()
        .map(|(n, s)| (n.clone(), zero_cost(s, DType::BF16)))
        .collect()
}

#[test]
fn clip_l_consumes_the_real_layout_exactly() {
    let layout = clip_l_layout();
    assert_eq!(layout.len(), 197);
    let (used, projected) = consume(&Config::vit_l_14(), zero_layout(&layout)).unwrap();
    let want: BTreeSet<String> = layout.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(used, want, "every tensor of the file is read, nothing else");
    assert!(projected);
    let mut ours = tensor_shapes(&Config::vit_l_14(), Some(768));
    ours.sort();
    let mut theirs = layout.clone();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn optional_projection_and_position_ids() {
    let cfg = Config::vit_l_14();
    // Without text_projection (diffusers' CLIPTextModel export).
    let layout: Vec<_> = clip_l_layout()
        .into_iter()
        .filter(|(n, _)| n != "text_projection.weight")
        .collect();
    let (used, projected) = consume(&cfg, zero_layout(&layout)).unwrap();
    assert_eq!(used.len(), 196);
    assert!(!projected);
    // With the old position_ids buffer: read and checked.
    let mut tensors = zero_layout(&clip_l_layout());
    let ids = Tensor::arange(0i64, 77, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    tensors.insert("text_model.embeddings.position_ids".into(), ids);
    let (used, _) = consume(&cfg, tensors.clone()).unwrap();
    assert!(used.contains("text_model.embeddings.position_ids"));
    tensors.insert(
        "text_model.embeddings.position_ids".into(),
        Tensor::zeros((1, 77), DType::I64, &Device::Cpu).unwrap(),
    );
    let e = consume(&cfg, tensors).unwrap_err().to_string();
    assert!(e.contains("position_ids should be 0..77"), "{e}");
    // A wrong projection shape.
    let mut bad = clip_l_layout();
    bad.last_mut().unwrap().1 = vec![768, 1024];
    let e = consume(&cfg, zero_layout(&bad)).unwrap_err().to_string();
    assert!(
        e.contains("text_projection.weight has shape [768, 1024]"),
        "{e}"
    );
}

#[test]
fn missing_and_misshapen_tensors_are_errors() {
    let cfg = Config::vit_l_14();
    let layout: Vec<_> = clip_l_layout()
        .into_iter()
        .filter(|(n, _)| !n.ends_with("layers.4.mlp.fc2.bias"))
        .collect();
    let e = consume(&cfg, zero_layout(&layout)).unwrap_err().to_string();
    assert!(e.contains("mlp.fc2.bias"), "{e}");
    let mut layout = clip_l_layout();
    layout[0].1 = vec![49407, 768];
    let e = consume(&cfg, zero_layout(&layout)).unwrap_err().to_string();
    assert!(e.contains("token_embedding.weight"), "{e}");
}

fn tiny_model() -> (ClipTextModel, HashMap<String, HashMap<String, Tensor>>) {
    let weights: HashMap<String, Tensor> = tiny_weights(3).unwrap().into_iter().collect();
    let (resident, units) = split_units(Family::ClipL, weights);
    let m = ClipTextModel::new(
        &Config::tiny(),
        VarBuilder::from_tensors(resident, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (m, units.into_iter().collect())
}

fn run(
    m: &ClipTextModel,
    units: &HashMap<String, HashMap<String, Tensor>>,
    ids: &[u32],
) -> ClipOutput {
    m.forward(ids, &mut |i| {
        Ok(VarBuilder::from_tensors(
            units[&format!("text_model.encoder.layers.{i}")].clone(),
            DType::F32,
            &Device::Cpu,
        ))
    })
    .unwrap()
}

#[test]
fn tiny_pools_at_the_first_eos_and_is_causal() {
    let (m, units) = tiny_model();
    let eos = Config::tiny().eos_token_id;
    let bos = eos - 1;
    let ids = [bos, 600, 601, eos, eos, eos];
    let out = run(&m, &units, &ids);
    assert_eq!(out.hidden.dims(), &[1, 6, 32]);
    assert_eq!(out.pooled.dims(), &[1, 32]);
    assert_eq!(out.projected.as_ref().unwrap().dims(), &[1, 32]);
    let at3 = out
        .hidden
        .narrow(1, 3, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        out.pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        at3
    );
    // Causal: what follows position 3 does not change positions 0..=3.
    let other = run(&m, &units, &[bos, 600, 601, eos, 5, 9]);
    let a = out
        .hidden
        .narrow(1, 0, 4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = other
        .hidden
        .narrow(1, 0, 4)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} vs {y}");
    }
    let e = m.prepare(&[0; 78]).unwrap_err().to_string();
    assert!(e.contains("78 tokens; the text model takes 1 to 77"), "{e}");
    let mut s = m.prepare(&ids).unwrap();
    let e = m
        .run_unit(
            1,
            VarBuilder::from_tensors(
                units["text_model.encoder.layers.1"].clone(),
                DType::F32,
                &Device::Cpu,
            ),
            &mut s,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected text_model.encoder.layers.0"), "{e}");
}

#[test]
fn reduced_precision_stays_close_to_f32() {
    let weights: HashMap<String, Tensor> = tiny_weights(3).unwrap().into_iter().collect();
    let (resident, units) = split_units(Family::ClipL, weights);
    let eos = Config::tiny().eos_token_id;
    let ids = [eos - 1, 600, 320, 601, 77, eos, eos, eos];
    let run_in = |dtype: DType| {
        let vb = VarBuilder::from_tensors(resident.clone(), dtype, &Device::Cpu);
        let m = ClipTextModel::new(&Config::tiny(), vb).unwrap();
        m.forward(&ids, &mut |i| {
            let unit = &units[&format!("text_model.encoder.layers.{i}")];
            Ok(VarBuilder::from_tensors(unit.clone(), dtype, &Device::Cpu))
        })
        .unwrap()
    };
    let want = run_in(DType::F32);
    for dtype in [DType::BF16, DType::F16] {
        let got = run_in(dtype);
        for (a, b) in [(&got.hidden, &want.hidden), (&got.pooled, &want.pooled)] {
            assert_eq!(
                a.dtype(),
                DType::F32,
                "outputs are f32 whatever the compute dtype"
            );
            let (err, scale) = crate::models::testutil::max_err_and_scale(a, b);
            assert!(err / scale < 0.05, "{dtype:?}: max error {err} of {scale}");
        }
    }
}
