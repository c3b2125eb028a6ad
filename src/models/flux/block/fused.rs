//! The FLUX blocks on a CUDA device through the fused kernels of [`crate::models::flux::kernels`]:
//! the same computation as the candle path of `block.rs`, with the same rounding points, in
//! about a third of the kernels and without the L×L score matrix. Matrix products stay with
//! cuBLAS, without their bias, which the next fused kernel adds. Before an fp8 layer
//! (`dtype = "fp8"`) the LayerNorm/modulation and GELU kernels store their output as e4m3
//! directly (the bytes the layer's own rounding would make, one write instead of three
//! passes); the attention output before `proj` is rounded by the layer.

use candle_core::{DType, Result, Tensor};

use crate::models::fp8::Lin;

use super::{DoubleBlock, LastLayer, ModOut, QkNorm, SingleBlock, Stream};
use crate::models::flux::kernels::{self, QkvSegment};

/// Whether the fused path runs `x` (a block input): on a CUDA device, in bf16 or f16, with
/// kernels switched on (`MGPU_FLUX_KERNELS`) and shapes the kernels take.
pub(super) fn applies(x: &Tensor, head_dim: usize, mlp_hidden: usize) -> Result<bool> {
    let hidden = x.dim(candle_core::D::Minus1)?;
    Ok(x.device().is_cuda()
        && matches!(x.dtype(), DType::BF16 | DType::F16)
        && kernels::shapes_supported(hidden, head_dim, mlp_hidden)
        && kernels::settings()?.kernels)
}

/// The LayerNorm + modulation of `x` as the input of `lin` (e4m3 for an fp8 layer), and the
/// product without the bias.
fn ln_modulate_matmul(x: &Tensor, m: &ModOut, lin: &Lin) -> Result<Tensor> {
    let h = kernels::ln_modulate_to(x, &m.shift, &m.scale, lin.is_fp8())?;
    lin.matmul_t_as(&h, x.dtype())
}

/// The layer's bias, or zeros of its output width in the dtype of `like` (the activations).
fn bias(lin: &Lin, like: &Tensor) -> Result<Tensor> {
    match lin.bias() {
        Some(b) => Ok(b.clone()),
        None => Tensor::zeros(lin.weight_dims()?.0, like.dtype(), like.device()),
    }
}

fn segment<'a>(src: &'a Tensor, bias: &'a Tensor, norm: &'a QkNorm) -> QkvSegment<'a> {
    QkvSegment {
        src,
        bias,
        q_scale: &norm.query_norm.scale,
        k_scale: &norm.key_norm.scale,
    }
}

/// The post-attention half of a double-block stream (`Stream::post_attention`).
fn post_attention(
    s: &Stream,
    x: &Tensor,
    attn: &Tensor,
    m1: &ModOut,
    m2: &ModOut,
) -> Result<Tensor> {
    let proj = s.attn.proj.matmul_t(attn)?;
    let x = kernels::gated_residual(x, &proj, &bias(&s.attn.proj, x)?, &m1.gate)?;
    let h = ln_modulate_matmul(&x, m2, &s.mlp.l0)?;
    let width = h.dim(1)?;
    let fp8 = s.mlp.l2.is_fp8();
    let h = kernels::cat_gelu_to(None, &h, 0, width, &bias(&s.mlp.l0, &x)?, fp8)?;
    let y = s.mlp.l2.matmul_t_as(&h, x.dtype())?;
    kernels::gated_residual(&x, &y, &bias(&s.mlp.l2, &x)?, &m2.gate)
}

/// [`DoubleBlock::forward`] on the fused path.
pub(super) fn double(
    b: &DoubleBlock,
    img: &Tensor,
    txt: &Tensor,
    vec: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (l_txt, _) = txt.dims2()?;
    let (l_img, _) = img.dims2()?;
    let (im1, im2) = b.img.modulation.double(vec)?;
    let (tm1, tm2) = b.txt.modulation.double(vec)?;
    let img_qkv = ln_modulate_matmul(img, &im1, &b.img.attn.qkv)?;
    let txt_qkv = ln_modulate_matmul(txt, &tm1, &b.txt.attn.qkv)?;
    let (img_b, txt_b) = (bias(&b.img.attn.qkv, img)?, bias(&b.txt.attn.qkv, txt)?);
    // Text first, as the reference concatenates [txt, img].
    let qkv = kernels::qkv_rope(
        &[
            segment(&txt_qkv, &txt_b, &b.txt.attn.norm),
            segment(&img_qkv, &img_b, &b.img.attn.norm),
        ],
        b.heads,
        cos,
        sin,
    )?;
    let attn = kernels::attention(&qkv)?;
    let txt_attn = attn.narrow(0, 0, l_txt)?;
    let img_attn = attn.narrow(0, l_txt, l_img)?;
    let img = post_attention(&b.img, img, &img_attn, &im1, &im2)?;
    let txt = post_attention(&b.txt, txt, &txt_attn, &tm1, &tm2)?;
    Ok((img, txt))
}

/// [`SingleBlock::forward`] on the fused path.
pub(super) fn single(
    b: &SingleBlock,
    x: &Tensor,
    vec: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let m = b.modulation.single(vec)?;
    let fused = ln_modulate_matmul(x, &m, &b.linear1)?;
    let qkv_w = 3 * b.hidden;
    let mlp_w = fused.dim(1)? - qkv_w;
    let b1 = bias(&b.linear1, x)?;
    let qkv_b = b1.narrow(0, 0, qkv_w)?;
    let mlp_b = b1.narrow(0, qkv_w, mlp_w)?;
    let qkv = kernels::qkv_rope(&[segment(&fused, &qkv_b, &b.norm)], b.heads, cos, sin)?;
    let attn = kernels::attention(&qkv)?;
    let fp8 = b.linear2.is_fp8();
    let cat = kernels::cat_gelu_to(Some(&attn), &fused, qkv_w, mlp_w, &mlp_b, fp8)?;
    let out = b.linear2.matmul_t_as(&cat, x.dtype())?;
    kernels::gated_residual(x, &out, &bias(&b.linear2, x)?, &m.gate)
}

/// [`LastLayer::forward`] on the fused path (the LayerNorm and modulation in one kernel).
pub(super) fn last(l: &LastLayer, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
    let chunks = vec
        .silu()?
        .apply(&l.ada_ln)?
        .chunk(2, candle_core::D::Minus1)?;
    kernels::ln_modulate(x, &chunks[0], &chunks[1])?.apply(&l.linear)
}
