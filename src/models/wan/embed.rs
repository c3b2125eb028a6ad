//! Wan input and output side: the 3-D patchify (`patch_embedding`, a Conv3d whose kernel equals
//! its stride, as one matrix product) and its inverse, the 3-D RoPE table, the sinusoidal
//! timestep embedding and the two-layer MLP embedders (`text_embedding`, `time_embedding`).
//!
//! Reference: `wan/modules/model.py` (`sinusoidal_embedding_1d`, `rope_params`, `rope_apply`,
//! `WanModel.forward`, `unpatchify`) and diffusers' `transformer_wan.py` (`WanRotaryPosEmbed`,
//! `WanTimeTextImageEmbedding`, whose conventions — f32 sinusoids, cos half first — are the
//! parity target).

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config::{Config, ROPE_THETA};

/// Tokens of a latent `[1, C, T, h, w]`: `[(T/pt)(h/ph)(w/pw), C·pt·ph·pw]`, tokens in
/// (t, h, w) order and each token's values in (c, pt, ph, pw) order — the order of the
/// flattened Conv3d kernel, so that the patch embedding is `tokens · Wᵀ`. Also returns the
/// token grid (T/pt, h/ph, w/pw).
pub fn patchify(latent: &Tensor, patch: [usize; 3]) -> Result<(Tensor, [usize; 3])> {
    let (b, c, t, h, w) = latent.dims5()?;
    let [pt, ph, pw] = patch;
    if b != 1 {
        bail!("Wan runs one job at a time: latent batch size {b}, expected 1")
    }
    if t % pt != 0 || h % ph != 0 || w % pw != 0 {
        bail!(
            "Wan latent {t}×{h}×{w} (frames × height × width) must be a multiple of the patch {pt}×{ph}×{pw}"
        )
    }
    let grid = [t / pt, h / ph, w / pw];
    // [c, T', pt, h', ph, w', pw] -> [T', h', w', c, pt, ph, pw]
    let tokens = latent
        .reshape(vec![c, grid[0], pt, grid[1], ph, grid[2], pw])?
        .permute([1, 3, 5, 0, 2, 4, 6])?
        .reshape((grid.iter().product::<usize>(), c * pt * ph * pw))?;
    Ok((tokens, grid))
}

/// Inverse of the head's layout: tokens `[L, pt·ph·pw·C]` (each token's values in
/// (pt, ph, pw, c) order, as `head.head` produces them) to a latent `[1, C, T, h, w]`.
pub fn unpatchify(tokens: &Tensor, grid: [usize; 3], patch: [usize; 3]) -> Result<Tensor> {
    let (l, width) = tokens.dims2()?;
    let [pt, ph, pw] = patch;
    let volume = pt * ph * pw;
    if l != grid.iter().product::<usize>() || volume == 0 || width % volume != 0 {
        bail!(
            "cannot unpatchify tokens {:?} into a {grid:?} grid of {patch:?} patches",
            tokens.shape()
        )
    }
    let c = width / volume;
    // [T', h', w', pt, ph, pw, c] -> [c, T', pt, h', ph, w', pw]
    tokens
        .reshape(vec![grid[0], grid[1], grid[2], pt, ph, pw, c])?
        .permute([6, 0, 3, 1, 4, 2, 5])?
        .reshape((1, c, grid[0] * pt, grid[1] * ph, grid[2] * pw))
}

