//! FLUX transformer blocks, each built from its placement unit's tensors: the double-stream
//! block (`double_blocks.N`: separate image and text weights, joint attention) and the
//! single-stream block (`single_blocks.N`: one fused stream, parallel attention + MLP).
//!
//! Reference: BFL `flux/modules/layers.py` (`DoubleStreamBlock`, `SingleStreamBlock`,
//! `Modulation`, `QKNorm`, `RMSNorm`, `SelfAttention`) and `flux/math.py` (`attention`,
//! `apply_rope`). Precision follows the reference: RMSNorm, LayerNorm, RoPE and softmax are
//! computed in f32 and rounded back to the compute dtype; everything else runs in the dtype of
//! the weights.
//!
//! On a CUDA device in bf16/f16, `forward` takes the fused path of `block/fused.rs` (the same
//! computation and rounding points through the kernels of [`super::kernels`]); the code below
//! is the CPU path and the reference for it.

#[cfg(feature = "cuda")]
mod fused;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::models::fp8::Lin;

use super::config::Config;

const NORM_EPS: f64 = 1e-6;

/// LayerNorm over the last dimension without affine parameters (`elementwise_affine=False`,
/// eps 1e-6), computed in f32 with a two-pass variance.
pub(crate) fn layer_norm(x: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let inv_std = (x.sqr()?.mean_keepdim(D::Minus1)? + NORM_EPS)?
        .sqrt()?
        .recip()?;
    x.broadcast_mul(&inv_std)?.to_dtype(dtype)
}

/// BFL `RMSNorm`: normalise in f32, round to the input dtype, then multiply by `scale`.
#[derive(Debug, Clone)]
struct RmsNorm {
    scale: Tensor,
}

impl RmsNorm {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            scale: vb.get(dim, "scale")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let ones = Tensor::ones(x.dim(D::Minus1)?, DType::F32, x.device())?;
        candle_nn::ops::rms_norm(&x32, &ones, NORM_EPS as f32)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.scale)
    }
}

/// `norm.query_norm.scale`, `norm.key_norm.scale` (BFL `QKNorm`).
#[derive(Debug, Clone)]
struct QkNorm {
    query_norm: RmsNorm,
    key_norm: RmsNorm,
}

impl QkNorm {
    fn new(head_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            query_norm: RmsNorm::new(head_dim, vb.pp("query_norm"))?,
            key_norm: RmsNorm::new(head_dim, vb.pp("key_norm"))?,
        })
    }
}

/// Splits a fused `[L, 3·heads·head_dim]` projection into q, k, v, each `[heads, L, head_dim]`
/// contiguous, with q and k RMS-normalised (BFL: `rearrange("B L (K H D) -> K B H L D")`).
fn split_qkv(qkv: &Tensor, heads: usize, norm: &QkNorm) -> Result<(Tensor, Tensor, Tensor)> {
    let (l, three_hd) = qkv.dims2()?;
    let head_dim = three_hd / (3 * heads);
    // [L, 3, H, Dh] -> [3, H, L, Dh]
    let qkv = qkv
        .reshape((l, 3, heads, head_dim))?
        .permute((1, 2, 0, 3))?
        .contiguous()?;
    let q = norm.query_norm.forward(&qkv.get(0)?)?;
    let k = norm.key_norm.forward(&qkv.get(1)?)?;
    Ok((q, k, qkv.get(2)?))
}

/// Rotary embedding of `[H, L, Dh]` with the `(cos, sin)` table, in f32 (BFL `apply_rope`).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        .squeeze(0)?
        .to_dtype(dtype)
}

/// Joint attention with RoPE (BFL `math.attention`): q, k, v `[H, L, Dh]` → `[L, H·Dh]`.
/// Scores are formed in the compute dtype, the softmax runs in f32.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (h, l, dh) = q.dims3()?;
    let dtype = q.dtype();
    let q = (rope(q, cos, sin)? * (1.0 / (dh as f64).sqrt()))?;
    let k = rope(k, cos, sin)?;
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    // [H, L, Dh] -> [L, H, Dh] -> [L, H·Dh]
    probs.matmul(v)?.transpose(0, 1)?.reshape((l, h * dh))
}

/// One `(shift, scale, gate)` triple of a modulation, each `[1, hidden]`.
struct ModOut {
    shift: Tensor,
    scale: Tensor,
    gate: Tensor,
}

impl ModOut {
    /// `(1 + scale) · x + shift`
    fn modulate(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&(&self.scale + 1.0)?)?
            .broadcast_add(&self.shift)
    }

    /// `x + gate · y`
    fn gated_add(&self, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        x + y.broadcast_mul(&self.gate)?
    }
}

