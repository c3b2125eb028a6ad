//! The fused FLUX kernels as candle custom ops (`CustomOp1::cuda_fwd`): each op takes its
//! first tensor as the op's input and any others as fields, checks shapes and layouts, loads
//! its kernel from the embedded PTX (once per device) and launches it on candle's stream into a
//! fresh output. See the module doc of [`super`] for what each kernel replaces.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage,
    StorageRef, Tensor, WithDType,
};
use half::{bf16, f16};

use super::{flat_blocks, qkv_group, row_threads, settings, AttentionImpl, FlashVariant};

const EW_MODULE: &str = "mgpu_flux_elementwise";
const EW_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/elementwise.ptx"));
const FLASH_MODULE: &str = "mgpu_flux_flash";
const FLASH_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash.ptx"));

/// LayerNorm / RMSNorm epsilon of FLUX (BFL `LayerNorm(eps=1e-6)`, `RMSNorm`).
const EPS: f32 = 1e-6;
/// Head dimension of the flash kernel.
const FLASH_HEAD_DIM: usize = 128;

/// Element types the kernels are compiled for.
trait Elem: CudaDType + DeviceRepr + WithDType {
    const SUFFIX: &'static str;
}
impl Elem for bf16 {
    const SUFFIX: &'static str = "bf16";
}
impl Elem for f16 {
    const SUFFIX: &'static str = "f16";
}

/// `impl CustomOp1` for a fused kernel op `$ty` with the given name: CUDA only, computed by
/// `$ty::run::<T>` for the storage's dtype (bf16 or f16).
macro_rules! cuda_op {
    ($ty:ty, $name:literal) => {
        impl CustomOp1 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
                cuda_only(self.name())
            }

            fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
                match s.dtype() {
                    DType::BF16 => <$ty>::run::<bf16>(self, s, l),
                    DType::F16 => <$ty>::run::<f16>(self, s, l),
                    d => bail!(
                        "{}: dtype {d:?} is not supported (bf16 or f16)",
                        self.name()
                    ),
                }
            }
        }
    };
}

/// Allows `bytes` of dynamic shared memory for `f` (above the default 48 KiB needs opting in),
/// or explains why the device cannot.
fn allow_smem(dev: &CudaDevice, f: &CudaFunction, bytes: u32, what: &str) -> Result<()> {
    if bytes <= 48 * 1024 {
        return Ok(());
    }
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let max = ctx
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .w()?;
    if bytes as i64 > max as i64 {
        bail!("{what} needs {bytes} bytes of shared memory per block, the device allows {max}")
    }
    f.set_attribute(
        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .w()
}

fn i32_arg(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds i32")))
}

/// A read guard on a tensor's storage, for the tensors an op holds as fields.
struct Held<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
    what: &'static str,
}

fn hold<'a>(t: &'a Tensor, what: &'static str) -> Held<'a> {
    let (storage, layout) = t.storage_and_layout();
    Held {
        storage,
        layout,
        what,
    }
}

impl Held<'_> {
    /// The tensor's device buffer from its first element.
    fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        match &*self.storage {
            Storage::Cuda(cs) => Ok(cs.as_cuda_slice::<T>()?.slice(self.layout.start_offset()..)),
            _ => bail!("{}: expected a tensor on the CUDA device", self.what),
        }
    }
}

fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..))
}

/// Checks that `t` is a contiguous vector of `len` elements starting 16-byte aligned.
fn check_vec(t: &Tensor, len: usize, dtype: DType, what: &str) -> Result<()> {
    let l = t.layout();
    if t.elem_count() != len || !l.is_contiguous() || !l.start_offset().is_multiple_of(8) {
        bail!(
            "{what}: expected a contiguous {len}-element vector at an offset divisible by 8, got {:?} (offset {})",
            t.shape(),
            l.start_offset()
        )
    }
    if t.dtype() != dtype {
        bail!("{what}: dtype {:?}, expected {dtype:?}", t.dtype())
    }
    Ok(())
}

/// Checks the op's main input: contiguous, at an offset divisible by 8.
fn check_main(l: &Layout, what: &str) -> Result<()> {
    if !l.is_contiguous() || !l.start_offset().is_multiple_of(8) {
        bail!(
            "{what}: input must be contiguous at an offset divisible by 8 (got strides {:?}, offset {})",
            l.stride(),
            l.start_offset()
        )
    }
    Ok(())
}

fn out_storage<T: Elem>(out: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(out, dev.clone())
}

