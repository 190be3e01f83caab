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

// Programmatic dependent launch (Hopper, sm_90+). Where CudaDevice launches with it (CudaDevice.Programmatic: a step
// whose weights all stay in GPU memory), a kernel may start while the one before it in the stream is finishing, so its
// launch and its first reads of weights overlap that kernel instead of following it. Every kernel therefore begins
// with pdl_release (the next kernel may start) and calls pdl_wait (the previous kernel has completed and its writes
// are visible) before it touches memory an earlier kernel writes: pdl_begin does both. Only the one-token products
// do something in between: they request their first weights, which nothing in a step writes. Launched without the
// attribute, both instructions return at once. What an earlier kernel writes is never read through ld.global.nc
// (__ldg, or const __restrict__ pointers, which let the compiler choose it): a kernel's lifetime now overlaps the
// writes of the one before it, and that path may keep stale lines. (KernelCacheTests holds every kernel to this.)
__device__ __forceinline__ void pdl_release()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_begin()
{
    pdl_release();
    pdl_wait();
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_abs(float v)
{
    v = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block b of q8_0 (ActivationQuant.Q8_0Scalar): the warp's 32 lanes hold its elements, lane j element j. q gets the
// int8 values, d the fp16-rounded scale as a float, s the sum of q (Q4_0's -8 offset: Σ(w-8)q = Σwq - 8Σq). Used by
// quantize_q8_0 and by the kernels that quantize what they write (forward.cu's fused norms, activation, attention).
__device__ __forceinline__ void quantize_block_q8_0(float v, long long b, i8* q, float* d, int* s)
{
    int lane = threadIdx.x & 31;
    float amax = warp_max_abs(v);
    float id = amax != 0.f ? 127.f / amax : 0.f;
    int qi = __float2int_rn(v * id);
    q[b * 32 + lane] = (i8)qi;
    int sum = qi;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
    {
        d[b] = half_to_float(float_to_half(amax / 127.f));
        s[b] = sum;
    }
}

// Block b of q8_0 held whole by one thread (v: its 32 elements in order), with quantize_block_q8_0's arithmetic: a
// kernel that gives a thread 32 consecutive elements (forward.cu's add_rmsnorm_lane) quantizes with no warp
// reductions. q must be 16-byte aligned at block b.
__device__ __forceinline__ void quantize_own_block_q8_0(const float4* v, long long b, i8* q, float* d, int* s)
{
    float amax = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v[k].x), fabsf(v[k].y)), fmaxf(fabsf(v[k].z), fabsf(v[k].w))));
    float id = amax != 0.f ? 127.f / amax : 0.f;
    int packed[8], sum = 0;
#pragma unroll
    for (int k = 0; k < 8; k++)
    {
        int a = __float2int_rn(v[k].x * id), c = __float2int_rn(v[k].y * id), e = __float2int_rn(v[k].z * id), g = __float2int_rn(v[k].w * id);
        sum += a + c + e + g;
        packed[k] = (a & 0xff) | ((c & 0xff) << 8) | ((e & 0xff) << 16) | ((g & 0xff) << 24);
    }
    int4* qv = (int4*)(q + b * 32);
    qv[0] = make_int4(packed[0], packed[1], packed[2], packed[3]);
    qv[1] = make_int4(packed[4], packed[5], packed[6], packed[7]);
    d[b] = half_to_float(float_to_half(amax / 127.f));
    s[b] = sum;
}

// act(g)·u, the gated feed-forward's activation (forward.cu's gate_act, matvec.cu's gate_up_act): act 0 SiLU, 1 ReLU,
// 2 GELU (tanh approximation), as Transformer's activations compute it on the CPU.
__device__ __forceinline__ float gated_act(int act, float x, float u)
{
    float a;
    if (act == 0) a = x / (1.f + expf(-x));
    else if (act == 1) a = fmaxf(x, 0.f);
    else a = 0.5f * x * (1.f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
    return a * u;
}
