//! `mgpu bench --check-kernels`: each fused kernel on fresh random inputs at FLUX-dev sizes,
//! a whole double and single block at full size, and the tiny model end to end, each compared
//! with an f32 computation of the same function (inputs and weights rounded to bf16 first, then
//! upcast, so only the computation differs) and with the candle bf16 path it replaces. A row
//! passes when the fused output is finite, bit-identical over two runs, and no further from the
//! f32 result than the candle path (×1.25 + 2e-4), or within its own limit where no candle path
//! exists.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use super::{set_settings, CheckSize, FlashVariant, QkvSegment, Settings};
use crate::models::flux::{self, block, embed, FluxDit};
use crate::models::tiny;

/// One comparison.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub name: String,
    /// ‖fused − f32‖ / ‖f32‖.
    pub fused: f64,
    /// max |fused − f32|.
    pub max_abs: f64,
    /// ‖candle − f32‖ / ‖f32‖ for the candle bf16 path, where there is one.
    pub candle: Option<f64>,
    /// ‖fused − candle‖ / ‖candle‖.
    pub vs_candle: Option<f64>,
    /// Two runs gave the same values.
    pub deterministic: bool,
    /// The limit `fused` was held to.
    pub limit: f64,
}

impl CheckRow {
    pub fn pass(&self) -> bool {
        self.fused.is_finite() && self.deterministic && self.fused <= self.limit
    }
}

/// Restores the environment's settings when dropped.
struct Restore;
impl Drop for Restore {
    fn drop(&mut self) {
        set_settings(None);
    }
}

fn with_kernels(on: bool) {
    set_settings(Some(Settings {
        kernels: on,
        ..Settings::default()
    }));
}

/// (‖a − r‖/‖r‖, max |a − r|) in f64.
fn rel(a: &Tensor, r: &Tensor) -> Result<(f64, f64)> {
    let a = a.to_dtype(DType::F64)?.flatten_all()?;
    let r = r.to_dtype(DType::F64)?.flatten_all()?;
    let d = (&a - &r)?;
    let num = d.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let den = r.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let max = d.abs()?.max(0)?.to_scalar::<f64>()?;
    Ok(((num / den).sqrt(), max))
}

fn same(a: &Tensor, b: &Tensor) -> Result<bool> {
    let eq = a
        .eq(b)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(eq as usize == a.elem_count())
}

/// Builds a row: `fused` run twice, against `f32` and optionally the candle path.
fn row(
    name: &str,
    fused: &dyn Fn() -> Result<Tensor>,
    reference: &Tensor,
    candle: Option<&Tensor>,
    own_limit: f64,
) -> Result<CheckRow> {
    let a = fused()?;
    let b = fused()?;
    let deterministic = same(&a, &b)?;
    let (fused_rel, max_abs) = rel(&a, reference)?;
    let (candle_rel, vs_candle) = match candle {
        Some(c) => (Some(rel(c, reference)?.0), Some(rel(&a, c)?.0)),
        None => (None, None),
    };
    let limit = match candle_rel {
        Some(c) => 1.25 * c + 2e-4,
        None => own_limit,
    };
    Ok(CheckRow {
        name: name.to_string(),
        fused: fused_rel,
        max_abs,
        candle: candle_rel,
        vs_candle,
        deterministic,
        limit,
    })
}

/// Standard-normal bf16 values and their f32 upcast.
fn randn(shape: &[usize], std: f64, dev: &Device) -> Result<(Tensor, Tensor)> {
    let b = Tensor::randn(0f32, std as f32, shape, dev)?.to_dtype(DType::BF16)?;
    let f = b.to_dtype(DType::F32)?;
    Ok((b, f))
}

fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    block::layer_norm(x)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)
}

/// The candle path's qkv preparation (`block.rs`: bias, split, QK RMSNorm, RoPE) in the dtype
/// of `qkv`: `[3, H, L, D]`.
fn qkv_reference(
    qkv: &Tensor,
    q_scale: &Tensor,
    k_scale: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    heads: usize,
) -> Result<Tensor> {
    let (l, w) = qkv.dims2()?;
    let d = w / (3 * heads);
    let dt = qkv.dtype();
    let qkv = qkv
        .reshape((l, 3, heads, d))?
        .permute((1, 2, 0, 3))?
        .contiguous()?;
    let ones = Tensor::ones(d, DType::F32, qkv.device())?;
    let norm = |x: &Tensor, s: &Tensor| -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, &ones, 1e-6)?
            .to_dtype(dt)?
            .broadcast_mul(s)
    };
    let rope = |x: &Tensor| -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.unsqueeze(0)?.contiguous()?;
        candle_nn::rotary_emb::rope_i(&x, cos, sin)?
            .squeeze(0)?
            .to_dtype(dt)
    };
    let q = rope(&norm(&qkv.get(0)?, q_scale)?)?;
    let k = rope(&norm(&qkv.get(1)?, k_scale)?)?;
    Tensor::stack(&[q, k, qkv.get(2)?], 0)
}

