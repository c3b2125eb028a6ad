// Dequantisation of GGML blocks on the compute GPU, into the slot's bf16 region.
// Bit-identical to the CPU path (weights::gguf::dequant then round to bf16): the product
// q * d is formed in f32 exactly as there, then rounded to nearest even.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Q8_0: blocks of 34 bytes: f16 scale d, then 32 signed bytes q; x = q * d.
// One thread per output value: the fallback for a destination not 16-byte aligned.
extern "C" __global__ void dequant_q8_0_bf16(const unsigned char* __restrict__ src,
                                             __nv_bfloat16* __restrict__ dst,
                                             unsigned long long nblocks) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= nblocks * 32ull) return;
    const unsigned char* blk = src + (idx >> 5) * 34ull;
    unsigned short bits = (unsigned short)blk[0] | ((unsigned short)blk[1] << 8);
    float d = __half2float(__ushort_as_half(bits));
    float q = (float)(signed char)blk[2 + (idx & 31)];
    dst[idx] = __float2bfloat16_rn(q * d);
}

// The same values, 8 per thread (a quarter of a block): the block's scale and 8 bytes of q
// read as 16-bit words (a block starts at an even offset), the 8 bf16 results written as one
// 16-byte store, so a warp reads 8 whole blocks (272 contiguous bytes) and writes 512. The
// one-value-per-thread kernel above ran at ~1.2 TB/s of traffic on the H200 (0.55 ms per FLUX
// block); this one is limited by memory. `dst` must be 16-byte aligned (slot regions are 256).
extern "C" __global__ void dequant_q8_0_bf16_x8(const unsigned char* __restrict__ src,
                                                __nv_bfloat16* __restrict__ dst,
                                                unsigned long long nblocks) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= nblocks * 4ull) return;
    const unsigned char* blk = src + (idx >> 2) * 34ull;
    const unsigned short* w = (const unsigned short*)blk;
    float d = __half2float(__ushort_as_half(w[0]));
    unsigned int part = (unsigned int)(idx & 3);
    const unsigned short* q16 = w + 1 + part * 4;
    union {
        __nv_bfloat16 h[8];
        uint4 v;
    } out;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        unsigned short pair = q16[i];
        out.h[2 * i] = __float2bfloat16_rn((float)(signed char)(pair & 0xff) * d);
        out.h[2 * i + 1] = __float2bfloat16_rn((float)(signed char)(pair >> 8) * d);
    }
    reinterpret_cast<uint4*>(dst)[idx] = out.v;
}

// ---- Every other GGML block type (issue 13: K-quants travel as their blocks too) ----
//
// One functor per type: `group(b, i)` forms the scale (and offset) of the group holding value
// i of the block at `b`, `at(b, g, i)` value i from it, with exactly the f32 operations of
// `weights::gguf::dequant` in the same order. The products and sums use the `__f*_rn`
// intrinsics so that nvcc cannot contract `a * b + c` into one fused multiply-add (one
// rounding instead of the CPU's two). Groups are 16 or 32 values, so the eight values of a
// thread (aligned to 8) share one: the 8-wide kernel forms it once (forming it per value made
// the Q4_K kernel bound by arithmetic: 23 ms per FLUX.1-dev step on the H200 against Q8_0's
// 14).

struct Group {
    float a, b;      // scale, offset
    unsigned int u;  // Q5_0/Q5_1: the fifth bits
};

__device__ __forceinline__ float f16_at(const unsigned char* b, int at) {
    return __half2float(__ushort_as_half((unsigned short)(b[at] | (b[at + 1] << 8))));
}

__device__ __forceinline__ unsigned int u32_at(const unsigned char* b, int at) {
    return (unsigned int)b[at] | ((unsigned int)b[at + 1] << 8) | ((unsigned int)b[at + 2] << 16) |
           ((unsigned int)b[at + 3] << 24);
}

// Value i < 16 is the low nibble of qs[i], i ≥ 16 the high nibble of qs[i - 16].
__device__ __forceinline__ int nibble32(const unsigned char* qs, int i) {
    unsigned char byte = qs[i & 15];
    return i < 16 ? (byte & 0x0F) : (byte >> 4);
}

