//! The Wan 2.2 TI2V-5B DiT against diffusers (fixtures from `tools/parity_wan22_ti2v.py`).
//!
//! - Per-token timesteps: diffusers 0.42.1's `WanTransformer3DModel` with a `[1, L]` timestep
//!   (`expand_timesteps`), f32, within 1e-4 relative — all tokens at t (text-to-video) and the
//!   first latent frame's tokens at 0 (image-to-video); the bf16 forward against diffusers'
//!   bf16 run (with its f32 islands).
//! - Layouts: the original and diffusers spelling give identical results; the constructors
//!   consume exactly the real TI2V-5B key list (diffusers' full-size model on the meta device),
//!   the independent `WanDims::TI2V_5B` agrees, and inference gives `Config::ti2v_5b()`.
//! - The image-to-video condition: the init image alone through the Wan 2.2 VAE, normalised, as
//!   `WanImageToVideoPipeline(expand_timesteps=True).prepare_latents` returns it.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mgpu::family::Family;
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::{diffusion_layout, Autoencoder, DiffusionModel, StepInputs};
use mgpu::models::wan::{self, WanDit};
use mgpu::models::wan_vae::{Config as VaeConfig, WanVae};
use mgpu::weights::keymap::{self, Layout, WanDims};
use mgpu::weights::WeightFile;

const TOL: f64 = 1e-4;

mod parity_common;
use parity_common::{errors, fixture};

fn load(name: &str) -> HashMap<String, Tensor> {
    parity_common::load("wan22_ti2v", name)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    parity_common::assert_close_within(what, a, b, TOL);
}

fn timestep(io: &HashMap<String, Tensor>) -> f64 {
    io["timestep"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0] as f64
}

/// The tiny TI2V model of `tensors` in `dtype`, and a forward through the family seam with
/// `clean_frames` leading clean latent frames; also checks every tensor was consumed.
fn forward(tensors: HashMap<String, Tensor>, dtype: DType, clean_frames: usize) -> Tensor {
    let io = load("dit_io.safetensors");
    let cfg = wan::Config::tiny_ti2v();
    let (vb, cov) = Coverage::var_builder(tensors, dtype, &Device::Cpu);
    let dit = WanDit::new(&cfg, vb.clone()).unwrap();
    let inputs = StepInputs {
        latent: &io["latent"],
        context: &io["context_padded"],
        pooled: None,
        timestep: timestep(&io),
        guidance: None,
        clean_frames,
    };
    let mut st = DiffusionModel::prepare(&dit, &inputs).unwrap();
    for (i, u) in WanDit::units(&cfg).iter().enumerate() {
        let block = WanDit::build_unit(&cfg, i, vb.pp(u)).unwrap();
        DiffusionModel::run_block(&dit, &block, &mut st).unwrap();
    }
    let out = DiffusionModel::finish(&dit, st).unwrap();
    assert_eq!(cov.unused(), Vec::<String>::new(), "every tensor consumed");
    out
}

