// Dequantisation of GGML blocks on the compute GPU, into the slot's bf16 region.
// Bit-identical to the CPU path (weights::gguf::dequant then round to bf16): the product
// q * d is formed in f32 exactly as there, then rounded to nearest even.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Q8_0: blocks of 34 bytes: f16 scale d, then 32 signed bytes q; x = q * d.
// One thread per output value.
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
