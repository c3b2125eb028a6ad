//! `mgpu bench`: the streaming benchmark harness (see [`crate::exec::bench`]). Runs a
//! diffusion transformer (FLUX or Wan shapes) with generated weights under several
//! placements and prints s/step, stall time, streamed GB/s, the floor and whether every
//! placement computed the same bytes.

use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::{DType, Device};

use super::Status;
use crate::device::{DeviceName, UnitHome};
use crate::exec::bench::{self, BenchConfig, Placement, Storage};
use crate::exec::distribute::Pools;
use crate::models::flux::kernels::CheckSize;

mod model;
pub use model::{experts_of, BenchModel, MODELS};

/// Measure block streaming on a diffusion transformer with generated weights.
///
/// Example (GPU): `mgpu bench --model dev --size 1024 --steps 20 --batch 1,4
/// --placements resident,cpu:25,cpu:50,cpu:75,cpu:100,cuda:1:100 --json bench.json`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model shape: dev (FLUX.1-dev, 11.9 B parameters), schnell, tiny (FLUX); wan14b
    /// (Wan 2.1 T2V 14B), wan1.3b, wan-tiny; wan22-a14b, wan22-tiny (two experts); ti2v-5b,
    /// ti2v-tiny (Wan 2.2 TI2V-5B).
    #[arg(long, default_value = "dev")]
    pub model: String,
    /// Image width and height in pixels (multiples of 16); --width/--height override it.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Width in pixels (default: --size).
    #[arg(long)]
    pub width: Option<usize>,
    /// Height in pixels (default: --size).
    #[arg(long)]
    pub height: Option<usize>,
    /// Video frames (4k+1) for video models (default 81); images make one.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Text tokens per prompt (FLUX dev and Wan: 512).
    #[arg(long, default_value_t = 512)]
    pub txt_tokens: usize,
    /// True classifier-free guidance: two model evaluations per job and step (prompt and
    /// negative prompt) in the same pass over the weights, as Wan runs.
    #[arg(long)]
    pub cfg: bool,
    /// A rank-R LoRA term on every block matrix stored as GGML blocks (`@q8_0`, `@q4_k`
    /// placements), added at every dequantisation as `lora_mode = "on_dequant"` does (resident
    /// cells add it once, on the CPU: the placements' outputs must still agree); 0: none.
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
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
    /// (a donor GPU), e.g. `cpu:50` streams half of the blocks from page-locked host memory;
    /// a suffix `@q8_0` or `@fp8` stores the blocks' matrices as GGUF Q8_0 or ComfyUI scaled
    /// fp8 (they travel compact and are widened on the compute device).
    #[arg(long, value_delimiter = ',', default_value = "resident,cpu:100")]
    pub placements: Vec<Placement>,
    /// Prefetch slots K on the compute device: a number (1–64), or `auto`: per placement and
    /// batch the K the planner would choose (the smallest of 2–8 within 1% of the fastest
    /// predicted step; needs --hardware)
    #[arg(long, default_value = "2", value_parser = parse_slots)]
    pub slots: Slots,
    /// Compute device.
    #[arg(long, default_value = "cuda:0")]
    pub device: DeviceName,
    /// Weight and compute dtype: bf16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Folder for the spill files of `disk` placements (default: the system's temporary
    /// folder; choose one on a disk, not in RAM).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Write the full report (every step of every cell) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Instead of the placement table, time the building blocks of one step (FLUX-dev at
    /// 1024², or one block of the Wan shape at --width/--height/--frames) on the device: a
    /// diagnostic.
    #[arg(long)]
    pub ops: bool,
    /// Instead of the placement table, compare every fused FLUX CUDA kernel (and whole blocks
    /// at FLUX-dev size) with the candle path and with f32 on random inputs; fails if one is
    /// off or not deterministic. `small` (for compute-sanitizer) or `full` (the default).
    #[arg(long, value_name = "SIZE", num_args = 0..=1, default_missing_value = "full")]
    pub check_kernels: Option<CheckSize>,
    /// Instead of the placement table, check every compact-weight kernel against the CPU:
    /// widen every fp8 bit pattern (e4m3fn, e5m2; without and with scales) to bf16, f16 and
    /// f32, dequantise GGML blocks of every type to bf16 (Q8_0 with every f16 scale, the
    /// others on 8 192 pseudo-random blocks), and check the fp8-compute rounding and GEMMs;
    /// fails if a byte differs. Also spelled `--check-compact`.
    #[arg(long, alias = "check-compact")]
    pub check_fp8: bool,
    /// Seed of the weight generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub hardware: super::HardwareArg,
}

