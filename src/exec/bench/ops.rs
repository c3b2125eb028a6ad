//! `mgpu bench --ops`: the building blocks of one FLUX-dev step (linear layers, attention,
//! norms, the fused kernels) timed alone on a device — the diagnostic behind "where does a
//! resident step go", separate from the placement benchmark in the parent module.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::median;

/// Times the building blocks of one FLUX-dev step at 1024² on `device` (milliseconds per call,
/// median of 10 after 3 warm-ups, device synchronised around each call): the diagnostic behind
/// "where does a resident step go".
pub fn profile_ops(device: &Device, dtype: DType) -> candle_core::Result<Vec<(String, f64)>> {
    let (l, hid, heads, dh) = (4608usize, 3072usize, 24usize, 128usize);
    let x = Tensor::randn(0f32, 1.0, (l, hid), device)?.to_dtype(dtype)?;
    let w_qkv = Tensor::randn(0f32, 0.02, (3 * hid, hid), device)?.to_dtype(dtype)?;
    let w_mlp = Tensor::randn(0f32, 0.02, (4 * hid, hid), device)?.to_dtype(dtype)?;
    let q = Tensor::randn(0f32, 1.0, (heads, l, dh), device)?.to_dtype(dtype)?;
    let k = Tensor::randn(0f32, 1.0, (heads, l, dh), device)?.to_dtype(dtype)?;
    let v = Tensor::randn(0f32, 1.0, (heads, l, dh), device)?.to_dtype(dtype)?;
    let scores = q.matmul(&k.t()?)?;
    let cos = Tensor::randn(0f32, 1.0, (l, dh / 2), device)?;
    let sin = Tensor::randn(0f32, 1.0, (l, dh / 2), device)?;
    let mut out = Vec::new();
    let mut time = |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| {
        out.push((name.to_string(), median_ms(device, 3, 10, f)?));
        candle_core::Result::Ok(())
    };
    time("linear qkv [4608,3072]x[9216,3072]^T", &|| {
        x.matmul(&w_qkv.t()?)
    })?;
    time("linear mlp_in [4608,3072]x[12288,3072]^T", &|| {
        x.matmul(&w_mlp.t()?)
    })?;
    time("broadcast linear (candle Linear)", &|| {
        candle_nn::Linear::new(w_qkv.clone(), None).forward_t(&x)
    })?;
    time("scores q k^T [24,4608,4608]", &|| q.matmul(&k.t()?))?;
    time("scores to f32 + softmax + to bf16", &|| {
        candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)
    })?;
    time("softmax in compute dtype", &|| {
        candle_nn::ops::softmax_last_dim(&scores)
    })?;
    time("probs v", &|| scores.matmul(&v))?;
    time("layer_norm f32 path", &|| {
        let x32 = x.to_dtype(DType::F32)?;
        let c = x32.broadcast_sub(&x32.mean_keepdim(candle_core::D::Minus1)?)?;
        let s = (c.sqr()?.mean_keepdim(candle_core::D::Minus1)? + 1e-6)?
            .sqrt()?
            .recip()?;
        c.broadcast_mul(&s)?.to_dtype(dtype)
    })?;
    time("rope f32 path [24,4608,128]", &|| {
        let q32 = q.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        candle_nn::rotary_emb::rope_i(&q32, &cos, &sin)?
            .squeeze(0)?
            .to_dtype(dtype)
    })?;
    time("gelu [4608,12288]", &|| x.matmul(&w_mlp.t()?)?.gelu())?;
    time("qkv permute contiguous", &|| {
        x.matmul(&w_qkv.t()?)?
            .reshape((l, 3, heads, dh))?
            .permute((1, 2, 0, 3))?
            .contiguous()
    })?;
    #[cfg(feature = "cuda")]
    if device.is_cuda() && dtype == DType::BF16 {
        // The fused kernels of the FLUX blocks (models::flux::kernels) on the same sizes.
        use crate::models::flux::kernels as kern;
        let qkv = Tensor::stack(&[&q, &k, &v], 0)?;
        let fused = Tensor::randn(0f32, 1.0, (l, 3 * hid + 4 * hid), device)?.to_dtype(dtype)?;
        let row = Tensor::randn(0f32, 0.5, (1, 4 * hid), device)?.to_dtype(dtype)?;
        let (vh, vm) = (
            row.narrow(1, 0, hid)?,
            row.narrow(1, 0, 4 * hid)?.squeeze(0)?,
        );
        let vh2 = (&vh * 0.5)?;
        let y = (&x * 0.5)?;
        let norm = Tensor::ones(dh, dtype, device)?;
        time("kernel: softmax over bf16 scores, f32 inside", &|| {
            kern::softmax_scaled(&scores, 0.088)
        })?;
        for var in kern::FlashVariant::ALL {
            time(
                &format!("kernel: flash attention {var} (whole attention)"),
                &|| kern::flash_attention(&qkv, var),
            )?;
        }
        time("kernel path: cublas q k^T + fused softmax + p v", &|| {
            kern::attention_cublas(&qkv)
        })?;
        time("kernel: ln_modulate [4608,3072]", &|| {
            kern::ln_modulate(&x, &vh, &vh2)
        })?;
        let b = vm.narrow(0, 0, 3 * hid)?;
        time("kernel: qkv_rope from linear1 output", &|| {
            let seg = kern::QkvSegment {
                src: &fused,
                bias: &b,
                q_scale: &norm,
                k_scale: &norm,
            };
            kern::qkv_rope(&[seg], heads, &cos, &sin)
        })?;
        let attn = x.clone();
        time("kernel: cat_gelu (single block cat + gelu)", &|| {
            kern::cat_gelu(Some(&attn), &fused, 3 * hid, 4 * hid, &vm)
        })?;
        let vh1 = vh.squeeze(0)?;
        time("kernel: gated_residual [4608,3072]", &|| {
            kern::gated_residual(&x, &y, &vh1, &vh2)
        })?;
        out.extend(profile_fp8_linears(device)?);
    }
    Ok(out)
}

