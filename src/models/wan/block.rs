//! The Wan transformer block (`blocks.N`, one placement unit) and the output head (`head`).
//!
//! Reference: `wan/modules/model.py` (`WanAttentionBlock`, `WanSelfAttention`,
//! `WanT2VCrossAttention`, `WanRMSNorm`, `WanLayerNorm`, `Head`) and diffusers'
//! `transformer_wan.py` (`WanTransformerBlock`, `WanAttnProcessor`), whose precision is the
//! parity target. With a bf16/f16 compute dtype the f32 islands are diffusers' (its
//! `_keep_in_fp32_modules` and `.float()` calls):
//! - the modulation table (`modulation`, f32 weights) plus the time projection, in f32;
//! - LayerNorm (no affine, eps 1e-6) in f32, the modulation `norm · (1 + scale) + shift` in
//!   f32, rounded once to the compute dtype;
//! - the gated residuals `x + gate · y` in f32, rounded once;
//! - `norm3` (affine LayerNorm before the cross-attention, f32 weights) in f32, rounded once;
//! - q/k RMSNorm over the full width: normalised in f32, rounded, times the weight in the
//!   compute dtype (`torch.nn.RMSNorm`, `WanRMSNorm`);
//! - RoPE in f32, rounded; attention scores and softmax in f32, probabilities rounded for the
//!   product with v (SDPA/FlashAttention-2);
//!
//! and everything else (projections, GELU, the cross-attention residual) in the compute dtype.
//! With fp8 compute (`dtype = "fp8"`) the attention projections `q`, `k`, `v`, `o` and the
//! feed-forward's `ffn.0`, `ffn.2` are [`Lin`]s whose unit hands them an e4m3 weight and its
//! scale: their products are e4m3 × e4m3 ([`crate::models::fp8`]), their biases added in the
//! compute dtype.
//!
//! Attention never materialises all scores at once: on CUDA in bf16/f16 with head dimension
//! 128, self-attention runs the flash kernel of [`crate::models::flux::kernels`] (a 720p
//! 81-frame 14B video has 75 600 tokens: 40 × 75 600² scores would be 0.9 TB in f32); every
//! other case (cross-attention, where queries and keys differ in number; other devices, dtypes
//! or head dimensions; `MGPU_ATTENTION=cublas`) runs [`attention`] over chunks of queries whose
//! f32 score block holds at most [`MAX_SCORES`] values.

use candle_core::{bail, DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::config::Config;
use crate::models::fp8::Lin;

/// The most attention scores one chunk of queries materialises: 2²⁶ f32 values (256 MiB, plus
/// the probabilities in the compute dtype). Cross-attention of the 14B model (40 heads × 512
/// keys) runs 3 276 queries per chunk.
pub const MAX_SCORES: usize = 1 << 26;

/// LayerNorm over the last dimension without affine parameters, in f32 (two-pass variance);
/// returns f32.
pub(crate) fn layer_norm_f32(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let inv_std = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&inv_std)
}

/// `norm · (1 + scale) + shift` in f32 (`norm` f32 `[L, dim]`, `shift`/`scale` f32 `[1, dim]`),
/// rounded to `dtype`.
fn modulate(norm: &Tensor, shift: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    norm.broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)?
        .to_dtype(dtype)
}

/// `x + gate · y` in f32 (`gate` f32 `[1, dim]`), rounded to `x`'s dtype.
fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    (x.to_dtype(DType::F32)? + y.to_dtype(DType::F32)?.broadcast_mul(gate)?)?.to_dtype(dtype)
}

/// `WanRMSNorm` over the full width: normalise in f32, round to the input dtype, multiply by
/// `weight`.
#[derive(Debug, Clone)]
pub(super) struct RmsNorm {
    pub(super) weight: Tensor,
    pub(super) eps: f32,
}

impl RmsNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            eps: eps as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let ones = Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?;
        candle_nn::ops::rms_norm(&x32, &ones, self.eps)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// `norm3`: LayerNorm with f32 `weight` and `bias`, computed in f32 and rounded once.
