// Flash-attention forward for the FLUX blocks: O = softmax(scale · Q Kᵀ) V for one head per
// blockIdx.y and BR = 16·NWARPS query rows per block, over key/value tiles of BC rows, with the
// online softmax (running max and sum per row, in f32), in one kernel: the L×L score matrix
// never reaches device memory.
//
// - Head dimension 128, bf16 (or f16) in, f32 accumulation (tensor-core mma.sync m16n8k16),
//   the same type out; P is rounded to the input type for the P·V product.
// - Q, K, V are [heads, L, 128] (row stride 128); O is written as [L, heads·128] (row stride
//   `o_stride`), i.e. already in the `[L, H·D]` layout the output projection reads.
// - Each warp owns 16 query rows: its Q fragments stay in registers for the whole kernel; S and
//   O accumulate in registers; P goes from the S accumulators straight into the A operand of
//   the P·V product (FlashAttention-2's register layout trick).
// - K and V tiles are double-buffered in shared memory with cp.async (the next tile loads
//   while the current one is used); rows are 256 bytes, stored with the 16-byte chunk index
//   XOR (row & 7) so that ldmatrix reads are free of bank conflicts.
// - Keys past L are zero-filled and masked with -inf; query rows past L are computed on zeros
//   and not stored. No atomics, fixed loop order: the result depends on the inputs and L only.
#include "common.cuh"

