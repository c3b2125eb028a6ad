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
    let mut time =
        |name: &str, f: &dyn Fn() -> candle_core::Result<Tensor>| -> candle_core::Result<()> {
            for _ in 0..3 {
                f()?;
            }
            device.synchronize()?;
            let mut v = Vec::new();
            for _ in 0..10 {
                let t0 = Instant::now();
                let r = f()?;
                device.synchronize()?;
                v.push(t0.elapsed().as_secs_f64() * 1e3);
                drop(r);
            }
            out.push((name.to_string(), median(v)));
            Ok(())
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
    }
    Ok(out)
}

trait ForwardT {
    fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}
impl ForwardT for candle_nn::Linear {
    fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_core::Module::forward(self, x)
    }
}
