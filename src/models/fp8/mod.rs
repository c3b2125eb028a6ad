//! fp8 compute (what ComfyUI calls `fp8_e4m3fn_fast`): a linear layer whose weight is e4m3fn
//! with a per-tensor scale multiplies as e4m3 × e4m3 with f32 accumulation — on a CUDA GPU of
//! compute capability ≥ 8.9 through cuBLASLt's fp8 tensor-core GEMM, elsewhere by the CPU
//! reference below. Attention, norms, modulation and every other op stay in the compute dtype.
//!
//! What is computed, for `x [.., K]` (bf16 or f16) and `w [N, K]` e4m3fn with scale `s`:
//! 1. `x` is rounded to e4m3fn: round to nearest even, saturating to ±448 (no activation
//!    scale: the activations of the blocks that use it are within e4m3's range after their
//!    LayerNorm and modulation, as ComfyUI's fast mode assumes);
//! 2. `y = s · Σₖ x₈[m,k] · w₈[n,k]`, summed in f32 (each product of two e4m3 values is exact
//!    in f32);
//! 3. `y` is rounded once to the dtype of `x`; the layer's bias is added after, in that dtype.
//!
//! The GPU and the CPU reference sum in different orders, so they agree to f32 rounding, not
//! bit for bit. Each is deterministic, and placement only changes where the weight's bytes come
//! from, so runs are bit-identical across placements on the same device kind
//! (docs/weights.md, "fp8 compute").
//!
//! The executor hands a layer its fp8 weight as an `F8E4M3` tensor `weight` beside an f32
//! tensor `weight_scale` of one element ([`SCALE_SUFFIX`]); [`Lin::new`] picks the fp8 form
//! when that scale is there, so model code does not need to know the compute mode.

#[cfg(feature = "cuda")]
pub mod cuda;

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};

use crate::weights::DType as W;

/// Appended to a weight's name for its per-tensor scale (`linear1.weight` →
/// `linear1.weight_scale`).
pub const SCALE_SUFFIX: &str = "_scale";

/// The largest finite e4m3fn value.
pub const E4M3_MAX: f32 = 448.0;

/// A linear layer in the compute dtype, or with an e4m3fn weight (fp8 compute).
#[derive(Debug, Clone)]
pub enum Lin {
    Dense(Linear),
    Fp8 {
        /// `[out, in]`, `F8E4M3`.
        weight: Tensor,
        /// One f32 value: the weight's scale.
        scale: Tensor,
        bias: Option<Tensor>,
    },
}

impl Lin {
    /// `weight` (and `bias` when `bias`) of an `in_dim → out_dim` layer from `vb`; the fp8 form
    /// when `vb` holds `weight_scale`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        if !vb.contains_tensor(&format!("weight{SCALE_SUFFIX}")) {
            return candle_nn::linear_b(in_dim, out_dim, bias, vb).map(Lin::Dense);
        }
        let weight =
            vb.get_with_hints_dtype((out_dim, in_dim), "weight", Init::Const(0.), DType::F8E4M3)?;
        let scale = vb.get_with_hints_dtype(
            1,
            &format!("weight{SCALE_SUFFIX}"),
            Init::Const(1.),
            DType::F32,
        )?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Lin::Fp8 {
            weight,
            scale,
            bias,
        })
    }

    /// The weight's shape `[out, in]`.
    pub fn weight_dims(&self) -> Result<(usize, usize)> {
        match self {
            Lin::Dense(l) => l.weight().dims2(),
            Lin::Fp8 { weight, .. } => weight.dims2(),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        match self {
            Lin::Dense(l) => l.bias(),
            Lin::Fp8 { bias, .. } => bias.as_ref(),
        }
    }

    /// Whether the layer multiplies in e4m3.
    pub fn is_fp8(&self) -> bool {
        matches!(self, Lin::Fp8 { .. })
    }

    /// `x · wᵀ` without the bias; `x` is `[rows, in]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Lin::Dense(l) => x.matmul(&l.weight().t()?),
            Lin::Fp8 { weight, scale, .. } => matmul_t(x, weight, scale),
        }
    }

    /// [`Lin::matmul_t`] with the product in the compute dtype `out`, for inputs a fused kernel
    /// may have stored as e4m3 already (`x` `F8E4M3`: the bytes an fp8 layer's own rounding
    /// makes; see `kernels::ln_modulate_to`). A dense layer takes `x` in `out`.
    pub fn matmul_t_as(&self, x: &Tensor, out: DType) -> Result<Tensor> {
        match self {
            Lin::Fp8 { weight, scale, .. } => matmul_t_to(x, weight, scale, out),
            Lin::Dense(_) if x.dtype() == DType::F8E4M3 => {
                candle_core::bail!("fp8 linear: e4m3 activations for a dense layer")
            }
            Lin::Dense(l) => x.matmul(&l.weight().t()?),
        }
    }
}