namespace {

constexpr int D = 128;

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldsm_x4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                        uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t addr, uint32_t& r0, uint32_t& r1,
                                          uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

// c += a · b for one 16×8×16 tile (A row-major 16×16, B column-major 16×8), f32 accumulators.
template <class Tr>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma16816<Bf16>(float* c, const uint32_t* a, uint32_t b0,
                                               uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma16816<F16>(float* c, const uint32_t* a, uint32_t b0,
                                              uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of 16-byte chunk c (0..15) of row r in a swizzled tile of 128-element rows.
__device__ __forceinline__ uint32_t tile_off(int r, int c) {
    return static_cast<uint32_t>((r * 16 + (c ^ (r & 7))) * 16);
}

// Starts copying rows [0, ROWS) of a [*, 128] tile at g into shared memory at sbase; rows at
// or past valid_rows are zero-filled (their source address is never read).
template <int ROWS, int NT, typename E>
__device__ __forceinline__ void load_tile(uint32_t sbase, const E* g, int valid_rows, int tid) {
    static_assert((ROWS * 16) % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int it = 0; it < ROWS * 16 / NT; ++it) {
        const int i = it * NT + tid;
        const int r = i >> 4, c = i & 15;
        const bool ok = r < valid_rows;
        const E* src = ok ? g + static_cast<size_t>(r) * D + c * 8 : g;
        cp_async16(sbase + tile_off(r, c), src, ok ? 16 : 0);
    }
}

template <class Tr, int NWARPS, int BC>
__device__ __forceinline__ void flash_fwd(const typename Tr::T* __restrict__ q,
                                          const typename Tr::T* __restrict__ k,
                                          const typename Tr::T* __restrict__ v,
                                          typename Tr::T* __restrict__ o, int L, int o_stride,
                                          float scale_log2) {
    typedef typename Tr::T E;
    constexpr int BR = 16 * NWARPS, NT = 32 * NWARPS;
    extern __shared__ __align__(1024) unsigned char smem[];
    const uint32_t sQ = smem_u32(smem);
    const uint32_t sK = sQ + BR * 256;
    const uint32_t sV = sK + 2 * BC * 256;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, q0 = blockIdx.x * BR;
    const size_t head = static_cast<size_t>(h) * L * D;
    const E* qh = q + head;
    const E* kh = k + head;
    const E* vh = v + head;
    const int n_tiles = (L + BC - 1) / BC;

    load_tile<BR, NT>(sQ, qh + static_cast<size_t>(q0) * D, min(BR, L - q0), tid);
    cp_async_commit();
    load_tile<BC, NT>(sK, kh, min(BC, L), tid);
    load_tile<BC, NT>(sV, vh, min(BC, L), tid);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();

    // This warp's 16 rows of Q as A fragments, one per 16-wide slice of the head dimension.
    uint32_t qf[8][4];
    {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int ks = 0; ks < 8; ++ks)
            ldsm_x4(sQ + tile_off(r, 2 * ks + (lane >> 4)), qf[ks][0], qf[ks][1], qf[ks][2],
                    qf[ks][3]);
    }

    float acc[16][4];
#pragma unroll
    for (int i = 0; i < 16; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
    // Running max (in scale·log2 units) and partial sums for rows lane/4 and lane/4 + 8.
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

    for (int j = 0; j < n_tiles; ++j) {
        if (j + 1 < n_tiles) {
            const int nb = (j + 1) & 1, k0 = (j + 1) * BC;
            load_tile<BC, NT>(sK + nb * BC * 256, kh + static_cast<size_t>(k0) * D, min(BC, L - k0),
                              tid);
            load_tile<BC, NT>(sV + nb * BC * 256, vh + static_cast<size_t>(k0) * D, min(BC, L - k0),
                              tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const uint32_t kb = sK + (j & 1) * BC * 256, vb = sV + (j & 1) * BC * 256;

        // S = Q Kᵀ for this warp's 16 rows and the tile's BC keys.
        float s[BC / 8][4];
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int np = 0; np < BC / 16; ++np) {
            const int key = np * 16 + (lane & 7) + ((lane >> 4) << 3);
#pragma unroll
            for (int ks = 0; ks < 8; ++ks) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4(kb + tile_off(key, 2 * ks + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma16816<Tr>(s[2 * np], qf[ks], b0, b1);
                mma16816<Tr>(s[2 * np + 1], qf[ks], b2, b3);
            }
        }
        if ((j + 1) * BC > L) {
#pragma unroll
            for (int i = 0; i < BC / 8; ++i)
#pragma unroll
                for (int c = 0; c < 4; ++c)
                    if (j * BC + i * 8 + 2 * (lane & 3) + (c & 1) >= L) s[i][c] = -INFINITY;
        }

        // Online softmax: new running max, rescale of the old sum and output, p = 2^(s·k − m).
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) {
            mx0 = fmaxf(mx0, fmaxf(s[i][0], s[i][1]));
            mx1 = fmaxf(mx1, fmaxf(s[i][2], s[i][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float mn0 = fmaxf(m0, mx0 * scale_log2), mn1 = fmaxf(m1, mx1 * scale_log2);
        const float base0 = mn0 == -INFINITY ? 0.f : mn0;
        const float base1 = mn1 == -INFINITY ? 0.f : mn1;
        const float a0 = fast_exp2(m0 - base0), a1 = fast_exp2(m1 - base1);
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int i = 0; i < BC / 8; ++i) {
            s[i][0] = fast_exp2(fmaf(s[i][0], scale_log2, -base0));
            s[i][1] = fast_exp2(fmaf(s[i][1], scale_log2, -base0));
            s[i][2] = fast_exp2(fmaf(s[i][2], scale_log2, -base1));
            s[i][3] = fast_exp2(fmaf(s[i][3], scale_log2, -base1));
            rs0 += s[i][0] + s[i][1];
            rs1 += s[i][2] + s[i][3];
        }
        l0 = l0 * a0 + rs0;
        l1 = l1 * a1 + rs1;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            acc[i][0] *= a0;
            acc[i][1] *= a0;
            acc[i][2] *= a1;
            acc[i][3] *= a1;
        }

        // O += P V: the S accumulators of key slices 2kk and 2kk+1 form P's A fragment.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t pa[4];
            pa[0] = Tr::pack(s[2 * kk][0], s[2 * kk][1]);
            pa[1] = Tr::pack(s[2 * kk][2], s[2 * kk][3]);
            pa[2] = Tr::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pa[3] = Tr::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
            for (int dp = 0; dp < 8; ++dp) {
                uint32_t b0, b1, b2, b3;
                ldsm_x4_t(vb + tile_off(key, 2 * dp + (lane >> 4)), b0, b1, b2, b3);
                mma16816<Tr>(acc[2 * dp], pa, b0, b1);
                mma16816<Tr>(acc[2 * dp + 1], pa, b2, b3);
            }
        }
        __syncthreads();
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = 1.f / l0, i1 = 1.f / l1;
    const int r0 = q0 + warp * 16 + (lane >> 2), r1 = r0 + 8;
    E* ob = o + h * D + 2 * (lane & 3);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
        if (r0 < L)
            *reinterpret_cast<uint32_t*>(ob + static_cast<size_t>(r0) * o_stride + i * 8) =
                Tr::pack(acc[i][0] * i0, acc[i][1] * i0);
        if (r1 < L)
            *reinterpret_cast<uint32_t*>(ob + static_cast<size_t>(r1) * o_stride + i * 8) =
                Tr::pack(acc[i][2] * i1, acc[i][3] * i1);
    }
}

}  // namespace

// Variants: warps per block (query rows = 16 × warps) and keys per tile. Shared memory:
// (16·warps + 4·keys) × 256 bytes. The Rust side picks one (see kernels/mod.rs).
#define FLASH_VARIANT(NW, BC, MINB, SUFFIX, TR)                                                 \
    extern "C" __global__ void __launch_bounds__(NW * 32, MINB)                                  \
        flash_fwd_w##NW##_c##BC##_##SUFFIX(const TR::T* q, const TR::T* k, const TR::T* v,       \
                                           TR::T* o, int L, int o_stride, float scale_log2) {    \
        flash_fwd<TR, NW, BC>(q, k, v, o, L, o_stride, scale_log2);                              \
    }

FLASH_VARIANT(8, 128, 1, bf16, Bf16)
FLASH_VARIANT(8, 64, 1, bf16, Bf16)
FLASH_VARIANT(4, 64, 2, bf16, Bf16)
FLASH_VARIANT(8, 128, 1, f16, F16)
FLASH_VARIANT(8, 64, 1, f16, F16)
FLASH_VARIANT(4, 64, 2, f16, F16)
