// Widening of fp8 (e4m3fn, e5m2; ComfyUI scaled fp8 with its per-tensor scale) on the compute
// GPU, from the slot's compact bytes into its compute-dtype region. Bit-identical to the CPU
// path (exec::unit::widen_fp8 = weights::lora::math::decode then encode):
// - fp8 → f32 through the CPU's own 256-entry table (uploaded by the host: exact values, and
//   the CPU's NaN bits);
// - × scale in f32 (IEEE round to nearest; denormals kept: nvcc's default -ftz=false), skipped
//   for NaN inputs, which the CPU's multiply returns quieted, payload kept;
// - one rounding to the output type, round to nearest even; NaNs keep the `half` crate's
//   bits (quiet, truncated payload) instead of the GPU's canonical NaN.
// One thread per value.
#include <cuda_fp16.h>

__device__ __forceinline__ float widen_value(unsigned char b, const float* __restrict__ table,
                                             float scale, int scaled) {
    float w = table[b];
    if (!scaled) return w;
    // x86's multiply returns a NaN operand quieted; the GPU's would be the canonical NaN.
    if (isnan(w)) return __uint_as_float(__float_as_uint(w) | 0x00400000u);
    return __fmul_rn(w, scale);
}

// f32 → bf16 bits as `half::bf16::from_f32` (and weights::lora::math's encode).
__device__ __forceinline__ unsigned short bf16_bits(float v) {
    unsigned int x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((x >> 16) | 0x40u);
    return (unsigned short)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// f32 → f16 bits as `half::f16::from_f32`: the hardware's round to nearest even, and the
// crate's NaN (sign | 0x7c00 | 0x0200 | mantissa >> 13).
__device__ __forceinline__ unsigned short f16_bits(float v) {
    unsigned int x = __float_as_uint(v);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (unsigned short)(((x >> 16) & 0x8000u) | 0x7c00u | 0x0200u |
                                ((x & 0x7fffffu) >> 13));
    return __half_as_ushort(__float2half_rn(v));
}

extern "C" __global__ void widen_fp8_bf16(const unsigned char* __restrict__ src,
                                          unsigned short* __restrict__ dst,
                                          const float* __restrict__ table, float scale,
                                          int scaled, unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dst[i] = bf16_bits(widen_value(src[i], table, scale, scaled));
}

extern "C" __global__ void widen_fp8_f16(const unsigned char* __restrict__ src,
                                         unsigned short* __restrict__ dst,
                                         const float* __restrict__ table, float scale,
                                         int scaled, unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dst[i] = f16_bits(widen_value(src[i], table, scale, scaled));
}

extern "C" __global__ void widen_fp8_f32(const unsigned char* __restrict__ src,
                                         unsigned int* __restrict__ dst,
                                         const float* __restrict__ table, float scale,
                                         int scaled, unsigned long long n) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    dst[i] = __float_as_uint(widen_value(src[i], table, scale, scaled));
}

// The same values, 8 per thread (bf16 and f16 outputs): the table in shared memory, 8 fp8
// bytes read as one 8-byte load and the 8 results written as one 16-byte store; a last
// partial group value by value. `src` must be 8-byte and `dst` 16-byte aligned (slot regions
// are 256). The one-value-per-thread kernels above cost the H200 34 ms per FLUX.1-dev step
// streamed as fp8 at batch 4 (690 GB/s of bf16 written).
template <unsigned short (*Bits)(float)>
__device__ __forceinline__ void widen_x8(const unsigned char* __restrict__ src,
                                         unsigned short* __restrict__ dst,
                                         const float* __restrict__ table, float scale,
                                         int scaled, unsigned long long n) {
    __shared__ float t[256];
    for (int k = threadIdx.x; k < 256; k += blockDim.x) t[k] = table[k];
    __syncthreads();
    unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long base = g * 8ull;
    if (base >= n) return;
    if (base + 8ull <= n) {
        uint2 in = reinterpret_cast<const uint2*>(src)[g];
        union {
            unsigned short h[8];
            uint4 v;
        } out;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            unsigned int word = k < 4 ? in.x : in.y;
            unsigned char b = (unsigned char)(word >> (8 * (k & 3)));
            out.h[k] = Bits(widen_value(b, t, scale, scaled));
        }
        reinterpret_cast<uint4*>(dst)[g] = out.v;
    } else {
        for (unsigned long long i = base; i < n; i++)
            dst[i] = Bits(widen_value(src[i], t, scale, scaled));
    }
}

extern "C" __global__ void widen_fp8_bf16_x8(const unsigned char* __restrict__ src,
                                             unsigned short* __restrict__ dst,
                                             const float* __restrict__ table, float scale,
                                             int scaled, unsigned long long n) {
    widen_x8<bf16_bits>(src, dst, table, scale, scaled, n);
}

extern "C" __global__ void widen_fp8_f16_x8(const unsigned char* __restrict__ src,
                                            unsigned short* __restrict__ dst,
                                            const float* __restrict__ table, float scale,
                                            int scaled, unsigned long long n) {
    widen_x8<f16_bits>(src, dst, table, scale, scaled, n);
}