/// Attention over `qkv [3, H, L, D]` → `[L, H·D]` as the old candle path computes it: q
/// pre-scaled and scores formed in the compute dtype, softmax in f32. In f32 for f32 input.
fn attention_reference(qkv: &Tensor) -> Result<Tensor> {
    let (_, h, l, d) = qkv.dims4()?;
    let dt = qkv.dtype();
    let q = (qkv.get(0)? * (1.0 / (d as f64).sqrt()))?;
    let scores = q.matmul(&qkv.get(1)?.t()?)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dt)?;
    probs
        .matmul(&qkv.get(2)?)?
        .transpose(0, 1)?
        .reshape((l, h * d))
}

/// The RoPE table of FLUX for `l_txt` text tokens and a `hw`×`hw` latent.
fn rope_table(l_txt: usize, hw: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
    let cfg = flux::Config::dev();
    let mut ids = vec![[0.0; 3]; l_txt];
    ids.extend(embed::img_ids(hw, hw));
    embed::rope_table(&ids, &cfg.axes_dim, cfg.theta, dev)
}

struct Sizes {
    /// Text tokens and latent side (image tokens = side²/4) of the kernel checks.
    l_txt: usize,
    hw: usize,
    hid: usize,
    heads: usize,
    mlp: usize,
    /// (tokens, heads, factor on q) of the attention checks.
    attention: Vec<(usize, usize, f64)>,
    softmax: Vec<[usize; 3]>,
    /// Text tokens and latent side of the whole-block checks (FLUX-dev widths).
    block_txt: usize,
    block_hw: usize,
}

impl Sizes {
    fn of(size: CheckSize) -> Self {
        match size {
            // Attention: FLUX-dev size, partial tiles, fewer keys than a tile, and peaky
            // logits (q ×4, exact in bf16) that move the running maximum often.
            CheckSize::Full => Sizes {
                l_txt: 512,
                hw: 128,
                hid: 3072,
                heads: 24,
                mlp: 12288,
                attention: vec![
                    (4608, 24, 1.0),
                    (1037, 3, 1.0),
                    (40, 2, 1.0),
                    (4608, 4, 4.0),
                ],
                softmax: vec![[8, 4608, 4608], [3, 1037, 1037]],
                block_txt: 512,
                block_hw: 128,
            },
            CheckSize::Small => Sizes {
                l_txt: 16,
                hw: 16,
                hid: 256,
                heads: 2,
                mlp: 1024,
                attention: vec![(300, 2, 1.0), (37, 1, 1.0), (200, 2, 4.0)],
                softmax: vec![[2, 80, 80], [1, 37, 37]],
                block_txt: 16,
                block_hw: 8,
            },
        }
    }
}