/// BFL `Modulation`: `lin(silu(vec))` split into 3 (single) or 6 (double) chunks.
#[derive(Debug, Clone)]
struct Modulation {
    lin: Linear,
}

impl Modulation {
    fn new(hidden: usize, mult: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            lin: candle_nn::linear(hidden, mult * hidden, vb.pp("lin"))?,
        })
    }

    fn chunks(&self, vec: &Tensor, n: usize) -> Result<Vec<ModOut>> {
        let ys = vec.silu()?.apply(&self.lin)?.chunk(n, D::Minus1)?;
        Ok(ys
            .chunks_exact(3)
            .map(|c| ModOut {
                shift: c[0].clone(),
                scale: c[1].clone(),
                gate: c[2].clone(),
            })
            .collect())
    }

    /// `(shift, scale, gate)` for a single block.
    fn single(&self, vec: &Tensor) -> Result<ModOut> {
        let mut m = self.chunks(vec, 3)?;
        m.pop()
            .ok_or_else(|| candle_core::Error::Msg("modulation produced no chunks".into()))
    }

    /// The attention and the MLP triples of a double-block stream.
    fn double(&self, vec: &Tensor) -> Result<(ModOut, ModOut)> {
        let mut m = self.chunks(vec, 6)?;
        match (m.pop(), m.pop()) {
            (Some(mlp), Some(attn)) => Ok((attn, mlp)),
            _ => candle_core::bail!("modulation produced fewer than 6 chunks"),
        }
    }
}

/// `qkv`, `norm`, `proj` of one stream of a double block (BFL `SelfAttention`).
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Lin,
    norm: QkNorm,
    proj: Lin,
}

impl SelfAttention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Lin::new(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: Lin::new(h, h, true, vb.pp("proj"))?,
        })
    }
}

/// `0` → GELU (tanh approximation) → `2` (BFL's `nn.Sequential` MLP).
#[derive(Debug, Clone)]
struct Mlp {
    l0: Lin,
    l2: Lin,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(Self {
            l0: Lin::new(h, m, true, vb.pp("0"))?,
            l2: Lin::new(m, h, true, vb.pp("2"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::models::act::gelu_tanh(&x.apply(&self.l0)?)?.apply(&self.l2)
    }
}

/// One stream (image or text) of a double block: `{img,txt}_{mod,attn,mlp}`.
#[derive(Debug, Clone)]
struct Stream {
    modulation: Modulation,
    attn: SelfAttention,
    mlp: Mlp,
}

impl Stream {
    fn new(cfg: &Config, vb: &VarBuilder, prefix: &str) -> Result<Self> {
        Ok(Self {
            modulation: Modulation::new(cfg.hidden_size, 6, vb.pp(format!("{prefix}_mod")))?,
            attn: SelfAttention::new(cfg, vb.pp(format!("{prefix}_attn")))?,
            mlp: Mlp::new(cfg, vb.pp(format!("{prefix}_mlp")))?,
        })
    }

    /// Modulation and the pre-attention half: `(mod1, mod2, q, k, v)`.
    fn pre_attention(
        &self,
        x: &Tensor,
        vec: &Tensor,
        heads: usize,
    ) -> Result<(ModOut, ModOut, Tensor, Tensor, Tensor)> {
        let (m1, m2) = self.modulation.double(vec)?;
        let qkv = m1.modulate(&layer_norm(x)?)?.apply(&self.attn.qkv)?;
        let (q, k, v) = split_qkv(&qkv, heads, &self.attn.norm)?;
        Ok((m1, m2, q, k, v))
    }

    /// The post-attention half: gated projection, then the gated modulated MLP.
    fn post_attention(
        &self,
        x: &Tensor,
        attn: &Tensor,
        m1: &ModOut,
        m2: &ModOut,
    ) -> Result<Tensor> {
        let x = m1.gated_add(x, &attn.apply(&self.attn.proj)?)?;
        let y = m2.modulate(&layer_norm(&x)?)?.apply(&self.mlp)?;
        m2.gated_add(&x, &y)
    }
}

/// `double_blocks.N` (BFL `DoubleStreamBlock`): image and text streams with their own
/// weights, attending jointly over `[txt, img]`.
#[derive(Debug, Clone)]
pub struct DoubleBlock {
    img: Stream,
    txt: Stream,
    heads: usize,
}

impl DoubleBlock {
    /// `vb` holds the unit's tensors with names relative to it (`img_attn.qkv.weight`, …).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, &vb, "img")?,
            txt: Stream::new(cfg, &vb, "txt")?,
            heads: cfg.num_heads,
        })
    }