/// A kernel's output: the element type, or e4m3fn bytes (`E4m3` in common.cuh).
enum Out<T: Elem> {
    Same(CudaSlice<T>),
    E4m3(CudaSlice<float8::F8E4M3>),
}

impl<T: Elem> Out<T> {
    fn new(dev: &CudaDevice, len: usize, e4m3: bool) -> Result<Self> {
        // SAFETY: the kernel writes every element before anything reads it.
        Ok(if e4m3 {
            Out::E4m3(unsafe { dev.alloc::<float8::F8E4M3>(len)? })
        } else {
            Out::Same(unsafe { dev.alloc::<T>(len)? })
        })
    }

    /// The kernel name's infix (`ln_modulate_e4m3_bf16`).
    fn infix(&self) -> &'static str {
        match self {
            Out::Same(_) => "",
            Out::E4m3(_) => "e4m3_",
        }
    }

    fn arg<'a>(&'a mut self, b: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>) {
        match self {
            Out::Same(s) => b.arg(s),
            Out::E4m3(s) => b.arg(s),
        };
    }

    fn storage(self, dev: &CudaDevice) -> CudaStorage {
        match self {
            Out::Same(s) => out_storage(s, dev),
            Out::E4m3(s) => CudaStorage::wrap_cuda_slice(s, dev.clone()),
        }
    }
}

fn cuda_only(name: &str) -> Result<(CpuStorage, Shape)> {
    bail!("{name} is a CUDA kernel; the CPU path computes with candle ops")
}

// ---------------------------------------------------------------------------------------------

struct LnModulate {
    shift: Tensor,
    scale: Tensor,
    /// Store e4m3fn bytes (an fp8 linear layer's input) instead of the element type.
    e4m3: bool,
}

cuda_op!(LnModulate, "flux-ln-modulate");

impl LnModulate {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        check_main(l, op.name())?;
        let dev = &s.device;
        let (rows, cols) = l.shape().dims2()?;
        let x = view::<T>(s, l)?;
        let (shift, scale) = (hold(&op.shift, "shift"), hold(&op.scale, "scale"));
        let (shift, scale) = (shift.view::<T>()?, scale.view::<T>()?);
        let mut out = Out::<T>::new(dev, rows * cols, op.e4m3)?;
        let f = dev.get_or_load_custom_func(
            &format!("ln_modulate_{}{}", out.infix(), T::SUFFIX),
            EW_MODULE,
            EW_PTX,
        )?;
        let smem = (cols * 4) as u32;
        allow_smem(dev, &f, smem, "ln_modulate")?;
        let (cols_i, eps) = (i32_arg(cols, "columns")?, EPS);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (row_threads(cols / 8), 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = f.builder();
        b.arg(&x).arg(&shift).arg(&scale);
        out.arg(&mut b);
        b.arg(&cols_i).arg(&eps);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out.storage(dev), l.shape().clone()))
    }
}

/// `round(round(round(LN(x)) · round(1 + scale)) + shift)` over the last dimension of
/// `x [rows, cols]`, LayerNorm without affine (eps 1e-6) in f32: BFL's `(1 + scale) ·
/// norm(x) + shift` with the reference's rounding points. `shift`, `scale`: `cols` elements.
pub fn ln_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    ln_modulate_to(x, shift, scale, false)
}

/// [`ln_modulate`] stored as e4m3fn (`F8E4M3`) when `e4m3`: each result rounded to the
/// element type, then to e4m3 as an fp8 linear layer rounds its input (`models::fp8`) — the
/// same bytes as rounding [`ln_modulate`]'s output, without writing and reading it.
pub fn ln_modulate_to(x: &Tensor, shift: &Tensor, scale: &Tensor, e4m3: bool) -> Result<Tensor> {
    let (_, cols) = x.dims2()?;
    if cols % 8 != 0 {
        bail!("ln_modulate: width {cols} is not a multiple of 8")
    }
    check_vec(shift, cols, x.dtype(), "ln_modulate shift")?;
    check_vec(scale, cols, x.dtype(), "ln_modulate scale")?;
    x.contiguous()?.apply_op1_no_bwd(&LnModulate {
        shift: shift.clone(),
        scale: scale.clone(),
        e4m3,
    })
}

// ---------------------------------------------------------------------------------------------

