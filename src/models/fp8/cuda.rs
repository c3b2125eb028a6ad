//! The fp8 linear layer on a CUDA GPU: the activations are rounded to e4m3fn by the kernel of
//! `quant.cu` (unless a fused kernel already stored them as e4m3: `F8E4M3` input), then
//! cuBLASLt multiplies e4m3 × e4m3 on the tensor cores with f32 accumulation, the weight's
//! scale applied through `CUBLASLT_MATMUL_DESC_A_SCALE_POINTER` (a device pointer, so a
//! streamed weight's scale needs no host round trip), and writes bf16/f16.
//!
//! Layout (cuBLAS is column-major): `D[N, M]ᵀ = op(A)·B` with `A` = the weight `[N, K]`
//! row-major (= `K × N` column-major, `TRANSA = T`) and `B` = the quantised activations
//! `[M, K]` row-major (`K × M`, `TRANSB = N`): the "TN" form fp8 GEMMs require. `D` is
//! `[M, N]` row-major. `K` and `N` must be multiples of 16 and every pointer 16-byte aligned.
//!
//! One cuBLASLt handle and a 32 MiB workspace per device, and one descriptor set with its
//! heuristic's algorithm per shape, are made on first use and kept: the algorithm, and so the
//! summation order, is fixed for a process, whatever the weights' placement.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{
    bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage,
    Tensor,
};
use cudarc::cublaslt::{result as lt, sys};

const QUANT_MODULE: &str = "mgpu_fp8_quant";
const QUANT_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fp8_quant.ptx"));
/// cuBLASLt's workspace per device (NVIDIA recommends 32 MiB on Hopper).
const WORKSPACE: usize = 32 << 20;

fn lt_err(what: &str) -> impl Fn(lt::CublasError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("fp8 linear: cuBLASLt {what}: {e}"))
}

/// One shape's descriptors and algorithm; dropping it destroys the descriptors (also when
/// building them or finding an algorithm failed half-way).
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle is null or was created by cuBLASLt for this plan alone, and
        // nothing uses it after this. Errors are ignored: nothing could be done about them.
        unsafe {
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
        }
    }
}

/// A device's cuBLASLt handle, workspace and plans by `(m, n, k, output dtype)`.
struct State {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<(usize, usize, usize, DType), Plan>,
}

// SAFETY: the raw cuBLASLt handles are only used under the `STATES` mutex, one call at a time;
// cuBLASLt handles and descriptors may be used from any thread.
unsafe impl Send for State {}

fn states() -> &'static Mutex<HashMap<usize, State>> {
    static S: OnceLock<Mutex<HashMap<usize, State>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

fn cuda_dtype(d: DType) -> Result<sys::cudaDataType> {
    Ok(match d {
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::F8E4M3 => sys::cudaDataType::CUDA_R_8F_E4M3,
        d => bail!("fp8 linear: no cuBLASLt type for {d:?}"),
    })
}

impl Plan {
    /// Descriptors for `D[m, n] = op(A)[m, k] · B[k, n]` (cuBLAS terms) and the heuristic's
    /// first algorithm.
    fn new(st: &State, m: usize, n: usize, k: usize, out: DType) -> Result<Self> {
        let fast = std::env::var("MGPU_FP8_FAST_ACCUM").is_ok_and(|v| v == "1");
        let mut p = Plan::descriptors(m, n, k, out, fast)?;
        let h = p.heuristics(st, 1).map_err(|e| {
            candle_core::Error::Msg(format!(
                "fp8 linear: cuBLASLt has no fp8 GEMM for {m}×{n}×{k} on this GPU ({e}); fp8 compute needs compute capability 8.9 or newer (Ada, Hopper)"
            ))
        })?;
        p.algo = h[0].algo;
        Ok(p)
    }

