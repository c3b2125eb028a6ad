//! Time and peak memory of the Wan 2.1 VAE (or with `--wan22` Wan 2.2's) at a real size, with random weights (the real
//! layout, `models::tiny` values): decodes a random latent, then encodes the decoded frames.
//!
//! ```sh
//! cargo run --release --example wan_vae_memory -- --frames 9 --height 64 --width 64 --tiny
//! cargo run --release --example wan_vae_memory -- --frames 9 --height 128 --width 208 --wan22
//! cargo run --release --features cuda --example wan_vae_memory -- --device cuda:0 --dtype bf16
//! ```
//!
//! Defaults: 81 frames at 480×832 (Wan's default clip), f32, CPU. On CUDA the peak is the
//! stream-ordered pool's high-water mark of used memory (candle allocates from it) minus the
//! memory in use before the pass (the weights); on the CPU it is the process's peak resident
//! set (`VmHWM`, reset through `/proc/self/clear_refs` before each pass), weights included.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use mgpu::models::spec::{vae_layout, Autoencoder};
use mgpu::models::tiny;
use mgpu::models::wan_vae::{Config, WanVae};

struct Args {
    frames: usize,
    height: usize,
    width: usize,
    dtype: DType,
    device: String,
    tiny: bool,
    wan22: bool,
    encode: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        frames: 81,
        height: 480,
        width: 832,
        dtype: DType::F32,
        device: "cpu".into(),
        tiny: false,
        wan22: false,
        encode: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--frames" => a.frames = val()?.parse()?,
            "--height" => a.height = val()?.parse()?,
            "--width" => a.width = val()?.parse()?,
            "--dtype" => {
                a.dtype = match val()?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    d => bail!("unknown dtype {d}"),
                }
            }
            "--device" => a.device = val()?,
            "--tiny" => a.tiny = true,
            "--wan22" => a.wan22 = true,
            "--no-encode" => a.encode = false,
            _ => bail!("unknown argument {k}"),
        }
    }
    Ok(a)
}

#[cfg(feature = "cuda")]
mod pool {
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::Device;

    fn attr(device: &Device, a: sys::CUmemPool_attribute, set: Option<u64>) -> u64 {
        let Ok(cdev) = device.as_cuda_device() else {
            return 0;
        };
        let ctx = cdev.cuda_stream().context().clone();
        if ctx.bind_to_thread().is_err() {
            return 0;
        }
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut v: u64 = set.unwrap_or(0);
        // SAFETY: driver calls with valid out-pointers on a live device.
        unsafe {
            if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                .result()
                .is_err()
            {
                return 0;
            }
            let p = &mut v as *mut u64 as *mut std::ffi::c_void;
            let r = if set.is_some() {
                sys::cuMemPoolSetAttribute(pool, a, p)
            } else {
                sys::cuMemPoolGetAttribute(pool, a, p)
            };
            if r.result().is_err() {
                return 0;
            }
        }
        v
    }

    pub fn used(device: &Device) -> u64 {
        attr(
            device,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
            None,
        )
    }

    pub fn peak(device: &Device) -> u64 {
        attr(
            device,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            None,
        )
    }

    pub fn reset_peak(device: &Device) {
        attr(
            device,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            Some(0),
        );
    }
}

/// (memory in use now, peak since the last reset), bytes.
fn memory(device: &Device) -> (u64, u64) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        return (pool::used(device), pool::peak(device));
    }
    let _ = device;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn reset_peak(device: &Device) {
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        pool::reset_peak(device);
        return;
    }
    let _ = device;
    // Linux: "5" resets the peak resident set size (VmHWM) to the current one.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

fn main() -> Result<()> {
    let a = parse()?;
    let device = match a.device.strip_prefix("cuda:") {
        Some(i) => Device::new_cuda_with_stream(i.parse()?)?,
        None => Device::Cpu,
    };
    let cfg = match (a.tiny, a.wan22) {
        (true, false) => Config::tiny(),
        (true, true) => Config::tiny22(),
        (false, false) => Config::wan21(),
        (false, true) => Config::wan22(),
    };
    let (s, tf) = (cfg.spatial_factor(), cfg.temporal_factor());
    if (a.frames - 1) % tf != 0 || a.height % s != 0 || a.width % s != 0 {
        bail!("frames must be 1 + {tf}k and the size a multiple of {s}")
    }
    let layout = vae_layout::<WanVae>(&cfg)?;
    let params: usize = layout.values().map(|s| s.iter().product::<usize>()).sum();
    let weights = tiny::weights_for(&layout, 0)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(a.dtype)?.to_device(&device)?)))
        .collect::<Result<std::collections::HashMap<_, _>>>()?;
    let vb = VarBuilder::from_tensors(weights, a.dtype, &device);
    let dec = WanVae::decoder(&cfg, vb.pp("decoder"), vb.clone())?;
    let enc = WanVae::encoder(&cfg, vb.pp("encoder"), vb.clone())?;
    let t = cfg.latent_frames(a.frames);
    let latent = Tensor::randn(
        0f32,
        1.0,
        (1, cfg.z_dim, t, a.height / s, a.width / s),
        &device,
    )?;
    device.synchronize()?;
    println!(
        "Wan VAE ({} parameters), {} frames of {}×{} ({t} latent frames), {:?} on {}",
        params, a.frames, a.height, a.width, a.dtype, a.device
    );

    let (base, _) = memory(&device);
    reset_peak(&device);
    let t0 = Instant::now();
    let frames = WanVae::decode(&dec, &latent, None)?;
    device.synchronize()?;
    let dt = t0.elapsed();
    let (_, peak) = memory(&device);
    let finite = frames
        .flatten_all()?
        .abs()?
        .max(0)?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    println!(
        "decode: {:?} in {:.2} s; peak {:.2} GiB, {:.2} GiB above the {:.2} GiB before; max |frame| {finite:.3}",
        frames.dims(),
        dt.as_secs_f64(),
        gib(peak),
        gib(peak.saturating_sub(base)),
        gib(base)
    );
    if a.encode {
        let pixels = frames.clamp(-1f32, 1f32)?;
        let (base, _) = memory(&device);
        reset_peak(&device);
        let t0 = Instant::now();
        let z = WanVae::encode(&enc, &pixels)?;
        device.synchronize()?;
        let dt = t0.elapsed();
        let (_, peak) = memory(&device);
        println!(
            "encode: {:?} in {:.2} s; peak {:.2} GiB, {:.2} GiB above the {:.2} GiB before",
            z.dims(),
            dt.as_secs_f64(),
            gib(peak),
            gib(peak.saturating_sub(base)),
            gib(base)
        );
    }
    Ok(())
}