/// One stream's fused projection output for [`qkv_rope`].
#[derive(Debug, Clone, Copy)]
pub struct QkvSegment<'a> {
    /// `[tokens, width]`, contiguous; columns `[0, 3·heads·head_dim)` are q, k, v (each
    /// `[heads, head_dim]`), without the bias. `width` may be larger (the single block's
    /// `linear1` output also holds the MLP input).
    pub src: &'a Tensor,
    /// The projection bias of those columns (`3·heads·head_dim`).
    pub bias: &'a Tensor,
    /// `norm.query_norm.scale`, `norm.key_norm.scale` (`head_dim` each).
    pub q_scale: &'a Tensor,
    pub k_scale: &'a Tensor,
}

struct QkvRope {
    rest: Vec<[Tensor; 4]>,
    first_meta: [Tensor; 3],
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    head_dim: usize,
    l_total: usize,
}

cuda_op!(QkvRope, "flux-qkv-rope");

impl QkvRope {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = &s.device;
        let (h, d, lt) = (op.heads, op.head_dim, op.l_total);
        let g = qkv_group(d).expect("checked by qkv_rope");
        let mut out = unsafe { dev.alloc::<T>(3 * h * lt * d)? };
        let f =
            dev.get_or_load_custom_func(&format!("qkv_rope_{}", T::SUFFIX), EW_MODULE, EW_PTX)?;
        let (cos, sin) = (hold(&op.cos, "cos"), hold(&op.sin, "sin"));
        let (cos, sin) = (cos.view::<f32>()?, sin.view::<f32>()?);
        let (heads_i, d_i, lt_i, eps) = (h as i32, d as i32, i32_arg(lt, "tokens")?, EPS);
        let mut tok0 = 0usize;
        // The first segment's source is the op's input storage; the others are held.
        let mut launch = |src: &CudaView<T>,
                          width: usize,
                          n_tok: usize,
                          meta: &[&Tensor; 3],
                          out: &mut CudaSlice<T>|
         -> Result<()> {
            let (bias, qs, ks) = (
                hold(meta[0], "qkv bias"),
                hold(meta[1], "query_norm.scale"),
                hold(meta[2], "key_norm.scale"),
            );
            let (bias, qs, ks) = (bias.view::<T>()?, qs.view::<T>()?, ks.view::<T>()?);
            let total = n_tok * 3 * h;
            let gpb = 256 / g;
            let cfg = LaunchConfig {
                grid_dim: (total.div_ceil(gpb) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let (w_i, n_i, t0_i) = (
                i32_arg(width, "qkv width")?,
                i32_arg(n_tok, "tokens")?,
                i32_arg(tok0, "tokens")?,
            );
            let mut b = f.builder();
            b.arg(src)
                .arg(&w_i)
                .arg(&bias)
                .arg(&qs)
                .arg(&ks)
                .arg(&cos)
                .arg(&sin);
            b.arg(out)
                .arg(&n_i)
                .arg(&t0_i)
                .arg(&lt_i)
                .arg(&heads_i)
                .arg(&d_i)
                .arg(&eps);
            unsafe { b.launch(cfg) }.w()?;
            tok0 += n_tok;
            Ok(())
        };
        let (n0, w0) = l.shape().dims2()?;
        let [b0, q0, k0] = &op.first_meta;
        launch(&view::<T>(s, l)?, w0, n0, &[b0, q0, k0], &mut out)?;
        for [src, bias, qs, ks] in &op.rest {
            let (n, w) = src.dims2()?;
            let held = hold(src, "qkv");
            launch(&held.view::<T>()?, w, n, &[bias, qs, ks], &mut out)?;
        }
        Ok((out_storage(out, dev), Shape::from_dims(&[3, h, lt, d])))
    }
}

/// q, k, v `[3, heads, L, head_dim]` from one or more streams' fused projections (the double
/// block's text then image stream; the single block's one), L the sum of their token counts:
/// bias added (rounded), q and k RMS-normalised in f32 (rounded) times their scales (rounded),
/// then rotated by the interleaved RoPE table `cos`/`sin` `[L, head_dim/2]` f32 (rounded).
pub fn qkv_rope(
    segments: &[QkvSegment],
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let Some(first) = segments.first() else {
        bail!("qkv_rope: no segments")
    };
    let (l_total, half) = cos.dims2()?;
    let head_dim = 2 * half;
    if qkv_group(head_dim).is_none() {
        bail!("qkv_rope: head dim {head_dim} must be 8·2ⁿ, at most 256")
    }
    if sin.dims2()? != (l_total, half) || cos.dtype() != DType::F32 || sin.dtype() != DType::F32 {
        bail!(
            "qkv_rope: cos {:?} {:?} and sin {:?} {:?} must both be f32 [L, head_dim/2]",
            cos.shape(),
            cos.dtype(),
            sin.shape(),
            sin.dtype()
        )
    }
    let dtype = first.src.dtype();
    let qkv_w = 3 * heads * head_dim;
    let mut tokens = 0;
    let mut segs = Vec::with_capacity(segments.len());
    for (i, s) in segments.iter().enumerate() {
        let (n, w) = s.src.dims2()?;
        let l = s.src.layout();
        if w < qkv_w || w % 8 != 0 || !l.is_contiguous() || l.start_offset() % 8 != 0 {
            bail!(
                "qkv_rope segment {i}: source {:?} must be contiguous, at least {qkv_w} wide and a multiple of 8",
                s.src.shape()
            )
        }
        if s.src.dtype() != dtype {
            bail!(
                "qkv_rope segment {i}: dtype {:?}, expected {dtype:?}",
                s.src.dtype()
            )
        }
        check_vec(s.bias, qkv_w, dtype, "qkv_rope bias")?;
        check_vec(s.q_scale, head_dim, dtype, "qkv_rope query_norm.scale")?;
        check_vec(s.k_scale, head_dim, dtype, "qkv_rope key_norm.scale")?;
        tokens += n;
        segs.push([
            s.src.clone(),
            s.bias.clone(),
            s.q_scale.clone(),
            s.k_scale.clone(),
        ]);
    }
    if tokens != l_total {
        bail!("qkv_rope: the segments hold {tokens} tokens, the RoPE table {l_total}")
    }
    let [_, b0, q0, k0] = segs.remove(0);
    first.src.apply_op1_no_bwd(&QkvRope {
        rest: segs,
        first_meta: [b0, q0, k0],
        cos: cos.contiguous()?,
        sin: sin.contiguous()?,
        heads,
        head_dim,
        l_total,
    })
}

// ---------------------------------------------------------------------------------------------

struct SoftmaxScaled {
    scale: f32,
}

cuda_op!(SoftmaxScaled, "flux-softmax");

impl SoftmaxScaled {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        check_main(l, op.name())?;
        let dev = &s.device;
        let cols = l.shape().dims().last().copied().unwrap_or(1);
        let n = l.shape().elem_count();
        let rows = n / cols.max(1);
        let x = view::<T>(s, l)?;
        let vec = cols % 8 == 0;
        let name = if vec { "softmax_vec" } else { "softmax_scalar" };
        let f = dev.get_or_load_custom_func(&format!("{name}_{}", T::SUFFIX), EW_MODULE, EW_PTX)?;
        let smem = (cols * 4) as u32;
        allow_smem(dev, &f, smem, "softmax")?;
        let mut out = unsafe { dev.alloc::<T>(n)? };
        let (cols_i, k) = (
            i32_arg(cols, "softmax width")?,
            op.scale * std::f32::consts::LOG2_E,
        );
        let threads = if vec {
            row_threads(cols / 8)
        } else {
            row_threads(cols)
        };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: smem,
        };
        let mut b = f.builder();
        b.arg(&x).arg(&mut out).arg(&cols_i).arg(&k);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out_storage(out, dev), l.shape().clone()))
    }
}