#[test]
fn per_token_timesteps_match_diffusers() {
    let io = load("dit_io.safetensors");
    // The layout diffusers gives the tokens: frame 0's 2 × 3 tokens first.
    let ts = io["timesteps_i2v"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let t = timestep(&io) as f32;
    assert_eq!(ts.len(), 18);
    assert!(ts[..6].iter().all(|&v| v == 0.0) && ts[6..].iter().all(|&v| v == t));

    let t2v = forward(load("dit.safetensors"), DType::F32, 0);
    assert_eq!(t2v.dims(), &[1, 48, 3, 4, 6]);
    assert_close("TI2V forward, every token at t", &t2v, &io["out_t2v"]);
    assert_close(
        "TI2V forward vs the scalar timestep",
        &t2v,
        &io["out_scalar"],
    );
    let i2v = forward(load("dit.safetensors"), DType::F32, 1);
    assert_close("TI2V forward, frame 0 at timestep 0", &i2v, &io["out_i2v"]);
    // The mask matters, and everywhere (attention mixes the frames).
    assert!(errors(&i2v, &t2v).0 > 0.1);
    let last = |x: &Tensor| x.narrow(2, 2, 1).unwrap();
    assert!(errors(&last(&i2v), &last(&t2v)).0 > 1e-3);
}

#[test]
fn per_token_timesteps_in_bf16_match_diffusers_in_bf16() {
    let io = load("dit_io.safetensors");
    let out = forward(load("dit.safetensors"), DType::BF16, 1);
    assert_eq!(out.dtype(), DType::F32, "output in the latent's dtype");
    let (l2, _, maxabs) = errors(&out, &io["out_i2v_bf16"]);
    let (gap, _, _) = errors(&io["out_i2v_bf16"], &io["out_i2v"]);
    eprintln!(
        "TI2V forward (frame 0 clean) in bf16 vs diffusers bf16: relative L2 {l2:.2e}, max-abs {maxabs:.2e} (diffusers bf16 vs f32: {gap:.2e})"
    );
    // As for Wan 2.1 (tests/models_wan.rs): within twice the bf16 noise of this tiny model.
    assert!(l2 < 2.0 * gap, "{l2:.2e} vs bf16 noise {gap:.2e}");
}

fn load_canonical(name: &str) -> (HashMap<String, Tensor>, Layout) {
    let f = WeightFile::open(fixture("wan22_ti2v", name)).unwrap();
    let l = keymap::canonicalize(Family::Wan, f.tensors()).unwrap();
    let mut m = HashMap::new();
    for t in &l.tensors {
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let x = f
            .to_candle(&t.parts[0].source, DType::F32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap();
        m.insert(t.name.clone(), x);
    }
    (m, l.layout)
}

#[test]
fn both_layouts_load_to_identical_results_and_infer_the_config() {
    let (orig, l) = load_canonical("dit.safetensors");
    assert_eq!(l, Layout::WanOriginal);
    let (diff, l) = load_canonical("dit_diffusers.safetensors");
    assert_eq!(l, Layout::WanDiffusers);
    let shapes = |m: &HashMap<String, Tensor>| -> BTreeMap<String, Vec<usize>> {
        m.iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect()
    };
    let meta: BTreeMap<String, String> = [("num_heads".to_string(), "2".to_string())].into();
    let cfg = WanDit::infer_config(&|n: &str| shapes(&orig).get(n).cloned(), &meta).unwrap();
    assert_eq!(cfg, wan::Config::tiny_ti2v());
    let (a, b) = (forward(orig, DType::F32, 1), forward(diff, DType::F32, 1));
    assert_eq!(errors(&a, &b).2, 0.0, "bit-identical");
}

#[test]
fn the_real_layout_is_consumed_and_infers_the_preset() {
    let layout: BTreeMap<String, Vec<usize>> =
        std::fs::read_to_string(fixture("wan22_ti2v", "layout_ti2v_5b.txt"))
            .unwrap()
            .lines()
            .map(|line| {
                let (k, s) = line.split_once('\t').unwrap();
                let shape = s.split(',').map(|d| d.parse().unwrap()).collect();
                (k.to_string(), shape)
            })
            .collect();
    let cfg = wan::Config::ti2v_5b();
    assert_eq!(layout.len(), 825);
    assert_eq!(layout["patch_embedding.weight"], [3072, 48, 1, 2, 2]);
    assert_eq!(layout["head.head.weight"], [192, 3072]);
    let described: BTreeMap<String, Vec<usize>> = WanDims::TI2V_5B
        .original_tensors()
        .into_iter()
        .map(|(k, s)| (k, s.into_iter().map(|d| d as usize).collect()))
        .collect();
    assert_eq!(described, layout, "WanDims vs the diffusers-derived list");
    assert_eq!(diffusion_layout::<WanDit>(&cfg).unwrap(), layout);
    let infer = |meta: &[(&str, &str)]| {
        let meta: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WanDit::infer_config(&|n: &str| layout.get(n).cloned(), &meta)
    };
    // 3072 / 128 = 24 heads without metadata; diffusers' config.json says 24 too.
    assert_eq!(infer(&[]).unwrap(), cfg);
    assert_eq!(infer(&[("num_attention_heads", "24")]).unwrap(), cfg);
    // The model's contract: the Wan 2.2 VAE's latent, no experts, image as the first frame.
    assert_eq!(
        WanDit::latent_shape(&cfg, 1280, 704, 121),
        [1, 48, 31, 44, 80]
    );
    assert_eq!(WanDit::latent_channels(&cfg), 48);
    assert_eq!(WanDit::size_multiple(&cfg), 32);
    assert_eq!(WanDit::size_multiple(&wan::Config::t2v_14b()), 16);
    assert_eq!(WanDit::condition_channels(&cfg), 0);
    assert_eq!(WanDit::boundary(&cfg), None);
    assert!(WanDit::first_frame_conditioning(&cfg));
    assert!(!WanDit::first_frame_conditioning(&wan::Config::t2v_14b()));

    // A 48-channel input with a 16-channel head (or the reverse) is no known model.
    let mut bad = layout.clone();
    bad.insert("head.head.weight".into(), vec![64, 3072]);
    let e = WanDit::infer_config(&|n: &str| bad.get(n).cloned(), &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16 output channels, expected 48") && e.contains("Wan 2.2"),
        "{e}"
    );
    let mut bad = layout.clone();
    bad.insert("patch_embedding.weight".into(), vec![3072, 32, 1, 2, 2]);
    let e = WanDit::infer_config(&|n: &str| bad.get(n).cloned(), &BTreeMap::new())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("takes 32 latent channels") && e.contains("Wan 2.2 TI2V-5B 48"),
        "{e}"
    );
}

#[test]
fn clean_frames_are_refused_where_they_mean_nothing() {
    let io = load("dit_io.safetensors");
    // A Wan 2.1-shaped model (16 channels) takes no given first frame.
    let cfg = wan::Config::tiny();
    let layout = diffusion_layout::<WanDit>(&cfg).unwrap();
    let w = mgpu::models::tiny::weights_for(&layout, 3).unwrap();
    let vb = VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
    let dit = WanDit::new(&cfg, vb).unwrap();
    let latent = io["latent"].narrow(1, 0, 16).unwrap();
    let e = DiffusionModel::prepare(
        &dit,
        &StepInputs {
            latent: &latent,
            context: &io["context_padded"],
            pooled: None,
            timestep: 500.0,
            guidance: None,
            clean_frames: 1,
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("takes no given first frame"), "{e}");
    // More clean frames than the latent has.
    let cfg = wan::Config::tiny_ti2v();
    let w = mgpu::models::tiny::weights_for(&diffusion_layout::<WanDit>(&cfg).unwrap(), 3).unwrap();
    let vb = VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
    let dit = WanDit::new(&cfg, vb).unwrap();
    let e = dit
        .prepare_frames(&io["latent"], &io["context_padded"], 500.0, 4)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("4 clean latent frames") && e.contains("3 frames"),
        "{e}"
    );
}

/// The image-to-video condition: mgpu's encode of the init image alone against diffusers'
/// `prepare_latents` with `expand_timesteps` on the tiny Wan 2.2 VAE.
#[test]
fn the_first_frame_condition_matches_diffusers() {
    let io = load("condition.safetensors");
    let w = candle_core::safetensors::load(fixture("wan22_vae", "vae.safetensors"), &Device::Cpu)
        .expect("fixture: regenerate with tools/parity_wan22_vae.py");
    let vcfg = VaeConfig::tiny22();
    let vb = VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    let [enc, _] = WanVae::units();
    let e = WanVae::encoder(&vcfg, vb.pp(enc), vb.clone()).unwrap();
    let z = WanVae::encode(&e, &io["image"]).unwrap();
    assert_eq!(z.dims(), &[1, 48, 1, 4, 6]);
    assert_close("TI2V first-frame condition", &z, &io["condition"]);
    // diffusers' mask: 0 on latent frame 0 (the image), 1 on the frames to generate.
    let mask = io["first_frame_mask"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(mask[..24].iter().all(|&v| v == 0.0) && mask[24..].iter().all(|&v| v == 1.0));
}