fn kernel_rows(
    sz: &Sizes,
    dev: &Device,
    out: &mut Vec<CheckRow>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let (hid, heads, dh, mlp) = (sz.hid, sz.heads, 128usize, sz.mlp);
    let l = sz.l_txt + sz.hw * sz.hw / 4;
    with_kernels(true);

    progress("ln_modulate");
    let (x, x32) = randn(&[l, hid], 1.0, dev)?;
    let (shift, shift32) = randn(&[1, hid], 0.5, dev)?;
    let (scale, scale32) = randn(&[1, hid], 0.5, dev)?;
    out.push(row(
        &format!("ln_modulate [{l}, {hid}]"),
        &|| super::ln_modulate(&x, &shift, &scale),
        &modulate(&x32, &shift32, &scale32)?,
        Some(&modulate(&x, &shift, &scale)?),
        0.0,
    )?);

    progress("qkv_rope");
    let width = 3 * hid + mlp;
    let (src, src32) = randn(&[l, width], 1.0, dev)?;
    let (bias, bias32) = randn(&[3 * hid], 0.1, dev)?;
    let (qs, qs32) = randn(&[dh], 0.05, dev)?;
    let (qs, qs32) = ((qs + 1.0)?, (qs32 + 1.0)?);
    let (ks, ks32) = randn(&[dh], 0.05, dev)?;
    let (ks, ks32) = ((ks + 1.0)?, (ks32 + 1.0)?);
    let (cos, sin) = rope_table(sz.l_txt, sz.hw, dev)?;
    let biased = |s: &Tensor, b: &Tensor| s.narrow(1, 0, 3 * hid)?.broadcast_add(b);
    out.push(row(
        &format!("qkv_rope [{l}, {width}] → [3, {heads}, {l}, {dh}]"),
        &|| {
            let seg = QkvSegment {
                src: &src,
                bias: &bias,
                q_scale: &qs,
                k_scale: &ks,
            };
            super::qkv_rope(&[seg], heads, &cos, &sin)
        },
        &qkv_reference(&biased(&src32, &bias32)?, &qs32, &ks32, &cos, &sin, heads)?,
        Some(&qkv_reference(
            &biased(&src, &bias)?,
            &qs,
            &ks,
            &cos,
            &sin,
            heads,
        )?),
        0.0,
    )?);
    drop((src, src32));

    progress("softmax");
    for shape in &sz.softmax {
        let (s, s32) = randn(shape, 3.0, dev)?;
        let scale = 0.125f32;
        out.push(row(
            &format!("softmax (fused) {shape:?}"),
            &|| super::softmax_scaled(&s, scale),
            &candle_nn::ops::softmax_last_dim(&(&s32 * scale as f64)?)?,
            Some(
                &candle_nn::ops::softmax_last_dim(&(s.to_dtype(DType::F32)? * scale as f64)?)?
                    .to_dtype(DType::BF16)?,
            ),
            0.0,
        )?);
    }

    progress("attention");
    for (i, &(len, h, amp)) in sz.attention.iter().enumerate() {
        let (qkv, _) = randn(&[3, h, len, dh], 1.0, dev)?;
        let qkv = Tensor::cat(
            &[(qkv.get(0)? * amp)?.unsqueeze(0)?, qkv.narrow(0, 1, 2)?],
            0,
        )?;
        let q16 = qkv.to_dtype(DType::F16)?;
        // The flash kernels run once before any cuBLAS call: under compute-sanitizer's
        // racecheck, Hopper cuBLAS kernels abort the program, so what runs first is what gets
        // checked (`tools/flux_kernels_gpu.sh`).
        for v in FlashVariant::ALL {
            super::flash_attention(&qkv, v)?;
            super::flash_attention(&q16, v)?;
        }
        let reference = attention_reference(&qkv.to_dtype(DType::F32)?)?;
        let old = attention_reference(&qkv)?;
        for v in FlashVariant::ALL {
            out.push(row(
                &format!("flash {v} L={len} H={h} q×{amp}"),
                &|| super::flash_attention(&qkv, v),
                &reference,
                Some(&old),
                0.0,
            )?);
        }
        out.push(row(
            &format!("cublas + fused softmax L={len} H={h} q×{amp}"),
            &|| super::attention_cublas(&qkv),
            &reference,
            Some(&old),
            0.0,
        )?);
        if i == 0 {
            // f16 inputs: the same values where f16 holds them (|x| < 65504, finer mantissa).
            let reference = attention_reference(&q16.to_dtype(DType::F32)?)?;
            let old = attention_reference(&q16)?;
            out.push(row(
                &format!("flash {} f16 L={len} H={h}", FlashVariant::ALL[0]),
                &|| super::flash_attention(&q16, FlashVariant::ALL[0]),
                &reference,
                Some(&old),
                0.0,
            )?);
        }
    }

    progress("cat_gelu, gated_residual");
    let (a, a32) = randn(&[l, hid], 1.0, dev)?;
    let (src, src32) = randn(&[l, width], 1.0, dev)?;
    let (b, b32) = randn(&[mlp], 0.1, dev)?;
    let cat_ref = |a: &Tensor, s: &Tensor, b: &Tensor| -> Result<Tensor> {
        Tensor::cat(
            &[a, &s.narrow(1, 3 * hid, mlp)?.broadcast_add(b)?.gelu()?],
            1,
        )
    };
    out.push(row(
        &format!("cat_gelu [{l}, {hid}] + gelu([{l}, {mlp}])"),
        &|| super::cat_gelu(Some(&a), &src, 3 * hid, mlp, &b),
        &cat_ref(&a32, &src32, &b32)?,
        Some(&cat_ref(&a, &src, &b)?),
        0.0,
    )?);
    drop((src, src32));
    let (y, y32) = randn(&[l, hid], 1.0, dev)?;
    let (pb, pb32) = randn(&[hid], 0.1, dev)?;
    let (g, g32) = randn(&[1, hid], 0.5, dev)?;
    let gated = |x: &Tensor, y: &Tensor, b: &Tensor, g: &Tensor| -> Result<Tensor> {
        x + y.broadcast_add(b)?.broadcast_mul(g)?
    };
    out.push(row(
        &format!("gated_residual [{l}, {hid}]"),
        &|| super::gated_residual(&a, &y, &pb, &g),
        &gated(&a32, &y32, &pb32, &g32)?,
        Some(&gated(&a, &y, &pb, &g)?),
        0.0,
    )?);
    Ok(())
}