    /// `img [L_img, hidden]`, `txt [L_txt, hidden]`, `vec [1, hidden]`, RoPE table over
    /// `L_txt + L_img` positions (text first).
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        #[cfg(feature = "cuda")]
        if fused::applies(
            img,
            img.dim(1)? / self.heads,
            self.img.mlp.l0.weight_dims()?.0,
        )? {
            return fused::double(self, img, txt, vec, cos, sin);
        }
        let (l_txt, _) = txt.dims2()?;
        let (l_img, _) = img.dims2()?;
        let (im1, im2, iq, ik, iv) = self.img.pre_attention(img, vec, self.heads)?;
        let (tm1, tm2, tq, tk, tv) = self.txt.pre_attention(txt, vec, self.heads)?;
        let q = Tensor::cat(&[tq, iq], 1)?;
        let k = Tensor::cat(&[tk, ik], 1)?;
        let v = Tensor::cat(&[tv, iv], 1)?;
        let attn = attention(&q, &k, &v, cos, sin)?;
        let txt_attn = attn.narrow(0, 0, l_txt)?;
        let img_attn = attn.narrow(0, l_txt, l_img)?;
        let img = self.img.post_attention(img, &img_attn, &im1, &im2)?;
        let txt = self.txt.post_attention(txt, &txt_attn, &tm1, &tm2)?;
        Ok((img, txt))
    }
}

/// `single_blocks.N` (BFL `SingleStreamBlock`): `linear1` produces q, k, v and the MLP input
/// at once; `linear2` maps `[attention, gelu(mlp)]` back.
#[derive(Debug, Clone)]
pub struct SingleBlock {
    linear1: Lin,
    linear2: Lin,
    norm: QkNorm,
    modulation: Modulation,
    hidden: usize,
    heads: usize,
}

impl SingleBlock {
    /// `vb` holds the unit's tensors with names relative to it (`linear1.weight`, …).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(Self {
            linear1: Lin::new(h, 3 * h + m, true, vb.pp("linear1"))?,
            linear2: Lin::new(h + m, h, true, vb.pp("linear2"))?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: Modulation::new(h, 3, vb.pp("modulation"))?,
            hidden: h,
            heads: cfg.num_heads,
        })
    }

    /// `x [L_txt + L_img, hidden]`, `vec [1, hidden]`, RoPE table over the same positions.
    pub fn forward(&self, x: &Tensor, vec: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if fused::applies(
            x,
            self.hidden / self.heads,
            self.linear2.weight_dims()?.1 - self.hidden,
        )? {
            return fused::single(self, x, vec, cos, sin);
        }
        let (_l, _) = x.dims2()?;
        let m = self.modulation.single(vec)?;
        let fused = m.modulate(&layer_norm(x)?)?.apply(&self.linear1)?;
        let mlp_width = fused.dim(1)? - 3 * self.hidden;
        let qkv = fused.narrow(1, 0, 3 * self.hidden)?;
        let mlp = fused.narrow(1, 3 * self.hidden, mlp_width)?;
        let (q, k, v) = split_qkv(&qkv, self.heads, &self.norm)?;
        let attn = attention(&q, &k, &v, cos, sin)?;
        let out =
            Tensor::cat(&[attn, crate::models::act::gelu_tanh(&mlp)?], 1)?.apply(&self.linear2)?;
        m.gated_add(x, &out)
    }
}

/// `final_layer` (BFL `LastLayer`): `adaLN_modulation.1` gives (shift, scale), then `linear`
/// maps each token to 64 packed latent channels.
#[derive(Debug, Clone)]
pub struct LastLayer {
    ada_ln: Linear,
    linear: Linear,
}

impl LastLayer {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            ada_ln: candle_nn::linear(h, 2 * h, vb.pp("adaLN_modulation.1"))?,
            linear: candle_nn::linear(h, cfg.in_channels, vb.pp("linear"))?,
        })
    }

    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        // No attention or MLP here: only the width matters.
        if fused::applies(x, 8, 8)? {
            return fused::last(self, x, vec);
        }
        let chunks = vec.silu()?.apply(&self.ada_ln)?.chunk(2, D::Minus1)?;
        let (shift, scale) = (&chunks[0], &chunks[1]);
        layer_norm(x)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(shift)?
            .apply(&self.linear)
    }
}
