//! FLUX input side: latent packing into tokens, position ids, the RoPE table, the sinusoidal
//! timestep embedding and the two-layer MLP embedders (`time_in`, `vector_in`,
//! `guidance_in`).
//!
//! Reference: BFL `flux/sampling.py` (`prepare`, `unpack`), `flux/math.py` (`rope`),
//! `flux/modules/layers.py` (`EmbedND`, `timestep_embedding`, `MLPEmbedder`).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{LATENT_CHANNELS, PATCH, TIME_EMBED_DIM};

/// Packs a latent `[1, 16, h, w]` into tokens `[(h/2)(w/2), 64]`, channel order
/// `(c, ph, pw)` as BFL's `rearrange("b c (h ph) (w pw) -> b (h w) (c ph pw)")`.
pub fn pack(latent: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latent.dims4()?;
    if b != 1 || c != LATENT_CHANNELS {
        bail!(
            "FLUX latent must be [1, {LATENT_CHANNELS}, h, w], got {:?}",
            latent.shape()
        )
    }
    if h % PATCH != 0 || w % PATCH != 0 {
        bail!("FLUX latent height and width must be even (2×2 patches), got {h}×{w}")
    }
    let (hp, wp) = (h / PATCH, w / PATCH);
    // [c, hp, ph, wp, pw] -> [hp, wp, c, ph, pw]
    latent
        .reshape((c, hp, PATCH, wp, PATCH))?
        .permute((1, 3, 0, 2, 4))?
        .reshape((hp * wp, c * PATCH * PATCH))
}

/// Inverse of [`pack`]: tokens `[(h/2)(w/2), 64]` back to a latent `[1, 16, h, w]`.
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (l, d) = tokens.dims2()?;
    let (hp, wp) = (h / PATCH, w / PATCH);
    if l != hp * wp
        || d != LATENT_CHANNELS * PATCH * PATCH
        || !h.is_multiple_of(PATCH)
        || !w.is_multiple_of(PATCH)
    {
        bail!(
            "cannot unpack tokens {:?} into a {h}×{w} latent",
            tokens.shape()
        )
    }
    // [hp, wp, c, ph, pw] -> [c, hp, ph, wp, pw]
    tokens
        .reshape((hp, wp, LATENT_CHANNELS, PATCH, PATCH))?
        .permute((2, 0, 3, 1, 4))?
        .reshape((1, LATENT_CHANNELS, h, w))
}

/// Position ids of the image tokens of an `h`×`w` latent: `(0, row, col)` per token, in
/// packing order (BFL `prepare`: `img_ids[..., 1] = row`, `img_ids[..., 2] = col`).
pub fn img_ids(h: usize, w: usize) -> Vec<[f64; 3]> {
    let (hp, wp) = (h / PATCH, w / PATCH);
    (0..hp)
        .flat_map(|r| (0..wp).map(move |c| [0.0, r as f64, c as f64]))
        .collect()
}

/// The rotary table for a sequence of position ids: `(cos, sin)`, each `[L, head_dim/2]` f32,
/// pair `j` of axis `a` rotating by `pos[a] · theta^(-2j/axes_dim[a])`; axes are concatenated
/// in order (BFL `EmbedND`). Angles are computed in f64 as BFL's `rope` does, then rounded to
/// f32.
pub fn rope_table(
    ids: &[[f64; 3]],
    axes_dim: &[usize],
    theta: f64,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let half: usize = axes_dim.iter().sum::<usize>() / 2;
    let mut cos = Vec::with_capacity(ids.len() * half);
    let mut sin = Vec::with_capacity(ids.len() * half);
    for pos in ids {
        for (a, &dim) in axes_dim.iter().enumerate() {
            for j in 0..dim / 2 {
                let omega = 1.0 / theta.powf((2 * j) as f64 / dim as f64);
                let angle = pos[a] * omega;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    let l = ids.len();
    Ok((
        Tensor::from_vec(cos, (l, half), dev)?,
        Tensor::from_vec(sin, (l, half), dev)?,
    ))
}

/// Sinusoidal embedding of a timestep or guidance value `t` (BFL `timestep_embedding`,
/// `time_factor` 1000, `max_period` 10000, cos half first), as a `[1, 256]` tensor of `dtype`.
/// `t` is first rounded to `dtype` and multiplied by 1000 in that dtype, as the reference does
/// with a `dtype` tensor; the sinusoids are computed in f32.
pub fn timestep_embedding(t: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
    let t = round_to(round_to(t, dtype) * 1000.0, dtype) as f32;
    let half = TIME_EMBED_DIM / 2;
    let ln_max = (10_000f64).ln() as f32;
    let mut emb = vec![0f32; TIME_EMBED_DIM];
    for i in 0..half {
        let freq = (-ln_max * i as f32 / half as f32).exp();
        let arg = t * freq;
        emb[i] = arg.cos();
        emb[half + i] = arg.sin();
    }
    Tensor::from_vec(emb, (1, TIME_EMBED_DIM), dev)?.to_dtype(dtype)
}

/// Rounds `x` to the nearest value representable in `dtype` (f32 for f32 and wider).
fn round_to(x: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::F64 => x,
        _ => x as f32 as f64,
    }
}

/// `in_layer` → SiLU → `out_layer` (BFL `MLPEmbedder`).
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    pub fn new(in_dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            in_layer: candle_nn::linear(in_dim, hidden, vb.pp("in_layer"))?,
            out_layer: candle_nn::linear(hidden, hidden, vb.pp("out_layer"))?,
        })
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_roundtrip_and_order() -> Result<()> {
        let dev = Device::Cpu;
        let (h, w) = (4, 6);
        let x = Tensor::arange(0f32, (16 * h * w) as f32, &dev)?.reshape((1, 16, h, w))?;
        let t = pack(&x)?;
        assert_eq!(t.dims(), &[6, 64]);
        // Token (row 1, col 2) holds channel 0's pixels (2, 4), (2, 5), (3, 4), (3, 5) first.
        let tok = t.get(3 + 2)?.to_vec1::<f32>()?;
        let px = |c: usize, y: usize, xx: usize| (c * h * w + y * w + xx) as f32;
        assert_eq!(
            &tok[..4],
            &[px(0, 2, 4), px(0, 2, 5), px(0, 3, 4), px(0, 3, 5)]
        );
        assert_eq!(tok[4], px(1, 2, 4));
        let back = unpack(&t, h, w)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        assert!(pack(&Tensor::zeros((1, 16, 3, 4), DType::F32, &dev)?).is_err());
        Ok(())
    }

    #[test]
    fn ids_follow_packing_order() {
        let ids = img_ids(4, 6);
        assert_eq!(ids.len(), 6);
        assert_eq!(ids[4], [0.0, 1.0, 1.0]);
    }

    #[test]
    fn timestep_embedding_values() -> Result<()> {
        let e = timestep_embedding(0.5, DType::F32, &Device::Cpu)?.to_vec2::<f32>()?;
        // Frequency 0 is 1: cos(500), sin(500).
        assert!((e[0][0] - 500f32.cos()).abs() < 1e-6);
        assert!((e[0][128] - 500f32.sin()).abs() < 1e-6);
        assert_eq!(e[0].len(), 256);
        Ok(())
    }
}