/// The linear layers of one FLUX-dev step at 1024² (batch 1), bf16 against fp8 compute: per
/// shape the bf16 cuBLAS product, the fp8 op the model runs (activation rounding + the
/// heuristic's GEMM), and from [`crate::models::fp8::cuda::sweep`] the fastest GEMM that gives
/// the model's bits and the fastest of any (fast accumulation included); then the sums over a
/// step (each shape times its count).
#[cfg(feature = "cuda")]
fn profile_fp8_linears(device: &Device) -> candle_core::Result<Vec<(String, f64)>> {
    use crate::models::fp8;
    // (name, rows, in, out, per step): the double blocks' image and text streams, the single
    // blocks' fused linears.
    const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
        ("img qkv", 4096, 3072, 9216, 19),
        ("txt qkv", 512, 3072, 9216, 19),
        ("img proj", 4096, 3072, 3072, 19),
        ("txt proj", 512, 3072, 3072, 19),
        ("img mlp.0", 4096, 3072, 12288, 19),
        ("txt mlp.0", 512, 3072, 12288, 19),
        ("img mlp.2", 4096, 12288, 3072, 19),
        ("txt mlp.2", 512, 12288, 3072, 19),
        ("linear1", 4608, 3072, 21504, 38),
        ("linear2", 4608, 15360, 3072, 38),
    ];
    let mut out = Vec::new();
    let mut sums = [0f64; 5];
    for &(name, rows, k, n, count) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (rows, k), device)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), device)?.to_dtype(DType::BF16)?;
        let bf16 = median_ms(device, 3, 10, &|| x.matmul(&w.t()?))?;
        let w32 = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let (wq, s) = fp8::quantize_weight(&w32);
        let w8 = Tensor::from_raw_buffer(&wq, DType::F8E4M3, &[n, k], device)?;
        let sc = Tensor::new(&[s], device)?;
        let op = median_ms(device, 3, 10, &|| fp8::matmul_t(&x, &w8, &sc))?;
        let algos = fp8::cuda::sweep(device, rows, k, n, 16, 10)?;
        let first = algos.first().map_or(f64::NAN, |a| a.ms);
        let best = |pick: &dyn Fn(&fp8::cuda::AlgoTiming) -> bool| {
            algos
                .iter()
                .filter(|a| pick(a))
                .min_by(|a, b| a.ms.total_cmp(&b.ms))
                .cloned()
        };
        let same = best(&|a| a.same_bits);
        let any = best(&|_| true);
        let tag = format!("{name} [{rows},{k}]x[{n},{k}]^T (x{count}/step)");
        out.push((format!("{tag}: bf16 cuBLAS"), bf16));
        out.push((format!("{tag}: fp8 op (rounding + GEMM)"), op));
        out.push((
            format!("{tag}: fp8 GEMM, heuristic's first of {}", algos.len()),
            first,
        ));
        for (what, a) in [("same bits", &same), ("any", &any)] {
            if let Some(a) = a {
                out.push((
                    format!(
                        "{tag}: fp8 GEMM, fastest ({what}): {}{}",
                        a.config,
                        if a.fast_accum { ", fast accum" } else { "" }
                    ),
                    a.ms,
                ));
            }
        }
        let c = count as f64;
        for (sum, v) in sums.iter_mut().zip([
            bf16,
            op,
            first,
            same.as_ref().map_or(first, |a| a.ms),
            any.as_ref().map_or(first, |a| a.ms),
        ]) {
            *sum += c * v;
        }
    }
    for (what, v) in [
        "bf16 cuBLAS",
        "fp8 op",
        "fp8 GEMM, heuristic",
        "fp8 GEMM, fastest same bits",
        "fp8 GEMM, fastest any",
    ]
    .iter()
    .zip(sums)
    {
        out.push((format!("per step, all linears: {what}"), v));
    }
    Ok(out)
}

