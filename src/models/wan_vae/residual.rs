//! The Wan 2.2 VAE's own pieces: the 2 × 2 patchify at both ends and the residual levels,
//! whose input is added to their output through a parameter-free shortcut that reshapes it to
//! the output's shape (`AvgDown3D`: average groups of space-time neighbours and channels;
//! `DupUp3D`: repeat channels and spread them over space-time).
//!
//! Activations are `[T, C, H, W]` as in [`super::layers`]. The shortcuts run per chunk and keep
//! no cache, exactly as the references (the encoder's first chunk of one frame is padded in
//! front with a zero frame before averaging pairs of frames; the decoder's first chunk drops
//! the first duplicated frame).
//!
//! References: Wan2.2 `wan/modules/vae2_2.py` (`patchify`, `unpatchify`, `AvgDown3D`,
//! `DupUp3D`, `Down_ResidualBlock`, `Up_ResidualBlock`), <https://github.com/Wan-Video/Wan2.2>;
//! diffusers `models/autoencoders/autoencoder_kl_wan.py` (`WanResidualDownBlock`,
//! `WanResidualUpBlock`).

use candle_core::{bail, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::Config;
use super::layers::{FeatCache, Mode, Resample, ResidualBlock, Slots};

/// `[F, C, H, W]` → `[F, C·p², H/p, W/p]`, channel `c·p² + r·p + q` holding pixel
/// `(p·y + q, p·x + r)` (vae2_2.py: `b c f (h q) (w r) -> b (c r q) f h w`).
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (f, c, h, w) = x.dims4()?;
    if !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        bail!("Wan VAE: {h}×{w} pixels do not split into {p}×{p} patches")
    }
    // [f, c, h', q, w', r] -> [f, c, r, q, h', w']
    x.reshape(vec![f, c, h / p, p, w / p, p])?
        .permute(vec![0, 1, 5, 3, 2, 4])?
        .reshape((f, c * p * p, h / p, w / p))
}

/// The inverse of [`patchify`]: `[F, C·p², h, w]` → `[F, C, h·p, w·p]`.
pub fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    if p == 1 {
        return Ok(x.clone());
    }
    let (f, cp, h, w) = x.dims4()?;
    if !cp.is_multiple_of(p * p) {
        bail!("Wan VAE: {cp} channels do not unfold into {p}×{p} patches")
    }
    let c = cp / (p * p);
    // [f, c, r, q, h, w] -> [f, c, h, q, w, r]
    x.reshape(vec![f, c, p, p, h, w])?
        .permute(vec![0, 1, 4, 3, 5, 2])?
        .reshape((f, c, h * p, w * p))
}

/// `AvgDown3D`: `[T, cin, H, W]` → `[⌈T/ft⌉, cout, H/fs, W/fs]`; zero frames in front make
/// `T` a multiple of `ft`; output channel `o` is the mean of the `cin·ft·fs²/cout` values
/// `o·g … (o+1)·g − 1` of the channel-major list (channel, time offset, row offset, column
/// offset).
#[derive(Debug, Clone)]
pub struct AvgDown {
    cout: usize,
    ft: usize,
    fs: usize,
}

impl AvgDown {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let (ft, fs) = (self.ft, self.fs);
        if !h.is_multiple_of(fs) || !w.is_multiple_of(fs) {
            bail!("Wan VAE: cannot average {h}×{w} pixels in {fs}×{fs} blocks")
        }
        let pad = (ft - t % ft) % ft;
        let x = if pad > 0 {
            x.pad_with_zeros(0, pad, 0)?
        } else {
            x.clone()
        };
        let (t2, h2, w2) = ((t + pad) / ft, h / fs, w / fs);
        let group = c * ft * fs * fs / self.cout;
        // [t2, ft, c, h2, fs, w2, fs] -> [t2, c, ft, fs, fs, h2, w2]
        x.reshape(vec![t2, ft, c, h2, fs, w2, fs])?
            .permute(vec![0, 2, 1, 4, 6, 3, 5])?
            .reshape((t2, self.cout, group, h2, w2))?
            .mean(2)
    }
}

