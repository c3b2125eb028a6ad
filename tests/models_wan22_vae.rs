//! The Wan 2.2 VAE (`wan2.2_vae.safetensors`, the autoencoder of Wan 2.2 TI2V-5B) against
//! outside references.
//!
//! - Parity with diffusers 0.42.1's `AutoencoderKLWan(is_residual=True, patch_size=2, z_dim=48)`
//!   (fixtures from `tools/parity_wan22_vae.py`: encoder width 4, decoder width 3, the real 48
//!   latent channels and normalisation, f32, weights rounded to bf16; the script also checks
//!   diffusers against Wan 2.2's own `vae2_2.py`): a decode of a 3-frame latent (9 frames of
//!   32×48, through the normalisation and the unpatchify, unclamped) and an encode of a
//!   9-frame clip (the raw posterior mean and the normalised DiT latent). Agreement within 1e-4
//!   relative, as ‖a−b‖/‖b‖ and as max|a−b| / max|b| (the Wan 2.1 tests' tolerance).
//! - Both key layouts: the same weights in diffusers' names go through `weights::keymap` to the
//!   same canonical tensors, byte for byte, and decode to the same bytes.
//! - The real layout: `vae_layout::<WanVae>(&Config::wan22())` is exactly the 196 names and
//!   shapes of `wan2.2_vae.safetensors` (derived by the script from diffusers' full-size
//!   Wan 2.2 config and checked there against Wan 2.2's `WanVAE_`), and inferring the config
//!   from it gives `Config::wan22()` (the same layout in diffusers' names is mapped back by
//!   `keymap::wan_vae`'s unit tests).
//! - Clear refusals: wrong latent widths and sizes, missing tensors named.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use mgpu::family::Family;
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::{vae_layout, Autoencoder};
use mgpu::models::tiny;
use mgpu::models::wan_vae::{Config, Decoder, Encoder, WanVae};
use mgpu::weights::keymap::{canonicalize, Layout};
use mgpu::weights::{detect, KeyLayout, TensorInfo, WeightFile};

const TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/wan22_vae")
        .join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap_or_else(|e| {
        panic!("fixture {name}: {e} (regenerate with tools/parity_wan22_vae.py)")
    })
}

/// (max|a−b|, ‖a−b‖/‖b‖, max|a−b| / max|b|)
fn errors(a: &Tensor, b: &Tensor) -> (f64, f64, f64) {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let v = |t: &Tensor| -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (v(a), v(b));
    let diff2: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm2: f64 = b.iter().map(|y| y * y).sum();
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let max_b = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    (max_diff, diff2.sqrt() / norm2.sqrt(), max_diff / max_b)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    let (max_abs, l2, maxrel) = errors(a, b);
    eprintln!(
        "{what}: max abs error {max_abs:.2e}, relative L2 {l2:.2e}, max-abs / max|ref| {maxrel:.2e}"
    );
    assert!(
        l2 <= TOL && maxrel <= TOL,
        "{what}: L2 {l2:.3e}, max {maxrel:.3e} exceed {TOL:e}"
    );
}

/// Encoder and decoder over `tensors` (canonical names), as the executor builds them.
fn build(cfg: &Config, tensors: HashMap<String, Tensor>) -> (Encoder, Decoder, Coverage) {
    let (vb, cov) = Coverage::var_builder(tensors, DType::F32, &Device::Cpu);
    let [enc, dec] = WanVae::units();
    let e = WanVae::encoder(cfg, vb.pp(enc), vb.clone()).unwrap();
    let d = WanVae::decoder(cfg, vb.pp(dec), vb.clone()).unwrap();
    (e, d, cov)
}

/// `[1, C, T, H, W]` (the references' video layout) → `[T, C, H, W]`.
fn frames_first(x: &Tensor) -> Tensor {
    x.squeeze(0)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap()
}

