//! Planning cost: a 1000-block model (Wan-architecture blocks of width 1536, 86 GB in bf16) on
//! the 2×H100 hardware file, in bytes mode and with `auto`, and FLUX.1-dev (57 blocks) with
//! `auto` on a 24 GiB card. Run: `cargo bench --bench plan`. Results: benches/RESULTS.md.

use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use mgpu::alloc::{Allocation, Entry, ExpertAllocation, Mode, Value};
use mgpu::device::DeviceName;
use mgpu::family::Family;
use mgpu::hardware::file;
use mgpu::inventory::synthetic;
use mgpu::plan::{plan, ModelRequest, PlanRequest, Workload};
use mgpu::units::ByteSize;
use mgpu::weights::DType;

fn request(
    inv: Arc<mgpu::inventory::Inventory>,
    family: Family,
    allocation: Allocation,
    w: Workload,
) -> PlanRequest {
    PlanRequest {
        models: vec![ModelRequest {
            name: "model".into(),
            family,
            compute: DeviceName::Cuda(0),
            allocation,
            overrides: vec![],
            inventory: inv,
            device_bytes: None,
            patch_flops_per_value: 0.0,
            workload: w,
            prefetch: None,
        }],
        experts: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let h100x2 = file::read(&data.join("hw-h100x2.toml")).unwrap();
    let rtx4090 = file::read(&data.join("hw-4090-cpu.toml")).unwrap();
    let wan = Arc::new(synthetic::wan(DType::BF16, 1536, 8960, 1000));
    let mut w = Workload::image(832, 480);
    w.frames = 81;
    w.evals_per_step = 2;
    let bytes = Allocation::Expert(ExpertAllocation {
        mode: Mode::Bytes,
        entries: vec![
            Entry {
                device: DeviceName::Cuda(0),
                value: Some(Value::Bytes(ByteSize::gib(40))),
                wildcard: false,
                span: Default::default(),
            },
            Entry {
                device: DeviceName::Cuda(1),
                value: Some(Value::Bytes(ByteSize::gib(30))),
                wildcard: false,
                span: Default::default(),
            },
            Entry {
                device: DeviceName::Cpu,
                value: None,
                wildcard: true,
                span: Default::default(),
            },
        ],
    });
    let req = request(wan.clone(), Family::Wan, bytes, w);
    plan(&req, &h100x2).unwrap();
    c.bench_function("plan 1000 blocks, bytes mode", |b| {
        b.iter(|| plan(&req, &h100x2).unwrap())
    });
    let req = request(wan, Family::Wan, Allocation::Auto, w);
    plan(&req, &h100x2).unwrap();
    c.bench_function("plan 1000 blocks, auto", |b| {
        b.iter(|| plan(&req, &h100x2).unwrap())
    });
    let flux = Arc::new(synthetic::flux_dev(DType::BF16));
    let req = request(
        flux,
        Family::Flux,
        Allocation::Auto,
        Workload::image(1024, 1024),
    );
    plan(&req, &rtx4090).unwrap();
    c.bench_function("plan FLUX.1-dev, auto, 24 GiB", |b| {
        b.iter(|| plan(&req, &rtx4090).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