// Q4_0: d f16, qs[16]; x = d * (q - 8).
struct Q4_0 {
    static constexpr int ELEMS = 32, BYTES = 18;
    static __device__ __forceinline__ Group group(const unsigned char* b, int) {
        return {f16_at(b, 0), 0.f, 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        return __fmul_rn(g.a, (float)(nibble32(b + 2, i) - 8));
    }
};

// Q4_1: d f16, m f16, qs[16]; x = d * q + m.
struct Q4_1 {
    static constexpr int ELEMS = 32, BYTES = 20;
    static __device__ __forceinline__ Group group(const unsigned char* b, int) {
        return {f16_at(b, 0), f16_at(b, 2), 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        return __fadd_rn(__fmul_rn(g.a, (float)nibble32(b + 4, i)), g.b);
    }
};

// Q5_0: d f16, qh u32, qs[16]; bit i of qh is value i's fifth bit; x = d * (q - 16).
struct Q5_0 {
    static constexpr int ELEMS = 32, BYTES = 22;
    static __device__ __forceinline__ Group group(const unsigned char* b, int) {
        return {f16_at(b, 0), 0.f, u32_at(b, 2)};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int q = nibble32(b + 6, i) | (((g.u >> i) & 1) << 4);
        return __fmul_rn(g.a, (float)(q - 16));
    }
};

// Q5_1: d f16, m f16, qh u32, qs[16]; x = d * q + m.
struct Q5_1 {
    static constexpr int ELEMS = 32, BYTES = 24;
    static __device__ __forceinline__ Group group(const unsigned char* b, int) {
        return {f16_at(b, 0), f16_at(b, 2), u32_at(b, 4)};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int q = nibble32(b + 8, i) | (((g.u >> i) & 1) << 4);
        return __fadd_rn(__fmul_rn(g.a, (float)q), g.b);
    }
};

// Q8_0 through the generic path (the check compares it with the tuned kernels above).
struct Q8_0 {
    static constexpr int ELEMS = 32, BYTES = 34;
    static __device__ __forceinline__ Group group(const unsigned char* b, int) {
        return {f16_at(b, 0), 0.f, 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        return __fmul_rn((float)(signed char)b[2 + i], g.a);
    }
};

// Q2_K: scales[16], qs[64], d f16 @80, dmin f16 @82. Group g = i/16 has scale
// d * (scales[g] & 15) and offset dmin * (scales[g] >> 4); value i (half = i/128,
// s = (i%128)/32, lane = i%32) is q = (qs[32*half + lane] >> 2s) & 3; x = dl * q - ml.
struct Q2_K {
    static constexpr int ELEMS = 256, BYTES = 84;
    static __device__ __forceinline__ Group group(const unsigned char* b, int i) {
        unsigned char sc = b[i >> 4];
        return {__fmul_rn(f16_at(b, 80), (float)(sc & 0x0F)),
                __fmul_rn(f16_at(b, 82), (float)(sc >> 4)), 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int half = i >> 7, s = (i & 127) >> 5, lane = i & 31;
        int q = (b[16 + 32 * half + lane] >> (2 * s)) & 3;
        return __fsub_rn(__fmul_rn(g.a, (float)q), g.b);
    }
};

// Q3_K: hmask[32], qs[64], scales[12], d f16 @108. Group g = i/16 has the 6-bit scale (low
// nibble from scales[0..8], high 2 bits from scales[8..12]) minus 32, times d; low bits as
// Q2_K, a high bit (hmask[lane] >> (i/32)) & 1 that subtracts 4 when clear; x = dl * q.
struct Q3_K {
    static constexpr int ELEMS = 256, BYTES = 110;
    static __device__ __forceinline__ Group group(const unsigned char* b, int i) {
        int g = i >> 4;
        const unsigned char* sc = b + 96;
        int low4 = g < 8 ? (sc[g] & 0x0F) : (sc[g - 8] >> 4);
        int high2 = (sc[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
        int scale = (signed char)(low4 | (high2 << 4)) - 32;
        return {__fmul_rn(f16_at(b, 108), (float)scale), 0.f, 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int half = i >> 7, s = (i & 127) >> 5, lane = i & 31;
        int low = (b[32 + 32 * half + lane] >> (2 * s)) & 3;
        int hbit = ((b[lane] >> (i >> 5)) & 1) ^ 1;
        return __fmul_rn(g.a, (float)(signed char)(low - (hbit << 2)));
    }
};

// The scale (d * sc) and offset (dmin * m) of group g = i/32 of a Q4_K/Q5_K block, from its
// d, dmin and 12 bytes of packed 6-bit scales and mins.
__device__ __forceinline__ Group group_k4(const unsigned char* b, int i) {
    const unsigned char* s = b + 4;
    int g = i >> 5, sc, mn;
    if (g < 4) {
        sc = s[g] & 0x3F;
        mn = s[4 + g] & 0x3F;
    } else {
        sc = (s[4 + g] & 0x0F) | ((s[g - 4] >> 2) & 0x30);
        mn = (s[4 + g] >> 4) | ((s[g] >> 2) & 0x30);
    }
    return {__fmul_rn(f16_at(b, 0), (float)sc), __fmul_rn(f16_at(b, 2), (float)mn), 0u};
}

// Q4_K: d f16, dmin f16, scales[12], qs[128]. Group g = i/32 is nibble g%2 of
// qs[32*(g/2) + i%32]; x = (d * sc) * q - (dmin * m).
struct Q4_K {
    static constexpr int ELEMS = 256, BYTES = 144;
    static __device__ __forceinline__ Group group(const unsigned char* b, int i) {
        return group_k4(b, i);
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int grp = i >> 5;
        unsigned char byte = b[16 + 32 * (grp >> 1) + (i & 31)];
        int q = (grp & 1) ? (byte >> 4) : (byte & 0x0F);
        return __fsub_rn(__fmul_rn(g.a, (float)q), g.b);
    }
};

// Q5_K: d f16, dmin f16, scales[12], qh[32], qs[128]; as Q4_K with a fifth bit
// (qh[i%32] >> (i/32)) & 1.
struct Q5_K {
    static constexpr int ELEMS = 256, BYTES = 176;
    static __device__ __forceinline__ Group group(const unsigned char* b, int i) {
        return group_k4(b, i);
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int grp = i >> 5, l = i & 31;
        unsigned char byte = b[48 + 32 * (grp >> 1) + l];
        int q = ((grp & 1) ? (byte >> 4) : (byte & 0x0F)) | (((b[16 + l] >> grp) & 1) << 4);
        return __fsub_rn(__fmul_rn(g.a, (float)q), g.b);
    }
};

// Q6_K: ql[128], qh[64], scales[16] (i8), d f16 @208. Group g = i/16 has scale
// d * scales[g]; value i (half = i/128, s = (i%128)/32, lane = i%32) has low nibble (s/2) of
// ql[64*half + 32*(s%2) + lane] and high bits (qh[32*half + lane] >> 2s) & 3;
// x = scale * (q - 32).
struct Q6_K {
    static constexpr int ELEMS = 256, BYTES = 210;
    static __device__ __forceinline__ Group group(const unsigned char* b, int i) {
        return {__fmul_rn(f16_at(b, 208), (float)(signed char)b[192 + (i >> 4)]), 0.f, 0u};
    }
    static __device__ __forceinline__ float at(const unsigned char* b, Group g, int i) {
        int half = i >> 7, s = (i & 127) >> 5, lane = i & 31;
        int lo = (b[64 * half + 32 * (s & 1) + lane] >> (4 * (s >> 1))) & 0x0F;
        int hi = (b[128 + 32 * half + lane] >> (2 * s)) & 3;
        return __fmul_rn(g.a, (float)((signed char)(lo | (hi << 4)) - 32));
    }
};

// Eight consecutive values per thread (block sizes are multiples of 8, so all eight lie in one
// block and one group), written as one 16-byte store; `dst` 16-byte aligned.
template <typename T>
__device__ __forceinline__ void dequant_x8(const unsigned char* __restrict__ src,
                                           __nv_bfloat16* __restrict__ dst,
                                           unsigned long long nblocks) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    constexpr int PER_BLOCK = T::ELEMS / 8;
    if (idx >= nblocks * PER_BLOCK) return;
    const unsigned char* blk = src + (idx / PER_BLOCK) * (unsigned long long)T::BYTES;
    int first = (int)(idx % PER_BLOCK) * 8;
    Group g = T::group(blk, first);
    union {
        __nv_bfloat16 h[8];
        uint4 v;
    } out;
#pragma unroll
    for (int k = 0; k < 8; k++) out.h[k] = __float2bfloat16_rn(T::at(blk, g, first + k));
    reinterpret_cast<uint4*>(dst)[idx] = out.v;
}

// One value per thread: the fallback for a destination not 16-byte aligned.
template <typename T>
__device__ __forceinline__ void dequant_x1(const unsigned char* __restrict__ src,
                                           __nv_bfloat16* __restrict__ dst,
                                           unsigned long long nblocks) {
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= nblocks * T::ELEMS) return;
    const unsigned char* blk = src + (idx / T::ELEMS) * (unsigned long long)T::BYTES;
    int i = (int)(idx % T::ELEMS);
    dst[idx] = __float2bfloat16_rn(T::at(blk, T::group(blk, i), i));
}

#define DEQUANT_KERNELS(T, name)                                                               \
    extern "C" __global__ void dequant_##name##_bf16_x8(                                       \
        const unsigned char* __restrict__ src, __nv_bfloat16* __restrict__ dst,                \
        unsigned long long nblocks) {                                                          \
        dequant_x8<T>(src, dst, nblocks);                                                      \
    }                                                                                          \
    extern "C" __global__ void dequant_##name##_bf16_x1(                                       \
        const unsigned char* __restrict__ src, __nv_bfloat16* __restrict__ dst,                \
        unsigned long long nblocks) {                                                          \
        dequant_x1<T>(src, dst, nblocks);                                                      \
    }

DEQUANT_KERNELS(Q4_0, q4_0)
DEQUANT_KERNELS(Q4_1, q4_1)
DEQUANT_KERNELS(Q5_0, q5_0)
DEQUANT_KERNELS(Q5_1, q5_1)
DEQUANT_KERNELS(Q8_0, q8_0_generic)
DEQUANT_KERNELS(Q2_K, q2_k)
DEQUANT_KERNELS(Q3_K, q3_k)
DEQUANT_KERNELS(Q4_K, q4_k)
DEQUANT_KERNELS(Q5_K, q5_k)
DEQUANT_KERNELS(Q6_K, q6_k)

// ---- lora_mode = "on_dequant": LoRA terms added at every dequantisation ----
//
// The terms of one tensor (`weights::lora::TensorDelta`), applied to the f32 values before
// the one rounding to bf16 with exactly the CPU's operations in the CPU's order
// (`TensorDelta::apply_f32`: per row, term after term; a low-rank term forms
// acc = up[0]·down[0] then acc = acc + up[k]·down[k] for k = 1 … rank−1, then w = w + acc·scale;
// a full term w = w + diff·scale; every product and sum rounded on its own), so the bf16 bytes
// are those `bake` writes at load. Must match `LoraTerm` in src/exec/cuda/lora.rs.
struct LoraTerm {
    const float* up;    // rows × rank (low rank) or rows × cols (full difference)
    const float* down;  // rank × cols (low rank), unused for a full difference
    unsigned long long row0, row1;
    unsigned int rank;  // 0: a full difference
    float scale;
};

// Tiled: a block of 256 threads covers 64 rows × 128 columns, each thread 4 rows × 8
// columns (its values dequantised in registers). A low-rank term is a small matrix product;
// its factors are staged through shared memory 16 ranks at a time, so each `down` value read
// serves 4 rows and each `up` value 8 columns (the first version, one row of 8 values per
// thread reading both factors from global memory, ran the product at 2 TFLOP/s: 15 × the plain
// dequantisation at rank 16). The sum over k still runs k = 0, 1, … in order for every value.
constexpr int LORA_BM = 64, LORA_BN = 128, LORA_KC = 16;

template <typename T>
__device__ __forceinline__ void dequant_lora_tile(const unsigned char* __restrict__ src,
                                                  __nv_bfloat16* __restrict__ dst,
                                                  unsigned long long rows,
                                                  unsigned long long cols,
                                                  const LoraTerm* __restrict__ terms,
                                                  unsigned int nterms) {
    __shared__ float up_s[LORA_BM][LORA_KC + 1];
    __shared__ __align__(16) float down_s[LORA_KC][LORA_BN];
    const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    const unsigned long long row_base = (unsigned long long)blockIdx.y * LORA_BM;
    const unsigned long long col_base = (unsigned long long)blockIdx.x * LORA_BN;
    const unsigned long long col = col_base + tx * 8;
    const bool col_ok = col < cols;
    float w[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        unsigned long long row = row_base + ty * 4 + i;
        if (!col_ok || row >= rows) continue;
        unsigned long long e = row * cols + col;
        const unsigned char* blk = src + (e / T::ELEMS) * (unsigned long long)T::BYTES;
        int first = (int)(e % T::ELEMS);
        Group g = T::group(blk, first);
#pragma unroll
        for (int k = 0; k < 8; k++) w[i][k] = T::at(blk, g, first + k);
    }
    for (unsigned int t = 0; t < nterms; t++) {
        const LoraTerm tm = terms[t];
        // Uniform over the block: does the term touch any of its rows?
        if (tm.row1 <= row_base || tm.row0 >= row_base + LORA_BM) continue;
        bool in[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            unsigned long long row = row_base + ty * 4 + i;
            in[i] = col_ok && row < rows && row >= tm.row0 && row < tm.row1;
        }
        if (tm.rank == 0) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                if (!in[i]) continue;
                const float* d = tm.up + (row_base + ty * 4 + i - tm.row0) * cols + col;
#pragma unroll
                for (int k = 0; k < 8; k++) w[i][k] = __fadd_rn(w[i][k], __fmul_rn(d[k], tm.scale));
            }
            continue;
        }
        float acc[4][8];
        for (unsigned int k0 = 0; k0 < tm.rank; k0 += LORA_KC) {
            const unsigned int kn = min((unsigned int)LORA_KC, tm.rank - k0);
            __syncthreads();
            for (int x = tid; x < LORA_BM * LORA_KC; x += 256) {
                int r = x / LORA_KC, k = x % LORA_KC;
                unsigned long long row = row_base + r;
                up_s[r][k] = (k < (int)kn && row >= tm.row0 && row < tm.row1 && row < rows)
                                 ? tm.up[(row - tm.row0) * tm.rank + k0 + k]
                                 : 0.f;
            }
            for (int x = tid; x < LORA_KC * LORA_BN; x += 256) {
                int k = x / LORA_BN, c = x % LORA_BN;
                down_s[k][c] = (k < (int)kn && col_base + c < cols)
                                   ? tm.down[(unsigned long long)(k0 + k) * cols + col_base + c]
                                   : 0.f;
            }
            __syncthreads();
            for (unsigned int kk = 0; kk < kn; kk++) {
                float4 d0 = *reinterpret_cast<const float4*>(&down_s[kk][tx * 8]);
                float4 d1 = *reinterpret_cast<const float4*>(&down_s[kk][tx * 8 + 4]);
                float d[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
                // The first rank starts the sums (a product, not 0 + a product: the CPU's
                // −0 stays −0); a branch per rank, not per value.
                if (k0 + kk == 0) {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float u = up_s[ty * 4 + i][kk];
#pragma unroll
                        for (int k = 0; k < 8; k++) acc[i][k] = __fmul_rn(u, d[k]);
                    }
                } else {
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        float u = up_s[ty * 4 + i][kk];
#pragma unroll
                        for (int k = 0; k < 8; k++)
                            acc[i][k] = __fadd_rn(acc[i][k], __fmul_rn(u, d[k]));
                    }
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            if (!in[i]) continue;
#pragma unroll
            for (int k = 0; k < 8; k++) w[i][k] = __fadd_rn(w[i][k], __fmul_rn(acc[i][k], tm.scale));
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        unsigned long long row = row_base + ty * 4 + i;
        if (!col_ok || row >= rows) continue;
        union {
            __nv_bfloat16 h[8];
            uint4 v;
        } out;
#pragma unroll
        for (int k = 0; k < 8; k++) out.h[k] = __float2bfloat16_rn(w[i][k]);
        reinterpret_cast<uint4*>(dst + row * cols + col)[0] = out.v;
    }
}

#define DEQUANT_LORA_KERNEL(T, name)                                                           \
    extern "C" __global__ void __launch_bounds__(256) dequant_lora_##name##_bf16(              \
        const unsigned char* __restrict__ src, __nv_bfloat16* __restrict__ dst,                \
        unsigned long long rows, unsigned long long cols, const LoraTerm* __restrict__ terms,  \
        unsigned int nterms) {                                                                 \
        dequant_lora_tile<T>(src, dst, rows, cols, terms, nterms);                             \
    }

DEQUANT_LORA_KERNEL(Q4_0, q4_0)
DEQUANT_LORA_KERNEL(Q4_1, q4_1)
DEQUANT_LORA_KERNEL(Q5_0, q5_0)
DEQUANT_LORA_KERNEL(Q5_1, q5_1)
DEQUANT_LORA_KERNEL(Q8_0, q8_0)
DEQUANT_LORA_KERNEL(Q2_K, q2_k)
DEQUANT_LORA_KERNEL(Q3_K, q3_k)
DEQUANT_LORA_KERNEL(Q4_K, q4_k)
DEQUANT_LORA_KERNEL(Q5_K, q5_k)
DEQUANT_LORA_KERNEL(Q6_K, q6_k)