impl Module for Lin {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Lin::Dense(l) => l.forward(x),
            Lin::Fp8 { bias, .. } => {
                let dims = x.dims().to_vec();
                let k = x.dim(D::Minus1)?;
                let rows = x.elem_count() / k.max(1);
                let y = self.matmul_t(&x.reshape((rows, k))?)?;
                let mut out = dims;
                if let Some(last) = out.last_mut() {
                    *last = y.dim(1)?;
                }
                let y = y.reshape(out)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// `x [rows, K]` times `w [N, K]` (e4m3fn, scale `scale`) transposed, as the module doc says.
pub fn matmul_t(x: &Tensor, w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    matmul_t_to(x, w, scale, x.dtype())
}

/// [`matmul_t`] with the product in `out` (bf16/f16): `x` may also be `F8E4M3`, activations
/// already rounded (step 1 of the module doc is then the identity).
pub fn matmul_t_to(x: &Tensor, w: &Tensor, scale: &Tensor, out: DType) -> Result<Tensor> {
    if !matches!(out, DType::BF16 | DType::F16 | DType::F32) {
        candle_core::bail!("fp8 linear: a product in {out:?} (bf16, f16 or f32)")
    }
    if w.dtype() != DType::F8E4M3 || scale.dtype() != DType::F32 || scale.elem_count() != 1 {
        candle_core::bail!(
            "fp8 linear: expected an F8E4M3 weight and a one-element f32 scale, got {:?} and {:?} {:?}",
            w.dtype(),
            scale.dtype(),
            scale.shape()
        )
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return cuda::matmul_t(x, w, scale, out);
    }
    reference_matmul_t(x, w, scale)?.to_dtype(out)
}

/// e4m3fn rounding of f32 values as the GPU's `satfinite` conversion: round to nearest even,
/// saturating to ±448, NaN kept.
pub fn quantize_e4m3(vals: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; vals.len()];
    crate::weights::lora::math::encode(W::F8_E4M3, vals, None, &mut out);
    out
}

/// The CPU reference of [`matmul_t`] (any device; the values pass through the host). The
/// product is rounded to `x`'s dtype, f32 for e4m3 activations.
pub fn reference_matmul_t(x: &Tensor, w: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let dtype = match x.dtype() {
        DType::F8E4M3 => DType::F32,
        d => d,
    };
    let (rows, k) = x.dims2()?;
    let v = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let q: Vec<f32> = quantize_e4m3(&v)
        .into_iter()
        .map(|b| float8::F8E4M3::from_bits(b).to_f32())
        .collect();
    let xq = Tensor::from_vec(q, (rows, k), x.device())?;
    let w32 = w.to_dtype(DType::F32)?;
    xq.matmul(&w32.t()?)?
        .broadcast_mul(&scale.to_dtype(DType::F32)?)?
        .to_dtype(dtype)
}

/// A weight in the fp8-compute form: e4m3fn bytes and a per-tensor scale, from f32 values.
/// The scale is `max|w| / 448` (1 for an all-zero or non-finite maximum), each value is
/// divided by it in f32 and rounded to nearest even (ComfyUI's `*_fp8_scaled` files).
pub fn quantize_weight(vals: &[f32]) -> (Vec<u8>, f32) {
    use rayon::prelude::*;
    let max = vals.par_iter().map(|x| x.abs()).reduce(|| 0.0, f32::max);
    let scale = if max > 0.0 && max.is_finite() {
        max / E4M3_MAX
    } else {
        1.0
    };
    let mut q = vec![0u8; vals.len()];
    const CHUNK: usize = 1 << 16;
    let run = |(v, q): (&[f32], &mut [u8])| {
        crate::weights::lora::math::encode(W::F8_E4M3, v, Some(scale), q);
    };
    if vals.len() > 1 << 20 {
        vals.par_chunks(CHUNK)
            .zip(q.par_chunks_mut(CHUNK))
            .for_each(run);
    } else {
        vals.chunks(CHUNK).zip(q.chunks_mut(CHUNK)).for_each(run);
    }
    (q, scale)
}

/// Quality of `got` against `want` (same shape): the largest absolute difference and the
/// PSNR in dB over the reference's peak `max|want|` (∞ when equal).
pub fn compare(got: &Tensor, want: &Tensor) -> Result<(f32, f64)> {
    let a = got.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let b = want.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if a.len() != b.len() {
        candle_core::bail!("compare: {} values against {}", a.len(), b.len())
    }
    let (mut max_err, mut sq, mut peak) = (0f32, 0f64, 0f32);
    for (x, y) in a.iter().zip(&b) {
        let d = (x - y).abs();
        max_err = max_err.max(d);
        sq += f64::from(d) * f64::from(d);
        peak = peak.max(y.abs());
    }
    let mse = sq / a.len().max(1) as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (f64::from(peak) * f64::from(peak) / mse).log10()
    };
    Ok((max_err, psnr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    /// A tensor's values as f32, flattened.
    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn quantize_rounds_to_nearest_even_and_saturates() {
        let q = quantize_e4m3(&[0.0, 1.0, 1.0625, 1.1875, 500.0, -1e9, f32::NAN, 0.001953125]);
        let back: Vec<f32> = q
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect();
        // 1.0625 is halfway between 1 and 1.125: ties to even (1.0); 1.1875 → 1.25.
        assert_eq!(&back[..6], &[0.0, 1.0, 1.0, 1.25, 448.0, -448.0]);
        assert!(back[6].is_nan());
        assert_eq!(back[7], 0.001953125, "the smallest subnormal is kept");
    }

    #[test]
    fn weight_quantisation_uses_the_largest_magnitude() {
        let (q, s) = quantize_weight(&[0.5, -2.0, 1.0]);
        assert_eq!(s, 2.0 / 448.0);
        assert_eq!(float8::F8E4M3::from_bits(q[1]).to_f32(), -448.0);
        assert_eq!(quantize_weight(&[0.0; 4]).1, 1.0);
    }

    /// An fp8 layer computes what its definition says, differs from the dense layer only by
    /// the roundings, and `Lin::new` picks the form from the tensors it is given.
    #[test]
    fn fp8_linear_matches_its_definition() {
        let dev = Device::Cpu;
        let (rows, k, n) = (5, 32, 16);
        let xv: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        let wv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 300.0)
            .collect();
        let bv: Vec<f32> = (0..n).map(|i| i as f32 / 8.0).collect();
        let x = Tensor::from_vec(xv.clone(), (rows, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let (wq, s) = quantize_weight(&wv);
        let mut t = HashMap::new();
        t.insert(
            "weight".to_string(),
            Tensor::from_raw_buffer(&wq, DType::F8E4M3, &[n, k], &dev).unwrap(),
        );
        t.insert("weight_scale".to_string(), Tensor::new(&[s], &dev).unwrap());
        t.insert(
            "bias".to_string(),
            Tensor::new(bv.as_slice(), &dev)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        );
        let lin = Lin::new(k, n, true, VarBuilder::from_tensors(t, DType::BF16, &dev)).unwrap();
        assert!(matches!(lin, Lin::Fp8 { .. }));
        assert_eq!(lin.weight_dims().unwrap(), (n, k));
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        // By hand: quantised x (from its bf16 values), widened w, f32 sums, × s, bf16, + bias.
        let xb = values(&x);
        let x8: Vec<f32> = quantize_e4m3(&xb)
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect();
        let w8: Vec<f32> = wq
            .iter()
            .map(|&b| float8::F8E4M3::from_bits(b).to_f32())
            .collect();
        let got = values(&y);
        for r in 0..rows {
            for c in 0..n {
                let dot: f32 = (0..k).map(|j| x8[r * k + j] * w8[c * k + j]).sum::<f32>() * s;
                let want = half::bf16::from_f32(
                    half::bf16::from_f32(dot).to_f32() + half::bf16::from_f32(bv[c]).to_f32(),
                )
                .to_f32();
                let g = got[r * n + c];
                assert!(
                    (g - want).abs() <= want.abs() * 1e-2 + 1e-2,
                    "[{r},{c}] {g} vs {want}"
                );
            }
        }
        // Against the dense layer in f32: close (fp8 has 3 mantissa bits), not equal.
        let w = Tensor::from_vec(wv, (n, k), &dev).unwrap();
        let dense = Tensor::from_vec(xv, (rows, k), &dev)
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap();
        let yb = (y.to_dtype(DType::F32).unwrap()
            - Tensor::new(bv.as_slice(), &dev)
                .unwrap()
                .broadcast_left(rows)
                .unwrap())
        .unwrap();
        let (max_err, psnr) = compare(&yb, &dense).unwrap();
        assert!(max_err > 0.0 && psnr > 20.0, "max {max_err}, PSNR {psnr}");
        // Without a scale tensor the same names make a dense layer.
        let mut d = HashMap::new();
        d.insert("weight".to_string(), w);
        let lin = Lin::new(k, n, false, VarBuilder::from_tensors(d, DType::F32, &dev)).unwrap();
        assert!(matches!(lin, Lin::Dense(_)));
    }

    /// Activations a kernel stored as e4m3 give the product of the same activations rounded by
    /// the layer, in the dtype asked for; a dense layer refuses them.
    #[test]
    fn e4m3_activations_give_the_layers_own_product() {
        let dev = Device::Cpu;
        let (rows, k, n) = (3, 16, 8);
        let xv: Vec<f32> = (0..rows * k).map(|i| (i as f32 - 20.0) * 3.7).collect();
        let wv: Vec<f32> = (0..n * k)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        let (wq, s) = quantize_weight(&wv);
        let w = Tensor::from_raw_buffer(&wq, DType::F8E4M3, &[n, k], &dev).unwrap();
        let sc = Tensor::new(&[s], &dev).unwrap();
        let x = Tensor::from_vec(xv, (rows, k), &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let x8 =
            Tensor::from_raw_buffer(&quantize_e4m3(&values(&x)), DType::F8E4M3, &[rows, k], &dev)
                .unwrap();
        let lin = Lin::Fp8 {
            weight: w,
            scale: sc,
            bias: None,
        };
        let want = lin.matmul_t(&x).unwrap();
        let got = lin.matmul_t_as(&x8, DType::BF16).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        assert_eq!(values(&got), values(&want));
        let dense = Lin::Dense(Linear::new(
            Tensor::zeros((n, k), DType::BF16, &dev).unwrap(),
            None,
        ));
        assert!(dense.matmul_t_as(&x8, DType::BF16).is_err());
    }

    #[test]
    fn compare_reports_error_and_psnr() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[1.0f32, 2.0, -4.0], &dev).unwrap();
        let b = Tensor::new(&[1.0f32, 2.5, -4.0], &dev).unwrap();
        let (m, p) = compare(&a, &b).unwrap();
        assert_eq!(m, 0.5);
        assert!((p - 10.0 * (16.0f64 / (0.25 / 3.0)).log10()).abs() < 1e-9);
        assert_eq!(compare(&a, &a).unwrap().1, f64::INFINITY);
    }
}
