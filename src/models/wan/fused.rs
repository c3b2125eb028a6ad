//! The Wan block on CUDA in bf16/f16 through the fused kernels of
//! [`crate::models::flux::kernels`] (the same kernels the FLUX blocks use), instead of the
//! dozens of candle element-wise kernels of the reference path in `block.rs`. Measured on an
//! H200 at 832×480×81 (32 760 tokens, 14B widths, `mgpu bench --model wan14b --ops`): the
//! f32 LayerNorm + modulation took 16.4 ms, the f32 gated residual 10.2 ms and a bias add
//! 3.3 ms per call, against a 66.6 ms flash attention.
//!
//! | reference step (`block.rs`, diffusers' f32 islands) | here |
//! |---|---|
//! | `LN(x)` in f32, `· (1 + scale) + shift` in f32, rounded once | `ln_modulate`: LN in f32, rounded; `1 + scale`, `shift` rounded to the compute dtype |
//! | `x + gate · (o(a) + b)` in f32, rounded once | `o(a)` without bias, then `gated_residual`: `y + b` rounded, `gate · ·` rounded, sum rounded |
//! | `norm3`: affine LN in f32, rounded once | `ln_modulate` with `shift = bias`, `1 + scale = weight` |
//! | `gelu(ffn.0(h) + b)` | `ffn.0` without bias, then `cat_gelu` (bias, rounded, GELU) |
//! | q/k/v `x·Wᵀ + b` (candle's broadcast add) | the product, then the bias by `gated_residual` (same rounding) |
//! | fp8 compute: an fp8 layer's product (`Lin::forward`) | the same product (`Lin::matmul_t`, the e4m3 GEMM), the bias added as above; `ln_modulate` and `cat_gelu` store an fp8 layer's input as e4m3 (the bytes its own rounding makes; once for q, k, v) |
//! | q/k RMSNorm: f32 copy, normalise, round, × weight | candle's RMSNorm kernel on the compute dtype (f32 inside), × weight |
//! | cross-attention: f32 scores over query chunks | bf16 scores from cuBLAS, the fused f32 softmax, bf16 `· v` |
//!
//! The rounding points move (so CUDA and CPU outputs differ in their last bits, as they
//! already did), but the path depends on shapes and dtypes only: every placement and batch
//! of a run computes the same bits (docs/decisions.md §4). `MGPU_FLUX_KERNELS=off` turns it
//! off (the reference path on the GPU too).

use candle_core::{DType, Result, Tensor, D};

use super::block::{attention, by_runs, rope, Attention, Block, RmsNorm};
use crate::models::flux::kernels as kern;
use crate::models::fp8::Lin;

/// Whether the fused path runs for `x`: CUDA, bf16/f16, kernels on, a width the kernels take.
pub(super) fn applies(x: &Tensor) -> Result<bool> {
    let (_, width) = x.dims2()?;
    Ok(x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && width % 8 == 0
        && kern::settings()?.kernels)
}

/// A linear layer's product without its bias (an fp8 layer: the e4m3 tensor-core GEMM,
/// [`Lin::matmul_t`]; of `x` already stored as e4m3 by a fused kernel when `x` is `F8E4M3`),
/// and the bias (zeros when it has none), both in the compute dtype `dtype`.
fn product(l: &Lin, x: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    let y = l.matmul_t_as(x, dtype)?;
    let b = match l.bias() {
        Some(b) => b.clone(),
        None => Tensor::zeros(l.weight_dims()?.0, dtype, x.device())?,
    };
    Ok((y, b))
}

/// A biased linear output `x·Wᵀ + b`, rounded once to the compute dtype as candle's `Linear`
/// rounds it, with the bias added by the fused `gated_residual` kernel (`0 + 1 · (y + b)`):
/// candle's broadcast add took 3.1 ms for a 32 760 × 5120 output on an H200, the product
/// itself 2.1 ms.
fn biased(l: &Lin, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let (y, b) = product(l, x, dtype)?;
    let (rows, cols) = y.dims2()?;
    let zeros = Tensor::zeros((rows, cols), y.dtype(), y.device())?;
    let ones = Tensor::ones(cols, y.dtype(), y.device())?;
    kern::gated_residual(&zeros, &y, &b, &ones)
}

/// RMSNorm over the full width in the compute dtype (candle's kernel reduces in f32).
fn rms(n: &RmsNorm, x: &Tensor) -> Result<Tensor> {
    let ones = Tensor::ones(x.dim(D::Minus1)?, x.dtype(), x.device())?;
    candle_nn::ops::rms_norm(x, &ones, n.eps)?.broadcast_mul(&n.weight.to_dtype(x.dtype())?)
}