/// `DupUp3D`: `[T, cin, h, w]` → `[T·ft, cout, h·fs, w·fs]` (minus the first `ft − 1` frames on
/// the first chunk): each input channel repeated `cout·ft·fs²/cin` times, the repeated list
/// read as (channel, time offset, row offset, column offset).
#[derive(Debug, Clone)]
pub struct DupUp {
    cout: usize,
    ft: usize,
    fs: usize,
}

impl DupUp {
    pub fn forward(&self, x: &Tensor, first_chunk: bool) -> Result<Tensor> {
        let (t, c, h, w) = x.dims4()?;
        let (ft, fs, o) = (self.ft, self.fs, self.cout);
        let repeats = o * ft * fs * fs / c;
        // repeat_interleave on channels, then [t, o, ft, fs, fs, h, w] -> [t, ft, o, h, fs, w, fs]
        let y = x
            .unsqueeze(2)?
            .broadcast_as(vec![t, c, repeats, h, w])?
            .contiguous()?
            .reshape(vec![t, o, ft, fs, fs, h, w])?
            .permute(vec![0, 2, 1, 5, 3, 6, 4])?
            .reshape((t * ft, o, h * fs, w * fs))?;
        if first_chunk && ft > 1 {
            return y.narrow(0, ft - 1, t * ft - (ft - 1));
        }
        Ok(y)
    }
}

/// Encoder level `i` (`downsamples.i.downsamples`): residual blocks, the down-sampler (not in
/// the last level), plus the averaged input.
#[derive(Debug, Clone)]
pub struct DownLevel {
    blocks: Vec<ResidualBlock>,
    down: Option<Resample>,
    shortcut: AvgDown,
}