/// `softmax(scale · x)` over the last dimension, computed in f32 from bf16/f16 `x` and rounded
/// once: one read and one write of the scores.
pub fn softmax_scaled(x: &Tensor, scale: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&SoftmaxScaled { scale })
}

// ---------------------------------------------------------------------------------------------

struct Flash {
    variant: FlashVariant,
}

cuda_op!(Flash, "flux-flash-attention");

impl Flash {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        check_main(l, op.name())?;
        let dev = &s.device;
        let (three, h, len, d) = l.shape().dims4()?;
        if three != 3 || d != FLASH_HEAD_DIM {
            bail!(
                "flash attention takes qkv [3, heads, L, {FLASH_HEAD_DIM}], got {:?}",
                l.shape()
            )
        }
        let all = s.as_cuda_slice::<T>()?;
        let off = l.start_offset();
        let per = h * len * d;
        let (q, k, v) = (
            all.slice(off..off + per),
            all.slice(off + per..off + 2 * per),
            all.slice(off + 2 * per..off + 3 * per),
        );
        let var = op.variant;
        let f =
            dev.get_or_load_custom_func(&var.kernel_name(T::SUFFIX), FLASH_MODULE, FLASH_PTX)?;
        allow_smem(dev, &f, var.smem_bytes(), "flash attention")?;
        let mut out = unsafe { dev.alloc::<T>(len * h * d)? };
        let (len_i, stride_i) = (i32_arg(len, "tokens")?, i32_arg(h * d, "width")?);
        let scale_log2 = (1.0 / (d as f64).sqrt() * std::f64::consts::LOG2_E) as f32;
        let cfg = LaunchConfig {
            grid_dim: var.grid(len, h),
            block_dim: (var.threads(), 1, 1),
            shared_mem_bytes: var.smem_bytes(),
        };
        let mut b = f.builder();
        b.arg(&q)
            .arg(&k)
            .arg(&v)
            .arg(&mut out)
            .arg(&len_i)
            .arg(&stride_i)
            .arg(&scale_log2);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out_storage(out, dev), Shape::from_dims(&[len, h * d])))
    }
}

