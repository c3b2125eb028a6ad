//! Layers of the Wan VAEs (2.1 and 2.2): causal 3-D convolution with a frame cache, RMS norm over
//! channels, residual block, single-head per-frame attention, spatial/temporal resampling.
//!
//! Activations are `[T, C, H, W]`: the frames of one video are the batch dimension (the
//! references' `[1, C, T, H, W]` with the batch of one dropped and time moved first), so
//! everything per-frame is a plain 2-D operation and time is dim 0.
//!
//! A causal 3-D convolution with a `kt × kh × kw` kernel is computed as, for each output
//! frame, the sum over `dt` of 2-D convolutions of input frame `t + dt` with the kernel slice
//! `[:, :, dt]` (frames before the first are zeros, never materialised). Every 2-D convolution
//! keeps candle's im2col buffer under [`IM2COL_BUDGET`] elements by splitting large frames into
//! bands of output rows ([`conv2d_bounded`]).
//!
//! Reference: Wan2.1 `wan/modules/vae.py` (`CausalConv3d`, `RMS_norm`, `Resample`,
//! `ResidualBlock`, `AttentionBlock`, the `feat_cache` protocol with `CACHE_T = 2`);
//! diffusers `models/autoencoders/autoencoder_kl_wan.py` (`WanCausalConv3d`, `WanRMS_norm`,
//! `WanResample`, `WanResidualBlock`, `WanAttentionBlock`).

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::VarBuilder;

/// Input frames a causal convolution keeps for the next chunk (the references' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// Largest im2col buffer of one 2-D convolution, in elements (512 MiB in f32).
pub const IM2COL_BUDGET: usize = 1 << 27;

/// What one cached layer remembers between chunks (the references' `feat_cache[idx]`).
#[derive(Debug, Clone, Default)]
pub enum Slot {
    /// Nothing seen yet.
    #[default]
    Empty,
    /// A temporal up-sampler that has seen its first chunk (the references' `"Rep"`): the
    /// first latent frame is not up-sampled in time.
    Rep,
    /// The last input frames `[n ≤ CACHE_T, C, H, W]` (own storage, not a view of a chunk).
    Frames(Tensor),
}

/// The frame caches of one encode or decode pass: one [`Slot`] per cached layer.
#[derive(Debug)]
pub struct FeatCache {
    slots: Vec<Slot>,
}

impl FeatCache {
    pub fn new(n: usize) -> Self {
        Self {
            slots: vec![Slot::Empty; n],
        }
    }

    fn get(&self, i: usize) -> Result<&Slot> {
        match self.slots.get(i) {
            Some(s) => Ok(s),
            None => bail!("Wan VAE: cache slot {i} of {} (a bug)", self.slots.len()),
        }
    }

    fn set(&mut self, i: usize, s: Slot) -> Result<()> {
        match self.slots.get_mut(i) {
            Some(slot) => {
                *slot = s;
                Ok(())
            }
            None => bail!("Wan VAE: cache slot {i} of {} (a bug)", self.slots.len()),
        }
    }
}

/// Hands out cache slot numbers while layers are built.
#[derive(Debug, Default)]
pub struct Slots(usize);

impl Slots {
    pub fn take(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }

    pub fn count(&self) -> usize {
        self.0
    }
}

/// Stacks `n` frames `make(j)` (each `[1, …]`) along dim 0 into one preallocated tensor.
pub fn stack_frames(n: usize, mut make: impl FnMut(usize) -> Result<Tensor>) -> Result<Tensor> {
    if n == 0 {
        bail!("Wan VAE: no frames to stack")
    }
    let first = make(0)?;
    let mut dims = first.dims().to_vec();
    dims[0] = n;
    let out = Tensor::zeros(dims, first.dtype(), first.device())?;
    out.slice_set(&first.contiguous()?, 0, 0)?;
    drop(first);
    for j in 1..n {
        out.slice_set(&make(j)?.contiguous()?, 0, j)?;
    }
    Ok(out)
}