/// Attention with cuBLAS scores in the compute dtype and the fused f32 softmax (for the
/// cross-attention's few keys), `[H, Lq, D]` → `[Lq, H·D]`.
fn attention_short(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (h, lq, d) = q.dims3()?;
    let scores = q.matmul(&k.t()?)?;
    let probs = kern::softmax_scaled(&scores, (1.0 / (d as f64).sqrt()) as f32)?;
    probs.matmul(v)?.transpose(0, 1)?.reshape((lq, h * d))
}

impl Attention {
    /// q from `x`, k and v from `kv` (either may be e4m3 for fp8 layers), in `dtype`.
    fn qkv_fused(&self, x: &Tensor, kv: &Tensor, dtype: DType) -> Result<(Tensor, Tensor, Tensor)> {
        let mut q = biased(&self.q, x, dtype)?;
        let mut k = biased(&self.k, kv, dtype)?;
        if let (Some(nq), Some(nk)) = (&self.norm_q, &self.norm_k) {
            q = rms(nq, &q)?;
            k = rms(nk, &k)?;
        }
        let v = biased(&self.v, kv, dtype)?;
        Ok((
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        ))
    }
}

impl Block {
    /// [`Block::forward_runs`] through the fused kernels (see the module doc); the row-wise
    /// kernels (`ln_modulate`, `gated_residual`) run once per run of tokens.
    pub(super) fn forward_fused(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        e0: &[(usize, Tensor)],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        // Per run: the modulation rows in the compute dtype, as contiguous vectors
        // `[6, dim]` (ln_modulate computes round(1 + scale) itself: it gets `scale`, rounded).
        let mods = e0
            .iter()
            .map(|(n, e)| Ok((*n, (&self.modulation + e)?.to_dtype(dtype)?.contiguous()?)))
            .collect::<Result<Vec<_>>>()?;
        let row = |m: &Tensor, i: usize| -> Result<Tensor> { m.get(i)?.contiguous() };
        // `e4m3`: the output is the input of fp8 layers only, stored as e4m3 by the kernel
        // (the bytes each layer's own rounding would make, rounded once for q, k and v).
        let ln_mod = |x: &Tensor, s: usize, e4m3: bool| {
            by_runs(&[x], &mods, |t, m| {
                kern::ln_modulate_to(&t[0], &row(m, s)?, &row(m, s + 1)?, e4m3)
            })
        };
        let gated = |x: &Tensor, y: &Tensor, b: &Tensor, g: usize| {
            by_runs(&[x, y], &mods, |t, m| {
                kern::gated_residual(&t[0], &t[1], b, &row(m, g)?)
            })
        };

        // Self-attention.
        let sa = &self.self_attn;
        let h = ln_mod(x, 0, sa.q.is_fp8() && sa.k.is_fp8() && sa.v.is_fp8())?;
        let (q, k, v) = sa.qkv_fused(&h, &h, dtype)?;
        let (q, k) = (rope(&q, cos, sin)?, rope(&k, cos, sin)?);
        let a = attention(&q, &k, &v)?;
        let (y, bo) = product(&sa.o, &a, dtype)?;
        let x = gated(x, &y, &bo, 2)?;

        // Cross-attention: `norm3` as a modulation with shift = bias, 1 + scale = weight.
        let h = match &self.norm3 {
            Some(n) => {
                let bias = n.bias.to_dtype(dtype)?.contiguous()?;
                let scale = (&n.weight - 1.0)?.to_dtype(dtype)?.contiguous()?;
                kern::ln_modulate_to(&x, &bias, &scale, self.cross_attn.q.is_fp8())?
            }
            None => x.clone(),
        };
        let ca = &self.cross_attn;
        let (q, k, v) = ca.qkv_fused(&h, ctx, dtype)?;
        let a = attention_short(&q, &k, &v)?;
        let (y, bo) = product(&ca.o, &a, dtype)?;
        let ones = Tensor::ones(bo.dim(0)?, dtype, x.device())?;
        let x = kern::gated_residual(&x, &y, &bo, &ones)?;

        // Feed-forward.
        let h = ln_mod(&x, 3, self.ffn0.is_fp8())?;
        let (u, b0) = product(&self.ffn0, &h, dtype)?;
        let g = kern::cat_gelu_to(None, &u, 0, u.dim(1)?, &b0, self.ffn2.is_fp8())?;
        let (y, b2) = product(&self.ffn2, &g, dtype)?;
        gated(&x, &y, &b2, 5)
    }
}
