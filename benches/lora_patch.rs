//! LoRA patch throughput at FLUX.1 sizes: `LoraSet::patch` on a bf16 `double_blocks.N.img_attn.qkv`
//! (9216 × 3072) with a rank-16 diffusers LoRA on its q, k and v (three row ranges), returning a
//! new buffer and in place (`patch_in_place`, on a buffer the caller owns), and the f32 delta alone
//! (`TensorDelta::apply_f32`, what bake and apply-at-dequantisation cost).
//! Results: benches/RESULTS.md.

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use half::bf16;
use mgpu::family::Family;
use mgpu::weights::keymap::{canonicalize, FluxDims};
use mgpu::weights::lora::{BaseTensor, LoraSet};
use mgpu::weights::{DType, TensorInfo};

const RANK: usize = 16;
const H: usize = 3072;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 2000.0 - 0.5
        })
        .collect()
}

fn lora_file(dir: &std::path::Path) -> PathBuf {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, m) in ["to_q", "to_k", "to_v"].iter().enumerate() {
        let a: Vec<u8> = values(RANK * H, k as u32)
            .iter()
            .flat_map(|v| bf16::from_f32(*v * 0.01).to_le_bytes())
            .collect();
        let b: Vec<u8> = values(H * RANK, 7 + k as u32)
            .iter()
            .flat_map(|v| bf16::from_f32(*v * 0.01).to_le_bytes())
            .collect();
        owned.push((
            format!("transformer.transformer_blocks.0.attn.{m}.lora_A.weight"),
            vec![RANK, H],
            a,
        ));
        owned.push((
            format!("transformer.transformer_blocks.0.attn.{m}.lora_B.weight"),
            vec![H, RANK],
            b,
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    let path = dir.join("lora.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
    path
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let infos: Vec<TensorInfo> = FluxDims::DEV
        .bfl_tensors()
        .into_iter()
        .map(|(name, shape)| TensorInfo {
            len: DType::BF16.storage_bytes(shape.iter().product()).unwrap(),
            name,
            dtype: DType::BF16,
            shape,
            offset: 0,
        })
        .collect();
    let layout = canonicalize(Family::Flux, &infos).unwrap();
    let (set, _) =
        LoraSet::load(&[(lora_file(dir.path()), 0.8)], Family::Flux, &layout, true).unwrap();
    let name = "double_blocks.0.img_attn.qkv.weight";
    let shape = [3 * H as u64, H as u64];
    let n = 3 * H * H;
    let base: Vec<u8> = values(n, 99)
        .iter()
        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
        .collect();

    let mut g = c.benchmark_group("lora_patch");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("qkv_9216x3072_bf16_rank16", |b| {
        b.iter(|| {
            set.patch(
                name,
                BaseTensor {
                    dtype: DType::BF16,
                    shape: &shape,
                    bytes: &base,
                    scale: None,
                },
            )
            .unwrap()
        })
    });
    g.bench_function("qkv_9216x3072_bf16_rank16_in_place", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |buf| {
                set.patch_in_place(name, DType::BF16, &shape, buf, None)
                    .unwrap()
            },
            criterion::BatchSize::LargeInput,
        )
    });
    let d = set.delta(name).unwrap();
    let w0: Vec<f32> = values(n, 99);
    g.bench_function("delta_f32_9216x3072_rank16", |b| {
        b.iter_batched_ref(
            || w0.clone(),
            |w| d.apply_f32(w).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