/// `--slots`: a fixed K, or the planner's choice per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    Fixed(usize),
    Auto,
}

fn parse_slots(s: &str) -> Result<Slots, String> {
    match s.trim() {
        "auto" => Ok(Slots::Auto),
        t => t
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=64).contains(k))
            .map(Slots::Fixed)
            .ok_or_else(|| format!("`{t}`: expected a number of slots 1–64, or `auto`")),
    }
}

pub fn run(args: Args) -> anyhow::Result<Status> {
    let model = BenchModel::parse(&args.model)?;
    let dtype = match args.dtype.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--dtype `{other}`: expected bf16 or f32"),
    };
    let (width, height) = (
        args.width.unwrap_or(args.size),
        args.height.unwrap_or(args.size),
    );
    let multiple = model.size_multiple();
    for (flag, v) in [("--width", width), ("--height", height)] {
        if !v.is_multiple_of(multiple) || v == 0 {
            bail!(
                "{flag} {v}: must be a positive multiple of {multiple} for --model {}",
                args.model
            )
        }
    }
    let video = model.family().is_video();
    let frames = match (args.frames, video) {
        (Some(f), true) if f % 4 == 1 => f,
        (Some(f), true) => bail!("--frames {f}: video frames are 4k+1 (81, 49, 33, …)"),
        (Some(f), false) if f != 1 => bail!("--frames: {} makes images", args.model),
        (None, true) => 81,
        _ => 1,
    };
    if args.batch.is_empty() || args.batch.contains(&0) {
        bail!("--batch: every batch size must be at least 1")
    }
    if let Some(size) = args.check_kernels {
        return check_kernels(&args.device, size);
    }
    if args.check_fp8 {
        return check_fp8(&args.device);
    }
    if args.ops {
        let device = match args.device {
            DeviceName::Cpu => Device::Cpu,
            DeviceName::Cuda(i) => {
                Device::new_cuda_with_stream(i as usize).context("opening the CUDA device")?
            }
            DeviceName::Disk => bail!("--device disk cannot compute"),
        };
        // As the executor runs: freed activations stay mapped (otherwise every synchronised
        // call would also time re-mapping its outputs).
        #[cfg(feature = "cuda")]
        if device.is_cuda() {
            crate::exec::cuda::keep_pool_memory(&device)?;
        }
        let rows = match &model {
            BenchModel::Flux(_) => bench::profile_ops(&device, dtype)?,
            BenchModel::Wan(c) => {
                let tokens = ((frames - 1) / 4 + 1) * (height / 16) * (width / 16);
                bench::profile_wan_ops(&device, dtype, tokens, c.dim, c.num_heads, c.ffn_dim)?
            }
        };
        for (name, ms) in rows {
            println!("{ms:>10.3} ms  {name}");
        }
        return Ok(Status::Ok);
    }
    let mut cfg = BenchConfig {
        model_name: match &model {
            BenchModel::Flux(_) => format!("flux-{}", args.model),
            BenchModel::Wan(_) => args.model.clone(),
        },
        width,
        height,
        frames,
        txt_tokens: args.txt_tokens,
        steps: args.steps.max(1),
        warmup: args.warmup,
        batches: args.batch.clone(),
        placements: args.placements.clone(),
        slots: match args.slots {
            Slots::Fixed(k) => k,
            Slots::Auto => 2,
        },
        slots_for: Default::default(),
        dtype,
        seed: args.seed,
        cfg: args.cfg,
        experts: experts_of(&args.model),
        lora_rank: args.lora_rank,
    };
    // Checked before the run: a bad file fails in a second, not after minutes of measuring.
    if args.slots == Slots::Auto && args.hardware.hardware.is_none() {
        bail!("--slots auto: the planner needs the machine's rates; give --hardware FILE (`mgpu probe --bench --save FILE` writes one)")
    }
    let hardware = args.hardware.read()?;
    if let (Slots::Auto, Some(hw)) = (args.slots, &hardware) {
        for &batch in &cfg.batches {
            for p in &cfg.placements {
                let k = auto_slots(&model, &cfg, &args, hw, p, batch)?;
                cfg.slots_for.insert((p.to_string(), batch), k);
            }
        }
    }
    let progress = |m: &str| eprintln!("bench: {m}");
    let cache = match &args.cache_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache folder {}", cache.display()))?;
    let (report, floor_gbps) = match args.device {
        DeviceName::Cpu => {
            if args
                .placements
                .iter()
                .any(|p| matches!(p.source, Some(UnitHome::Donor(_))))
            {
                bail!("a cuda:N donor needs a CUDA compute device (--device cuda:0)")
            }
            let mut pools = Pools::default();
            let r = model.run(&cfg, &Device::Cpu, &cache, &mut pools, progress)?;
            (r, None)
        }
        DeviceName::Cuda(i) => {
            let (device, h2d) = cuda_device(i as usize)?;
            let mut pools = Pools::default();
            let r = model.run(&cfg, &device, &cache, &mut pools, progress)?;
            (r, h2d)
        }
        DeviceName::Disk => bail!("--device disk: disk stores weights, it cannot compute"),
    };
    let mut report = report;
    if let Some(hw) = &hardware {
        predict(&mut report, &model, &cfg, &args, hw)?;
    }
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

