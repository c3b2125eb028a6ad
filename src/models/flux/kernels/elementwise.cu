// Fused memory-bound kernels of the FLUX blocks on CUDA (see src/models/flux/kernels/mod.rs).
//
// Every kernel computes in f32 and rounds to the element type at the same points as the
// reference path (BFL/diffusers, and the candle path in block.rs): where the reference rounds
// an intermediate to bf16, so does the kernel, with `Tr::round`. Reductions have a fixed order
// that depends on the shape only (no atomics), so results are deterministic.
//
// Vector paths need 16-byte alignment: row lengths, strides and offsets that are multiples of
// 8 elements (checked by the Rust side before launching).
#include "common.cuh"

// Vectors each thread loads before using the first (memory-level parallelism of row kernels).
constexpr int UNROLL = 4;

// y = round(round(round(LN(x)) * round(1 + scale)) + shift), LN without affine (two-pass
// variance in f32, eps inside the square root). One block per row; the row is cached in
// shared memory as f32 (dynamic shared memory: cols floats), element j of vector i at
// j·nv + i so that a warp's accesses hit consecutive words (no bank conflicts).
template <class Tr, class St>
__device__ __forceinline__ void ln_modulate(const typename Tr::T* __restrict__ x,
                                            const typename Tr::T* __restrict__ shift,
                                            const typename Tr::T* __restrict__ scale,
                                            typename St::O* __restrict__ y, int cols, float eps) {
    extern __shared__ float row[];
    __shared__ float scratch[33];
    const size_t r = blockIdx.x;
    const typename Tr::T* xr = x + r * cols;
    typename St::O* yr = y + r * cols;
    const int nv = cols >> 3;
    float s = 0.f;
    // Up to UNROLL loads in flight per thread before their first use.
    for (int base = threadIdx.x; base < nv; base += UNROLL * blockDim.x) {
        float f[UNROLL][8];
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * blockDim.x;
            if (i < nv) load8<Tr>(xr + i * 8, f[u]);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int i = base + u * blockDim.x;
            if (i < nv) {
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    row[j * nv + i] = f[u][j];
                    s += f[u][j];
                }
            }
        }
    }
    const float mean = block_sum(s, scratch) / (float)cols;
    float ss = 0.f;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float d = row[j * nv + i] - mean;
            ss += d * d;
        }
    }
    const float var = block_sum(ss, scratch) / (float)cols;
    const float inv = 1.f / sqrtf(var + eps);
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        float sc[8], sh[8], o[8];
        load8<Tr>(scale + i * 8, sc);
        load8<Tr>(shift + i * 8, sh);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float n = Tr::round((row[j * nv + i] - mean) * inv);
            float m = Tr::round(n * Tr::round(sc[j] + 1.f));
            o[j] = m + sh[j];
        }
        St::store8(yr + i * 8, o);
    }
}

// Splits one segment of a fused qkv projection into q, k, v [3, heads, l_total, head_dim]
// (rows tok0 .. tok0 + n_tok), adding the projection bias and, for q and k, applying BFL's
// QKNorm (RMSNorm in f32, rounded, times the scale, rounded) and the interleaved rotary
// embedding (in f32, rounded). `src` row t holds (which, head, d) at columns
// [0, 3·heads·head_dim) of a row of `src_stride` elements. A group of head_dim/8 threads
// handles one (token, which, head) vector; the RMS sum is reduced inside the group.
template <class Tr>
__device__ __forceinline__ void qkv_rope(const typename Tr::T* __restrict__ src, int src_stride,
                                         const typename Tr::T* __restrict__ bias,
                                         const typename Tr::T* __restrict__ q_scale,
                                         const typename Tr::T* __restrict__ k_scale,
                                         const float* __restrict__ cos_t,
                                         const float* __restrict__ sin_t,
                                         typename Tr::T* __restrict__ dst, int n_tok, int tok0,
                                         int l_total, int heads, int head_dim, float eps) {
    const int g = head_dim >> 3;  // threads per vector, a power of two <= 32
    const int gpb = blockDim.x / g;
    const long long gi = (long long)blockIdx.x * gpb + threadIdx.x / g;
    const int li = threadIdx.x % g;
    const long long total = (long long)n_tok * 3 * heads;
    const bool valid = gi < total;
    int h = 0, which = 0, t = 0;
    float f[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = 0.f;
    if (valid) {
        h = (int)(gi % heads);
        which = (int)((gi / heads) % 3);
        t = (int)(gi / (3LL * heads));
        const int col = (which * heads + h) * head_dim + li * 8;
        float b[8];
        load8<Tr>(src + (size_t)t * src_stride + col, f);
        load8<Tr>(bias + col, b);
#pragma unroll
        for (int j = 0; j < 8; ++j) f[j] = Tr::round(f[j] + b[j]);
    }
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) ss += f[j] * f[j];
    // Every thread of the warp takes part (groups never straddle warps: g divides 32).
    for (int o = g >> 1; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!valid) return;
    float out[8];
    if (which < 2) {
        const float rms = sqrtf(ss / (float)head_dim + eps);
        float sc[8];
        load8<Tr>((which == 0 ? q_scale : k_scale) + li * 8, sc);
        float y[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) y[j] = Tr::round(Tr::round(f[j] / rms) * sc[j]);
        const int tok = tok0 + t;
        const float4 c = *reinterpret_cast<const float4*>(cos_t + (size_t)tok * (head_dim >> 1) + li * 4);
        const float4 s = *reinterpret_cast<const float4*>(sin_t + (size_t)tok * (head_dim >> 1) + li * 4);
        const float cc[4] = {c.x, c.y, c.z, c.w}, sn[4] = {s.x, s.y, s.z, s.w};
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            out[2 * m] = y[2 * m] * cc[m] - y[2 * m + 1] * sn[m];
            out[2 * m + 1] = y[2 * m] * sn[m] + y[2 * m + 1] * cc[m];
        }
    } else {
#pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = f[j];
    }
    store8<Tr>(dst + (((size_t)which * heads + h) * l_total + tok0 + t) * head_dim + li * 8, out);
}

