// Shared device helpers of the FLUX kernels: bf16/f16 element traits (16-byte vectors of 8
// elements unpacked to f32 and packed back with round-to-nearest-even) and deterministic
// block reductions (fixed butterfly and fixed warp order, no atomics).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

struct Bf16 {
    typedef __nv_bfloat16 T;
    static __device__ __forceinline__ float2 unpack(uint32_t w) {
        return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
    }
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    // Rounds an f32 value to the nearest bf16 and back (a rounding point of the reference).
    static __device__ __forceinline__ float round(float x) {
        return __bfloat162float(__float2bfloat16_rn(x));
    }
};

struct F16 {
    typedef __half T;
    static __device__ __forceinline__ float2 unpack(uint32_t w) {
        return __half22float2(*reinterpret_cast<__half2*>(&w));
    }
    static __device__ __forceinline__ uint32_t pack(float a, float b) {
        __half2 h = __floats2half2_rn(a, b);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ float round(float x) {
        return __half2float(__float2half_rn(x));
    }
};

// Loads 8 consecutive elements (16 bytes, 16-byte aligned) as f32.
template <class Tr>
__device__ __forceinline__ void load8(const typename Tr::T* p, float* f) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    float2 a = Tr::unpack(u.x), b = Tr::unpack(u.y), c = Tr::unpack(u.z), d = Tr::unpack(u.w);
    f[0] = a.x; f[1] = a.y; f[2] = b.x; f[3] = b.y;
    f[4] = c.x; f[5] = c.y; f[6] = d.x; f[7] = d.y;
}

// Rounds 8 f32 values to the element type and stores them (16 bytes, 16-byte aligned).
template <class Tr>
__device__ __forceinline__ void store8(typename Tr::T* p, const float* f) {
    uint4 u;
    u.x = Tr::pack(f[0], f[1]);
    u.y = Tr::pack(f[2], f[3]);
    u.z = Tr::pack(f[4], f[5]);
    u.w = Tr::pack(f[6], f[7]);
    *reinterpret_cast<uint4*>(p) = u;
}

// Where a kernel stores its 8 results: `Same<Tr>` as the element type; `E4m3<Tr>` as e4m3fn
// bytes for an fp8 linear layer's input (models::fp8): each value rounded to the element type
// first, then to e4m3fn (nearest even, saturating at ±448), the same bytes as storing the
// element type and rounding that with `src/models/fp8/quant.cu`.
template <class Tr>
struct Same {
    typedef typename Tr::T O;
    static __device__ __forceinline__ void store8(O* p, const float* f) { ::store8<Tr>(p, f); }
};

template <class Tr>
struct E4m3 {
    typedef uint8_t O;
    static __device__ __forceinline__ void store8(O* p, const float* f) {
        unsigned int w[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            w[j] = (unsigned short)__nv_cvt_float2_to_fp8x2(
                make_float2(Tr::round(f[2 * j]), Tr::round(f[2 * j + 1])), __NV_SATFINITE,
                __NV_E4M3);
        }
        *reinterpret_cast<uint2*>(p) = make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), the same value in every
// thread. The order is fixed by the shape alone. `scratch` holds 33 floats; the function
// ends with a barrier so scratch can be reused by the next call.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nwarps ? scratch[lane] : 0.f;
        t = warp_sum(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    float r = scratch[32];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nwarps ? scratch[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) scratch[32] = t;
    }
    __syncthreads();
    float r = scratch[32];
    __syncthreads();
    return r;
}

// 2^x with the special-function unit (relative error about 2^-22; ex2(-inf) = 0).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
