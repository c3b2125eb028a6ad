//! Sampling and output costs outside the model, at FLUX 1024×1024 (latent 16×128×128):
//! seeded noise, schedules, one sampler step, and turning the decoded image into a PNG.
//! Results and the machine they came from: benches/RESULTS.md.

use std::hint::black_box;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use mgpu::output::{encode_png, image_to_rgb8, ImageRecord, RECORD_FORMAT};
use mgpu::sample::noise::normal_f32;
use mgpu::sample::{schedule, ModelSampling, SampleSpec, Sampler, SamplerRun, Scheduler};

const LATENT: [usize; 4] = [1, 16, 128, 128];

fn noise(c: &mut Criterion) {
    let n: usize = LATENT.iter().product();
    c.bench_function("noise: 262144 normals (FLUX 1024² latent)", |b| {
        b.iter(|| normal_f32(black_box(42), 0, n))
    });
}

fn schedules(c: &mut Criterion) {
    let ms = ModelSampling::flux_dev(1024, 1024);
    c.bench_function("schedule: beta, 20 steps", |b| {
        b.iter(|| schedule(&ms, Scheduler::Beta, black_box(20), 1.0))
    });
    c.bench_function("model sampling: flux_dev table (10000 σ)", |b| {
        b.iter(|| ModelSampling::flux_dev(black_box(1024), 1024))
    });
}

fn steps(c: &mut Criterion) {
    let ms = ModelSampling::flux_dev(1024, 1024);
    let dev = Device::Cpu;
    let denoised = Tensor::zeros(&LATENT, DType::F32, &dev).unwrap();
    for sampler in [Sampler::Euler, Sampler::Dpmpp2mSde] {
        let spec = SampleSpec {
            sampler,
            scheduler: Scheduler::Simple,
            steps: 1000,
            denoise: 1.0,
            seed: 1,
        };
        let mut run = SamplerRun::start(&spec, &ms, &LATENT, None, &dev, DType::F32).unwrap();
        c.bench_function(&format!("step: {sampler}, f32 CPU, 16×128×128"), |b| {
            b.iter(|| {
                if run.is_done() {
                    run = SamplerRun::start(&spec, &ms, &LATENT, None, &dev, DType::F32).unwrap();
                }
                run.advance(black_box(&denoised)).unwrap();
            })
        });
    }
}

fn png(c: &mut Criterion) {
    let dev = Device::Cpu;
    let img = Tensor::rand(-1.0f32, 1.0, (1, 3, 1024, 1024), &dev).unwrap();
    // A smooth image compresses like a real one; uniform noise would not.
    let smooth = Tensor::arange(0f32, 1024.0, &dev)
        .unwrap()
        .affine(2.0 / 1024.0, -1.0)
        .unwrap();
    let smooth = smooth
        .reshape((1, 1, 1, 1024))
        .unwrap()
        .broadcast_as((1, 3, 1024, 1024))
        .unwrap()
        .contiguous()
        .unwrap();
    let record = ImageRecord {
        format: RECORD_FORMAT,
        mgpu_version: "0.1.0".into(),
        job: "bench".into(),
        prompt: "a benchmark".into(),
        negative_prompt: None,
        seed: 1,
        sampler: Sampler::Euler,
        scheduler: Scheduler::Simple,
        steps: 20,
        cfg_scale: 1.0,
        cfg_scale_low_noise: None,
        expert_boundary: None,
        guidance: Some(3.5),
        denoise: 1.0,
        init_image: None,
        init_image_sha256: None,
        shift: Some(1.15),
        width: 1024,
        height: 1024,
        frames: None,
        fps: None,
        models: vec![],
        loras: vec![],
        job_hash: None,
    };
    c.bench_function("image_to_rgb8: 1024×1024", |b| {
        b.iter(|| image_to_rgb8(black_box(&img)).unwrap())
    });
    let rgb = image_to_rgb8(&smooth).unwrap();
    c.bench_function("encode_png: 1024×1024 gradient", |b| {
        b.iter(|| encode_png(black_box(&rgb), &record).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = noise, schedules, steps, png
}
criterion_main!(benches);