// y[r, :] = softmax(scale · x[r, :]) with f32 arithmetic, rounded once. One block per row;
// the row is cached in shared memory as f32 (cols floats; in the vector path element j of
// vector i at j·nv + i, conflict-free). `scale_log2` = scale · log2(e).
template <class Tr, bool VEC>
__device__ __forceinline__ void softmax_rows(const typename Tr::T* __restrict__ x,
                                             typename Tr::T* __restrict__ y, int cols,
                                             float scale_log2) {
    extern __shared__ float row[];
    __shared__ float scratch[33];
    const size_t r = blockIdx.x;
    const typename Tr::T* xr = x + r * cols;
    typename Tr::T* yr = y + r * cols;
    const int nv = cols >> 3;
    float m = -INFINITY;
    if (VEC) {
        for (int base = threadIdx.x; base < nv; base += UNROLL * blockDim.x) {
            float f[UNROLL][8];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int i = base + u * blockDim.x;
                if (i < nv) load8<Tr>(xr + i * 8, f[u]);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int i = base + u * blockDim.x;
                if (i < nv) {
#pragma unroll
                    for (int j = 0; j < 8; ++j) {
                        const float v = f[u][j] * scale_log2;
                        row[j * nv + i] = v;
                        m = fmaxf(m, v);
                    }
                }
            }
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float v = (float)xr[i] * scale_log2;
            row[i] = v;
            m = fmaxf(m, v);
        }
    }
    m = block_max(m, scratch);
    float s = 0.f;
    if (VEC) {
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                float e = fast_exp2(row[j * nv + i] - m);
                row[j * nv + i] = e;
                s += e;
            }
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            float e = fast_exp2(row[i] - m);
            row[i] = e;
            s += e;
        }
    }
    const float inv = 1.f / block_sum(s, scratch);
    if (VEC) {
        for (int i = threadIdx.x; i < nv; i += blockDim.x) {
            float o[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) o[j] = row[j * nv + i] * inv;
            store8<Tr>(yr + i * 8, o);
        }
    } else {
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            yr[i] = (typename Tr::T)(row[i] * inv);
        }
    }
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k0 = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.f + tanhf(k0 * x * (1.f + 0.044715f * x * x)));
}

// dst[r, 0:a_cols] = a[r, :] and dst[r, a_cols:a_cols+m_cols] =
// round(gelu(round(src[r, col0 + c] + bias[c]))): the MLP activation of a block (a_cols = 0)
// or the single block's `cat([attn, gelu(mlp)])`. Rows of `src` have `src_stride` elements.
template <class Tr, class St>
__device__ __forceinline__ void cat_gelu(const typename Tr::T* __restrict__ a,
                                         const typename Tr::T* __restrict__ src, int src_stride,
                                         int col0, const typename Tr::T* __restrict__ bias,
                                         typename St::O* __restrict__ dst, int rows, int a_cols,
                                         int m_cols) {
    const int av = a_cols >> 3, vpr = (a_cols + m_cols) >> 3;
    const long long n = (long long)rows * vpr;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int r = (int)(i / vpr), v = (int)(i % vpr);
        float o[8];
        if (v < av) {
            load8<Tr>(a + (size_t)r * a_cols + v * 8, o);
        } else {
            const int c = (v - av) * 8;
            float f[8], b[8];
            load8<Tr>(src + (size_t)r * src_stride + col0 + c, f);
            load8<Tr>(bias + c, b);
#pragma unroll
            for (int j = 0; j < 8; ++j) o[j] = gelu_tanh(Tr::round(f[j] + b[j]));
        }
        St::store8(dst + (size_t)r * (a_cols + m_cols) + v * 8, o);
    }
}