/// The planner's view of one cell: the benchmarked model's inventory (its own layout, in
/// bf16, or Q8_0 matrices for `@q8_0`, fp8 matrices for `@fp8`), the placement's streamed blocks as homes, the batch,
/// size, frames and evaluations per step.
fn cell_request(
    model: &BenchModel,
    cfg: &BenchConfig,
    args: &Args,
    placement: &Placement,
    batch: usize,
) -> anyhow::Result<(crate::plan::ModelRequest, Vec<DeviceName>)> {
    use crate::inventory::Inventory;
    use crate::plan::{ModelRequest, Workload};
    use crate::weights::DType as WDType;
    let block_names = model.units();
    let tensors: Vec<(String, WDType, Vec<u64>)> = model
        .layout()?
        .into_iter()
        .map(|(name, shape)| {
            let dtype = placement.storage.stored(&shape).unwrap_or(WDType::BF16);
            (name, dtype, shape.iter().map(|&d| d as u64).collect())
        })
        .collect();
    let inventory = std::sync::Arc::new(Inventory::synthetic(Some(model.family()), &tensors));
    let streamed = match placement.source {
        Some(_) => bench::spread(block_names.len(), placement.percent),
        None => vec![false; block_names.len()],
    };
    let source = match placement.source {
        None => args.device,
        Some(h) => h.device(args.device),
    };
    let homes: Vec<DeviceName> = inventory
        .units
        .iter()
        .map(|u| match block_names.iter().position(|b| *b == u.name) {
            Some(k) if streamed[k] => source,
            _ => args.device,
        })
        .collect();
    let mut workload = Workload::image(cfg.width as u32, cfg.height as u32);
    workload.frames = cfg.frames as u32;
    workload.batch = batch as u32;
    workload.text_tokens = cfg.txt_tokens as u32;
    workload.evals_per_step = if cfg.cfg { 2 } else { 1 };
    workload.fp8_linears = placement.storage == Storage::Fp8Compute;
    // Compact (Q8_0, fp8) matrices are widened to bf16 on the device, except fp8 linears
    // under fp8 compute (one byte each there too).
    let family = model.family();
    let held = |t: &crate::weights::TensorInfo| {
        if placement.storage == Storage::Fp8Compute && family.fp8_linear(&t.name) {
            t.numel()
        } else {
            t.numel() * 2
        }
    };
    let device_bytes = inventory
        .units
        .iter()
        .map(|u| inventory.tensors_of(u).map(held).sum())
        .collect();
    let req = ModelRequest {
        name: "model".into(),
        family: model.family(),
        compute: args.device,
        allocation: crate::alloc::Allocation::Auto,
        overrides: vec![],
        inventory,
        device_bytes: Some(device_bytes),
        patch_flops_per_value: if args.lora_rank > 0 && placement.storage.ggml().is_some() {
            crate::weights::lora::term_flops_per_value(args.lora_rank) as f64
        } else {
            0.0
        },
        workload,
        prefetch: None,
    };
    Ok((req, homes))
}

