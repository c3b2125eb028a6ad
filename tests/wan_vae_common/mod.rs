//! Helpers of the Wan VAE tests (tests/models_wan_vae.rs for 2.1, tests/models_wan22_vae.rs
//! for 2.2; fixtures and error measures from tests/parity_common): tolerances, the encoder/decoder
//! built as the executor builds them, the key mapping, the real layout.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};
use mgpu::family::Family;
use mgpu::models::coverage::Coverage;
use mgpu::models::spec::Autoencoder;
use mgpu::models::wan_vae::{Config, Decoder, Encoder, WanVae};
use mgpu::weights::keymap::{canonicalize, Layout};
use mgpu::weights::{detect, TensorInfo, WeightFile};

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