/// The rotary table of a token grid (T', h', w'): `(cos, sin)`, each `[T'·h'·w', head_dim/2]`
/// f32, tokens in (t, h, w) order. Pair `j` of axis `a` (of `axes[a]` dimensions; the axes'
/// pairs concatenated t, h, w) rotates by `pos[a] · θ^(−2j/axes[a])`, positions counted from
/// 0 on each axis. Angles are computed in f64 and rounded to f32, as diffusers'
/// `WanRotaryPosEmbed` does (`freqs_dtype=torch.float64`); the Wan reference (`rope_params`)
/// has the same frequencies.
pub fn rope_table(grid: [usize; 3], axes: [usize; 3], dev: &Device) -> Result<(Tensor, Tensor)> {
    // Per axis: position × pair → (cos, sin).
    let per_axis: Vec<Vec<(f32, f32)>> = (0..3)
        .map(|a| {
            let dim = axes[a];
            (0..grid[a])
                .flat_map(|p| {
                    (0..dim / 2).map(move |j| {
                        let omega = 1.0 / ROPE_THETA.powf((2 * j) as f64 / dim as f64);
                        let angle = p as f64 * omega;
                        (angle.cos() as f32, angle.sin() as f32)
                    })
                })
                .collect()
        })
        .collect();
    let half: usize = axes.iter().map(|d| d / 2).sum();
    let l: usize = grid.iter().product();
    let mut cos = Vec::with_capacity(l * half);
    let mut sin = Vec::with_capacity(l * half);
    for f in 0..grid[0] {
        for h in 0..grid[1] {
            for w in 0..grid[2] {
                for (a, p) in [f, h, w].into_iter().enumerate() {
                    let n = axes[a] / 2;
                    for &(c, s) in &per_axis[a][p * n..(p + 1) * n] {
                        cos.push(c);
                        sin.push(s);
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (l, half), dev)?,
        Tensor::from_vec(sin, (l, half), dev)?,
    ))
}

/// Sinusoidal embedding `[1, dim]` f32 of timestep `t` (1000·σ): `[cos(t·f_i), sin(t·f_i)]`
/// with `f_i = exp(−ln(10000)·i/(dim/2))`, all in f32 — diffusers' `Timesteps(dim,
/// flip_sin_to_cos=True, downscale_freq_shift=0)` as `WanTimeTextImageEmbedding` uses it (the
/// Wan reference's `sinusoidal_embedding_1d` is the same function in f64). `t` is rounded to
/// f32, the dtype of the pipeline's timesteps.
pub fn timestep_embedding(t: f64, dim: usize, dev: &Device) -> Result<Tensor> {
    let t = t as f32;
    let half = dim / 2;
    let ln_max = (10_000f64).ln() as f32;
    let mut emb = vec![0f32; 2 * half];
    for i in 0..half {
        let freq = (-ln_max * i as f32 / half as f32).exp();
        let arg = t * freq;
        emb[i] = arg.cos();
        emb[half + i] = arg.sin();
    }
    Tensor::from_vec(emb, (1, 2 * half), dev)
}

/// A linear layer whose weights are taken in `dtype` whatever the `VarBuilder`'s dtype: the
/// f32 islands diffusers keeps (`_keep_in_fp32_modules`).
pub(crate) fn linear_in(
    in_dim: usize,
    out_dim: usize,
    dtype: DType,
    vb: VarBuilder,
) -> Result<Linear> {
    let w = vb.get_with_hints_dtype((out_dim, in_dim), "weight", Default::default(), dtype)?;
    let b = vb.get_with_hints_dtype(out_dim, "bias", Default::default(), dtype)?;
    Ok(Linear::new(w, Some(b)))
}

/// `text_embedding`: `0` → GELU (tanh) → `2`, in the compute dtype (diffusers'
/// `PixArtAlphaTextProjection(act_fn="gelu_tanh")`).
#[derive(Debug, Clone)]
pub struct TextEmbedding {
    l0: Linear,
    l2: Linear,
}

impl TextEmbedding {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l0: candle_nn::linear(cfg.text_dim, cfg.dim, vb.pp("0"))?,
            l2: candle_nn::linear(cfg.dim, cfg.dim, vb.pp("2"))?,
        })
    }
}

impl Module for TextEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::models::act::gelu_tanh(&x.apply(&self.l0)?)?.apply(&self.l2)
    }
}

/// `time_embedding`: `0` → SiLU → `2`, in f32 with f32 weights (diffusers keeps
/// `time_embedder` in f32; the Wan reference runs it under `autocast(float32)`).
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    l0: Linear,
    l2: Linear,
}

impl TimeEmbedding {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            l0: linear_in(cfg.freq_dim, cfg.dim, DType::F32, vb.pp("0"))?,
            l2: linear_in(cfg.dim, cfg.dim, DType::F32, vb.pp("2"))?,
        })
    }
}