/// Milliseconds of `f` on `device` (synchronised around each call): the median of `runs`
/// after `warm` untimed calls.
fn median_ms(
    device: &Device,
    warm: usize,
    runs: usize,
    f: &dyn Fn() -> candle_core::Result<Tensor>,
) -> candle_core::Result<f64> {
    for _ in 0..warm {
        f()?;
    }
    device.synchronize()?;
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let r = f()?;
        device.synchronize()?;
        v.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(r);
    }
    Ok(median(v))
}

trait ForwardT {
    fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl ForwardT for candle_nn::Linear {
    fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_core::Module::forward(self, x)
    }
}

/// Times the parts of one Wan 2.1 block at a video's size on `device` (`l` tokens, width
/// `hid`, `heads` heads of 128, feed-forward `mlp`, 512 text tokens), each alone, and a whole
/// block: the diagnostic behind "where does a Wan step go" (`mgpu bench --model wan14b --ops`).
pub fn profile_wan_ops(
    device: &Device,
    dtype: DType,
    l: usize,
    hid: usize,
    heads: usize,
    mlp: usize,
) -> candle_core::Result<Vec<(String, f64)>> {
    use crate::models::wan::{self, block};
    let dh = hid / heads;
    let r = |shape: &[usize], s: f32| -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, s, shape, device)?.to_dtype(dtype)
    };
    let x = r(&[l, hid], 1.0)?;
    let ctx = r(&[512, hid], 1.0)?;
    let w = r(&[hid, hid], 0.02)?;
    let w1 = r(&[mlp, hid], 0.02)?;
    let w2 = r(&[hid, mlp], 0.02)?;
    let (q, k, v) = (
        r(&[heads, l, dh], 1.0)?,
        r(&[heads, l, dh], 1.0)?,
        r(&[heads, l, dh], 1.0)?,
    );
    let (kc, vc) = (r(&[heads, 512, dh], 1.0)?, r(&[heads, 512, dh], 1.0)?);
    let cos = Tensor::randn(0f32, 1.0, (l, dh / 2), device)?;
    let sin = Tensor::randn(0f32, 1.0, (l, dh / 2), device)?;
    let g32 = Tensor::randn(0f32, 0.1, (1, hid), device)?;
    let mut out = Vec::new();
    let mut time = |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| {
        out.push((name.to_string(), median_ms(device, 1, 3, f)?));
        candle_core::Result::Ok(())
    };
    time("linear dim×dim (one of q,k,v,o ×2)", &|| {
        x.matmul(&w.t()?)
    })?;
    time("candle Linear dim×dim with bias", &|| {
        candle_core::Module::forward(
            &candle_nn::Linear::new(w.clone(), Some(g32.squeeze(0)?.to_dtype(dtype)?)),
            &x,
        )
    })?;
    time("ffn.0 + gelu", &|| x.matmul(&w1.t()?)?.gelu())?;
    let hmid = x.matmul(&w1.t()?)?;
    time("ffn.2", &|| hmid.matmul(&w2.t()?))?;
    drop(hmid);
    time("layer_norm f32 + modulate (one)", &|| {
        let n = block::layer_norm_f32(&x, 1e-6)?;
        n.broadcast_mul(&(&g32 + 1.0)?)?
            .broadcast_add(&g32)?
            .to_dtype(dtype)
    })?;
    time("gated residual f32 (one)", &|| {
        (x.to_dtype(DType::F32)? + x.to_dtype(DType::F32)?.broadcast_mul(&g32)?)?.to_dtype(dtype)
    })?;
    time("rms norm f32 path (one of q,k)", &|| {
        let ones = Tensor::ones(hid, DType::F32, device)?;
        candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &ones, 1e-6)?.to_dtype(dtype)
    })?;
    time("split heads contiguous (one)", &|| {
        x.reshape((l, heads, dh))?.transpose(0, 1)?.contiguous()
    })?;
    time("rope f32 path (one of q,k)", &|| {
        let q32 = q.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        candle_nn::rotary_emb::rope_i(&q32, &cos, &sin)?
            .squeeze(0)?
            .to_dtype(dtype)
    })?;
    time("cross-attention, chunked f32 scores", &|| {
        block::attention_chunked(&q, &kc, &vc, block::MAX_SCORES)
    })?;
    time("self-attention, as the block runs it", &|| {
        block::attention(&q, &k, &v)
    })?;
    #[cfg(feature = "cuda")]
    if device.is_cuda() && dtype == DType::BF16 {
        use crate::models::flux::kernels as kern;
        let qkv = Tensor::stack(&[&q, &k, &v], 0)?;
        time("stack q,k,v", &|| Tensor::stack(&[&q, &k, &v], 0))?;
        for var in kern::FlashVariant::ALL {
            time(&format!("kernel: flash attention {var}"), &|| {
                kern::flash_attention(&qkv, var)
            })?;
        }
        let rows = 2048.min(l);
        let (qs, ks) = (q.narrow(1, 0, rows)?, k.clone());
        time(
            &format!("cublas q kᵀ for {rows} queries (bf16 scores)"),
            &|| qs.matmul(&ks.t()?),
        )?;
        let sc = qs.matmul(&ks.t()?)?;
        time(&format!("fused softmax for {rows} queries"), &|| {
            kern::softmax_scaled(&sc, 0.088)
        })?;
        time(&format!("cublas p v for {rows} queries"), &|| sc.matmul(&v))?;
    }
    // A whole block with random weights, as the executor runs it.
    let cfg = wan::Config {
        dim: hid,
        ffn_dim: mlp,
        num_heads: heads,
        ..wan::Config::t2v_14b()
    };
    let layout = crate::models::spec::diffusion_layout::<wan::WanDit>(&wan::Config {
        num_layers: 1,
        ..cfg.clone()
    })?;
    let mut tensors = std::collections::HashMap::new();
    for (name, shape) in layout.iter().filter(|(n, _)| n.starts_with("blocks.0.")) {
        let rel = name.trim_start_matches("blocks.0.").to_string();
        let s = if shape.len() >= 2 { 0.02 } else { 0.1 };
        tensors.insert(
            rel,
            Tensor::randn(0f32, s, shape.as_slice(), device)?.to_dtype(dtype)?,
        );
    }
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
    let b = block::Block::new(&cfg, vb)?;
    let e0 = Tensor::randn(0f32, 0.1, (6, hid), device)?;
    time("whole block (self + cross + ffn)", &|| {
        b.forward(&x, &ctx, &e0, &cos, &sin)
    })?;
    #[cfg(feature = "cuda")]
    if device.is_cuda() {
        // The same block through the reference path (no fused kernels), and how far apart the
        // two outputs are (relative L2).
        use crate::models::flux::kernels as kern;
        let fused = b.forward(&x, &ctx, &e0, &cos, &sin)?.to_dtype(DType::F32)?;
        let s0 = kern::settings()?;
        kern::set_settings(Some(kern::Settings {
            kernels: false,
            ..s0
        }));
        time("whole block, reference path (kernels off)", &|| {
            b.forward(&x, &ctx, &e0, &cos, &sin)
        })?;
        let reference = b.forward(&x, &ctx, &e0, &cos, &sin)?.to_dtype(DType::F32)?;
        kern::set_settings(None);
        let rel = ((&fused - &reference)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?
            / reference.sqr()?.sum_all()?.to_scalar::<f32>()?)
        .sqrt();
        out.push((
            format!("fused vs reference block output: relative L2 {rel:.2e} (value in this row's ms column ×1e-3)"),
            rel as f64 * 1e3,
        ));
    }
    Ok(out)
}