/// Flash attention over `qkv [3, heads, L, 128]` bf16 or f16 (from [`qkv_rope`]) with the
/// scale `1/√128`: the output `[L, heads·128]`.
pub fn flash_attention(qkv: &Tensor, variant: FlashVariant) -> Result<Tensor> {
    qkv.contiguous()?.apply_op1_no_bwd(&Flash { variant })
}

/// Attention with cuBLAS products around the fused softmax: `qkv [3, H, L, D]` →
/// `[L, H·D]`; the scores `[H, L, L]` go through device memory once in the compute dtype.
pub fn attention_cublas(qkv: &Tensor) -> Result<Tensor> {
    let (_, h, l, d) = qkv.dims4()?;
    let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
    let scores = q.matmul(&k.t()?)?;
    let probs = softmax_scaled(&scores, (1.0 / (d as f64).sqrt()) as f32)?;
    probs.matmul(&v)?.transpose(0, 1)?.reshape((l, h * d))
}

/// Joint attention over `qkv [3, heads, L, head_dim]` as the settings choose: flash for head
/// dim 128, else (or with `MGPU_ATTENTION=cublas`) [`attention_cublas`].
pub fn attention(qkv: &Tensor) -> Result<Tensor> {
    let st = settings()?;
    let (_, _, _, d) = qkv.dims4()?;
    if st.attention == AttentionImpl::Flash && d == FLASH_HEAD_DIM {
        flash_attention(qkv, st.flash)
    } else {
        attention_cublas(qkv)
    }
}

// ---------------------------------------------------------------------------------------------

struct CatGelu {
    a: Option<Tensor>,
    col0: usize,
    m_cols: usize,
    bias: Tensor,
    /// Store e4m3fn bytes (an fp8 linear layer's input) instead of the element type.
    e4m3: bool,
}

cuda_op!(CatGelu, "flux-cat-gelu");

impl CatGelu {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        check_main(l, op.name())?;
        let dev = &s.device;
        let (rows, width) = l.shape().dims2()?;
        let src = view::<T>(s, l)?;
        let a_cols = match &op.a {
            Some(a) => a.dims2()?.1,
            None => 0,
        };
        let held_a = op.a.as_ref().map(|a| hold(a, "attention output"));
        let a = match &held_a {
            Some(h) => h.view::<T>()?,
            None => view::<T>(s, l)?, // never read when a_cols = 0
        };
        let bias = hold(&op.bias, "mlp bias");
        let bias = bias.view::<T>()?;
        let cols = a_cols + op.m_cols;
        let mut out = Out::<T>::new(dev, rows * cols, op.e4m3)?;
        let f = dev.get_or_load_custom_func(
            &format!("cat_gelu_{}{}", out.infix(), T::SUFFIX),
            EW_MODULE,
            EW_PTX,
        )?;
        let (w_i, c0_i, r_i, a_i, m_i) = (
            i32_arg(width, "width")?,
            i32_arg(op.col0, "column")?,
            i32_arg(rows, "rows")?,
            i32_arg(a_cols, "width")?,
            i32_arg(op.m_cols, "width")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (flat_blocks(rows * cols / 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&a).arg(&src).arg(&w_i).arg(&c0_i).arg(&bias);
        out.arg(&mut b);
        b.arg(&r_i).arg(&a_i).arg(&m_i);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out.storage(dev), Shape::from_dims(&[rows, cols])))
    }
}

/// `[a, gelu_tanh(src[:, col0..col0 + m_cols] + bias)]` along the columns, the GELU input
/// rounded after the bias as the reference's biased linear output is: the single block's
/// `cat([attn, gelu(mlp)])` (`a` = attention output) or a plain MLP activation (`a` = None).
pub fn cat_gelu(
    a: Option<&Tensor>,
    src: &Tensor,
    col0: usize,
    m_cols: usize,
    bias: &Tensor,
) -> Result<Tensor> {
    cat_gelu_to(a, src, col0, m_cols, bias, false)
}