impl Module for TimeEmbedding {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.to_dtype(DType::F32)?
            .apply(&self.l0)?
            .silu()?
            .apply(&self.l2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_roundtrip_and_order() -> Result<()> {
        let dev = Device::Cpu;
        let (c, t, h, w) = (3, 2, 4, 6);
        let n = c * t * h * w;
        let x = Tensor::arange(0f32, n as f32, &dev)?.reshape((1, c, t, h, w))?;
        let (tok, grid) = patchify(&x, [1, 2, 2])?;
        assert_eq!(grid, [2, 2, 3]);
        assert_eq!(tok.dims(), &[12, 12]);
        // Token (t 1, row 1, col 2) holds channel 0's pixels (1, 2, 4), (1, 2, 5), (1, 3, 4),
        // (1, 3, 5) first, then channel 1's.
        let px =
            |c: usize, t_: usize, y: usize, xx: usize| (((c * t + t_) * h + y) * w + xx) as f32;
        let row = tok.get(6 + 3 + 2)?.to_vec1::<f32>()?;
        assert_eq!(
            &row[..4],
            &[
                px(0, 1, 2, 4),
                px(0, 1, 2, 5),
                px(0, 1, 3, 4),
                px(0, 1, 3, 5)
            ]
        );
        assert_eq!(row[4], px(1, 1, 2, 4));
        // The head's value order is (pt, ph, pw, c): move c last, then invert.
        let head_order = tok
            .reshape((12, c, 4))?
            .transpose(1, 2)?
            .reshape((12, 4 * c))?;
        let back = unpatchify(&head_order, grid, [1, 2, 2])?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        let e = patchify(&x.narrow(4, 0, 5)?, [1, 2, 2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of the patch 1×2×2"), "{e}");
        Ok(())
    }

    #[test]
    fn rope_table_values() -> Result<()> {
        // Head dim 16: axes t 8, h 4, w 4 → 4 + 2 + 2 pairs.
        let grid = [2, 3, 4];
        let (cos, sin) = rope_table(grid, [8, 4, 4], &Device::Cpu)?;
        assert_eq!(cos.dims(), &[24, 8]);
        let (cos, sin) = (cos.to_vec2::<f32>()?, sin.to_vec2::<f32>()?);
        // Token (t 1, h 2, w 3) = index 1·12 + 2·4 + 3 = 23.
        let tok = 23;
        let want = |pos: f64, j: usize, dim: usize| {
            let a = pos / 10_000f64.powf(2.0 * j as f64 / dim as f64);
            (a.cos() as f32, a.sin() as f32)
        };
        let mut pairs = Vec::new();
        pairs.extend((0..4).map(|j| want(1.0, j, 8)));
        pairs.extend((0..2).map(|j| want(2.0, j, 4)));
        pairs.extend((0..2).map(|j| want(3.0, j, 4)));
        for (k, (c, s)) in pairs.into_iter().enumerate() {
            assert_eq!((cos[tok][k], sin[tok][k]), (c, s), "pair {k}");
        }
        // Token 0 is at the origin: no rotation.
        assert!(cos[0].iter().all(|&c| c == 1.0) && sin[0].iter().all(|&s| s == 0.0));
        // Pair 1 of t at t = 1: θ^(−2/8) = 10000^(−1/4) = 0.1.
        assert!((cos[12][1] - 0.1f32.cos()).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn timestep_embedding_values() -> Result<()> {
        let e = timestep_embedding(651.3, 256, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(e[0].len(), 256);
        // Frequency 0 is 1: cos first, then sin (flip_sin_to_cos).
        assert_eq!(e[0][0], 651.3f32.cos());
        assert_eq!(e[0][128], 651.3f32.sin());
        // The last frequency is exp(−ln(10⁴)·127/128) ≈ 1.0746e-4.
        let f = (-(10_000f64.ln() as f32) * 127.0 / 128.0).exp();
        assert!((f - 1.0746e-4).abs() < 1e-7);
        assert_eq!(e[0][127], (651.3f32 * f).cos());
        Ok(())
    }
}