#[derive(Debug, Clone)]
pub(super) struct AffineNorm {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) eps: f64,
}

impl AffineNorm {
    fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let get = |n| vb.get_with_hints_dtype(dim, n, Default::default(), DType::F32);
        Ok(Self {
            weight: get("weight")?,
            bias: get("bias")?,
            eps,
        })
    }
}

impl Module for AffineNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm_f32(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?
            .to_dtype(x.dtype())
    }
}

/// Rotary embedding of `[H, L, D]` by the `(cos, sin)` table (pairs of neighbouring values
/// rotated as complex numbers), in f32, rounded back.
pub(super) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        .squeeze(0)?
        .to_dtype(dtype)
}

/// Attention of q `[H, Lq, D]` over k, v `[H, Lk, D]` (compute dtype) → `[Lq, H·D]`, with the
/// scale 1/√D: scores `q·kᵀ` formed in f32 from the compute-dtype values, softmax in f32,
/// probabilities rounded to the compute dtype for the product with v (as PyTorch's SDPA does).
/// Queries are taken in chunks so that one chunk's scores hold at most `max_scores` values
/// (at least one query per chunk); the chunk size depends on the shapes only.
pub fn attention_chunked(q: &Tensor, k: &Tensor, v: &Tensor, max_scores: usize) -> Result<Tensor> {
    let (h, lq, d) = q.dims3()?;
    let (hk, lk, dk) = k.dims3()?;
    if (hk, dk) != (h, d) || v.dims3()? != (h, lk, d) {
        bail!(
            "attention: q {:?}, k {:?}, v {:?} do not agree",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let kt = k.to_dtype(DType::F32)?.t()?;
    let rows = (max_scores / (h * lk).max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(rows));
    let mut start = 0;
    while start < lq {
        let n = rows.min(lq - start);
        let qc = q.narrow(1, start, n)?.to_dtype(DType::F32)?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        outs.push(probs.matmul(v)?);
        start += n;
    }
    let out = match outs.len() {
        1 => outs.swap_remove(0),
        _ => Tensor::cat(&outs, 1)?,
    };
    // [H, Lq, D] -> [Lq, H, D] -> [Lq, H·D]
    out.transpose(0, 1)?.reshape((lq, h * d))
}

/// Attention as the device allows: the flash kernel for self-attention on CUDA (bf16/f16, head
/// dim 128), else [`attention_chunked`] with [`MAX_SCORES`].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(out) = flash(q, k, v)? {
        return Ok(out);
    }
    attention_chunked(q, k, v, MAX_SCORES)
}

