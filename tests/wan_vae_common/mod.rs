//! Helpers of the Wan VAE tests (tests/models_wan_vae.rs for 2.1, tests/models_wan22_vae.rs
//! for 2.2; fixtures and error measures from tests/parity_common): tolerances, the encoder/decoder
//! built as the executor builds them, the key mapping, the real layout.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use mgpu::family::Family;
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::{vae_layout, Autoencoder};
use mgpu::models::wan_vae::{Config, Decoder, Encoder, WanVae};
use mgpu::weights::keymap::{canonicalize, Layout};
use mgpu::weights::{detect, KeyLayout, TensorInfo, WeightFile};

pub const TOL: f64 = 1e-4;

pub use crate::parity_common::{errors, fixture, load};

/// Within [`TOL`] (crate::parity_common::assert_close_within).
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor) {
    crate::parity_common::assert_close_within(what, a, b, TOL);
}

/// Encoder and decoder over `tensors` (canonical names), as the executor builds them.
pub fn build(cfg: &Config, tensors: HashMap<String, Tensor>) -> (Encoder, Decoder, Coverage) {
    let (vb, cov) = Coverage::var_builder(tensors, DType::F32, &Device::Cpu);
    let [enc, dec] = WanVae::units();
    let e = WanVae::encoder(cfg, vb.pp(enc), vb.clone()).unwrap();
    let d = WanVae::decoder(cfg, vb.pp(dec), vb.clone()).unwrap();
    (e, d, cov)
}

/// `[1, C, T, H, W]` (the references' video layout) → `[T, C, H, W]`.
pub fn frames_first(x: &Tensor) -> Tensor {
    x.squeeze(0)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap()
}

pub fn shapes_of(t: &HashMap<String, Tensor>) -> BTreeMap<String, Vec<usize>> {
    t.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

/// Every tensor of `file` under its canonical name, through the key mapping.
pub fn canonical_tensors(dir: &str, file: &str) -> (Layout, HashMap<String, Tensor>) {
    let wf = WeightFile::open(fixture(dir, file)).unwrap();
    let det = detect(wf.tensors()).unwrap();
    assert_eq!(det.family, Family::WanVae, "{file} detected as {:?}", det);
    let layout = canonicalize(Family::WanVae, wf.tensors()).unwrap();
    let raw = load(dir, file);
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

/// `<dir>/<file>` (`layout_wan2x_vae.txt`): the real file's names and shapes.
pub fn real_layout(dir: &str, file: &str) -> BTreeMap<String, Vec<usize>> {
    std::fs::read_to_string(fixture(dir, file))
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

pub fn infos(layout: &BTreeMap<String, Vec<usize>>) -> Vec<TensorInfo> {
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

/// Decode and encode of fixture `dir` (tiny config `cfg`, `weights` its original-layout file)
/// against diffusers' outputs in `vae_io.safetensors`; the DiT latent has `latent_dims`.
pub fn decode_and_encode_match(
    dir: &str,
    cfg: &Config,
    weights: HashMap<String, Tensor>,
    latent_dims: &[usize],
) {
    let io = load(dir, "vae_io.safetensors");
    assert_eq!(
        io["latents_mean"].to_vec1::<f32>().unwrap(),
        cfg.latents_mean
    );
    assert_eq!(io["latents_std"].to_vec1::<f32>().unwrap(), cfg.latents_std);
    let (enc, dec, cov) = build(cfg, weights);
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
    assert_eq!(latent.dims(), latent_dims);
    assert_close("encode (DiT latent)", &latent, &io["encode_mean"]);
}

/// Fixture `dir`'s original and diffusers files map to the same canonical tensors (bit for
/// bit), the diffusers one is detected as such, and both decode identically. Returns the
/// canonical shapes.
pub fn both_layouts_agree(dir: &str, cfg: &Config) -> BTreeMap<String, Vec<usize>> {
    let (l_orig, orig) = canonical_tensors(dir, "vae.safetensors");
    let (l_diff, diff) = canonical_tensors(dir, "vae_diffusers.safetensors");
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
    let wf = WeightFile::open(fixture(dir, "vae_diffusers.safetensors")).unwrap();
    assert_eq!(detect(wf.tensors()).unwrap().layout, KeyLayout::Diffusers);
    let shapes = shapes_of(&orig);

    let latent = load(dir, "vae_io.safetensors")["decode_in"].clone();
    let (_, d1, _) = build(cfg, orig);
    let (_, d2, _) = build(cfg, diff);
    let a = WanVae::decode(&d1, &latent, None).unwrap();
    let b = WanVae::decode(&d2, &latent, None).unwrap();
    assert_eq!(errors(&a, &b).2, 0.0, "the two layouts decode differently");
    shapes
}

/// The real layout `file` of fixture `dir` (`n` tensors) is what `cfg` builds and what
/// inference gives back; detected and mapped as the original layout, with encoder/decoder
/// units and resident conv1/conv2. Returns the layout.
pub fn real_layout_builds_infers_and_maps(
    dir: &str,
    file: &str,
    cfg: &Config,
    n: usize,
) -> BTreeMap<String, Vec<usize>> {
    let real = real_layout(dir, file);
    assert_eq!(real.len(), n);
    assert_eq!(vae_layout::<WanVae>(cfg).unwrap(), real);
    let inferred = WanVae::infer_config(&|k| real.get(k).cloned(), &BTreeMap::new()).unwrap();
    assert_eq!(&inferred, cfg);
    let inf = infos(&real);
    let det = detect(&inf).unwrap();
    assert_eq!(
        (det.family, det.layout),
        (Family::WanVae, KeyLayout::Original)
    );
    let l = canonicalize(Family::WanVae, &inf).unwrap();
    assert_eq!(l.layout, Layout::WanVaeOriginal);
    assert_eq!(l.tensors.len(), n);
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
    real
}