    /// The descriptors, with a zeroed algorithm. `fast`: cuBLASLt's "fast accumulation" of
    /// fp8 products (off in the model: the products are summed at full f32 precision;
    /// `MGPU_FP8_FAST_ACCUM=1` to measure it).
    fn descriptors(m: usize, n: usize, k: usize, out: DType, fast: bool) -> Result<Self> {
        let e8 = cuda_dtype(DType::F8E4M3)?;
        let od = cuda_dtype(out)?;
        let desc = lt::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(lt_err("matmul descriptor"))?;
        let mut p = Plan {
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: a plain-data struct of integers; set before any matmul.
            algo: unsafe { std::mem::zeroed() },
        };
        let set = |attr, v: i32| {
            // SAFETY: `desc` is live; the attribute takes an i32.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, (&v) as *const i32 as *const _, 4) }
                .map_err(lt_err("transpose attribute"))
        };
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            1, /* CUBLAS_OP_T */
        )?;
        set(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            0, /* CUBLAS_OP_N */
        )?;
        let fast = i8::from(fast);
        // SAFETY: `desc` is live; the attribute takes an int8_t.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_FAST_ACCUM,
                (&fast) as *const i8 as *const _,
                1,
            )
        }
        .map_err(lt_err("fast-accumulation attribute"))?;
        let layout = |t, rows: usize, cols: usize| {
            lt::create_matrix_layout(t, rows as u64, cols as u64, rows as i64)
                .map_err(lt_err("matrix layout"))
        };
        p.a = layout(e8, k, m)?;
        p.b = layout(e8, k, n)?;
        p.d = layout(od, m, n)?;
        Ok(p)
    }

    /// Up to `count` algorithms, in the heuristic's order (best predicted first).
    fn heuristics(
        &self,
        st: &State,
        count: usize,
    ) -> std::result::Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, lt::CublasError> {
        let pref = lt::create_matmul_pref()?;
        let ws = WORKSPACE as u64;
        // SAFETY: `pref` is live; the attribute takes a u64.
        let set = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const u64 as *const _,
                8,
            )
        };
        // SAFETY: a plain-data struct; cuBLASLt fills the first `got` entries.
        let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; count.max(1)];
        let mut got = 0i32;
        let r = set.and_then(|()| {
            // SAFETY: every descriptor is live; `found` has room for `count` results.
            unsafe {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    st.handle,
                    self.desc,
                    self.a,
                    self.b,
                    self.d,
                    self.d,
                    pref,
                    found.len() as i32,
                    found.as_mut_ptr(),
                    &mut got,
                )
            }
            .result()
        });
        // SAFETY: `pref` is not used after this.
        unsafe { lt::destroy_matmul_pref(pref) }?;
        r?;
        if got <= 0 {
            return Err(lt::CublasError(
                sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED,
            ));
        }
        found.truncate(got as usize);
        Ok(found)
    }
}

/// The GEMM's output buffer, typed.
enum Out {
    Bf16(CudaSlice<half::bf16>),
    F16(CudaSlice<half::f16>),
}

impl Out {
    fn new(dev: &CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        // SAFETY: the GEMM writes every element before anything reads it.
        Ok(match dtype {
            DType::BF16 => Out::Bf16(unsafe { dev.alloc::<half::bf16>(len)? }),
            DType::F16 => Out::F16(unsafe { dev.alloc::<half::f16>(len)? }),
            d => bail!("fp8 linear: a product in {d:?} on CUDA (bf16 or f16)"),
        })
    }

    fn ptr(&self, stream: &candle_core::cuda_backend::cudarc::driver::CudaStream) -> u64 {
        match self {
            Out::Bf16(s) => s.device_ptr(stream).0,
            Out::F16(s) => s.device_ptr(stream).0,
        }
    }

    fn into_slice(self) -> candle_core::cuda_backend::CudaStorageSlice {
        match self {
            Out::Bf16(s) => candle_core::cuda_backend::CudaStorageSlice::BF16(s),
            Out::F16(s) => candle_core::cuda_backend::CudaStorageSlice::F16(s),
        }
    }
}