/// Applies `f` to each frame of `x` `[T, …]` (as `[1, …]`) and stacks the results.
pub fn map_frames(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    stack_frames(x.dim(0)?, |i| f(&x.narrow(0, i, 1)?))
}

/// `x` `[N, C, H, W]` with zero padding `[top, bottom, left, right]`, convolved with `w`
/// `[O, C, kh, kw]` at `stride`, no bias. When candle's im2col buffer
/// (`N·Ho·Wo·C·kh·kw` elements) would exceed `budget`, frames are convolved one at a time and
/// split into bands of output rows; the values are the same up to the order of summation.
pub fn conv2d_bounded(
    x: &Tensor,
    w: &Tensor,
    pad: [usize; 4],
    stride: usize,
    budget: usize,
) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (_o, cw, kh, kw) = w.dims4()?;
    let [top, bottom, left, right] = pad;
    let (hp, wp) = (h + top + bottom, wd + left + right);
    if c != cw || hp < kh || wp < kw || stride == 0 {
        bail!(
            "Wan VAE: cannot convolve {:?} (padding {pad:?}) with a kernel {:?}",
            x.dims(),
            w.dims()
        )
    }
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let w = w.contiguous()?;
    let pad_hw = |t: &Tensor| -> Result<Tensor> {
        t.pad_with_zeros(2, top, bottom)?
            .pad_with_zeros(3, left, right)
    };
    let per_row = wo * c * kh * kw;
    if n * ho * per_row <= budget {
        return if top == bottom && left == right && top == left {
            x.conv2d(&w, top, stride, 1, 1)
        } else {
            pad_hw(x)?.conv2d(&w, 0, stride, 1, 1)
        };
    }
    let rows = (budget / per_row).max(1);
    map_frames(x, |frame| {
        let frame = pad_hw(frame)?;
        let mut bands = Vec::with_capacity(ho.div_ceil(rows));
        let mut r0 = 0;
        while r0 < ho {
            let r1 = (r0 + rows).min(ho);
            // Output rows r0..r1 read padded input rows r0·s .. (r1−1)·s + kh.
            let band = frame
                .narrow(2, r0 * stride, (r1 - 1) * stride + kh - r0 * stride)?
                .contiguous()?;
            bands.push(band.conv2d(&w, 0, stride, 1, 1)?);
            r0 = r1;
        }
        Tensor::cat(&bands, 2)
    })
}

/// A 2-D convolution with bias (`resample.1`, `to_qkv`, `proj`), memory-bounded.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    pad: [usize; 4],
    stride: usize,
}

impl Conv2d {
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        pad: [usize; 4],
        stride: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, k, k), "weight")?,
            bias: vb.get(cout, "bias")?,
            pad,
            stride,
        })
    }

    /// `[N, C, H, W]` → `[N, O, Ho, Wo]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_bounded(x, &self.weight, self.pad, self.stride, IM2COL_BUDGET)?;
        y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// A 3-D convolution, causal in time: `2·pt` zero frames (or cached frames) before the input,
/// symmetric spatial padding, stride 1 in space (the references' `CausalConv3d`).
#[derive(Debug, Clone)]
pub struct CausalConv3d {
    /// `[O, I, kt, kh, kw]`.
    weight: Tensor,
    bias: Tensor,
    /// Zero frames in front when nothing is cached (`2·pt`).
    front: usize,
    pad_hw: usize,
    stride_t: usize,
    /// The cache slot, for convolutions run chunk by chunk.
    slot: Option<usize>,
}