/// [`cat_gelu`] stored as e4m3fn (`F8E4M3`) when `e4m3`, as [`ln_modulate_to`] stores.
pub fn cat_gelu_to(
    a: Option<&Tensor>,
    src: &Tensor,
    col0: usize,
    m_cols: usize,
    bias: &Tensor,
    e4m3: bool,
) -> Result<Tensor> {
    let (rows, width) = src.dims2()?;
    if col0 + m_cols > width
        || !col0.is_multiple_of(8)
        || !m_cols.is_multiple_of(8)
        || width % 8 != 0
    {
        bail!(
            "cat_gelu: columns {col0}..{} of a {width}-wide source (all multiples of 8)",
            col0 + m_cols
        )
    }
    check_vec(bias, m_cols, src.dtype(), "cat_gelu bias")?;
    let a = match a {
        Some(a) => {
            let (ra, ca) = a.dims2()?;
            let lay = a.layout();
            if ra != rows || ca % 8 != 0 || !lay.is_contiguous() || lay.start_offset() % 8 != 0 {
                bail!(
                    "cat_gelu: first part {:?} must be contiguous with {rows} rows and a width divisible by 8",
                    a.shape()
                )
            }
            Some(a.clone())
        }
        None => None,
    };
    src.contiguous()?.apply_op1_no_bwd(&CatGelu {
        a,
        col0,
        m_cols,
        bias: bias.clone(),
        e4m3,
    })
}

// ---------------------------------------------------------------------------------------------

struct GatedResidual {
    y: Tensor,
    bias: Tensor,
    gate: Tensor,
}

cuda_op!(GatedResidual, "flux-gated-residual");

impl GatedResidual {
    fn run<T: Elem>(op: &Self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        check_main(l, op.name())?;
        let dev = &s.device;
        let (rows, cols) = l.shape().dims2()?;
        let x = view::<T>(s, l)?;
        let (y, bias, gate) = (
            hold(&op.y, "residual branch"),
            hold(&op.bias, "projection bias"),
            hold(&op.gate, "gate"),
        );
        let (y, bias, gate) = (y.view::<T>()?, bias.view::<T>()?, gate.view::<T>()?);
        let mut out = unsafe { dev.alloc::<T>(rows * cols)? };
        let f = dev.get_or_load_custom_func(
            &format!("gated_residual_{}", T::SUFFIX),
            EW_MODULE,
            EW_PTX,
        )?;
        let (r_i, c_i) = (i32_arg(rows, "rows")?, i32_arg(cols, "width")?);
        let cfg = LaunchConfig {
            grid_dim: (flat_blocks(rows * cols / 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = f.builder();
        b.arg(&x)
            .arg(&y)
            .arg(&bias)
            .arg(&gate)
            .arg(&mut out)
            .arg(&r_i)
            .arg(&c_i);
        unsafe { b.launch(cfg) }.w()?;
        Ok((out_storage(out, dev), l.shape().clone()))
    }
}

/// `x + gate · (y + bias)` with the reference's rounding points (`y + bias` is the biased
/// projection output, `gate · ·` and the sum are rounded): a block's gated residual after a
/// bias-free matrix product `y`. `x`, `y`: `[rows, cols]`; `bias`, `gate`: `cols` elements.
pub fn gated_residual(x: &Tensor, y: &Tensor, bias: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (rows, cols) = x.dims2()?;
    if cols % 8 != 0 {
        bail!("gated_residual: width {cols} is not a multiple of 8")
    }
    if y.dims2()? != (rows, cols) || y.dtype() != x.dtype() {
        bail!(
            "gated_residual: branch {:?} {:?} does not match the residual {:?} {:?}",
            y.shape(),
            y.dtype(),
            x.shape(),
            x.dtype()
        )
    }
    check_vec(bias, cols, x.dtype(), "gated_residual bias")?;
    check_vec(gate, cols, x.dtype(), "gated_residual gate")?;
    let y = y.contiguous()?;
    if y.layout().start_offset() % 8 != 0 {
        bail!("gated_residual: branch offset not divisible by 8")
    }
    x.contiguous()?.apply_op1_no_bwd(&GatedResidual {
        y,
        bias: bias.clone(),
        gate: gate.clone(),
    })
}