impl DownLevel {
    /// `vb` is relative to `encoder.downsamples.i.downsamples`.
    pub fn new(
        cfg: &Config,
        i: usize,
        cin: usize,
        cout: usize,
        slots: &mut Slots,
        vb: VarBuilder,
    ) -> Result<Self> {
        let nrb = cfg.num_res_blocks;
        let blocks = residual_chain(nrb, cin, cout, slots, &vb)?;
        let (ft, fs) = cfg.down_factors(i);
        let down = if i + 1 < cfg.levels() {
            let mode = if ft == 2 { Mode::Down3d } else { Mode::Down2d };
            Some(Resample::new(cout, mode, slots, vb.pp(nrb.to_string()))?)
        } else {
            None
        };
        Ok(Self {
            blocks,
            down,
            shortcut: AvgDown { cout, ft, fs },
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut y = chain_forward(&self.blocks, x, cache)?;
        if let Some(d) = &self.down {
            y = d.forward(&y, cache)?;
        }
        y + self.shortcut.forward(x)?
    }
}

/// Decoder level `i` (`upsamples.i.upsamples`): one more residual block than the encoder's
/// levels, the up-sampler (keeping the channels; not in the last level), plus the duplicated
/// input (only where the level up-samples).
#[derive(Debug, Clone)]
pub struct UpLevel {
    blocks: Vec<ResidualBlock>,
    up: Option<Resample>,
    shortcut: Option<DupUp>,
}

impl UpLevel {
    /// `vb` is relative to `decoder.upsamples.i.upsamples`.
    pub fn new(
        cfg: &Config,
        i: usize,
        cin: usize,
        cout: usize,
        slots: &mut Slots,
        vb: VarBuilder,
    ) -> Result<Self> {
        let nrb = cfg.num_res_blocks + 1;
        let blocks = residual_chain(nrb, cin, cout, slots, &vb)?;
        let (ft, fs) = cfg.up_factors(i);
        let (up, shortcut) = if i + 1 < cfg.levels() {
            let mode = if ft == 2 { Mode::Up3d } else { Mode::Up2d };
            let r = Resample::with_up_channels(cout, cout, mode, slots, vb.pp(nrb.to_string()))?;
            (Some(r), Some(DupUp { cout, ft, fs }))
        } else {
            (None, None)
        };
        Ok(Self {
            blocks,
            up,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache, first_chunk: bool) -> Result<Tensor> {
        let mut y = chain_forward(&self.blocks, x, cache)?;
        if let Some(u) = &self.up {
            y = u.forward(&y, cache)?;
        }
        match &self.shortcut {
            Some(s) => y + s.forward(x, first_chunk)?,
            None => Ok(y),
        }
    }
}

/// `n` residual blocks `vb.0 … vb.{n−1}`, the first from `cin` channels to `cout`, the rest
/// `cout` to `cout` (a level of either side).
fn residual_chain(
    n: usize,
    cin: usize,
    cout: usize,
    slots: &mut Slots,
    vb: &VarBuilder,
) -> Result<Vec<ResidualBlock>> {
    (0..n)
        .map(|j| {
            let c = if j == 0 { cin } else { cout };
            ResidualBlock::new(c, cout, slots, vb.pp(j.to_string()))
        })
        .collect()
}

/// `x` through `blocks` in order.
fn chain_forward(blocks: &[ResidualBlock], x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
    let mut y = x.clone();
    for b in blocks {
        y = b.forward(&y, cache)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn arange(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(dims)
            .unwrap()
    }

    #[test]
    fn patchify_round_trips_and_orders_channels() -> Result<()> {
        let x = arange(&[2, 3, 4, 6]);
        let p = patchify(&x, 2)?;
        assert_eq!(p.dims(), &[2, 12, 2, 3]);
        let back = unpatchify(&p, 2)?;
        let diff = (back - &x)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        // Channel c·4 + r·2 + q holds pixel (2y + q, 2x + r): channel 1 of colour 0 is
        // (r 0, q 1), i.e. pixel (1, 0) of frame 0 = 6.
        let v = p.narrow(1, 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(v[0], 6.0);
        let v = p.narrow(1, 2, 1)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(v[0], 1.0); // (r 1, q 0): pixel (0, 1)
        Ok(())
    }

    #[test]
    fn avg_down_of_constant_channels_and_padding() -> Result<()> {
        // cin 2, cout 4, ft 2, fs 2: groups of 2·8/4 = 4 values, all from one input channel.
        let dev = Device::Cpu;
        let ch = Tensor::new(&[1f32, 3.0], &dev)?.reshape((1, 2, 1, 1))?;
        let x = ch.broadcast_as((2, 2, 4, 4))?.contiguous()?;
        let a = AvgDown {
            cout: 4,
            ft: 2,
            fs: 2,
        };
        let y = a.forward(&x)?;
        assert_eq!(y.dims(), &[1, 4, 2, 2]);
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        assert!(v[..8].iter().all(|x| *x == 1.0) && v[8..].iter().all(|x| *x == 3.0));
        // One frame: a zero frame in front; groups of 4 are (channel, time offset) pairs, so
        // output channels 0 and 2 average the zero frame, 1 and 3 the given one.
        let y = a.forward(&x.narrow(0, 0, 1)?)?;
        assert_eq!(y.dims(), &[1, 4, 2, 2]);
        let per_channel: Vec<f32> = y.mean((2, 3))?.flatten_all()?.to_vec1()?;
        assert_eq!(per_channel, [0.0, 1.0, 0.0, 3.0]);
        Ok(())
    }

    #[test]
    fn dup_up_inverts_avg_down_on_constant_blocks() -> Result<()> {
        let x = Tensor::randn(0f32, 1.0, (1, 8, 3, 2), &Device::Cpu)?;
        let d = DupUp {
            cout: 4,
            ft: 2,
            fs: 2,
        };
        let y = d.forward(&x, false)?;
        assert_eq!(y.dims(), &[2, 4, 6, 4]);
        let a = AvgDown {
            cout: 8,
            ft: 2,
            fs: 2,
        };
        let back = a.forward(&y)?;
        let diff = (back - &x)?.abs()?.max_keepdim(0)?.flatten_all()?.max(0)?;
        assert!(diff.to_dtype(DType::F32)?.to_scalar::<f32>()? < 1e-6);
        assert_eq!(d.forward(&x, true)?.dims(), &[1, 4, 6, 4]);
        Ok(())
    }
}