impl CausalConv3d {
    /// Kernel `k = [kt, kh, kw]` with `kh == kw`, padding `[pt, p, p]`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: [usize; 3],
        pad: [usize; 3],
        stride_t: usize,
        slot: Option<usize>,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((cout, cin, k[0], k[1], k[2]), "weight")?,
            bias: vb.get(cout, "bias")?,
            front: 2 * pad[0],
            pad_hw: pad[1],
            stride_t,
            slot,
        })
    }

    /// `x` `[T, C, H, W]`, continuing `cache` (the previous chunk's last input frames) when
    /// the convolution pads in time; `[T', O, H', W']`.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let (t, _c, _h, _w) = x.dims4()?;
        let (o, _i, kt, _kh, _kw) = self.weight.dims5()?;
        if kt == 1 && self.stride_t == 1 {
            // No time extent: one 2-D convolution over the batch of frames.
            let p = self.pad_hw;
            let y = conv2d_bounded(x, &self.weight.squeeze(2)?, [p; 4], 1, IM2COL_BUDGET)?;
            return y.broadcast_add(&self.bias.reshape((1, o, 1, 1))?);
        }
        let cached = match cache {
            Some(c) if self.front > 0 => c.dim(0)?,
            _ => 0,
        };
        if cached > self.front {
            bail!(
                "Wan VAE: {cached} cached frames for a convolution padding {} (a bug)",
                self.front
            )
        }
        let mut frames: Vec<Option<Tensor>> = vec![None; self.front - cached];
        if let Some(c) = cache.filter(|_| cached > 0) {
            for i in 0..cached {
                frames.push(Some(c.narrow(0, i, 1)?));
            }
        }
        for i in 0..t {
            frames.push(Some(x.narrow(0, i, 1)?));
        }
        self.forward_frames(&frames)
    }

    /// The convolution over `frames` (each `[1, C, H, W]`, `None` = zeros), no padding in
    /// time: output frame `j` reads frames `j·stride + dt`.
    pub fn forward_frames(&self, frames: &[Option<Tensor>]) -> Result<Tensor> {
        let (o, _i, kt, _kh, _kw) = self.weight.dims5()?;
        if frames.len() < kt {
            bail!(
                "Wan VAE: {} frames for a temporal kernel of {kt}",
                frames.len()
            )
        }
        let bias = self.bias.reshape((1, o, 1, 1))?;
        let p = self.pad_hw;
        let pad = [p, p, p, p];
        let w: Vec<Tensor> = (0..kt)
            .map(|dt| self.weight.narrow(2, dt, 1)?.squeeze(2)?.contiguous())
            .collect::<Result<_>>()?;
        let n_out = (frames.len() - kt) / self.stride_t + 1;
        stack_frames(n_out, |j| {
            let mut acc: Option<Tensor> = None;
            for (dt, w) in w.iter().enumerate() {
                if let Some(f) = &frames[j * self.stride_t + dt] {
                    let y = conv2d_bounded(f, w, pad, 1, IM2COL_BUDGET)?;
                    acc = Some(match acc {
                        None => y,
                        Some(a) => (a + y)?,
                    });
                }
            }
            match acc {
                Some(a) => a.broadcast_add(&bias),
                None => bail!("Wan VAE: an output frame that reads only padding (a bug)"),
            }
        })
    }

    /// Runs on chunk `x` continuing this layer's cached frames, then caches the last
    /// [`CACHE_T`] input frames (with the previous chunk's last frame in front when the chunk
    /// has a single frame) for the next chunk.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let Some(slot) = self.slot else {
            bail!("Wan VAE: a convolution without a cache slot run chunk by chunk (a bug)")
        };
        let prev = match cache.get(slot)? {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let keep = last_frames(x, prev.as_ref(), false)?;
        let y = self.forward(x, prev.as_ref())?;
        cache.set(slot, Slot::Frames(keep))?;
        Ok(y)
    }
}

/// The last [`CACHE_T`] frames of `x`; when `x` has fewer, the last frame of `prev` (or a zero
/// frame when `zeros`) in front. Copied, so that the cache does not keep a chunk alive.
fn last_frames(x: &Tensor, prev: Option<&Tensor>, zeros: bool) -> Result<Tensor> {
    let t = x.dim(0)?;
    let n = t.min(CACHE_T);
    let tail = x.narrow(0, t - n, n)?;
    let tail = if n < CACHE_T {
        match prev {
            Some(p) if !zeros => Tensor::cat(&[&p.narrow(0, p.dim(0)? - 1, 1)?, &tail], 0)?,
            _ if zeros => Tensor::cat(&[&tail.zeros_like()?, &tail], 0)?,
            _ => tail,
        }
    } else {
        tail
    };
    tail.force_contiguous()
}