/// The op: `x [rows, K]` (bf16/f16, or e4m3 already rounded) → `[rows, N]` in `out`.
struct Fp8Linear {
    w: Tensor,
    scale: Tensor,
    out: DType,
}

fn cuda_ptr(
    t: &Tensor,
    stream: &candle_core::cuda_backend::cudarc::driver::CudaStream,
    what: &str,
) -> Result<u64> {
    let (s, l) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*s else {
        bail!("fp8 linear: the {what} is not on a CUDA device")
    };
    if !l.is_contiguous() {
        bail!("fp8 linear: the {what} is not contiguous")
    }
    let size = t.dtype().size_in_bytes() as u64;
    let base = match t.dtype() {
        DType::F8E4M3 => cs.as_cuda_slice::<float8::F8E4M3>()?.device_ptr(stream).0,
        DType::F32 => cs.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        d => bail!("fp8 linear: the {what} is {d:?}"),
    };
    Ok(base + l.start_offset() as u64 * size)
}

impl CustomOp1 for Fp8Linear {
    fn name(&self) -> &'static str {
        "fp8-linear"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("fp8-linear is a CUDA op; the CPU computes models::fp8::reference_matmul_t")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev: &CudaDevice = &s.device;
        let (rows, k) = l.shape().dims2()?;
        let (n, wk) = self.w.dims2()?;
        if wk != k || !k.is_multiple_of(16) || !n.is_multiple_of(16) {
            bail!(
                "fp8 linear: {rows}×{k} · ({n}×{wk})ᵀ: the inner sizes must agree and both K and N be multiples of 16"
            )
        }
        if !l.is_contiguous() || !l.start_offset().is_multiple_of(8) {
            bail!("fp8 linear: the input must be contiguous at an offset divisible by 8")
        }
        let stream = dev.cuda_stream();
        let out_dtype = self.out;
        // 1. Activations → e4m3 (unless a kernel stored them so).
        let (_held, qptr) = match s.dtype() {
            DType::F8E4M3 => (
                None,
                s.as_cuda_slice::<float8::F8E4M3>()?.device_ptr(&stream).0
                    + l.start_offset() as u64,
            ),
            _ => {
                let q = quantize(dev, s, l)?;
                let p = q.device_ptr(&stream).0;
                (Some(q), p)
            }
        };
        // 2. The GEMM.
        let out = Out::new(dev, out_dtype, rows * n)?;
        let wptr = cuda_ptr(&self.w, &stream, "weight")?;
        let sptr = cuda_ptr(&self.scale, &stream, "scale")?;
        let dptr = out.ptr(&stream);
        for (p, what) in [(wptr, "weight"), (qptr, "activations"), (dptr, "output")] {
            if p % 16 != 0 {
                bail!("fp8 linear: the {what} is not 16-byte aligned")
            }
        }
        let ordinal = stream.context().ordinal();
        stream.context().bind_to_thread().w()?;
        let mut all = states().lock().map_err(|_| {
            candle_core::Error::Msg("fp8 linear: a thread panicked holding cuBLASLt".into())
        })?;
        let st = state(&mut all, dev, ordinal)?;
        let key = (n, rows, k, out_dtype);
        if !st.plans.contains_key(&key) {
            let p = Plan::new(st, n, rows, k, out_dtype)?;
            st.plans.insert(key, p);
        }
        let plan = &st.plans[&key];
        launch(st, plan, [wptr, sptr, qptr, dptr], &stream)?;
        drop(all);
        let slice = out.into_slice();
        Ok((
            CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from((rows, n)),
        ))
    }
}

/// The device's cuBLASLt state, made on first use.
fn state<'a>(
    all: &'a mut HashMap<usize, State>,
    dev: &CudaDevice,
    ordinal: usize,
) -> Result<&'a mut State> {
    Ok(match all.entry(ordinal) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let handle = lt::create_handle().map_err(lt_err("handle"))?;
            // SAFETY: cuBLASLt's workspace; nothing reads it before cuBLASLt writes it.
            let workspace = unsafe { dev.alloc::<u8>(WORKSPACE)? };
            v.insert(State {
                handle,
                workspace,
                plans: HashMap::new(),
            })
        }
    })
}