/// `--slots auto` for one cell: the smallest K of 2–8 whose predicted step is within 1% of
/// the fastest, the planner's own rule (memory is not checked: the benchmark's card holds it).
fn auto_slots(
    model: &BenchModel,
    cfg: &BenchConfig,
    args: &Args,
    hw: &crate::hardware::Hardware,
    placement: &Placement,
    batch: usize,
) -> anyhow::Result<usize> {
    if placement.source.is_none() || placement.percent == 0 {
        return Ok(cfg.slots);
    }
    let (req, homes) = cell_request(model, cfg, args, placement, batch)?;
    let steps: Vec<(usize, f64)> = (2..=8)
        .map(|k| {
            (
                k,
                crate::plan::predict_step(&req, hw, &homes, k as u32, 0.0),
            )
        })
        .collect();
    let best = steps.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
    Ok(steps
        .iter()
        .find(|s| s.1 <= best * 1.01)
        .map_or(cfg.slots, |s| s.0))
}

/// Fills each measurement's `predicted_seconds` with the planner's time for the same cell
/// ([`cell_request`]) and slots, on `hw`. Each step also does work that is not a block's (the
/// sampler's update, the blocks' inputs and outputs, the host's own work); its length
/// (`gap_seconds`) is measured, per batch, on the cells that stream nothing (their wall
/// seconds per step less their pass, the median). With it the prediction is of the wall
/// seconds per step (`plan::predict_step` with the gap: copies continue through it), else (no
/// such cell) of one pass over the blocks with no gap.
fn predict(
    report: &mut bench::BenchReport,
    model: &BenchModel,
    cfg: &BenchConfig,
    args: &Args,
    hw: &crate::hardware::Hardware,
) -> anyhow::Result<()> {
    let gap = |batch: usize| -> Option<f64> {
        let mut g: Vec<f64> = report
            .measurements
            .iter()
            .filter(|m| m.batch == batch && m.streamed_bytes == 0 && !m.steps.is_empty())
            .map(|m| (m.run_seconds / m.steps.len() as f64 - m.step_seconds).max(0.0))
            .collect();
        g.sort_by(f64::total_cmp);
        g.get(g.len() / 2).copied()
    };
    let gaps: Vec<Option<f64>> = report.measurements.iter().map(|m| gap(m.batch)).collect();
    for (m, g) in report.measurements.iter_mut().zip(gaps) {
        let placement: Placement = m
            .placement
            .parse()
            .map_err(|e: String| anyhow::anyhow!("{e}"))?;
        let (req, homes) = cell_request(model, cfg, args, &placement, m.batch)?;
        m.gap_seconds = g;
        m.predicted_seconds = Some(crate::plan::predict_step(
            &req,
            hw,
            &homes,
            m.slots as u32,
            g.unwrap_or(0.0),
        ));
    }
    Ok(())
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

#[cfg(feature = "cuda")]
fn check_fp8(device: &DeviceName) -> anyhow::Result<Status> {
    let DeviceName::Cuda(i) = device else {
        bail!("--check-fp8 needs a CUDA device (--device cuda:N)")
    };
    let dev = Device::new_cuda_with_stream(*i as usize).context("opening the CUDA device")?;
    let fails = crate::exec::cuda::check_widen_fp8(&dev)?;
    let q8 = crate::exec::cuda::check_dequant(&dev)?;
    let lora = crate::exec::cuda::check_dequant_lora(&dev)?;
    let compute = crate::models::fp8::cuda::check(&dev)?;
    if compute.is_empty() {
        println!("fp8 compute on {device}: activation rounding bit-identical to the CPU on every bf16 and f16 pattern; e4m3 GEMMs agree with the CPU reference");
    }
    for f in &compute {
        println!("fp8 compute differs: {f}");
    }
    if fails.is_empty() {
        println!(
            "fp8 widening on {device}: every pattern, scale and dtype bit-identical to the CPU"
        );
    }
    if q8.is_empty() {
        println!("GGML dequantisation on {device}: Q8_0 with every f16 scale, Q4_0 … Q6_K on 8 192 blocks each, every kernel, bit-identical to the CPU");
    }
    for f in &fails {
        println!("fp8 widening differs: {f}");
    }
    for f in &q8 {
        println!("GGML dequantisation differs: {f}");
    }
    if lora.is_empty() {
        println!("GGML dequantisation with LoRA terms (lora_mode = on_dequant) on {device}: every type, low-rank and full terms, bit-identical to the CPU's bake");
    }
    for f in &lora {
        println!("GGML dequantisation with LoRA terms differs: {f}");
    }
    for line in crate::exec::cuda::time_dequant_lora(&dev)? {
        println!("timing: {line}");
    }
    Ok(
        if fails.is_empty() && q8.is_empty() && lora.is_empty() && compute.is_empty() {
            Status::Ok
        } else {
            Status::Failed
        },
    )
}

#[cfg(not(feature = "cuda"))]
fn check_fp8(_device: &DeviceName) -> anyhow::Result<Status> {
    bail!("--check-fp8: this mgpu was built without CUDA (build with --features cuda; see docs/gpu.md)")
}

#[cfg(not(feature = "cuda"))]
fn check_kernels(_device: &DeviceName, _size: CheckSize) -> anyhow::Result<Status> {
    bail!("--check-kernels: this mgpu was built without CUDA (build with --features cuda; see docs/gpu.md)")
}

/// The CUDA compute device (with the pool settings `mgpu run` uses) and its measured
/// page-locked host→device rate.
#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> anyhow::Result<(Device, Option<f64>)> {
    use crate::exec::cuda::measure_h2d_gbps;
    let device = Device::new_cuda_with_stream(ordinal).context("opening the CUDA device")?;
    if std::env::var_os("MGPU_RELEASE_POOL").is_none() {
        crate::exec::cuda::keep_pool_memory(&device)?;
    }
    let h2d = measure_h2d_gbps(&device, 1 << 30, 8)?;
    eprintln!("bench: page-locked host→device {h2d:.1} GB/s");
    Ok((device, Some(h2d)))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> anyhow::Result<(Device, Option<f64>)> {
    bail!("--device cuda:{ordinal}: this mgpu was built without CUDA (build with --features cuda; see docs/gpu.md), or use --device cpu")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod wan_tests {
    use super::*;
    use crate::family::Family;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// The tiny Wan shape runs through the benchmark on the CPU: every placement (with and
    /// without guidance) computes the same bytes, and the planner predicts each cell.
    #[test]
    fn wan_tiny_bench_runs_and_is_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let args = Cli::parse_from([
            "bench",
            "--model",
            "wan-tiny",
            "--device",
            "cpu",
            "--dtype",
            "f32",
            "--width",
            "48",
            "--height",
            "32",
            "--frames",
            "5",
            "--cfg",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch",
            "1,2",
            "--placements",
            "resident,cpu:50,disk:100",
            "--cache-dir",
            dir.path().to_str().unwrap(),
        ])
        .args;
        assert_eq!(run(args).unwrap(), Status::Ok);
        let model = BenchModel::parse("wan-tiny").unwrap();
        assert_eq!(model.family(), Family::Wan);
        assert_eq!(model.units(), ["blocks.0", "blocks.1"]);
        let e = BenchModel::parse("wan").unwrap_err().to_string();
        assert!(e.contains("wan14b"), "{e}");
    }

    /// TI2V-5B's shape (48 channels, the Wan 2.2 VAE's 16× latent) through the benchmark:
    /// placements bit-identical; sizes must be multiples of 32, and the error says so.
    #[test]
    fn ti2v_tiny_bench_runs_and_refuses_sizes_off_its_grid() {
        let dir = tempfile::tempdir().unwrap();
        let argv = |width: &str| {
            Cli::parse_from([
                "bench",
                "--model",
                "ti2v-tiny",
                "--device",
                "cpu",
                "--dtype",
                "f32",
                "--width",
                width,
                "--height",
                "32",
                "--frames",
                "5",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--placements",
                "resident,cpu:50,disk:100",
                "--cache-dir",
                dir.path().to_str().unwrap(),
            ])
            .args
        };
        assert_eq!(run(argv("64")).unwrap(), Status::Ok);
        let e = run(argv("48")).unwrap_err().to_string();
        assert!(
            e.contains("--width 48: must be a positive multiple of 32 for --model ti2v-tiny"),
            "{e}"
        );
        assert_eq!(BenchModel::parse("ti2v-5b").unwrap().size_multiple(), 32);
        assert_eq!(BenchModel::parse("wan14b").unwrap().size_multiple(), 16);
    }
}