/// Random weights of one unit of FLUX-dev (names relative to the unit), rounded to bf16:
/// (bf16, f32 upcast).
fn unit_weights(
    unit: &str,
    dev: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    let prefix = format!("{unit}.");
    let (mut wb, mut wf) = (HashMap::new(), HashMap::new());
    for (name, shape) in tiny::flux_layout(&flux::Config::dev())? {
        let Some(rel_name) = name.strip_prefix(&prefix) else {
            continue;
        };
        let (b, f) = if shape.len() >= 2 {
            randn(&shape, (1.0 / shape[1] as f64).sqrt(), dev)?
        } else if rel_name.ends_with("scale") {
            let (b, _) = randn(&shape, 0.05, dev)?;
            let b = (b + 1.0)?;
            let f = b.to_dtype(DType::F32)?;
            (b, f)
        } else {
            randn(&shape, 0.02, dev)?
        };
        wb.insert(rel_name.to_string(), b);
        wf.insert(rel_name.to_string(), f);
    }
    Ok((wb, wf))
}

fn block_rows(
    sz: &Sizes,
    dev: &Device,
    out: &mut Vec<CheckRow>,
    progress: &mut dyn FnMut(&str),
) -> Result<()> {
    let cfg = flux::Config::dev();
    let (l_txt, hw) = (sz.block_txt, sz.block_hw);
    let l_img = hw * hw / 4;
    let (cos, sin) = rope_table(l_txt, hw, dev)?;
    let (img, img32) = randn(&[l_img, cfg.hidden_size], 1.0, dev)?;
    let (txt, txt32) = randn(&[l_txt, cfg.hidden_size], 1.0, dev)?;
    let (vec, vec32) = randn(&[1, cfg.hidden_size], 1.0, dev)?;

    progress("double block");
    let (wb, wf) = unit_weights("double_blocks.0", dev)?;
    let bb = block::DoubleBlock::new(&cfg, VarBuilder::from_tensors(wb, DType::BF16, dev))?;
    let bf = block::DoubleBlock::new(&cfg, VarBuilder::from_tensors(wf, DType::F32, dev))?;
    let both = |r: (Tensor, Tensor)| Tensor::cat(&[r.0, r.1], 0);
    let reference = both(bf.forward(&img32, &txt32, &vec32, &cos, &sin)?)?;
    with_kernels(false);
    let candle = both(bb.forward(&img, &txt, &vec, &cos, &sin)?)?;
    with_kernels(true);
    out.push(row(
        &format!("double block (FLUX-dev, {l_txt} + {l_img} tokens)"),
        &|| both(bb.forward(&img, &txt, &vec, &cos, &sin)?),
        &reference,
        Some(&candle),
        0.0,
    )?);
    drop((bb, bf, reference, candle));

    progress("single block");
    let x = Tensor::cat(&[&txt, &img], 0)?;
    let x32 = Tensor::cat(&[&txt32, &img32], 0)?;
    let (wb, wf) = unit_weights("single_blocks.0", dev)?;
    let sb = block::SingleBlock::new(&cfg, VarBuilder::from_tensors(wb, DType::BF16, dev))?;
    let sf = block::SingleBlock::new(&cfg, VarBuilder::from_tensors(wf, DType::F32, dev))?;
    let reference = sf.forward(&x32, &vec32, &cos, &sin)?;
    with_kernels(false);
    let candle = sb.forward(&x, &vec, &cos, &sin)?;
    with_kernels(true);
    out.push(row(
        &format!("single block (FLUX-dev, {} tokens)", l_txt + l_img),
        &|| sb.forward(&x, &vec, &cos, &sin),
        &reference,
        Some(&candle),
        0.0,
    )?);
    Ok(())
}