/// One GEMM of `plan` on `stream`: `ptrs` = the weight, its scale, the quantised
/// activations and the output (device pointers of the sizes the layouts describe).
fn launch(
    st: &State,
    plan: &Plan,
    ptrs: [u64; 4],
    stream: &candle_core::cuda_backend::cudarc::driver::CudaStream,
) -> Result<()> {
    let [wptr, sptr, qptr, dptr] = ptrs;
    // SAFETY: the descriptor is live; the attribute takes a device pointer.
    unsafe {
        lt::set_matmul_desc_attribute(
            plan.desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER,
            (&sptr) as *const u64 as *const _,
            8,
        )
    }
    .map_err(lt_err("scale pointer"))?;
    let (alpha, beta) = (1f32, 0f32);
    let wsp = st.workspace.device_ptr(stream).0;
    // SAFETY: pointers are live device buffers of the sizes the layouts describe, on this
    // stream; alpha and beta are host f32 (the default pointer mode).
    unsafe {
        lt::matmul(
            st.handle,
            plan.desc,
            (&alpha) as *const f32 as *const _,
            (&beta) as *const f32 as *const _,
            wptr as *const _,
            plan.a,
            qptr as *const _,
            plan.b,
            dptr as *const _,
            plan.d,
            dptr as *mut _,
            plan.d,
            &plan.algo,
            wsp as *mut _,
            WORKSPACE,
            stream.cu_stream() as *mut _,
        )
    }
    .map_err(lt_err("matmul"))
}

/// [`super::matmul_t_to`] on a CUDA device.
pub fn matmul_t(x: &Tensor, w: &Tensor, scale: &Tensor, out: DType) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Fp8Linear {
        w: w.contiguous()?,
        scale: scale.contiguous()?,
        out,
    })
}

/// Runs the activation rounding over every bf16 and f16 bit pattern and compares it with the
/// CPU's ([`super::quantize_e4m3`]), then one GEMM per shape against the CPU reference
/// (agreement to f32 summation order: a relative error under 1e-3 of the row's magnitude).
/// Returns what differs (empty: all agree).
pub fn check(device: &candle_core::Device) -> Result<Vec<String>> {
    use candle_core::Device;
    let mut fails = Vec::new();
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    for dt in [DType::BF16, DType::F16] {
        let vals: Vec<f32> = bits
            .iter()
            .map(|&b| match dt {
                DType::BF16 => half::bf16::from_bits(b).to_f32(),
                _ => half::f16::from_bits(b).to_f32(),
            })
            .collect();
        let want = super::quantize_e4m3(&vals);
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let x = Tensor::from_raw_buffer(&bytes, dt, &[1, bits.len()], device)?;
        // Through the op with an identity-like weight is not needed: call the kernel alone.
        let got = quantize_only(&x)?;
        let bad = want
            .iter()
            .zip(&got)
            .enumerate()
            .filter(|(_, (a, b))| {
                // NaN encodings may differ in sign/payload; both must be NaN.
                let (fa, fb) = (
                    float8::F8E4M3::from_bits(**a).to_f32(),
                    float8::F8E4M3::from_bits(**b).to_f32(),
                );
                !(a == b || (fa.is_nan() && fb.is_nan()))
            })
            .count();
        if bad > 0 {
            fails.push(format!(
                "{bad} of 65536 {dt:?} patterns round to a different e4m3 value"
            ));
        }
    }
    for (rows, k, n) in [(1, 64, 16), (77, 3072, 256), (512, 256, 4096)] {
        let xv: Vec<f32> = (0..rows * k)
            .map(|i| (((i * 7919) % 2003) as f32 - 1001.0) / 150.0)
            .collect();
        let wv: Vec<f32> = (0..n * k)
            .map(|i| (((i * 104729) % 1999) as f32 - 999.0) / 800.0)
            .collect();
        let (wq, s) = super::quantize_weight(&wv);
        let x = Tensor::from_vec(xv, (rows, k), &Device::Cpu)?.to_dtype(DType::BF16)?;
        let w = Tensor::from_raw_buffer(&wq, DType::F8E4M3, &[n, k], &Device::Cpu)?;
        let sc = Tensor::new(&[s], &Device::Cpu)?;
        let want = super::reference_matmul_t(&x, &w, &sc)?;
        let got = matmul_t(
            &x.to_device(device)?,
            &w.to_device(device)?,
            &sc.to_device(device)?,
            DType::BF16,
        )?
        .to_device(&Device::Cpu)?;
        let (max_err, psnr) = super::compare(&got, &want)?;
        let peak = want
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        // Both round an f32 sum to bf16 (2⁻⁸ relative); the sums differ only in order.
        if max_err > peak * 1.0e-2 {
            fails.push(format!(
                "{rows}×{k}·{n}: max |GPU − CPU| {max_err} against a peak of {peak} (PSNR {psnr:.1} dB)"
            ));
        }
    }
    fails.extend(check_fused_e4m3(device)?);
    Ok(fails)
}