/// RMS norm over channels: `x / max(‖x‖₂, 1e-12) · √C · γ`, in f32 (the references'
/// `RMS_norm` with `bias=False`; `F.normalize` then the scale).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    gamma: Tensor,
    channels: usize,
}

impl RmsNorm {
    /// `images`: γ is stored `[C, 1, 1]` (attention) rather than `[C, 1, 1, 1]`.
    pub fn new(c: usize, images: bool, vb: VarBuilder) -> Result<Self> {
        let gamma = if images {
            vb.get((c, 1, 1), "gamma")?
        } else {
            vb.get((c, 1, 1, 1), "gamma")?
        };
        Ok(Self { gamma, channels: c })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_t, c, _h, _w) = x.dims4()?;
        if c != self.channels {
            bail!("Wan VAE: RMS norm of {} channels given {c}", self.channels)
        }
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let norm = xf.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        let y = (xf.broadcast_div(&norm)?.to_dtype(dtype)? * (c as f64).sqrt())?;
        y.broadcast_mul(&self.gamma.reshape((1, c, 1, 1))?.to_dtype(dtype)?)
    }
}

/// `residual` = RMS norm, SiLU, causal conv 3³, RMS norm, SiLU, (dropout), causal conv 3³;
/// plus `shortcut` (a 1³ causal conv) where the channel count changes.
#[derive(Debug, Clone)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(cin: usize, cout: usize, slots: &mut Slots, vb: VarBuilder) -> Result<Self> {
        let conv3 = |ci, slot, vb| CausalConv3d::new(ci, cout, [3; 3], [1; 3], 1, Some(slot), vb);
        Ok(Self {
            norm1: RmsNorm::new(cin, false, vb.pp("residual.0"))?,
            conv1: conv3(cin, slots.take(), vb.pp("residual.2"))?,
            norm2: RmsNorm::new(cout, false, vb.pp("residual.3"))?,
            conv2: conv3(cout, slots.take(), vb.pp("residual.6"))?,
            shortcut: if cin != cout {
                Some(CausalConv3d::new(
                    cin,
                    cout,
                    [1; 3],
                    [0; 3],
                    1,
                    None,
                    vb.pp("shortcut"),
                )?)
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x)?.silu()?;
        let y = self.conv1.forward_cached(&y, cache)?;
        let y = self.norm2.forward(&y)?.silu()?;
        let y = self.conv2.forward_cached(&y, cache)?;
        y + h
    }
}

/// Single-head self-attention over the pixels of each frame (`norm`, 1×1 `to_qkv`, 1×1
/// `proj`), residual; the softmax runs in f32.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
}

impl AttentionBlock {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(c, true, vb.pp("norm"))?,
            to_qkv: Conv2d::new(c, 3 * c, 1, [0; 4], 1, vb.pp("to_qkv"))?,
            proj: Conv2d::new(c, c, 1, [0; 4], 1, vb.pp("proj"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_t, c, h, w) = x.dims4()?;
        map_frames(x, |frame| {
            let dtype = frame.dtype();
            // [1, 3c, h, w] -> [1, h·w, 3c]
            let qkv = self
                .to_qkv
                .forward(&self.norm.forward(frame)?)?
                .reshape((1, 3 * c, h * w))?
                .transpose(1, 2)?;
            let q = (qkv.narrow(2, 0, c)?.contiguous()? * (1.0 / (c as f64).sqrt()))?;
            let k = qkv.narrow(2, c, c)?.contiguous()?;
            let v = qkv.narrow(2, 2 * c, c)?.contiguous()?;
            let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
            // [1, h·w, c] -> [1, c, h, w]
            let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((1, c, h, w))?;
            frame + self.proj.forward(&out)?
        })
    }
}

/// What a [`Resample`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nearest 2× in space, 3×3 conv to half the channels.
    Up2d,
    /// Also doubles time (`time_conv` to twice the channels, interleaved), except for the
    /// first chunk.
    Up3d,
    /// Pad right/bottom, 3×3 conv with stride 2.
    Down2d,
    /// Also halves time (`time_conv` with stride 2 over the previous chunk's last frame and
    /// this chunk), except for the first chunk.
    Down3d,
}