/// The FLUX flash kernel (`flash_fwd_*`: scores and softmax in f32, probabilities rounded to
/// the compute dtype for `· v`, scale 1/√128) when it applies: CUDA, bf16/f16, head dim 128,
/// as many keys as queries, `MGPU_ATTENTION` not `cublas`.
#[cfg(feature = "cuda")]
fn flash(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Option<Tensor>> {
    use crate::models::flux::kernels;
    let (_, lq, d) = q.dims3()?;
    let settings = kernels::settings()?;
    if !q.device().is_cuda()
        || !matches!(q.dtype(), DType::BF16 | DType::F16)
        || d != 128
        || k.dim(1)? != lq
        || settings.attention != kernels::AttentionImpl::Flash
    {
        return Ok(None);
    }
    // [3, H, L, 128], contiguous: the kernel's input layout.
    let qkv = Tensor::stack(&[q, k, v], 0)?;
    kernels::flash_attention(&qkv, settings.flash).map(Some)
}

/// `self_attn` / `cross_attn` (`WanSelfAttention`, `WanT2VCrossAttention`): `q`, `k`, `v`,
/// `o` linears and the optional `norm_q`, `norm_k`.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    pub(super) q: Lin,
    pub(super) k: Lin,
    pub(super) v: Lin,
    pub(super) o: Lin,
    pub(super) norm_q: Option<RmsNorm>,
    pub(super) norm_k: Option<RmsNorm>,
    pub(super) heads: usize,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let norm = |n: &str| -> Result<Option<RmsNorm>> {
            if cfg.qk_norm {
                Ok(Some(RmsNorm::new(d, cfg.eps, vb.pp(n))?))
            } else {
                Ok(None)
            }
        };
        Ok(Self {
            q: Lin::new(d, d, true, vb.pp("q"))?,
            k: Lin::new(d, d, true, vb.pp("k"))?,
            v: Lin::new(d, d, true, vb.pp("v"))?,
            o: Lin::new(d, d, true, vb.pp("o"))?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            heads: cfg.num_heads,
        })
    }

    /// `[L, H·D]` → `[H, L, D]`, contiguous.
    pub(super) fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (l, width) = x.dims2()?;
        x.reshape((l, self.heads, width / self.heads))?
            .transpose(0, 1)?
            .contiguous()
    }

    /// Queries from `x`, keys and values from `kv` (`x` itself for self-attention), each
    /// `[H, L, D]` with the q/k norms applied.
    fn qkv(&self, x: &Tensor, kv: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let mut q = x.apply(&self.q)?;
        let mut k = kv.apply(&self.k)?;
        if let (Some(nq), Some(nk)) = (&self.norm_q, &self.norm_k) {
            q = q.apply(nq)?;
            k = k.apply(nk)?;
        }
        let v = kv.apply(&self.v)?;
        Ok((
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        ))
    }

    /// Self-attention of `x [L, dim]` with RoPE (`cos`, `sin` `[L, D/2]` f32).
    fn forward_self(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, x)?;
        let (q, k) = (rope(&q, cos, sin)?, rope(&k, cos, sin)?);
        attention(&q, &k, &v)?.apply(&self.o)
    }

    /// Cross-attention of `x [L, dim]` to the embedded text `ctx [L_txt, dim]` (no RoPE, no
    /// mask: the padded tokens take part, as in the reference).
    fn forward_cross(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, ctx)?;
        attention(&q, &k, &v)?.apply(&self.o)
    }
}

/// `blocks.N` (`WanAttentionBlock`): modulated self-attention with RoPE, cross-attention to
/// the text, modulated feed-forward.
#[derive(Debug, Clone)]
pub struct Block {
    pub(super) self_attn: Attention,
    pub(super) cross_attn: Attention,
    pub(super) norm3: Option<AffineNorm>,
    pub(super) ffn0: Lin,
    pub(super) ffn2: Lin,
    /// `modulation` `[1, 6, dim]` as f32 `[6, dim]`: shift, scale, gate of the self-attention,
    /// then of the feed-forward.
    pub(super) modulation: Tensor,
    pub(super) eps: f64,
}

