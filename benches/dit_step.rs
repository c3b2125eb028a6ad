//! One denoising step of the tiny FLUX DiT on the CPU (all units: embed, 2 double + 2
//! single blocks, final layer) at 256×256 pixels (a 32×32 latent: 256 image tokens), with
//! 64 and 512 text tokens; blocks are built from their unit's `VarBuilder` inside the step,
//! as the executor does. Also the tiny VAE decode of the same latent, and the CPU GELU
//! (`models::act::gelu_tanh` against candle's libm-based `gelu`) on one MLP activation of the
//! drawing demo's transformer.
//! Results: benches/RESULTS.md.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion};
use mgpu::models::flux::{self, FluxDit};
use mgpu::models::{tiny, vae};

fn dit_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let cfg = flux::Config::tiny();
    let w: HashMap<String, Tensor> = tiny::flux_weights(&cfg, 0).unwrap().into_iter().collect();
    let vb = VarBuilder::from_tensors(w, DType::F32, &dev);
    let dit = FluxDit::new(&cfg, vb.clone()).unwrap();
    let units = FluxDit::units(&cfg);
    let latent = Tensor::randn(0f32, 1.0, (1, 16, 32, 32), &dev).unwrap();
    let vec = Tensor::randn(0f32, 1.0, (1, 32), &dev).unwrap();
    let mut group = c.benchmark_group("dit_step");
    for l_txt in [64, 512] {
        let txt = Tensor::randn(0f32, 1.0, (1, l_txt, 32), &dev).unwrap();
        group.bench_function(format!("tiny_256px_txt{l_txt}"), |b| {
            b.iter(|| {
                dit.forward(&latent, &txt, &vec, 0.5, Some(3.5), &mut |i| {
                    Ok(vb.pp(&units[i]))
                })
                .unwrap()
            })
        });
    }
    group.finish();

    let vcfg = vae::Config::tiny();
    let vw: HashMap<String, Tensor> = tiny::vae_weights(&vcfg, 0).unwrap().into_iter().collect();
    let decoder = vae::Decoder::new(
        &vcfg,
        VarBuilder::from_tensors(vw, DType::F32, &dev).pp("decoder"),
    )
    .unwrap();
    c.bench_function("vae_decode/tiny_256px", |b| {
        b.iter(|| decoder.decode(&latent).unwrap())
    });
}

/// GELU (tanh approximation) on `[192, 768]` f32: the MLP activation of one block of the
/// drawing demo (96 tokens × 2 for CFG, width 192 × 4).
fn gelu(c: &mut Criterion) {
    let x = Tensor::randn(0f32, 2.0, (192, 768), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("gelu_192x768");
    group.bench_function("candle_gelu", |b| b.iter(|| x.gelu().unwrap()));
    group.bench_function("mgpu_gelu_tanh", |b| {
        b.iter(|| mgpu::models::act::gelu_tanh(&x).unwrap())
    });
    group.finish();
}

criterion_group!(benches, dit_step, gelu);
criterion_main!(benches);
