//! Building blocks of the FLUX autoencoder: resnet block, single-head spatial attention,
//! down- and up-sampling.
//!
//! Reference: BFL `flux/modules/autoencoder.py` (`ResnetBlock`, `AttnBlock`, `Downsample`,
//! `Upsample`, `Normalize`: GroupNorm eps 1e-6 with affine weights).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

const EPS: f64 = 1e-6;

pub(crate) fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    candle_nn::group_norm(groups, channels, EPS, vb)
}

pub(crate) fn conv3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    candle_nn::conv2d(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            ..Default::default()
        },
        vb,
    )
}

fn conv1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    candle_nn::conv2d(cin, cout, 1, Conv2dConfig::default(), vb)
}

/// `norm1` → swish → `conv1` → `norm2` → swish → `conv2`, plus the input (through the 1×1
/// `nin_shortcut` when the channel count changes).
#[derive(Debug, Clone)]
pub struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, vb.pp("norm1"))?,
            conv1: conv3(cin, cout, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, vb.pp("norm2"))?,
            conv2: conv3(cout, cout, vb.pp("conv2"))?,
            nin_shortcut: if cin != cout {
                Some(conv1(cin, cout, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.apply(&self.norm1)?.silu()?.apply(&self.conv1)?;
        let h = h.apply(&self.norm2)?.silu()?.apply(&self.conv2)?;
        match &self.nin_shortcut {
            Some(s) => x.apply(s)? + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over all pixels (`norm`, 1×1 `q`, `k`, `v`, `proj_out`),
/// residual; the softmax runs in f32.
#[derive(Debug, Clone)]
pub struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    pub fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, c, vb.pp("norm"))?,
            q: conv1(c, c, vb.pp("q"))?,
            k: conv1(c, c, vb.pp("k"))?,
            v: conv1(c, c, vb.pp("v"))?,
            proj_out: conv1(c, c, vb.pp("proj_out"))?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let hn = x.apply(&self.norm)?;
        // [b, c, h, w] -> [b, h·w, c]
        let tokens = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
        };
        let q = (tokens(hn.apply(&self.q)?)? * (1.0 / (c as f64).sqrt()))?;
        let k = tokens(hn.apply(&self.k)?)?;
        let v = tokens(hn.apply(&self.v)?)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        // [b, h·w, c] -> [b, c, h, w]
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + out.apply(&self.proj_out)?
    }
}

/// Pad right and bottom by one, then a stride-2 3×3 `conv` (BFL `Downsample`).
#[derive(Debug, Clone)]
pub struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride: 2,
            ..Default::default()
        };
        Ok(Self {
            conv: candle_nn::conv2d(c, c, 3, cfg, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.pad_with_zeros(2, 0, 1)?
            .pad_with_zeros(3, 0, 1)?
            .apply(&self.conv)
    }
}

/// Nearest-neighbour 2× up-sampling, then a 3×3 `conv` (BFL `Upsample`).
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv3(c, c, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_b, _c, h, w) = x.dims4()?;
        x.upsample_nearest2d(2 * h, 2 * w)?.apply(&self.conv)
    }
}