impl Block {
    /// `vb` holds the unit's tensors with names relative to it (`self_attn.q.weight`, …).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        let norm3 = if cfg.cross_attn_norm {
            Some(AffineNorm::new(d, cfg.eps, vb.pp("norm3"))?)
        } else {
            None
        };
        let modulation = vb
            .get_with_hints_dtype((1, 6, d), "modulation", Default::default(), DType::F32)?
            .reshape((6, d))?;
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            cross_attn: Attention::new(cfg, vb.pp("cross_attn"))?,
            norm3,
            ffn0: Lin::new(d, cfg.ffn_dim, true, vb.pp("ffn.0"))?,
            ffn2: Lin::new(cfg.ffn_dim, d, true, vb.pp("ffn.2"))?,
            modulation,
            eps: cfg.eps,
        })
    }

    /// `x [L, dim]` (compute dtype), `ctx [L_txt, dim]` (the embedded text), `e0 [6, dim]` f32
    /// (the time projection), RoPE table `[L, D/2]` f32.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        e0: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (l, _dim) = x.dims2()?;
        self.forward_runs(x, ctx, &[(l, e0.clone())], cos, sin)
    }

    /// [`Block::forward`] with a time projection per run of tokens (Wan 2.2 TI2V's per-token
    /// timesteps): `e0` holds `(tokens, [6, dim] f32)` for consecutive runs covering the `L`
    /// tokens in order. The modulation is element-wise per token, so each run is modulated
    /// with its own table exactly as a per-token table would (diffusers' `temb.ndim == 4`
    /// branch); one run is [`Block::forward`].
    pub fn forward_runs(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        e0: &[(usize, Tensor)],
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (l, _dim) = x.dims2()?;
        check_runs(e0, l)?;
        let dtype = x.dtype();
        #[cfg(feature = "cuda")]
        if super::fused::applies(x)? {
            return self.forward_fused(x, ctx, e0, cos, sin);
        }
        let mods = e0
            .iter()
            .map(|(n, e)| Ok((*n, (&self.modulation + e)?)))
            .collect::<Result<Vec<_>>>()?;
        let e = |m: &Tensor, i: usize| m.narrow(0, i, 1);
        let eps = self.eps;

        let h = by_runs(&[x], &mods, |t, m| {
            modulate(&layer_norm_f32(&t[0], eps)?, &e(m, 0)?, &e(m, 1)?, dtype)
        })?;
        let y = self.self_attn.forward_self(&h, cos, sin)?;
        let x = by_runs(&[x, &y], &mods, |t, m| {
            gated_residual(&t[0], &t[1], &e(m, 2)?)
        })?;

        let h = match &self.norm3 {
            Some(n) => x.apply(n)?,
            None => x.clone(),
        };
        let x = (&x + self.cross_attn.forward_cross(&h, ctx)?)?;

        let h = by_runs(&[&x], &mods, |t, m| {
            modulate(&layer_norm_f32(&t[0], eps)?, &e(m, 3)?, &e(m, 4)?, dtype)
        })?;
        let y = crate::models::act::gelu_tanh(&h.apply(&self.ffn0)?)?.apply(&self.ffn2)?;
        by_runs(&[&x, &y], &mods, |t, m| {
            gated_residual(&t[0], &t[1], &e(m, 5)?)
        })
    }
}

/// Checks that the runs of `runs` cover `l` tokens, each run at least one.
pub(super) fn check_runs(runs: &[(usize, Tensor)], l: usize) -> Result<()> {
    let total: usize = runs.iter().map(|(n, _)| n).sum();
    if runs.is_empty() || total != l || runs.iter().any(|(n, _)| *n == 0) {
        bail!(
            "Wan timestep runs {:?} do not cover the {l} tokens",
            runs.iter().map(|(n, _)| n).collect::<Vec<_>>()
        )
    }
    Ok(())
}

