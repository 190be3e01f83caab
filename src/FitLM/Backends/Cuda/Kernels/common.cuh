// What both kernel files use, prepended to each by KernelModule.cs (NVRTC compiles one string; nothing is #included,
// since no CUDA header is guaranteed to be on the machine): fixed-width types, fp16/bf16 conversion, warp reductions.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// IEEE half to float with the hardware conversion (exact for every half, as Dequantize.HalfToSingle).
__device__ __forceinline__ float half_to_float(u16 h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// Round to nearest even, as (Half)f does.
__device__ __forceinline__ u16 float_to_half(float f)
{
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// bfloat16 is the upper half of a float32.
__device__ __forceinline__ float bf16_to_float(u16 h)
{
    float f;
    u32 bits = (u32)h << 16;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(bits));
    return f;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