// out = round(x + round(gate · round(y + bias))): a block's gated residual after a
// projection whose bias was left out of the matrix product.
template <class Tr>
__device__ __forceinline__ void gated_residual(const typename Tr::T* __restrict__ x,
                                               const typename Tr::T* __restrict__ y,
                                               const typename Tr::T* __restrict__ bias,
                                               const typename Tr::T* __restrict__ gate,
                                               typename Tr::T* __restrict__ out, int rows,
                                               int cols) {
    const int vpr = cols >> 3;
    const long long n = (long long)rows * vpr;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % vpr) * 8;
        float xv[8], yv[8], b[8], g[8], o[8];
        load8<Tr>(x + i * 8, xv);
        load8<Tr>(y + i * 8, yv);
        load8<Tr>(bias + c, b);
        load8<Tr>(gate + c, g);
#pragma unroll
        for (int j = 0; j < 8; ++j) o[j] = xv[j] + Tr::round(g[j] * Tr::round(yv[j] + b[j]));
        store8<Tr>(out + i * 8, o);
    }
}

#define FLUX_ELEMENTWISE(SUFFIX, TR)                                                            \
    extern "C" __global__ void ln_modulate_##SUFFIX(const TR::T* x, const TR::T* shift,         \
                                                    const TR::T* scale, TR::T* y, int cols,     \
                                                    float eps) {                                \
        ln_modulate<TR, Same<TR>>(x, shift, scale, y, cols, eps);                               \
    }                                                                                           \
    extern "C" __global__ void ln_modulate_e4m3_##SUFFIX(const TR::T* x, const TR::T* shift,    \
                                                         const TR::T* scale, uint8_t* y,        \
                                                         int cols, float eps) {                 \
        ln_modulate<TR, E4m3<TR>>(x, shift, scale, y, cols, eps);                               \
    }                                                                                           \
    extern "C" __global__ void qkv_rope_##SUFFIX(                                               \
        const TR::T* src, int src_stride, const TR::T* bias, const TR::T* q_scale,              \
        const TR::T* k_scale, const float* cos_t, const float* sin_t, TR::T* dst, int n_tok,    \
        int tok0, int l_total, int heads, int head_dim, float eps) {                            \
        qkv_rope<TR>(src, src_stride, bias, q_scale, k_scale, cos_t, sin_t, dst, n_tok, tok0,   \
                     l_total, heads, head_dim, eps);                                            \
    }                                                                                           \
    extern "C" __global__ void softmax_vec_##SUFFIX(const TR::T* x, TR::T* y, int cols,         \
                                                    float scale_log2) {                         \
        softmax_rows<TR, true>(x, y, cols, scale_log2);                                         \
    }                                                                                           \
    extern "C" __global__ void softmax_scalar_##SUFFIX(const TR::T* x, TR::T* y, int cols,      \
                                                       float scale_log2) {                      \
        softmax_rows<TR, false>(x, y, cols, scale_log2);                                        \
    }                                                                                           \
    extern "C" __global__ void cat_gelu_##SUFFIX(const TR::T* a, const TR::T* src,              \
                                                 int src_stride, int col0, const TR::T* bias,   \
                                                 TR::T* dst, int rows, int a_cols,              \
                                                 int m_cols) {                                  \
        cat_gelu<TR, Same<TR>>(a, src, src_stride, col0, bias, dst, rows, a_cols, m_cols);      \
    }                                                                                           \
    extern "C" __global__ void cat_gelu_e4m3_##SUFFIX(const TR::T* a, const TR::T* src,         \
                                                      int src_stride, int col0,                 \
                                                      const TR::T* bias, uint8_t* dst,          \
                                                      int rows, int a_cols, int m_cols) {       \
        cat_gelu<TR, E4m3<TR>>(a, src, src_stride, col0, bias, dst, rows, a_cols, m_cols);      \
    }                                                                                           \
    extern "C" __global__ void gated_residual_##SUFFIX(const TR::T* x, const TR::T* y,          \
                                                       const TR::T* bias, const TR::T* gate,    \
                                                       TR::T* out, int rows, int cols) {        \
        gated_residual<TR>(x, y, bias, gate, out, rows, cols);                                  \
    }

FLUX_ELEMENTWISE(bf16, Bf16)
FLUX_ELEMENTWISE(f16, F16)