/// `f` over each run of rows: the tensors `xs` (`[L, …]` each) are split at the runs'
/// boundaries, `f` gets a run's rows and the run's table, and the results are concatenated
/// in order. With one run, `f` sees the whole tensors (no split, no copy).
pub(super) fn by_runs(
    xs: &[&Tensor],
    runs: &[(usize, Tensor)],
    f: impl Fn(&[Tensor], &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if let [(_, m)] = runs {
        let whole: Vec<Tensor> = xs.iter().map(|&t| t.clone()).collect();
        return f(&whole, m);
    }
    let mut outs = Vec::with_capacity(runs.len());
    let mut start = 0;
    for (n, m) in runs {
        let part = xs
            .iter()
            .map(|t| t.narrow(0, start, *n))
            .collect::<Result<Vec<_>>>()?;
        outs.push(f(&part, m)?);
        start += n;
    }
    Tensor::cat(&outs, 0)
}

/// `head` (`Head`): LayerNorm modulated by `head.modulation` + the time embedding, then
/// `head.head` to `out_dim · pt · ph · pw` values per token.
#[derive(Debug, Clone)]
pub struct Head {
    head: Linear,
    /// `modulation` `[1, 2, dim]` as f32 `[2, dim]`: shift, scale.
    modulation: Tensor,
    eps: f64,
}

impl Head {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.dim;
        Ok(Self {
            head: candle_nn::linear(d, cfg.patch_out(), vb.pp("head"))?,
            modulation: vb
                .get_with_hints_dtype((1, 2, d), "modulation", Default::default(), DType::F32)?
                .reshape((2, d))?,
            eps: cfg.eps,
        })
    }

    /// `x [L, dim]`, `temb [1, dim]` (the time embedding in the compute dtype) →
    /// `[L, out·pt·ph·pw]` in the compute dtype.
    pub fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let (l, _) = x.dims2()?;
        self.forward_runs(x, &[(l, temb.clone())])
    }

    /// [`Head::forward`] with a time embedding per run of tokens (`(tokens, [1, dim])`,
    /// consecutive runs covering the tokens in order), as [`Block::forward_runs`].
    pub fn forward_runs(&self, x: &Tensor, temb: &[(usize, Tensor)]) -> Result<Tensor> {
        let (l, _) = x.dims2()?;
        check_runs(temb, l)?;
        let mods = temb
            .iter()
            .map(|(n, t)| Ok((*n, self.modulation.broadcast_add(&t.to_dtype(DType::F32)?)?)))
            .collect::<Result<Vec<_>>>()?;
        let eps = self.eps;
        by_runs(&[x], &mods, |t, m| {
            let (shift, scale) = (m.narrow(0, 0, 1)?, m.narrow(0, 1, 1)?);
            modulate(&layer_norm_f32(&t[0], eps)?, &shift, &scale, t[0].dtype())
        })?
        .apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut r = crate::models::tiny::SplitMix64::new(seed);
        let v: Vec<f32> = (0..n).map(|_| r.next_uniform()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Attention by the definition, in f64.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Vec<f64> {
        let (h, lq, d) = q.dims3().unwrap();
        let lk = k.dim(1).unwrap();
        let f = |t: &Tensor| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let (q, k, v) = (f(q), f(k), f(v));
        let mut out = vec![0.0; lq * h * d];
        for hh in 0..h {
            for i in 0..lq {
                let s: Vec<f64> = (0..lk)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[(hh * lq + i) * d + c] * k[(hh * lk + j) * d + c])
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for c in 0..d {
                    out[i * h * d + hh * d + c] = (0..lk)
                        .map(|j| (s[j] - mx).exp() / z * v[(hh * lk + j) * d + c])
                        .sum::<f64>();
                }
            }
        }
        out
    }

    #[test]
    fn chunked_attention_matches_the_definition() -> Result<()> {
        let (q, k, v) = (
            rand(&[2, 13, 8], 1),
            rand(&[2, 5, 8], 2),
            rand(&[2, 5, 8], 3),
        );
        let want = naive(&q, &k, &v);
        // One chunk, chunks of 3 queries (2·5·3 = 30 scores), one query per chunk.
        for max in [MAX_SCORES, 30, 1] {
            let got = attention_chunked(&q, &k, &v, max)?;
            assert_eq!(got.dims(), &[13, 16]);
            let got = got.flatten_all()?.to_vec1::<f32>()?;
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-6, "max {max}: error {err}");
        }
        let e = attention_chunked(&q, &k, &rand(&[2, 4, 8], 4), MAX_SCORES)
            .unwrap_err()
            .to_string();
        assert!(e.contains("do not agree"), "{e}");
        Ok(())
    }

    #[test]
    fn norms_in_f32() -> Result<()> {
        let x = (rand(&[3, 8], 5) * 3.0)?;
        let n = layer_norm_f32(&x, 1e-6)?.to_vec2::<f32>()?;
        for row in n {
            let mean: f32 = row.iter().sum::<f32>() / 8.0;
            let var: f32 = row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 8.0;
            assert!(
                mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4,
                "{mean} {var}"
            );
        }
        let bf = x.to_dtype(DType::BF16)?;
        assert_eq!(layer_norm_f32(&bf, 1e-6)?.dtype(), DType::F32);
        let r = RmsNorm {
            weight: Tensor::full(2f32, 8, &Device::Cpu)?.to_dtype(DType::BF16)?,
            eps: 1e-6,
        };
        let y = bf.apply(&r)?;
        assert_eq!(y.dtype(), DType::BF16);
        let y = y.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let ms: f32 = y[0].iter().map(|v| v * v).sum::<f32>() / 8.0;
        assert!((ms - 4.0).abs() < 0.05, "{ms}");
        Ok(())
    }
}
