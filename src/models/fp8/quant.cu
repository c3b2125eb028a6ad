// Activations to e4m3fn for the fp8 linear layers (models::fp8): each bf16/f16 value → f32
// (exact) → e4m3fn with round to nearest even, saturating to ±448 (`satfinite`; NaN stays
// NaN). The CPU reference is weights::lora::math::encode(F8_E4M3, ..) (clamp to ±448, then
// the float8 crate's round to nearest even); `mgpu bench --check-fp8` compares the two over
// every bf16 and f16 bit pattern. Eight values per thread (one 16-byte load, one 8-byte
// store); n is a multiple of 8 and both pointers are 16-byte aligned (checked by the host).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

__device__ __forceinline__ unsigned short e4m3x2(float a, float b) {
    return (unsigned short)__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

extern "C" __global__ void quantize_e4m3_bf16(const uint4* __restrict__ src,
                                              uint2* __restrict__ dst, unsigned long long n8) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    uint4 v = src[i];
    unsigned int w[4] = {v.x, v.y, v.z, v.w};
    unsigned short o[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float lo = __uint_as_float(w[j] << 16);
        float hi = __uint_as_float(w[j] & 0xffff0000u);
        o[j] = e4m3x2(lo, hi);
    }
    dst[i] = make_uint2((unsigned int)o[0] | ((unsigned int)o[1] << 16),
                        (unsigned int)o[2] | ((unsigned int)o[3] << 16));
}

extern "C" __global__ void quantize_e4m3_f16(const uint4* __restrict__ src,
                                             uint2* __restrict__ dst, unsigned long long n8) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    uint4 v = src[i];
    unsigned int w[4] = {v.x, v.y, v.z, v.w};
    unsigned short o[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        float lo = __half2float(__ushort_as_half((unsigned short)(w[j] & 0xffffu)));
        float hi = __half2float(__ushort_as_half((unsigned short)(w[j] >> 16)));
        o[j] = e4m3x2(lo, hi);
    }
    dst[i] = make_uint2((unsigned int)o[0] | ((unsigned int)o[1] << 16),
                        (unsigned int)o[2] | ((unsigned int)o[3] << 16));
}
