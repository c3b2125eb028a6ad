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