/// `resample.1` (the 2-D conv; `resample.0` is the parameter-free up-sampling or padding)
/// and, for the 3-D modes, `time_conv`.
#[derive(Debug, Clone)]
pub struct Resample {
    mode: Mode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
    slot: usize,
}

impl Resample {
    /// Wan 2.1's resampler: up-sampling halves the channels.
    pub fn new(c: usize, mode: Mode, slots: &mut Slots, vb: VarBuilder) -> Result<Self> {
        Self::with_up_channels(c, c / 2, mode, slots, vb)
    }

    /// A resampler whose up-sampling convolution has `up_out` output channels (Wan 2.2: `c`).
    pub fn with_up_channels(
        c: usize,
        up_out: usize,
        mode: Mode,
        slots: &mut Slots,
        vb: VarBuilder,
    ) -> Result<Self> {
        let conv = match mode {
            Mode::Up2d | Mode::Up3d => Conv2d::new(c, up_out, 3, [1; 4], 1, vb.pp("resample.1"))?,
            Mode::Down2d | Mode::Down3d => {
                Conv2d::new(c, c, 3, [0, 1, 0, 1], 2, vb.pp("resample.1"))?
            }
        };
        let tc = vb.pp("time_conv");
        let time_conv = match mode {
            Mode::Up3d => Some(CausalConv3d::new(
                c,
                2 * c,
                [3, 1, 1],
                [1, 0, 0],
                1,
                None,
                tc,
            )?),
            Mode::Down3d => Some(CausalConv3d::new(c, c, [3, 1, 1], [0; 3], 2, None, tc)?),
            _ => None,
        };
        let slot = if time_conv.is_some() { slots.take() } else { 0 };
        Ok(Self {
            mode,
            conv,
            time_conv,
            slot,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let mut x = x.clone();
        if let (Mode::Up3d, Some(tc)) = (self.mode, &self.time_conv) {
            match cache.get(self.slot)?.clone() {
                Slot::Empty => cache.set(self.slot, Slot::Rep)?,
                prev => {
                    let (keep, y) = match &prev {
                        Slot::Frames(p) => {
                            (last_frames(&x, Some(p), false)?, tc.forward(&x, Some(p))?)
                        }
                        _ => (last_frames(&x, None, true)?, tc.forward(&x, None)?),
                    };
                    cache.set(self.slot, Slot::Frames(keep))?;
                    // [t, 2c, h, w] -> [t, 2, c, h, w] -> [2t, c, h, w]: frame 2i+s is half s.
                    x = y.reshape((2 * t, c, h, w))?;
                }
            }
        }
        x = match self.mode {
            Mode::Up2d | Mode::Up3d => map_frames(&x, |f| {
                self.conv.forward(&f.upsample_nearest2d(2 * h, 2 * w)?)
            })?,
            Mode::Down2d | Mode::Down3d => map_frames(&x, |f| self.conv.forward(f))?,
        };
        if let (Mode::Down3d, Some(tc)) = (self.mode, &self.time_conv) {
            let n = x.dim(0)?;
            let last = x.narrow(0, n - 1, 1)?.force_contiguous()?;
            // The first chunk passes unchanged in time.
            if let Slot::Frames(p) = cache.get(self.slot)?.clone() {
                let mut frames = vec![Some(p.narrow(0, p.dim(0)? - 1, 1)?)];
                for i in 0..n {
                    frames.push(Some(x.narrow(0, i, 1)?));
                }
                x = tc.forward_frames(&frames)?;
            }
            cache.set(self.slot, Slot::Frames(last))?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn banded_convolution_equals_the_whole() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 13, 11), &dev)?;
        let w = Tensor::randn(0f32, 0.3, (7, 5, 3, 3), &dev)?;
        for (pad, stride) in [([1; 4], 1), ([0, 1, 0, 1], 2), ([0; 4], 1)] {
            let whole = conv2d_bounded(&x, &w, pad, stride, usize::MAX)?;
            for budget in [1, 200, 2000] {
                let banded = conv2d_bounded(&x, &w, pad, stride, budget)?;
                assert!(
                    max_diff(&whole, &banded) < 1e-5,
                    "{pad:?} {stride} {budget}"
                );
            }
        }
        Ok(())
    }

    fn conv(
        k: [usize; 3],
        pad: [usize; 3],
        stride_t: usize,
        slot: Option<usize>,
    ) -> Result<CausalConv3d> {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        t.insert(
            "weight".to_string(),
            Tensor::randn(0f32, 0.2, (6, 4, k[0], k[1], k[2]), &dev)?,
        );
        t.insert("bias".to_string(), Tensor::randn(0f32, 0.1, 6, &dev)?);
        let vb = VarBuilder::from_tensors(t, DType::F32, &dev);
        CausalConv3d::new(4, 6, k, pad, stride_t, slot, vb)
    }

    /// Chunk by chunk with the cache is the causal convolution of the whole sequence, for any
    /// split (the encoder's 1 + 4 + 4, the decoder's single frames).
    #[test]
    fn cached_chunks_equal_the_whole_sequence() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (9, 4, 5, 6), &Device::Cpu)?;
        let c = conv([3; 3], [1; 3], 1, Some(0))?;
        let whole = c.forward(&x, None)?;
        assert_eq!(whole.dims(), &[9, 6, 5, 6]);
        for split in [&[1usize, 4, 4][..], &[1; 9], &[2, 7], &[9]] {
            let mut cache = FeatCache::new(1);
            let mut outs = Vec::new();
            let mut start = 0;
            for n in split {
                outs.push(c.forward_cached(&x.narrow(0, start, *n)?, &mut cache)?);
                start += n;
            }
            let chunked = Tensor::cat(&outs, 0)?;
            assert!(max_diff(&whole, &chunked) < 1e-5, "{split:?}");
        }
        Ok(())
    }

    /// The causal convolution against a direct sum over the kernel (zero frames in front).
    #[test]
    fn causal_convolution_by_definition() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (3, 4, 2, 3), &Device::Cpu)?;
        let c = conv([3, 1, 1], [1, 0, 0], 1, None)?;
        let y = c.forward(&x, None)?;
        let wv = c.weight.flatten_all()?.to_vec1::<f32>()?;
        let bv = c.bias.to_vec1::<f32>()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let ys = y.flatten_all()?.to_vec1::<f32>()?;
        // x [t, i, h, w] = xs[((t·4 + i)·2 + h)·3 + w]; weight [o, i, dt] = wv[(o·4 + i)·3 + dt]
        for t in 0..3usize {
            for o in 0..6 {
                for p in 0..6 {
                    let mut s = bv[o];
                    for dt in 0..3 {
                        // Output t reads padded frames t, t+1, t+2 = input frames t−2, t−1, t.
                        let Some(src) = (t + dt).checked_sub(2) else {
                            continue;
                        };
                        for i in 0..4 {
                            s += wv[(o * 4 + i) * 3 + dt] * xs[(src * 4 + i) * 6 + p];
                        }
                    }
                    let got = ys[(t * 6 + o) * 6 + p];
                    assert!((got - s).abs() < 1e-5, "t {t} o {o} p {p}: {got} vs {s}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn strided_time_convolution() -> Result<()> {
        // The encoder's temporal down-sampling: 1 + 4 frames → 2 frames.
        let c = conv([3, 1, 1], [0; 3], 2, None)?;
        let x = Tensor::randn(0f32, 1.0, (5, 4, 2, 2), &Device::Cpu)?;
        let frames: Vec<Option<Tensor>> = (0..5).map(|i| x.narrow(0, i, 1).ok()).collect();
        let y = c.forward_frames(&frames)?;
        assert_eq!(y.dims(), &[2, 6, 2, 2]);
        let second = c.forward_frames(&frames[2..])?;
        assert!(max_diff(&y.narrow(0, 1, 1)?, &second) < 1e-6);
        Ok(())
    }
}
