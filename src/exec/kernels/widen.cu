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
