//! `mgpu bench`: the streaming benchmark harness (see [`crate::exec::bench`]). Runs a
//! FLUX-shaped transformer with generated weights under several placements and prints s/step,
//! stall time, streamed GB/s, the floor and whether every placement computed the same bytes.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};

use super::Status;
use crate::device::DeviceName;
use crate::exec::bench::{self, BenchConfig, Placement};
use crate::models::flux;
use crate::models::flux::kernels::CheckSize;

/// Measure block streaming on a FLUX-shaped transformer with generated weights.
///
/// Example (GPU): `mgpu bench --model dev --size 1024 --steps 20 --batch 1,4
/// --placements resident,cpu:25,cpu:50,cpu:75,cpu:100,cuda:1:100 --json bench.json`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model shape: dev (FLUX.1-dev, 11.9 B parameters), schnell, or tiny.
    #[arg(long, default_value = "dev")]
    pub model: String,
    /// Image width and height in pixels (multiples of 16).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// T5 tokens per prompt (FLUX dev: 512).
    #[arg(long, default_value_t = 512)]
    pub txt_tokens: usize,
    /// Timed steps per cell (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Untimed steps before the timed ones.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Batch sizes to measure (jobs per step).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Placements: `resident`, or SOURCE:PERCENT with SOURCE `cpu`, `disk` or `cuda:N`
    /// (a donor GPU), e.g. `cpu:50` streams half of the blocks from page-locked host memory.
    #[arg(long, value_delimiter = ',', default_value = "resident,cpu:100")]
    pub placements: Vec<Placement>,
    /// Prefetch slots on the compute device.
    #[arg(long, default_value_t = 2)]
    pub slots: usize,
    /// Compute device.
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceName,
    /// Weight and compute dtype: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Write the full report (every step of every cell) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Instead of the placement table, time the building blocks of one FLUX-dev step
    /// (linear layers, attention, norms) on the device: a diagnostic.
    #[arg(long)]
    pub ops: bool,
    /// Instead of the placement table, compare every fused FLUX CUDA kernel (and whole blocks
    /// at FLUX-dev size) with the candle path and with f32 on random inputs; fails if one is
    /// off or not deterministic. `small` (for compute-sanitizer) or `full` (the default).
    #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "full")]
    pub check_kernels: Option<CheckSize>,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let model = match args.model.as_str() {
        "dev" => flux::Config::dev(),
        "schnell" => flux::Config::schnell(),
        "tiny" => flux::Config::tiny(),
        other => bail!("--model `{other}`: expected dev, schnell or tiny"),
    };
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--dtype `{other}`: expected bf16 or f32"),
    };
    if args.size % 16 != 0 || args.size == 0 {
        bail!("--size {}: must be a positive multiple of 16", args.size)
    }
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch: every batch size must be at least 1")
    }
    if let Some(size) = args.check_kernels {
        return check_kernels(&args.device, size);
    }
    if args.ops {
        let device = match args.device {
            DeviceName::Cpu => Device::Cpu,
            DeviceName::Cuda(i) => {
                Device::new_cuda_with_stream(i as usize).context("opening the CUDA device")?
            }
            DeviceName::Disk => bail!("--device disk cannot compute"),
        };
        for (name, ms) in bench::profile_ops(&device, dtype)? {
            println!("{ms:>10.3} ms  {name}");
        }
        return Ok(Status::Ok);
    }
    let cfg = BenchConfig {
        model,
        model_name: format!("flux-{}", args.model),
        width: args.size,
        height: args.size,
        txt_tokens: args.txt_tokens,
        steps: args.steps.max(1),
        warmup: args.warmup,
        batches: args.batch.clone(),
        placements: args.placements.clone(),
        slots: args.slots,
        dtype,
        seed: args.seed,
    };
    let progress = |m: &str| eprintln!("bench: {m}");
    let (report, floor_gbps) = match args.device {
        DeviceName::Cpu => {
            if args
                .placements
                .iter()
                .any(|p| matches!(p.source, Some(bench::Source::Cuda(_))))
            {
                bail!("a cuda:N donor needs a CUDA compute device (--device cuda:0)")
            }
            let mut f = bench::cpu_backend_factory(dtype);
            (bench::run(&cfg, &Device::Cpu, &mut *f, progress)?, None)
        }
        DeviceName::Cuda(i) => cuda_run(&cfg, i as usize, progress)?,
        DeviceName::Disk => bail!("--device disk: disk stores weights, it cannot compute"),
    };
    println!("{}", bench::render(&report, floor_gbps));
    if let Some(p) = &args.json {
        let mut v = serde_json::to_value(&report)?;
        v["h2d_gbps"] = serde_json::json!(floor_gbps);
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    let all_identical = report
        .measurements
        .iter()
        .all(|m| m.identical != Some(false));
    Ok(if all_identical {
        Status::Ok
    } else {
        Status::Failed
    })
}