/// The tiny model (head dim 16: attention through cuBLAS + the fused softmax, 7 text tokens:
/// an odd sequence length) on the GPU in bf16 against the CPU in f32.
fn tiny_rows(dev: &Device, out: &mut Vec<CheckRow>, progress: &mut dyn FnMut(&str)) -> Result<()> {
    progress("tiny model");
    let cfg = flux::Config::tiny();
    let w = tiny::flux_weights(&cfg, 11)?;
    let mut cpu = HashMap::new();
    let mut gpu = HashMap::new();
    let mut gpu32 = HashMap::new();
    for (name, t) in w {
        let b = t.to_dtype(DType::BF16)?;
        cpu.insert(name.clone(), b.to_dtype(DType::F32)?);
        gpu32.insert(name.clone(), b.to_dtype(DType::F32)?.to_device(dev)?);
        gpu.insert(name, b.to_device(dev)?);
    }
    let input = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let v = tiny::init_values(5, name, shape);
        let t = Tensor::from_vec(v, shape, &Device::Cpu)?;
        (t * 1.7)?.to_dtype(DType::BF16)?.to_dtype(DType::F32)
    };
    let latent = input("latent", &[1, 16, 16, 16])?;
    let txt = input("txt", &[1, 7, cfg.context_in_dim])?;
    let vec = input("vec", &[1, cfg.vec_in_dim])?;
    let units = FluxDit::units(&cfg);
    let run = |m: &HashMap<String, Tensor>, dt: DType, d: &Device| -> Result<Tensor> {
        let vb = VarBuilder::from_tensors(m.clone(), dt, d);
        let dit = FluxDit::new(&cfg, vb.clone())?;
        dit.forward(
            &latent.to_device(d)?,
            &txt.to_device(d)?,
            &vec.to_device(d)?,
            0.7,
            Some(3.5),
            &mut |i| Ok(vb.pp(&units[i])),
        )?
        .to_device(&Device::Cpu)
    };
    let reference = run(&cpu, DType::F32, &Device::Cpu)?;
    let gpu_f32 = run(&gpu32, DType::F32, dev)?;
    out.push(row(
        "tiny model: GPU f32 (candle) vs CPU f32",
        &|| Ok(gpu_f32.clone()),
        &reference,
        None,
        1e-4,
    )?);
    with_kernels(false);
    let candle = run(&gpu, DType::BF16, dev)?;
    with_kernels(true);
    out.push(row(
        "tiny model: GPU bf16 fused vs CPU f32",
        &|| run(&gpu, DType::BF16, dev),
        &reference,
        Some(&candle),
        0.0,
    )?);
    Ok(())
}

/// Runs every check of `size` on `dev` (a CUDA device); `progress` hears which part runs.
pub fn check_kernels(
    dev: &Device,
    size: CheckSize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<CheckRow>> {
    if !dev.is_cuda() {
        candle_core::bail!("--check-kernels needs a CUDA device")
    }
    let _restore = Restore;
    let sz = Sizes::of(size);
    let mut out = Vec::new();
    kernel_rows(&sz, dev, &mut out, &mut progress)?;
    block_rows(&sz, dev, &mut out, &mut progress)?;
    tiny_rows(dev, &mut out, &mut progress)?;
    Ok(out)
}

/// The rows as a table.
pub fn render(rows: &[CheckRow]) -> String {
    let mut s = format!(
        "{:<52} {:>10} {:>10} {:>10} {:>10} {:>5} {:>5}\n",
        "check", "fused/f32", "candle/f32", "fused/cndl", "max abs", "det", "pass"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3e}"));
    for r in rows {
        s.push_str(&format!(
            "{:<52} {:>10.3e} {:>10} {:>10} {:>10.3e} {:>5} {:>5}\n",
            r.name,
            r.fused,
            opt(r.candle),
            opt(r.vs_candle),
            r.max_abs,
            if r.deterministic { "yes" } else { "NO" },
            if r.pass() { "ok" } else { "FAIL" }
        ));
    }
    s
}