/// The FLUX kernels that store an fp8 layer's input as e4m3 (`ln_modulate_to`,
/// `cat_gelu_to`) against their element-type output rounded by [`quantize`]: bit for bit, in
/// bf16 and f16, on random rows wide enough to reach ±448.
fn check_fused_e4m3(device: &candle_core::Device) -> Result<Vec<String>> {
    use crate::models::flux::kernels as kern;
    let mut fails = Vec::new();
    let bytes = |t: &Tensor| -> Result<Vec<u8>> {
        match t.dtype() {
            DType::F8E4M3 => Ok(t
                .flatten_all()?
                .to_vec1::<float8::F8E4M3>()?
                .into_iter()
                .map(|v| v.to_bits())
                .collect()),
            _ => quantize_only(t),
        }
    };
    let (rows, cols, mlp) = (37, 256, 512);
    for dt in [DType::BF16, DType::F16] {
        let r = |shape: &[usize], s: f32| -> Result<Tensor> {
            Tensor::randn(0f32, s, shape, device)?.to_dtype(dt)
        };
        let (x, shift, scale) = (
            r(&[rows, cols], 3.0)?,
            r(&[cols], 40.0)?,
            r(&[cols], 100.0)?,
        );
        let src = r(&[rows, cols + mlp], 200.0)?;
        let (a, bias) = (r(&[rows, cols], 300.0)?, r(&[mlp], 1.0)?);
        let pairs = [
            (
                "ln_modulate",
                kern::ln_modulate(&x, &shift, &scale)?,
                kern::ln_modulate_to(&x, &shift, &scale, true)?,
            ),
            (
                "cat_gelu (MLP)",
                kern::cat_gelu(None, &src, cols, mlp, &bias)?,
                kern::cat_gelu_to(None, &src, cols, mlp, &bias, true)?,
            ),
            (
                "cat_gelu (single block)",
                kern::cat_gelu(Some(&a), &src, cols, mlp, &bias)?,
                kern::cat_gelu_to(Some(&a), &src, cols, mlp, &bias, true)?,
            ),
        ];
        for (what, wide, e4m3) in pairs {
            let (want, got) = (bytes(&wide)?, bytes(&e4m3)?);
            let saturated = want.iter().filter(|&&b| b & 0x7f == 0x7e).count();
            let bad = want.iter().zip(&got).filter(|(a, b)| a != b).count();
            if bad > 0 || want.len() != got.len() {
                fails.push(format!(
                    "{what} {dt:?} stored as e4m3: {bad} of {} bytes differ from rounding its output",
                    want.len()
                ));
            }
            if saturated == 0 {
                fails.push(format!(
                    "{what} {dt:?}: the check reached no ±448 (make it wider)"
                ));
            }
        }
    }
    Ok(fails)
}