#[cfg(feature = "cuda")]
fn check_kernels(device: &DeviceName, size: CheckSize) -> anyhow::Result<Status> {
    use crate::models::flux::kernels::check;
    let DeviceName::Cuda(i) = device else {
        bail!("--check-kernels needs a CUDA device (--device cuda:N)")
    };
    let dev = Device::new_cuda_with_stream(*i as usize).context("opening the CUDA device")?;
    let rows = check::check_kernels(&dev, size, |m| eprintln!("check: {m}"))?;
    println!("{}", check::render(&rows));
    Ok(if rows.iter().all(|r| r.pass()) {
        Status::Ok
    } else {
        Status::Failed
    })
}

#[cfg(not(feature = "cuda"))]
fn check_kernels(_device: &DeviceName, _size: CheckSize) -> anyhow::Result<Status> {
    bail!("--check-kernels: this mgpu was built without CUDA (build with --features cuda; see docs/gpu.md)")
}

#[cfg(feature = "cuda")]
fn cuda_run(
    cfg: &BenchConfig,
    ordinal: usize,
    progress: impl FnMut(&str),
) -> anyhow::Result<(bench::BenchReport, Option<f64>)> {
    use crate::exec::cuda::{measure_h2d_gbps, CudaBackend, LinkKind, PinnedPool};
    use crate::exec::engine::Backend;
    let device = Device::new_cuda_with_stream(ordinal).context("opening the CUDA device")?;
    if std::env::var_os("MGPU_RELEASE_POOL").is_none() {
        crate::exec::cuda::keep_pool_memory(&device)?;
    }
    let h2d = measure_h2d_gbps(&device, 1 << 30, 8)?;
    eprintln!("bench: page-locked host→device {h2d:.1} GB/s");
    let mut pool = PinnedPool::default();
    let dev2 = device.clone();
    let mut factory = move |units: &[crate::exec::engine::EngineUnit],
                            links: &[String],
                            source: &Option<bench::Source>,
                            slots: usize|
          -> Result<Box<dyn Backend>, crate::exec::engine::EngineError> {
        let kinds: Vec<LinkKind> = match source {
            None => vec![],
            Some(bench::Source::Cpu) => vec![LinkKind::Host],
            Some(bench::Source::Disk) => vec![LinkKind::Disk],
            Some(bench::Source::Cuda(i)) => vec![LinkKind::Peer(*i as usize)],
        };
        Ok(Box::new(CudaBackend::new(
            &dev2, units, links, &kinds, slots, &mut pool,
        )?))
    };
    let report = bench::run(cfg, &device, &mut factory, progress)?;
    Ok((report, Some(h2d)))
}

#[cfg(not(feature = "cuda"))]
fn cuda_run(
    _cfg: &BenchConfig,
    ordinal: usize,
    _progress: impl FnMut(&str),
) -> anyhow::Result<(bench::BenchReport, Option<f64>)> {
    bail!("--device cuda:{ordinal}: this mgpu was built without CUDA (build with --features cuda; see docs/gpu.md), or use --device cpu")
}