fn shapes_of(t: &HashMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    t.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

#[test]
fn decode_and_encode_match_diffusers() {
    let io = load("vae_io.safetensors");
    let cfg = Config::tiny22();
    assert_eq!(
        io["latents_mean"].to_vec1::<f32>().unwrap(),
        cfg.latents_mean
    );
    assert_eq!(io["latents_std"].to_vec1::<f32>().unwrap(), cfg.latents_std);
    let weights = load("vae.safetensors");
    let shapes = shapes_of(&weights);
    assert_eq!(
        WanVae::infer_config(&|n| shapes.get(n).cloned(), &BTreeMap::new()).unwrap(),
        cfg,
        "the fixture's shapes give the tiny config"
    );
    let (enc, dec, cov) = build(&cfg, weights);
    assert_eq!(cov.unused(), Vec::<String>::new(), "fixture fully consumed");

    let frames = WanVae::decode(&dec, &io["decode_in"], None).unwrap();
    assert_eq!(frames.dims(), &[9, 3, 32, 48]);
    assert_eq!(frames.dtype(), DType::F32);
    assert_close("decode", &frames, &frames_first(&io["decode_out"]));

    let pixels = frames_first(&io["encode_in"]);
    let mu = enc.encode_raw(&pixels).unwrap();
    assert_close(
        "encode (raw posterior mean)",
        &mu,
        &frames_first(&io["encode_mu"]),
    );
    let latent = WanVae::encode(&enc, &pixels).unwrap();
    assert_eq!(latent.dims(), &[1, 48, 3, 2, 3]);
    assert_close("encode (DiT latent)", &latent, &io["encode_mean"]);
}

/// Every tensor of `file` under its canonical name, through the key mapping.
fn canonical_tensors(file: &str) -> (Layout, HashMap<String, Tensor>) {
    let wf = WeightFile::open(fixture(file)).unwrap();
    let det = detect(wf.tensors()).unwrap();
    assert_eq!(det.family, Family::WanVae, "{file} detected as {:?}", det);
    let layout = canonicalize(Family::WanVae, wf.tensors()).unwrap();
    let raw = load(file);
    let mut out = HashMap::new();
    for t in &layout.tensors {
        assert!(t.is_passthrough(), "{}", t.name);
        let src = &raw[&t.parts[0].source];
        let want: Vec<usize> = t.shape.iter().map(|d| *d as usize).collect();
        assert_eq!(src.dims(), want.as_slice(), "{}", t.name);
        out.insert(t.name.clone(), src.clone());
    }
    (layout.layout, out)
}

#[test]
fn both_layouts_give_identical_weights_and_outputs() {
    let (l_orig, orig) = canonical_tensors("vae.safetensors");
    let (l_diff, diff) = canonical_tensors("vae_diffusers.safetensors");
    assert_eq!(l_orig, Layout::WanVaeOriginal);
    assert_eq!(l_diff, Layout::WanVaeDiffusers);
    assert_eq!(orig.len(), diff.len());
    for (name, t) in &orig {
        let d = diff
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` missing from the diffusers copy"));
        let bytes = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap();
        assert_eq!(bytes(t), bytes(d), "{name}");
    }
    let wf = WeightFile::open(fixture("vae_diffusers.safetensors")).unwrap();
    assert_eq!(detect(wf.tensors()).unwrap().layout, KeyLayout::Diffusers);
    // The raw file is the original layout: the mapping keeps its names.
    let raw = load("vae.safetensors");
    assert_eq!(shapes_of(&raw), shapes_of(&orig));

    let cfg = Config::tiny22();
    let latent = load("vae_io.safetensors")["decode_in"].clone();
    let (_, d1, _) = build(&cfg, orig);
    let (_, d2, _) = build(&cfg, diff);
    let a = WanVae::decode(&d1, &latent, None).unwrap();
    let b = WanVae::decode(&d2, &latent, None).unwrap();
    assert_eq!(errors(&a, &b).0, 0.0, "the two layouts decode differently");
}

/// `layout_wan22_vae.txt`: the real file's names and shapes.
fn real_layout() -> BTreeMap<String, Vec<usize>> {
    std::fs::read_to_string(fixture("layout_wan22_vae.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let (k, s) = line.split_once('\t').unwrap();
            (
                k.to_string(),
                s.split(',').map(|d| d.parse().unwrap()).collect(),
            )
        })
        .collect()
}

fn infos(layout: &BTreeMap<String, Vec<usize>>) -> Vec<TensorInfo> {
    layout
        .iter()
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            TensorInfo {
                name: n.clone(),
                dtype: mgpu::weights::DType::BF16,
                shape: s.iter().map(|d| *d as u64).collect(),
                offset: 0,
                len: 2 * numel as u64,
            }
        })
        .collect()
}

#[test]
fn real_layout_is_what_the_model_builds_and_infers_wan22() {
    let real = real_layout();
    assert_eq!(real.len(), 196);
    let cfg = Config::wan22();
    assert_eq!(vae_layout::<WanVae>(&cfg).unwrap(), real);
    let meta = BTreeMap::new();
    let inferred = WanVae::infer_config(&|n| real.get(n).cloned(), &meta).unwrap();
    assert_eq!(inferred, cfg);
    assert_eq!((cfg.spatial_factor(), cfg.temporal_factor()), (16, 4));
    let inf = infos(&real);
    let det = detect(&inf).unwrap();
    assert_eq!(
        (det.family, det.layout),
        (Family::WanVae, KeyLayout::Original)
    );
    let l = canonicalize(Family::WanVae, &inf).unwrap();
    assert_eq!(l.layout, Layout::WanVaeOriginal);
    assert_eq!(l.tensors.len(), 196);
    let resident: Vec<&str> = l
        .tensors
        .iter()
        .filter(|t| Family::WanVae.unit_of(&t.name).is_none())
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        resident,
        ["conv1.bias", "conv1.weight", "conv2.bias", "conv2.weight"]
    );
    // A ComfyUI-style prefix is stripped.
    let prefixed: BTreeMap<String, Vec<usize>> = real
        .iter()
        .map(|(k, v)| (format!("first_stage_model.{k}"), v.clone()))
        .collect();
    let l = canonicalize(Family::WanVae, &infos(&prefixed)).unwrap();
    assert_eq!(l.tensors.len(), 196);
}

#[test]
fn tiny_random_weights_decode_and_encode_to_finite_values() {
    let cfg = Config::tiny22();
    let w = tiny::weights_for(&vae_layout::<WanVae>(&cfg).unwrap(), 7).unwrap();
    let (enc, dec, cov) = build(&cfg, w.into_iter().collect());
    assert_eq!(cov.unused(), Vec::<String>::new());
    let latent = Tensor::randn(0f32, 1.0, (1, 48, 2, 4, 4), &Device::Cpu).unwrap();
    let frames = WanVae::decode(&dec, &latent, None).unwrap();
    assert_eq!(frames.dims(), &[5, 3, 64, 64]);
    let v: Vec<f32> = frames.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()));
    let z = WanVae::encode(&enc, &frames.clamp(-1f32, 1f32).unwrap()).unwrap();
    assert_eq!(z.dims(), &[1, 48, 2, 4, 4]);
    let z: Vec<f32> = z.flatten_all().unwrap().to_vec1().unwrap();
    assert!(z.iter().all(|x| x.is_finite()));
}

#[test]
fn refusals_are_clear() {
    let cfg = Config::tiny22();
    let (enc, dec, _) = build(&cfg, load("vae.safetensors"));
    let bad = Tensor::zeros((1, 16, 1, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::decode(&dec, &bad, None).unwrap_err().to_string();
    assert!(e.contains("[1, 48, T, h, w]"), "{e}");
    // 16× spatial compression: 24 pixels is a multiple of 8, not of 16.
    let odd = Tensor::zeros((1, 3, 24, 32), DType::F32, &Device::Cpu).unwrap();
    let e = WanVae::encode(&enc, &odd).unwrap_err().to_string();
    assert!(e.contains("multiples of 16"), "{e}");

    let meta = BTreeMap::new();
    // A missing tensor is named, by the config inference and by the constructors.
    let mut real = real_layout();
    real.remove("decoder.upsamples.1.upsamples.3.time_conv.weight");
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`decoder.upsamples.1.upsamples.3` lacks a time_conv"),
        "{e}"
    );
    let mut real = real_layout();
    real.insert("conv2.weight".into(), vec![16, 16, 1, 1, 1]);
    let e = WanVae::infer_config(&|n| real.get(n).cloned(), &meta)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("16 latent channels, but the layout is Wan 2.2's"),
        "{e}"
    );
    let mut w = load("vae.safetensors");
    w.remove("encoder.downsamples.2.downsamples.1.residual.3.gamma");
    let (vb, _) = Coverage::var_builder(w, DType::F32, &Device::Cpu);
    let e = WanVae::encoder(&cfg, vb.pp("encoder"), vb.clone())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("downsamples.2.downsamples.1.residual.3.gamma"),
        "{e}"
    );
}