/// The activation rounding (`quant.cu`) of `s` at layout `l` (bf16/f16, contiguous, an
/// element count divisible by 8, 16-byte aligned): one e4m3 byte per value, on `s`'s stream.
fn quantize(dev: &CudaDevice, s: &CudaStorage, l: &Layout) -> Result<CudaSlice<u8>> {
    let n = l.shape().elem_count();
    if !l.is_contiguous() || !n.is_multiple_of(8) || !l.start_offset().is_multiple_of(8) {
        bail!(
            "fp8 rounding: the input must be contiguous, at an offset and of a size divisible by 8"
        )
    }
    let stream = dev.cuda_stream();
    let (base, suffix) = match s.dtype() {
        DType::BF16 => (
            s.as_cuda_slice::<half::bf16>()?.device_ptr(&stream).0,
            "bf16",
        ),
        DType::F16 => (s.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0, "f16"),
        d => bail!("fp8 rounding: activations in {d:?} (fp8 compute runs in bf16 or f16)"),
    };
    let ptr = base + 2 * l.start_offset() as u64;
    // SAFETY: the kernel writes every byte before anything reads it.
    let mut out = unsafe { dev.alloc::<u8>(n)? };
    let f =
        dev.get_or_load_custom_func(&format!("quantize_e4m3_{suffix}"), QUANT_MODULE, QUANT_PTX)?;
    let n8 = (n / 8) as u64;
    let cfg = LaunchConfig {
        grid_dim: (n8.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = f.builder();
    b.arg(&ptr).arg(&mut out).arg(&n8);
    // SAFETY: `ptr` holds n 2-byte values, `out` n bytes.
    unsafe { b.launch(cfg) }.w()?;
    Ok(out)
}

/// The activation rounding alone, read back: `x` (bf16/f16) → e4m3 bytes.
fn quantize_only(x: &Tensor) -> Result<Vec<u8>> {
    let candle_core::Device::Cuda(dev) = x.device() else {
        bail!("quantize: not a CUDA tensor")
    };
    let (s, l) = x.storage_and_layout();
    let Storage::Cuda(cs) = &*s else {
        bail!("quantize: not a CUDA tensor")
    };
    let out = quantize(dev, cs, l)?;
    dev.cuda_stream().clone_dtoh(&out).w()
}

/// One cuBLASLt algorithm's time in [`sweep`].
#[derive(Debug, Clone)]
pub struct AlgoTiming {
    /// Its configuration: cuBLASLt's algorithm, tile, stages, split-K and cluster ids.
    pub config: String,
    /// With cuBLASLt's fast accumulation of the fp8 products.
    pub fast_accum: bool,
    /// Milliseconds per GEMM (the mean of `runs` after two untimed calls).
    pub ms: f64,
    /// Whether its output is bit-identical to the algorithm the model uses (the heuristic's
    /// first, without fast accumulation).
    pub same_bits: bool,
}

/// A diagnostic (`mgpu bench --ops`): every algorithm the heuristic offers (up to `count`,
/// with and without fast accumulation) for an fp8 GEMM `[rows, k] · [n, k]ᵀ → bf16`, on random
/// operands, timed and compared bit for bit with the model's choice — what a fixed, tuned
/// choice per shape could gain, and whether it would change the results.
pub fn sweep(
    device: &candle_core::Device,
    rows: usize,
    k: usize,
    n: usize,
    count: usize,
    runs: usize,
) -> Result<Vec<AlgoTiming>> {
    let candle_core::Device::Cuda(dev) = device else {
        bail!("fp8 sweep: not a CUDA device")
    };
    let x = Tensor::randn(0f32, 1.0, (rows, k), device)?.to_dtype(DType::BF16)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let wbytes: Vec<u8> = (0..n * k)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            // Any finite e4m3fn value: not the NaN patterns 0x7f / 0xff.
            let b = (seed >> 56) as u8;
            if b & 0x7f == 0x7f {
                b & 0xfe
            } else {
                b
            }
        })
        .collect();
    let w = Tensor::from_raw_buffer(&wbytes, DType::F8E4M3, &[n, k], device)?;
    let scale = Tensor::new(&[0.01f32], device)?;
    let stream = dev.cuda_stream();
    let (xs, xl) = x.storage_and_layout();
    let Storage::Cuda(xc) = &*xs else {
        bail!("fp8 sweep: not a CUDA tensor")
    };
    let xq = quantize(dev, xc, xl)?;
    let out = Out::new(dev, DType::BF16, rows * n)?;
    let ptrs = [
        cuda_ptr(&w, &stream, "weight")?,
        cuda_ptr(&scale, &stream, "scale")?,
        xq.device_ptr(&stream).0,
        out.ptr(&stream),
    ];
    let read = |o: &Out| -> Result<Vec<u16>> {
        match o {
            Out::Bf16(s) => Ok(stream
                .clone_dtoh(s)
                .w()?
                .into_iter()
                .map(|v| v.to_bits())
                .collect()),
            Out::F16(_) => bail!("fp8 sweep: bf16 output expected"),
        }
    };
    stream.context().bind_to_thread().w()?;
    let mut all = states().lock().map_err(|_| {
        candle_core::Error::Msg("fp8 sweep: a thread panicked holding cuBLASLt".into())
    })?;
    let st = state(&mut all, dev, stream.context().ordinal())?;
    let mut reference: Option<Vec<u16>> = None;
    let mut found = Vec::new();
    for fast in [false, true] {
        let mut plan = Plan::descriptors(n, rows, k, DType::BF16, fast)?;
        let hs = plan.heuristics(st, count).map_err(lt_err("heuristic"))?;
        for h in hs {
            plan.algo = h.algo;
            for _ in 0..2 {
                launch(st, &plan, ptrs, &stream)?;
            }
            stream.synchronize().w()?;
            let t0 = std::time::Instant::now();
            for _ in 0..runs.max(1) {
                launch(st, &plan, ptrs, &stream)?;
            }
            stream.synchronize().w()?;
            let ms = t0.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64;
            let bits = read(&out)?;
            let same_bits = match &reference {
                None => {
                    reference = Some(bits);
                    true
                }
                Some(r) => *r == bits,
            };
            found.push(AlgoTiming {
                config: algo_config(&plan.algo),
                fast_accum: fast,
                ms,
                same_bits,
            });
        }
    }
    Ok(found)
}

