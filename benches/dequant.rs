//! Dequantisation throughput per stored type, 16 Mi values (64 MiB of f32 output) each:
//! - `mgpu-all-threads`: `weights::convert::to_f32_into` into a reused buffer, rayon across
//!   blocks as `WeightFile::to_f32` runs it (the kernels' speed);
//! - `mgpu-1-thread`: the same on a one-thread rayon pool;
//! - `mgpu-alloc`: `weights::convert::to_f32` returning a fresh `Vec` (what `to_f32` costs,
//!   page faults of the new 64 MiB included);
//! - `candle-kernel`: candle's block kernel (`k_quants::GgmlType::to_float`, one thread) into a
//!   reused buffer, on blocks candle quantised from random data — kernel against kernel;
//! - `candle`: candle's `QTensor::dequantize` on mgpu's blocks (one thread, allocates its
//!   output tensor), what candle's API costs.
//!
//! Criterion reports throughput as f32 output bytes per second; input bytes per second is that
//! times `block_bytes / (4 * block_values)` (benches/RESULTS.md lists both).
//!
//! Run: `cargo bench --bench dequant` (filter: `cargo bench --bench dequant -- Q4_K`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;

use mgpu::weights::convert::{to_f32, to_f32_into};
use mgpu::weights::store::ggml_type;
use mgpu::weights::DType;

const VALUES: usize = 16 << 20;

/// Deterministic bytes for `n` values of `dtype`: random quant bits, with every fp16 scale set
/// to an ordinary value (random scale bits would make some blocks inf/NaN/denormal, which is
/// not what real files hold and would time the FPU's slow paths instead of the kernels).
fn blocks(dtype: DType, n: usize) -> Vec<u8> {
    let (bv, bb) = dtype.block();
    let (bv, bb) = (bv as usize, bb as usize);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut v: Vec<u8> = (0..n / bv * bb)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let scale_at: &[usize] = match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        DType::F16 => {
            for c in v.chunks_exact_mut(2) {
                let h = f16::from_f32((c[0] as f32 - 128.0) / 64.0);
                c.copy_from_slice(&h.to_le_bytes());
            }
            &[]
        }
        _ => &[],
    };
    let d = f16::from_f32(0.0123).to_le_bytes();
    for b in v.chunks_exact_mut(bb) {
        for &at in scale_at {
            b[at..at + 2].copy_from_slice(&d);
        }
    }
    v
}

/// candle's kernel for block type `T` on `VALUES` values quantised by candle itself.
fn candle_kernel<T: candle_core::quantized::k_quants::GgmlType + Clone>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    out: &mut [f32],
) {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let src: Vec<f32> = (0..VALUES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let mut blocks = vec![T::zeros(); VALUES / T::BLCK_SIZE];
    T::from_float(&src, &mut blocks);
    g.bench_function(BenchmarkId::new("candle-kernel", name), |b| {
        b.iter(|| T::to_float(&blocks, out))
    });
}

fn bench(c: &mut Criterion) {
    let types = [
        DType::F16,
        DType::BF16,
        DType::F8_E4M3,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let mut g = c.benchmark_group("dequant");
    g.sample_size(10);
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(3));
    g.throughput(Throughput::Bytes((VALUES * 4) as u64));
    let mut out = vec![0f32; VALUES];
    for d in types {
        let src = blocks(d, VALUES);
        g.bench_with_input(
            BenchmarkId::new("mgpu-all-threads", d.name()),
            &src,
            |b, src| b.iter(|| to_f32_into(d, src, &mut out)),
        );
        g.bench_with_input(
            BenchmarkId::new("mgpu-1-thread", d.name()),
            &src,
            |b, src| b.iter(|| one_thread.install(|| to_f32_into(d, src, &mut out))),
        );
        g.bench_with_input(BenchmarkId::new("mgpu-alloc", d.name()), &src, |b, src| {
            b.iter(|| to_f32(d, src, VALUES))
        });
        {
            use candle_core::quantized::k_quants::*;
            let o = &mut out[..];
            match d {
                DType::Q4_0 => candle_kernel::<BlockQ4_0>(&mut g, d.name(), o),
                DType::Q4_1 => candle_kernel::<BlockQ4_1>(&mut g, d.name(), o),
                DType::Q5_0 => candle_kernel::<BlockQ5_0>(&mut g, d.name(), o),
                DType::Q5_1 => candle_kernel::<BlockQ5_1>(&mut g, d.name(), o),
                DType::Q8_0 => candle_kernel::<BlockQ8_0>(&mut g, d.name(), o),
                DType::Q2_K => candle_kernel::<BlockQ2K>(&mut g, d.name(), o),
                DType::Q3_K => candle_kernel::<BlockQ3K>(&mut g, d.name(), o),
                DType::Q4_K => candle_kernel::<BlockQ4K>(&mut g, d.name(), o),
                DType::Q5_K => candle_kernel::<BlockQ5K>(&mut g, d.name(), o),
                DType::Q6_K => candle_kernel::<BlockQ6K>(&mut g, d.name(), o),
                _ => {}
            }
        }
        if let Some(ct) = ggml_type(d) {
            let dev = candle_core::Device::Cpu;
            // candle casts the bytes to block structs: hand it 4-aligned memory.
            let mut aligned = vec![0u32; src.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut aligned)[..src.len()].copy_from_slice(&src);
            let bytes = &bytemuck::cast_slice::<u32, u8>(&aligned)[..src.len()];
            let q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                ct,
                bytes,
                vec![VALUES / 4096, 4096],
                &dev,
            )
            .unwrap();
            g.bench_with_input(BenchmarkId::new("candle", d.name()), &q, |b, q| {
                b.iter(|| q.dequantize(&dev).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