/// `algo=… tile=… stages=… splitk=… cluster=…` of a cuBLASLt algorithm (`?` where cuBLASLt
/// does not say).
fn algo_config(algo: &sys::cublasLtMatmulAlgo_t) -> String {
    use sys::cublasLtMatmulAlgoConfigAttributes_t as A;
    let get = |attr: A| -> Option<u64> {
        let mut size = 0usize;
        // SAFETY: a size query (no buffer).
        unsafe {
            sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                std::ptr::null_mut(),
                0,
                &mut size,
            )
        }
        .result()
        .ok()?;
        if size == 0 || size > 8 {
            return None;
        }
        let mut buf = [0u8; 8];
        let mut written = 0usize;
        // SAFETY: `buf` holds `size` ≤ 8 bytes.
        unsafe {
            sys::cublasLtMatmulAlgoConfigGetAttribute(
                algo,
                attr,
                buf.as_mut_ptr() as *mut _,
                size,
                &mut written,
            )
        }
        .result()
        .ok()?;
        Some(u64::from_le_bytes(buf))
    };
    let f = |attr| get(attr).map_or("?".to_string(), |v| v.to_string());
    format!(
        "algo={} tile={} stages={} splitk={} cluster={}",
        f(A::CUBLASLT_ALGO_CONFIG_ID),
        f(A::CUBLASLT_ALGO_CONFIG_TILE_ID),
        f(A::CUBLASLT_ALGO_CONFIG_STAGES_ID),
        f(A::CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
        f(A::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID),
    )
}
