// The element-wise and attention kernels of the forward pass on the GPU (CudaForward.cs), beside matvec.cu's matrix
// products. Activations are float32 rows [token × width], as on the CPU (Model/Transformer.cs); each kernel does what
// the CPU code it names does, in the same order of float operations where that is cheap (RMSNorm's sum and the
// softmax are reduced in another order, so results differ from the CPU's in the last bits).
//
// Positions are read from device memory (*pos0: the position of the batch's first token) rather than passed by
// value, so one decode step can be captured as a CUDA graph and replayed for every token with only that integer
// and the embedding uploaded before it. Compiled by NVRTC at first use, after common.cuh.

#define ATTN_WARPS 4      // warps per attention block; each takes ATTN_UNROLL positions in turn (a batch's: one)
#define ATTN_UNROLL 4     // positions a warp reads at once
#define MAX_HEAD_DIM 256  // the widest head attention supports (Gemma's 256): 8 dims per lane
#define NEG_INF __int_as_float(0xff800000)

// The sum of v over the thread block (blockDim.x a multiple of 32); every thread gets it.
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.f;
    v = warp_sum(v);
    __syncthreads(); // partial is free again for the next call
    return v;
}

// ------------------------------------------------------------------------------------------------ RMSNorm
// Transformer.RmsNorm over each row: o = x * (1 / sqrt(mean(x²) + eps)) * w. One block per row; rows `dim` apart;
// o may be x. The Q/K norms use it too: rows of one head (dim = head size, the same w for every head).
// With y, the residual add first (x += y, written back), and with q, o also quantized to q8_0 for the integer product
// that reads it (quantize_q8_0's numerics): the add, the next norm and the quantization are one launch instead of
// three in a decode step, where a launch costs more than its work. The float operations are those of the separate
// steps, in their order. Quantizing needs dim % 32 == 0 (each warp then holds whole 32-blocks of the row).
//
// A decode step's norm is one block for the whole row, so its loads must not wait on each other: a thread keeps its
// elements (i = thread + k·blockDim) and their weights in registers, every load issued before the first is used, and
// stores only after the block's sum. Written as loops over i, the store into o (which may be x) made each
// iteration's loads wait for the previous store: 15.0 µs a row under ncu on an H100 (the fused loop: 19.5 µs on an
// H200), 23% of a llama-7b Q4_0 token; in registers, decode went from 289.5 to 329.8 tokens/s (Q4_0) and 233.0 to
// 256.4 (Q8_0), tokens unchanged.
// Up to 1024 threads a row (ForwardKernels.NormThreads: a quarter of the row, in whole warps), so each thread quantizes
// few 32-blocks: every block's amax and sum are two warp reductions, and with 256 threads a 4096 row took sixteen in
// turn per thread, which made the fused step slower than separate launches (llama-7b Q4_0 356.8 tok/s against 361.8).
// Rows whose width is a multiple of 32 take add_rmsnorm_lane instead; this one is for the others.
#define NORM_PER_THREAD 8 // rows up to 8·blockDim (8192 at 1024 threads) in registers; wider ones take the loop below

__device__ __forceinline__ void norm_store(float r, float* orow, int i, long long row_start, i8* q, float* qd, int* qs)
{
    orow[i] = r;
    if (q != nullptr) quantize_block_q8_0(r, (row_start + i) >> 5, q, qd, qs);
}

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_q8(float* x, const float* y, const float* __restrict__ w, float* o,
                                          int dim, float eps, i8* q, float* qd, int* qs)
{
    pdl_begin();
    long long row_start = (long long)blockIdx.x * dim;
    float* xr = x + row_start;
    float* orow = o + row_start;
    const float* yr = y != nullptr ? y + row_start : nullptr;
    float ss = 0.f;
    if (dim <= NORM_PER_THREAD * (int)blockDim.x)
    {
        float v[NORM_PER_THREAD], wv[NORM_PER_THREAD];
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++)
        {
            int i = threadIdx.x + k * blockDim.x;
            if (i < dim) { v[k] = xr[i]; wv[k] = w[i]; }
        }
        if (yr != nullptr)
        {
#pragma unroll
            for (int k = 0; k < NORM_PER_THREAD; k++)
            {
                int i = threadIdx.x + k * blockDim.x;
                if (i < dim) v[k] += yr[i];
            }
#pragma unroll
            for (int k = 0; k < NORM_PER_THREAD; k++)
            {
                int i = threadIdx.x + k * blockDim.x;
                if (i < dim) xr[i] = v[k];
            }
        }
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++)
            if (threadIdx.x + k * blockDim.x < dim) ss += v[k] * v[k];
        ss = block_sum(ss);
        float scale = 1.f / sqrtf(ss / (float)dim + eps);
#pragma unroll
        for (int k = 0; k < NORM_PER_THREAD; k++)
        {
            int i = threadIdx.x + k * blockDim.x;
            if (i < dim) norm_store(v[k] * scale * wv[k], orow, i, row_start, q, qd, qs); // warp-uniform: dim % 32 == 0 when quantizing
        }
        return;
    }
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
    {
        if (yr != nullptr) xr[i] += yr[i];
        ss += xr[i] * xr[i];
    }
    ss = block_sum(ss);
    float scale = 1.f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) norm_store(xr[i] * scale * w[i], orow, i, row_start, q, qd, qs);
}

// The same for rows whose width is a multiple of 32 (up to 32·256, ForwardKernels.LaneNormMaxDim): one thread per
// 32-block of the row, holding its 32 elements, so a q8_0 block's amax and sum are the thread's own (no warp
// reductions) and the only exchange is the row's sum of squares. The norm's weights are requested before the wait
// (nothing writes them), x and y after it.
// Under programmatic launch a decode step's norm is on the critical path between two products: leaving both norms
// out of a llama-7b step on an H100 raised decode from 299.7 to 323.6 tokens/s (Q8_0) and 391.3 to 433.8 (Q4_0),
// 3.8 µs a norm with add_rmsnorm_q8 at 1024 threads; with this kernel 2.5 µs (318.8 to 335.8 tokens/s, Q8_0).
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_lane(float* x, const float* y, const float* __restrict__ w, float* o,
                                          int dim, float eps, i8* q, float* qd, int* qs)
{
    pdl_release();
    int b = threadIdx.x;
    bool on = b * 32 < dim;
    long long at = (long long)blockIdx.x * dim + b * 32; // this thread's first element
    float4 wv[8], v[8];
    if (on)
    {
#pragma unroll
        for (int k = 0; k < 8; k++) wv[k] = ((const float4*)(w + b * 32))[k];
    }
    pdl_wait();
    float ss = 0.f;
    if (on)
    {
        float4* xr = (float4*)(x + at);
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = xr[k];
        if (y != nullptr)
        {
            const float4* yr = (const float4*)(y + at);
            float4 yv[8];
#pragma unroll
            for (int k = 0; k < 8; k++) yv[k] = yr[k];
#pragma unroll
            for (int k = 0; k < 8; k++)
            {
                v[k].x += yv[k].x; v[k].y += yv[k].y; v[k].z += yv[k].z; v[k].w += yv[k].w;
                xr[k] = v[k];
            }
        }
#pragma unroll
        for (int k = 0; k < 8; k++) ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
    }
    ss = block_sum(ss);
    if (!on) return;
    float scale = 1.f / sqrtf(ss / (float)dim + eps);
#pragma unroll
    for (int k = 0; k < 8; k++)
    {
        v[k].x = v[k].x * scale * wv[k].x; v[k].y = v[k].y * scale * wv[k].y;
        v[k].z = v[k].z * scale * wv[k].z; v[k].w = v[k].w * scale * wv[k].w;
        ((float4*)(o + at))[k] = v[k];
    }
    if (q != nullptr) quantize_own_block_q8_0(v, at >> 5, q, qd, qs);
}

// ------------------------------------------------------------------------------------------------ element-wise
// x[i] += b[i % cols] over total elements: the Q/K/V biases of Qwen2 and Phi-3 (one row of b per token).
extern "C" __global__ void add_bias(float* x, const float* __restrict__ b, int cols, int total)
{
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) x[i] += b[i % cols];
}

// x[i] += y[i]: the residual adds.
extern "C" __global__ void add(float* x, const float* y, int total)
{
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) x[i] += y[i];
}

// x[i] = c * tanh(x[i] * (1/c)): Gemma 2's final soft-capping (KvShape.CapInPlace).
extern "C" __global__ void softcap(float* x, float c, int total)
{
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) x[i] = tanhf(x[i] * (1.f / c)) * c;
}

// o[t][c] = act(g[t][c]) * u[t][c] for n rows of cols: the gated FFN (FeedForward.cs, Activations.Apply), a thread an
// element. (A thread per 32 elements, each quantizing its own block as add_rmsnorm_lane does, was slower in a decode
// step: two thread blocks for llama-7b's 11008, each thread 32 activations in turn; leaving the launch out of a step on
// an H100 gained 5.4 µs a layer with it against 1.5-1.7 µs with this kernel.) Rows are
// given strides so Phi-3's fused [gate | up] rows work as they are; o may be g (each element is read, then written).
// act: 0 silu, 1 relu, 2 gelu (tanh form), the order of FfnActivation.
// q not null: o is also quantized to q8_0 for the down projection ([n × cols] blocks; cols % 32 == 0, so a warp's
// elements are one block of one row).
extern "C" __global__ void gate_act(const float* g, long long g_stride, const float* u, long long u_stride, float* o,
                                    long long o_stride, int cols, int n, int act, i8* q, float* qd, int* qs)
{
    pdl_begin();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)cols * n) return;
    int t = (int)(i / cols), c = (int)(i % cols);
    float r = gated_act(act, g[t * g_stride + c], u[t * u_stride + c]);
    o[t * o_stride + c] = r;
    if (q != nullptr) quantize_block_q8_0(r, i >> 5, q, qd, qs);
}

// ------------------------------------------------------------------------------------------------ RoPE
// Rope.Apply on n rows of `heads` heads: token t is at position *pos0 + t; cos/sin tables are [position × half].
// Interleaved pairs (2i, 2i+1), or NEOX pairs (i, i + half); dimensions past 2·half pass through (partial rotary).
__device__ __forceinline__ void rope_one(float* x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                                         int heads, int head_dim, int half, int neox, const int* pos0, int i)
{
    int p = i % half, h = (i / half) % heads, t = i / (half * heads);
    long long pos = *pos0 + t;
    float c = cos_t[pos * half + p], s = sin_t[pos * half + p];
    float* v = x + (long long)t * heads * head_dim + (long long)h * head_dim;
    int ia = neox ? p : 2 * p, ib = neox ? p + half : 2 * p + 1;
    float a = v[ia], b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = b * c + a * s;
}

// The queries' and the keys' rotations in one launch (a decode step's launches cost more than their work).
extern "C" __global__ void rope_qk(float* q, float* k, const float* __restrict__ cos_t, const float* __restrict__ sin_t, int n,
                                   int heads, int kv_heads, int head_dim, int half, int neox, const int* pos0)
{
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x, nq = n * heads * half;
    if (i < nq) rope_one(q, cos_t, sin_t, heads, head_dim, half, neox, pos0, i);
    else if (i - nq < n * kv_heads * half) rope_one(k, cos_t, sin_t, kv_heads, head_dim, half, neox, pos0, i - nq);
}

// ------------------------------------------------------------------------------------------------ KV cache
// One layer's cache is [position × kv_dim] for keys and the same for values, float32 or float16 (--kv f32|f16), or
// KIVI's quantized tiles and float16 ring (DeviceKvLayout.cs; KvCache/KiviKvStore.cs on the CPU).
struct KvF32
{
    typedef float T;
    static __device__ __forceinline__ float load(const float* p) { return *p; }
    static __device__ __forceinline__ void store(float* p, float v) { *p = v; }
};
struct KvF16
{
    typedef u16 T;
    static __device__ __forceinline__ float load(const u16* p) { return half_to_float(*p); }
    static __device__ __forceinline__ void store(u16* p, float v) { *p = float_to_half(v); }
    // The two halves of a 32-bit word, the lower first.
    static __device__ __forceinline__ void unpack(u32 w, float* o)
    {
        o[0] = half_to_float((u16)(w & 0xffffu));
        o[1] = half_to_float((u16)(w >> 16));
    }
    // N consecutive elements (N = 2, 4 or 8) with one or two vector loads; p must be aligned to N elements.
    template <int N>
    static __device__ __forceinline__ void load_row(const u16* p, float (&o)[N])
    {
        if constexpr (N == 2) unpack(*(const u32*)p, o);
        else if constexpr (N == 4)
        {
            uint2 a = *(const uint2*)p;
            unpack(a.x, o); unpack(a.y, o + 2);
        }
        else
        {
#pragma unroll
            for (int k = 0; k < N / 8; k++)
            {
                uint4 a = ((const uint4*)p)[k];
                unpack(a.x, o + 8 * k); unpack(a.y, o + 8 * k + 2); unpack(a.z, o + 8 * k + 4); unpack(a.w, o + 8 * k + 6);
            }
        }
    }
};

// Writes n rows of keys and values (after bias, norm and RoPE) at positions *pos0 .. *pos0 + n - 1.
template <typename KV>
__device__ __forceinline__ void kv_store(const float* k, const float* v, typename KV::T* kc,
                                         typename KV::T* vc, int n, int kv_dim, const int* pos0)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * kv_dim) return;
    long long at = (long long)*pos0 * kv_dim + i; // row t of the batch lands at position pos0 + t
    KV::store(kc + at, k[i]);
    KV::store(vc + at, v[i]);
}

// Which dimensions a lane holds in attention (dim(lane, i), i < PER): with the strided layout of the element-wise
// sources below, dimensions lane, lane + 32, ..., up to MAX_HEAD_DIM, for any head width.
#define STRIDED_DIMS \
    static const bool ROWS = false; \
    static const int PER = MAX_HEAD_DIM / 32; \
    static __device__ __forceinline__ int dim(int lane, int i) { return lane + 32 * i; }

// What attention reads: key and value element d of position j for one KV head, as a float. A dense cache (f32, f16).
template <typename KV>
struct DenseSource
{
    const typename KV::T* kc;
    const typename KV::T* vc;
    long long kv_dim;
    __device__ __forceinline__ void begin(int kvh, int head_dim, int p)
    {
        kc += (long long)kvh * head_dim;
        vc += (long long)kvh * head_dim;
    }
    __device__ __forceinline__ float key(int j, int d) const { return KV::load(kc + j * kv_dim + d); }
    __device__ __forceinline__ float value(int j, int d) const { return KV::load(vc + j * kv_dim + d); }
    STRIDED_DIMS
};

// The same cache read PER consecutive dimensions a lane (lane l: dimensions l·PER .. l·PER + PER - 1), one vector
// load a row, for heads of exactly 32·PER dimensions: a warp then reads a key of llama-7b's (128 dims, f16) with one
// 8-byte load a lane instead of four 2-byte ones.
// DenseSource's pointers and begin(); its ROWS, PER and dim() are replaced.
template <typename KV, int N>
struct DenseVecSource : DenseSource<KV>
{
    static const bool ROWS = true; // read a row a load: keys() and values(), not key() and value()
    static const int PER = N;
    static __device__ __forceinline__ int dim(int lane, int i) { return lane * N + i; }
    __device__ __forceinline__ void keys(int j, int lane, bool ok, float (&k)[N]) const
    {
        if (ok) KV::template load_row<N>(this->kc + j * this->kv_dim + lane * N, k);
        else for (int i = 0; i < N; i++) k[i] = 0.f;
    }
    __device__ __forceinline__ void values(int j, int lane, bool ok, float (&v)[N]) const
    {
        if (ok) KV::template load_row<N>(this->vc + j * this->kv_dim + lane * N, v);
        else for (int i = 0; i < N; i++) v[i] = 0.f;
    }
};

// ---- KIVI (KvCache/KiviKvStore.cs, KvCache/GroupQuant.cs): asymmetric min-max groups of 32, 2 or 4 bits, scale and
// minimum in float16 (min rounded down, scale up, so the group's range is covered). A block is [codes: 4·bits bytes]
// [scale: f16][min: f16]; 4-bit codes two to a byte (low nibble first), 2-bit four to a byte (low bits first).
#define KIVI_GROUP 32

// Tiles quantized once the cache holds `length` positions: those wholly older than the newest `residual`.
__device__ __forceinline__ int kivi_quantized_tiles(int length, int residual) { return max(0, length - residual) / KIVI_GROUP; }

__device__ __forceinline__ float kivi_element(const u8* block, int bits, int i)
{
    int code = bits == 4 ? (block[i >> 1] >> ((i & 1) << 2)) & 15 : (block[i >> 2] >> ((i & 3) << 1)) & 3;
    const u16* sm = (const u16*)(block + 4 * bits);
    return __fadd_rn(__fmul_rn((float)code, half_to_float(sm[0])), half_to_float(sm[1])); // code·scale + min, unfused as on the CPU
}

// GroupQuant.Down/Up: the nearest float16 at or below (above) x, clamped to the finite range.
__device__ __forceinline__ u16 half_down(float x)
{
    u16 h = float_to_half(x);
    if ((h & 0x7fff) == 0x7c00) h = x > 0.f ? 0x7bff : 0xfbff;
    if (half_to_float(h) <= x) return h;
    return (h & 0x8000) ? (u16)(h + 1) : (h == 0 ? (u16)0x8001 : (u16)(h - 1)); // Half.BitDecrement
}
__device__ __forceinline__ u16 half_up(float x)
{
    u16 h = float_to_half(x);
    if (h == 0x7c00) return 0x7bff;
    if (half_to_float(h) >= x) return h;
    return (h & 0x8000) ? (h == 0x8000 ? (u16)1 : (u16)(h - 1)) : (u16)(h + 1); // Half.BitIncrement
}

// One warp quantizes one group: lane i holds element i (valid: i < count), and the block is written as
// GroupQuant.Quantize writes it (codes of elements past count are 0).
__device__ __forceinline__ void kivi_quantize_group(float x, bool valid, int bits, u8* block)
{
    int lane = threadIdx.x & 31, levels = (1 << bits) - 1;
    float lo = valid ? x : __int_as_float(0x7f800000), hi = valid ? x : NEG_INF;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
        hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    u16 min_h = half_down(lo);
    float mn = half_to_float(min_h);
    u16 scale_h = half_up(__fdiv_rn(__fsub_rn(hi, mn), (float)levels));
    float scale = half_to_float(scale_h);
    float inv = scale > 0.f ? __fdiv_rn(1.f, scale) : 0.f;
    int code = valid ? min(max((int)rintf(__fmul_rn(__fsub_rn(x, mn), inv)), 0), levels) : 0;
    // Pack: 4 bits, lanes 2b and 2b+1 into byte b; 2 bits, lanes 4b..4b+3.
    int c1 = __shfl_down_sync(0xffffffffu, code, 1), c2 = __shfl_down_sync(0xffffffffu, code, 2), c3 = __shfl_down_sync(0xffffffffu, code, 3);
    if (bits == 4 && (lane & 1) == 0) block[lane >> 1] = (u8)(code | (c1 << 4));
    if (bits == 2 && (lane & 3) == 0) block[lane >> 2] = (u8)(code | (c1 << 2) | (c2 << 4) | (c3 << 6));
    if (lane == 0)
    {
        u16* sm = (u16*)(block + 4 * bits);
        sm[0] = scale_h;
        sm[1] = min_h;
    }
}

// n rows of keys and values into the ring (float16): position p is row p % 32 of ring tile (p / 32) % ring.
extern "C" __global__ void kv_store_kivi(const float* k, const float* v, u16* kr, u16* vr, int n,
                                         int kv_dim, int ring, const int* pos0)
{
    pdl_begin();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n * kv_dim) return;
    int t = i / kv_dim, c = i % kv_dim, p = *pos0 + t;
    long long at = ((long long)((p / KIVI_GROUP) % ring) * KIVI_GROUP + p % KIVI_GROUP) * kv_dim + c;
    kr[at] = float_to_half(k[i]);
    vr[at] = float_to_half(v[i]);
}

// The tiles a pass of n rows from *pos0 leaves wholly outside the window, [Q(pos0), Q(pos0 + n)), quantized from the
// ring (KiviKvStore.Quantize). Block (x, y): tile Q(pos0) + x, KV head y; one warp. Keys per channel over the tile's
// 32 positions; values per position, in groups of 32 channels of the head.
extern "C" __global__ void __launch_bounds__(32) kivi_quantize(const u16* kr, const u16* vr,
    u8* kq, u8* vq, int n, int kv_dim, int kv_heads, int head_dim, int ring, int residual, int bits,
    const int* pos0)
{
    pdl_begin();
    int first = kivi_quantized_tiles(*pos0, residual), last = kivi_quantized_tiles(*pos0 + n, residual);
    int tile = first + blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    if (tile >= last) return;
    int block = 4 * bits + 4, groups = (head_dim + KIVI_GROUP - 1) / KIVI_GROUP;
    long long rows = (long long)(tile % ring) * KIVI_GROUP * kv_dim;
    for (int d = 0; d < head_dim; d++)
    {
        int c = h * head_dim + d;
        float x = half_to_float(kr[rows + (long long)lane * kv_dim + c]);
        kivi_quantize_group(x, true, bits, kq + ((long long)tile * kv_dim + c) * block);
    }
    for (int j = 0; j < KIVI_GROUP; j++)
        for (int g = 0; g < groups; g++)
        {
            int d = g * KIVI_GROUP + lane;
            bool valid = d < head_dim;
            float x = valid ? half_to_float(vr[rows + (long long)j * kv_dim + h * head_dim + d]) : 0.f;
            kivi_quantize_group(x, valid, bits, vq + ((((long long)tile * KIVI_GROUP + j) * kv_heads + h) * groups + g) * block);
        }
}

// KIVI's cache as attention reads it for the query at position p: tiles before Q(p + 1) quantized, later ones from
// the ring (KiviKvStore.Keys/Values: what decoding would have left at p, whatever else the batch quantized).
struct KiviSource
{
    const u8* kq;
    const u8* vq;
    const u16* kr;
    const u16* vr;
    long long kv_dim;
    int kv_heads, ring, residual, bits, groups;
    int kvh, quantized; // set by begin
    __device__ __forceinline__ void begin(int kv_head, int head_dim, int p)
    {
        kvh = kv_head;
        quantized = kivi_quantized_tiles(p + 1, residual);
        kr += (long long)kv_head * head_dim;
        vr += (long long)kv_head * head_dim;
        kq += (long long)kv_head * head_dim * (4 * bits + 4);
    }
    // Element d of position j's key or value, from its quantized tile or from the ring.
    __device__ __forceinline__ float key_quantized(int j, int d) const
    {
        return kivi_element(kq + ((long long)(j / KIVI_GROUP) * kv_dim + d) * (4 * bits + 4), bits, j % KIVI_GROUP);
    }
    __device__ __forceinline__ float key_ring(int j, int d) const
    {
        return half_to_float(kr[((long long)(j / KIVI_GROUP % ring) * KIVI_GROUP + j % KIVI_GROUP) * kv_dim + d]);
    }
    __device__ __forceinline__ float value_quantized(int j, int d) const
    {
        return kivi_element(vq + (((long long)j * kv_heads + kvh) * groups + d / KIVI_GROUP) * (4 * bits + 4), bits, d % KIVI_GROUP);
    }
    __device__ __forceinline__ float value_ring(int j, int d) const
    {
        return half_to_float(vr[((long long)(j / KIVI_GROUP % ring) * KIVI_GROUP + j % KIVI_GROUP) * kv_dim + d]);
    }
    __device__ __forceinline__ float key(int j, int d) const { return j / KIVI_GROUP < quantized ? key_quantized(j, d) : key_ring(j, d); }
    __device__ __forceinline__ float value(int j, int d) const { return j / KIVI_GROUP < quantized ? value_quantized(j, d) : value_ring(j, d); }
    STRIDED_DIMS
};

// A load that skips L1 (ld.global.cg): what other blocks of this launch wrote.
__device__ __forceinline__ float ld_l2(const float* p)
{
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}

// Dimension d of the block's accumulator: its warps' (wacc), each times its softmax factor f[w].
__device__ __forceinline__ float block_acc(const float (*wacc)[MAX_HEAD_DIM], const float* f, int d)
{
    float sum = 0.f;
    for (int w = 0; w < ATTN_WARPS; w++) sum += wacc[w][d] * f[w];
    return sum;
}

// out[i] = r, and in q8_0 when q8 is given (every lane of the warp calls it: elements i of one 32-block).
__device__ __forceinline__ void write_output(float r, float* out, long long i, i8* q8, float* q8d, int* q8s)
{
    out[i] = r;
    if (q8 != nullptr) quantize_block_q8_0(r, i >> 5, q8, q8d, q8s);
}

// Attention of n query rows over the cache (KvCache/ and AttentionKernels.cs do the same on the CPU): query t of
// head h, at position p = *pos0 + t, sees positions [first, p] (first = p - window + 1 for a sliding layer, else 0)
// of KV head h / (heads / kv_heads); scores s = scale·q·k, capped c·tanh(s/c) where the model caps them, softmax,
// then the weighted sum of values into out[t][h]. Lane l holds the head's dimensions Src::dim(l, i), i < Src::PER:
// l, l + 32, ... (up to MAX_HEAD_DIM / 32) read one by one, or with a row-reading source (Src::ROWS, DenseVecSource)
// PER consecutive ones read with one load. A block takes one (head, query); its warps take U consecutive positions at
// a time, every key and value of them requested before the first score, and keep an online softmax (running max m,
// sum l, accumulator), merged across the block at the end: one pass over K and V.
// One token (attend_*, U = ATTN_UNROLL): up to `splits` blocks share a query's positions (flash-decoding), as many as
// give each at least one round of its warps (ATTN_WARPS·U positions), the others returning at once. With one, it
// writes the output; with more, each writes its (m, l, acc) to `part` and counts itself done in count[t·heads + h],
// and the last merges them in order (the same result whichever finishes last), writes the output and zeroes the count
// for the next launch. Before (one warp per position in turn, four a block, one block a head) a decode step's
// attention was a chain of dependent loads as long as the context: leaving it out of a llama-7b step at positions
// 0-127 raised decode on an H100 from 299.7 to 357.6 tokens/s (Q8_0) and 391.3 to 512.0 (Q4_0): 17-19 µs a layer;
// split, 5.8 µs (318.8 to 338.8, Q8_0); after a 2886-token prompt, decode went from 40.8 to 303.9 tokens/s (f32 KV).
// A batch's queries (attend_batch_*, U = 1, one block each): thousands of blocks keep the GPU busy; four positions a
// warp took twice the registers and halved a 2048-token prefill (5304 to 2574 tokens/s, llama-7b Q4_0, f16 KV).
// q8 not null: the output rows are also quantized to q8_0 for the output projection (head_dim % 32 == 0).
// The query's dimensions as Src lays them out over the lanes (qr; 0 past head_dim), and the accumulator cleared.
template <typename Src>
__device__ __forceinline__ void attend_query(const float* qh, int head_dim, int lane, float (&qr)[Src::PER], float (&acc)[Src::PER])
{
#pragma unroll
    for (int i = 0; i < Src::PER; i++)
    {
        int d = Src::dim(lane, i);
        qr[i] = d < head_dim ? qh[d] : 0.f;
        acc[i] = 0.f;
    }
}

// One warp's walk over positions j = start, start + step, ... below hi (U at a time, step a multiple of U), folding
// each into its online softmax (m, l, acc): the query's dimensions qr as Src lays them out over the lanes.
template <typename Src, int U>
__device__ __forceinline__ void attend_positions(const Src& src, const float (&qr)[Src::PER], int start, int hi, int step,
                                                 int head_dim, float scale, float cap, float& m, float& l,
                                                 float (&acc)[Src::PER], int lane)
{
    const int PER = Src::PER;
    if constexpr (U == 1 && Src::ROWS)
        for (int j = start; j < hi; j += step)
        {
            float kr[PER], vr[PER], sc = 0.f;
            src.keys(j, lane, true, kr);
            src.values(j, lane, true, vr);
#pragma unroll
            for (int i = 0; i < PER; i++) sc += qr[i] * kr[i];
            sc = warp_sum(sc) * scale;
            if (cap > 0.f) sc = tanhf(sc * (1.f / cap)) * cap;
            float m2 = fmaxf(m, sc), correction = expf(m - m2), e = expf(sc - m2);
            l = l * correction + e;
#pragma unroll
            for (int i = 0; i < PER; i++) acc[i] = acc[i] * correction + e * vr[i];
            m = m2;
        }
    else if constexpr (U == 1)
        for (int j = start; j < hi; j += step)
        {
            float sc = 0.f;
#pragma unroll
            for (int i = 0; i < PER; i++)
            {
                int d = Src::dim(lane, i);
                if (d < head_dim) sc += qr[i] * src.key(j, d);
            }
            sc = warp_sum(sc) * scale;
            if (cap > 0.f) sc = tanhf(sc * (1.f / cap)) * cap;
            float m2 = fmaxf(m, sc), correction = expf(m - m2), e = expf(sc - m2);
            l = l * correction + e;
#pragma unroll
            for (int i = 0; i < PER; i++)
            {
                int d = Src::dim(lane, i);
                acc[i] = acc[i] * correction + (d < head_dim ? e * src.value(j, d) : 0.f);
            }
            m = m2;
        }
    else
        for (int j0 = start; j0 < hi; j0 += step)
        {
            float kv[U][PER], vv[U][PER], s[U];
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                if constexpr (Src::ROWS)
                {
                    src.keys(j0 + u, lane, j0 + u < hi, kv[u]);
                    src.values(j0 + u, lane, j0 + u < hi, vv[u]);
                }
                else
                {
#pragma unroll
                    for (int i = 0; i < PER; i++)
                    {
                        int d = Src::dim(lane, i);
                        bool ok = j0 + u < hi && d < head_dim;
                        kv[u][i] = ok ? src.key(j0 + u, d) : 0.f;
                        vv[u][i] = ok ? src.value(j0 + u, d) : 0.f;
                    }
                }
            }
            float m2 = m;
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < PER; i++) dot += qr[i] * kv[u][i];
                s[u] = warp_sum(dot) * scale;
                if (cap > 0.f) s[u] = tanhf(s[u] * (1.f / cap)) * cap;
                if (j0 + u >= hi) s[u] = NEG_INF;
                m2 = fmaxf(m2, s[u]);
            }
            float correction = expf(m - m2); // m2 is finite: position j0 < hi
            l *= correction;
#pragma unroll
            for (int i = 0; i < PER; i++) acc[i] *= correction;
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                float e = expf(s[u] - m2);
                l += e;
#pragma unroll
                for (int i = 0; i < PER; i++) acc[i] += e * vv[u][i];
            }
            m = m2;
        }
}

// The end of attention for query row t of head h: the block's warps' online softmaxes (m, l, acc) merged, then the
// output written (one split: used == 1) or this split's partial left in `part` for the last split to merge.
template <typename Src, int U>
__device__ __forceinline__ void attend_finish(float m, float l, const float (&acc)[Src::PER], int t, int h,
                                              int heads, int head_dim, int split, int splits, int used, float* out,
                                              i8* q8, float* q8d, int* q8s, float* part, int* count)
{
    const int PER = Src::PER, STRIDE = MAX_HEAD_DIM + 2; // STRIDE: a split's (m, l, acc) in part
    __shared__ float wm[ATTN_WARPS], wl[ATTN_WARPS], sf[32];
    __shared__ float wacc[ATTN_WARPS][MAX_HEAD_DIM];
    __shared__ int last;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int i = 0; i < PER; i++)
    {
        int d = Src::dim(lane, i);
        if (d < head_dim) wacc[warp][d] = acc[i];
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int w = 0; w < ATTN_WARPS; w++) mx = fmaxf(mx, wm[w]);
    float f[ATTN_WARPS], total = 0.f;
    for (int w = 0; w < ATTN_WARPS; w++)
    {
        f[w] = wm[w] == NEG_INF ? 0.f : expf(wm[w] - mx); // a warp with no positions
        total += wl[w] * f[w];
    }
    long long row = (long long)t * heads + h, first_out = row * head_dim;
    if (U == 1 || used == 1)
    {
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
            write_output(block_acc(wacc, f, d) / total, out, first_out + d, q8, q8d, q8s);
        return; // a batch (U = 1) always: the merge below is not compiled into attend_batch_*
    }
    float* all = part + row * splits * STRIDE;
    float* mine = all + split * STRIDE;
    if (threadIdx.x == 0) { mine[0] = mx; mine[1] = total; }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) mine[2 + d] = block_acc(wacc, f, d);
    __threadfence(); // this split's partial is visible before it counts itself done
    __syncthreads();
    if (threadIdx.x == 0)
    {
        last = atomicAdd(count + row, 1) == used - 1;
        if (last) count[row] = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // The merge. Partials are read from L2 (ld_l2): this SM's L1 may hold lines of an earlier launch's. Lane k of the
    // first warp takes split k (splits <= 32): the largest m, each split's factor and the total of l, in one warp.
    if (warp == 0)
    {
        float mk = lane < used ? ld_l2(all + lane * STRIDE) : NEG_INF, lk = lane < used ? ld_l2(all + lane * STRIDE + 1) : 0.f;
        float M = mk;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        float fk = mk == NEG_INF ? 0.f : expf(mk - M);
        float L = warp_sum(lk * fk);
        sf[lane] = fk / L; // a split's share of the output
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float a[32];
#pragma unroll
        for (int k = 0; k < 32; k++) a[k] = k < used ? ld_l2(all + k * STRIDE + 2 + d) : 0.f; // all requested, then summed
        float r = 0.f;
#pragma unroll
        for (int k = 0; k < 32; k++) if (k < used) r += a[k] * sf[k];
        write_output(r, out, first_out + d, q8, q8d, q8s);
    }
}

template <typename Src, int U>
__device__ __forceinline__ void attend(const float* q, Src src, float* out, int heads,
                                       int kv_heads, int head_dim, float scale, float cap, int window,
                                       const int* pos0, i8* q8, float* q8d, int* q8s, int splits, float* part, int* count,
                                       const float* q_head = nullptr)
{
    const int PER = Src::PER;
    int h = blockIdx.x / splits, split = blockIdx.x % splits, t = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int p = *pos0 + t;
    int first = window > 0 ? max(0, p - window + 1) : 0, len = p - first + 1;
    int used = min(splits, (len + ATTN_WARPS * U - 1) / (ATTN_WARPS * U)); // blocks with at least a round of positions
    if (split >= used) return;
    int run = (len + used - 1) / used;
    int lo = first + split * run, hi = min(p + 1, lo + run);
    src.begin(h / (heads / kv_heads), head_dim, p);
    const float* qh = q_head != nullptr ? q_head : q + ((long long)t * heads + h) * head_dim; // q_head: a query rotated in shared memory
    float qr[PER], acc[PER];
    attend_query<Src>(qh, head_dim, lane, qr, acc);
    float m = NEG_INF, l = 0.f;
    attend_positions<Src, U>(src, qr, lo + warp * U, hi, ATTN_WARPS * U, head_dim, scale, cap, m, l, acc, lane);
    attend_finish<Src, U>(m, l, acc, t, h, heads, head_dim, split, splits, used, out, q8, q8d, q8s, part, count);
}

// attend_<suffix> (one token, U positions a warp at once) and attend_batch_<suffix> over a dense cache of elements T,
// read through the source type given last (a template, so it may hold commas).
#define ATTEND_ENTRIES(suffix, T, U, ...) \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_##suffix(const float* q, const T* kc, \
        const T* vc, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window, \
        const int* pos0, i8* q8, float* q8d, int* q8s, int splits, float* part, int* count) \
    { \
        pdl_begin(); \
        __VA_ARGS__ src = { kc, vc, (long long)kv_heads * head_dim }; \
        attend<__VA_ARGS__, U>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, splits, part, count); \
    } \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_batch_##suffix(const float* q, const T* kc, \
        const T* vc, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window, \
        const int* pos0, i8* q8, float* q8d, int* q8s) \
    { \
        pdl_begin(); \
        __VA_ARGS__ src = { kc, vc, (long long)kv_heads * head_dim }; \
        attend<__VA_ARGS__, 1>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, 1, nullptr, nullptr); \
    }

#define KV_ENTRIES(suffix, KV) \
    extern "C" __global__ void kv_store_##suffix(const float* k, const float* v, KV::T* kc, KV::T* vc, int n, \
        int kv_dim, const int* pos0) \
    { pdl_begin(); kv_store<KV>(k, v, kc, vc, n, kv_dim, pos0); } \
    ATTEND_ENTRIES(suffix, KV::T, ATTN_UNROLL, DenseSource<KV>)

KV_ENTRIES(f32, KvF32)
KV_ENTRIES(f16, KvF16)

// Attention over an f16 cache whose heads are exactly 32·N wide (attend_f16_h128: llama's), a key or value row read
// a load (DenseVecSource): one token (attend_*), U positions a warp at once, and a batch (attend_batch_*). On an H100,
// llama-7b Q4_0 after a 2886-token prompt (run 28): decode 308.7 tokens/s against 204.7 with attend_f16, the prompt
// 3584 against 2636 tokens/s, pp2048 6912 against 5135; decode at positions 0-127 unchanged (472.8 against 471.1).
// An f32 cache keeps the element-wise kernels: a warp's element loads are already 128 contiguous bytes, and the same
// row reads made decode after that prompt slower (293.8 against 315.0 tokens/s).
#define VEC_ENTRY(suffix, KV, N, U) ATTEND_ENTRIES(suffix, KV::T, U, DenseVecSource<KV, N>)
VEC_ENTRY(f16_h64, KvF16, 2, 8)
VEC_ENTRY(f16_h128, KvF16, 4, 8)
VEC_ENTRY(f16_h256, KvF16, 8, 4)

// RoPE, the KV store and one token's attention in one launch (attend_rope_<suffix>; FITLM_CUDA_FUSED_ATTN=1, a probe,
// off by default): each block rotates its head's query into shared memory as rope_one rotates it; the last split of a
// head, the one whose positions reach the token's own, rotates its KV head's new key and writes it and the value into
// the cache as kv_store does (several heads of one KV head write the same values), and reads it back with the others.
// A decode step then has two launches fewer a layer (rope_qk and kv_store: about 1 µs each in the probe that left
// kernels out of a step, docs/cuda.md).
template <typename KV, typename Src, int U>
__device__ __forceinline__ void attend_rope(const float* q, const float* k, const float* v, typename KV::T* kc, typename KV::T* vc,
    float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window, const int* pos0, i8* q8, float* q8d,
    int* q8s, int splits, float* part, int* count, const float* cos_t, const float* sin_t, int half, int neox)
{
    __shared__ float qs[MAX_HEAD_DIM];
    int h = blockIdx.x / splits, split = blockIdx.x % splits;
    int p = *pos0, first = window > 0 ? max(0, p - window + 1) : 0, len = p - first + 1;
    int used = min(splits, (len + ATTN_WARPS * U - 1) / (ATTN_WARPS * U)); // as attend counts them
    if (split >= used) return;
    const float* cs = cos_t + (long long)p * half;
    const float* sn = sin_t + (long long)p * half;
    const float* qh = q + (long long)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = qh[d];
    __syncthreads();
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
        float a = qs[ia], b = qs[ib], c = cs[i], s = sn[i];
        qs[ia] = a * c - b * s;
        qs[ib] = b * c + a * s;
    }
    if (split == used - 1)
    {
        int kvh = h / (heads / kv_heads);
        long long kv_dim = (long long)kv_heads * head_dim, row = (long long)p * kv_dim + (long long)kvh * head_dim;
        const float* kh = k + (long long)kvh * head_dim;
        const float* vh = v + (long long)kvh * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
        {
            KV::store(vc + row + d, vh[d]);
            if (d >= 2 * half) KV::store(kc + row + d, kh[d]); // past the rotated dimensions (partial rotary)
        }
        for (int i = threadIdx.x; i < half; i += blockDim.x)
        {
            int ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
            float a = kh[ia], b = kh[ib], c = cs[i], s = sn[i];
            KV::store(kc + row + ia, a * c - b * s);
            KV::store(kc + row + ib, b * c + a * s);
        }
    }
    __syncthreads(); // the rotated query, and the block's writes to the cache, seen by all its threads
    Src src = { kc, vc, (long long)kv_heads * head_dim };
    attend<Src, U>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, splits, part, count, qs);
}

#define ROPE_ENTRY(suffix, KV, U, ...) \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_rope_##suffix(const float* q, const float* k, \
        const float* v, KV::T* kc, KV::T* vc, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, \
        int window, const int* pos0, i8* q8, float* q8d, int* q8s, int splits, float* part, int* count, \
        const float* cos_t, const float* sin_t, int half, int neox) \
    { \
        pdl_begin(); \
        attend_rope<KV, __VA_ARGS__, U>(q, k, v, kc, vc, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, \
            splits, part, count, cos_t, sin_t, half, neox); \
    }
ROPE_ENTRY(f32, KvF32, ATTN_UNROLL, DenseSource<KvF32>)
ROPE_ENTRY(f16, KvF16, ATTN_UNROLL, DenseSource<KvF16>)
ROPE_ENTRY(f16_h64, KvF16, 8, DenseVecSource<KvF16, 2>)
ROPE_ENTRY(f16_h128, KvF16, 8, DenseVecSource<KvF16, 4>)
ROPE_ENTRY(f16_h256, KvF16, 4, DenseVecSource<KvF16, 8>)

// A batch's queries over a dense cache, tiled (attend_tile_<kv>_h<HD>, heads of 64 or 128 dimensions): a block takes
// TILE_Q consecutive queries of one head and walks the positions they see TILE_K at a time, each tile's keys and values
// read once into shared memory for all its queries (attend_batch_* reads every key and value once per query, so a
// 2048-token prefill read the cache 2048 times over from L2). Scores: each thread a 2 × 2 block of (query, position)
// pairs over the head's dimensions in order, scaled, capped, masked (causal, sliding window); the online softmax: the
// first warp, a lane per query (running max and sum, the tile's probabilities written back over its scores); the
// output: each warp 8 queries, each lane HD/32 consecutive dimensions, acc = acc·correction + Σ p·v. Float32 throughout,
// as attend_batch_*: the CPU's arithmetic, summed in another order. q8 not null: the output is also written in q8_0.
#define TILE_Q 32
#define TILE_K 16
// What attend_tile reads, a chunk of TILE_K positions at a time in PASSES passes: a dense cache in one.
template <typename KV>
struct DenseTiles
{
    static const int PASSES = 1;
    const typename KV::T* kc;
    const typename KV::T* vc;
    long long kv_dim;
    __device__ __forceinline__ void begin(int kvh, int head_dim, int p0, int rows) { kc += (long long)kvh * head_dim; vc += (long long)kvh * head_dim; }
    __device__ __forceinline__ bool needed(int pass, int j0) const { return true; }
    __device__ __forceinline__ float key(int j, int d, int pass) const { return KV::load(kc + j * kv_dim + d); }
    __device__ __forceinline__ float value(int j, int d, int pass) const { return KV::load(vc + j * kv_dim + d); }
    __device__ __forceinline__ bool sees(int p, int j, int pass) const { return true; }
};

// KIVI's cache in two passes (attend_tile_kivi_*, FITLM_CUDA_KIVI_TILES=1): query p reads position j's tile quantized
// when it is one of the tiles quantized at p (j / 32 < Q(p + 1)), else from the ring, as attend_batch_kivi reads it
// (KiviSource). The 32 queries of a block see at most one tile both ways, so a chunk is read quantized (pass 0) for
// the queries that see it so, and from the ring (pass 1) for the others, each pass skipped where no query needs it.
// Elements of a tile that no query of the block sees in a pass's form are read as 0 (a tile not yet quantized holds
// whatever an earlier sequence left).
struct KiviTiles
{
    static const int PASSES = 2;
    KiviSource src;
    int first_q, last_q; // Q(p + 1) of the block's first and last query
    __device__ __forceinline__ void begin(int kvh, int head_dim, int p0, int rows)
    {
        src.begin(kvh, head_dim, p0);
        first_q = kivi_quantized_tiles(p0 + 1, src.residual);
        last_q = kivi_quantized_tiles(p0 + rows, src.residual);
    }
    __device__ __forceinline__ bool needed(int pass, int j0) const
    {
        int t0 = j0 / KIVI_GROUP, t1 = (j0 + TILE_K - 1) / KIVI_GROUP;
        return pass == 0 ? t0 < last_q : t1 >= first_q;
    }
    __device__ __forceinline__ float key(int j, int d, int pass) const
    {
        int t = j / KIVI_GROUP;
        return pass == 0 ? (t < last_q ? src.key_quantized(j, d) : 0.f) : (t >= first_q ? src.key_ring(j, d) : 0.f);
    }
    __device__ __forceinline__ float value(int j, int d, int pass) const
    {
        int t = j / KIVI_GROUP;
        return pass == 0 ? (t < last_q ? src.value_quantized(j, d) : 0.f) : (t >= first_q ? src.value_ring(j, d) : 0.f);
    }
    __device__ __forceinline__ bool sees(int p, int j, int pass) const { return (j / KIVI_GROUP < kivi_quantized_tiles(p + 1, src.residual)) == (pass == 0); }
};

template <typename Tiles, int HD>
__device__ __forceinline__ void attend_tile(const float* q, Tiles tiles, float* out,
                                            int n, int heads, int kv_heads, float scale, float cap, int window,
                                            const int* pos0, i8* q8, float* q8d, int* q8s)
{
    const int QS = TILE_Q + 2, KS = TILE_K + 2, DL = HD / 32; // rows padded against bank conflicts, 8-byte aligned
    __shared__ __align__(16) float qt[HD * QS];          // queries, dimension-major (qt[d·QS + i]); the output at the end
    __shared__ __align__(16) float kt[HD * KS];          // the tile's keys, dimension-major
    __shared__ __align__(16) float vs[TILE_K * HD];      // its values, position-major
    __shared__ __align__(16) float ps[TILE_K * TILE_Q];  // scores, then probabilities: ps[jj·TILE_Q + i]
    __shared__ float rm[TILE_Q], rl[TILE_Q], rc[TILE_Q]; // per query: running max, sum, this tile's correction
    int h = blockIdx.x, t0 = blockIdx.y * TILE_Q, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int rows = min(TILE_Q, n - t0), p0 = *pos0 + t0; // query i is at position p0 + i
    tiles.begin(h / (heads / kv_heads), HD, p0, rows);
    for (int e = tid; e < TILE_Q * HD; e += blockDim.x)
    {
        int i = e / HD, d = e % HD;
        qt[d * QS + i] = i < rows ? q[((long long)(t0 + i) * heads + h) * HD + d] : 0.f;
    }
    if (tid < TILE_Q) { rm[tid] = NEG_INF; rl[tid] = 0.f; }
    int lo = window > 0 ? max(0, p0 - window + 1) : 0, hi = p0 + rows; // positions any of the tile's queries sees
    int si = (tid >> 3) * 2, sj = (tid & 7) * 2;                     // this thread's score block
    float acc[8][DL];
#pragma unroll
    for (int r = 0; r < 8; r++)
#pragma unroll
        for (int k = 0; k < DL; k++) acc[r][k] = 0.f;
    for (int j0 = lo; j0 < hi; j0 += TILE_K)
#pragma unroll
        for (int pass = 0; pass < Tiles::PASSES; pass++)
    {
        if (!tiles.needed(pass, j0)) continue; // the same for every thread of the block
        __syncthreads(); // the last tile's keys, values and probabilities are read
        for (int e = tid; e < TILE_K * HD; e += blockDim.x)
        {
            int jj = e / HD, d = e % HD, j = j0 + jj;
            bool ok = j < hi;
            kt[d * KS + jj] = ok ? tiles.key(j, d, pass) : 0.f;
            vs[jj * HD + d] = ok ? tiles.value(j, d, pass) : 0.f;
        }
        __syncthreads();
        float s[2][2] = { { 0.f, 0.f }, { 0.f, 0.f } };
#pragma unroll 8
        for (int d = 0; d < HD; d++)
        {
            float2 a = *(const float2*)&qt[d * QS + si], b = *(const float2*)&kt[d * KS + sj];
            s[0][0] += a.x * b.x; s[0][1] += a.x * b.y;
            s[1][0] += a.y * b.x; s[1][1] += a.y * b.y;
        }
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int b = 0; b < 2; b++)
            {
                int i = si + a, j = j0 + sj + b, p = p0 + i;
                float v = s[a][b] * scale;
                if (cap > 0.f) v = tanhf(v * (1.f / cap)) * cap;
                bool seen = i < rows && j <= p && (window <= 0 || j > p - window) && tiles.sees(p, j, pass);
                ps[(sj + b) * TILE_Q + i] = seen ? v : NEG_INF;
            }
        __syncthreads();
        if (warp == 0)
        {
            float m = rm[lane], mx = m, sum = 0.f;
#pragma unroll
            for (int jj = 0; jj < TILE_K; jj++) mx = fmaxf(mx, ps[jj * TILE_Q + lane]);
#pragma unroll
            for (int jj = 0; jj < TILE_K; jj++)
            {
                float e = mx == NEG_INF ? 0.f : expf(ps[jj * TILE_Q + lane] - mx); // no position seen yet: nothing
                ps[jj * TILE_Q + lane] = e;
                sum += e;
            }
            float c = mx == NEG_INF ? 1.f : expf(m - mx);
            rm[lane] = mx; rl[lane] = rl[lane] * c + sum; rc[lane] = c;
        }
        __syncthreads();
#pragma unroll
        for (int r = 0; r < 8; r++)
        {
            float c = rc[8 * warp + r];
#pragma unroll
            for (int k = 0; k < DL; k++) acc[r][k] *= c;
        }
#pragma unroll 4
        for (int jj = 0; jj < TILE_K; jj++)
        {
            float4 pa = *(const float4*)&ps[jj * TILE_Q + 8 * warp], pb = *(const float4*)&ps[jj * TILE_Q + 8 * warp + 4];
            float pr[8] = { pa.x, pa.y, pa.z, pa.w, pb.x, pb.y, pb.z, pb.w }, v[DL];
            if constexpr (DL == 4)
            {
                float4 w = *(const float4*)&vs[jj * HD + lane * 4];
                v[0] = w.x; v[1] = w.y; v[2] = w.z; v[3] = w.w;
            }
            else
            {
                float2 w = *(const float2*)&vs[jj * HD + lane * 2];
                v[0] = w.x; v[1] = w.y;
            }
#pragma unroll
            for (int r = 0; r < 8; r++)
#pragma unroll
                for (int k = 0; k < DL; k++) acc[r][k] += pr[r] * v[k];
        }
    }
    __syncthreads(); // qt is free: the output goes there row-major, then out a lane an element (q8_0's blocks of 32)
#pragma unroll
    for (int r = 0; r < 8; r++)
#pragma unroll
        for (int k = 0; k < DL; k++) qt[(8 * warp + r) * HD + lane * DL + k] = acc[r][k] / rl[8 * warp + r];
    __syncthreads();
    for (int i = warp; i < rows; i += ATTN_WARPS)
        for (int d = lane; d < HD; d += 32)
            write_output(qt[i * HD + d], out, ((long long)(t0 + i) * heads + h) * HD + d, q8, q8d, q8s);
}

#define TILE_ENTRY(suffix, KV, HD) \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_tile_##suffix(const float* q, const KV::T* kc, \
        const KV::T* vc, float* out, int n, int heads, int kv_heads, float scale, float cap, int window, const int* pos0, \
        i8* q8, float* q8d, int* q8s) \
    { \
        pdl_begin(); \
        DenseTiles<KV> tiles = { kc, vc, (long long)kv_heads * HD }; \
        attend_tile<DenseTiles<KV>, HD>(q, tiles, out, n, heads, kv_heads, scale, cap, window, pos0, q8, q8d, q8s); \
    }
TILE_ENTRY(f32_h64, KvF32, 64)
TILE_ENTRY(f32_h128, KvF32, 128)
TILE_ENTRY(f16_h64, KvF16, 64)
TILE_ENTRY(f16_h128, KvF16, 128)

// Attention over KIVI's cache: kq/vq the slot's quantized tiles, kr/vr its ring; one token, and a batch.
#define KIVI_SOURCE KiviSource src = { kq, vq, kr, vr, (long long)kv_heads * head_dim, kv_heads, ring, residual, bits, \
                                       (head_dim + KIVI_GROUP - 1) / KIVI_GROUP, 0, 0 }
extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_kivi(const float* q, const u8* kq, const u8* vq,
    const u16* kr, const u16* vr, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window,
    int ring, int residual, int bits, const int* pos0, i8* q8, float* q8d, int* q8s, int splits, float* part, int* count)
{
    pdl_begin();
    KIVI_SOURCE;
    attend<KiviSource, ATTN_UNROLL>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, splits, part, count);
}

// One token over KIVI's cache with each quantized tile read once (attend_kivi_tiles). attend_kivi reads a quantized
// key or value element by element: a byte and the group's f16 scale and minimum per element, 24 loads a lane for one
// position of a 128-wide head, so after a 2886-token prompt llama-7b Q4_0 decoded at 77 tokens/s with kivi4 against
// 309 with f16 (run 28). Here a warp takes a whole quantized tile of 32 positions: it copies the tile's key groups
// (head_dim channels × one group of 32 positions each) and value groups (32 positions × the head's groups of 32
// channels) of its KV head into shared memory with 4-byte loads, lane j scores position j over every channel, the
// tile's 32 scores enter the warp's online softmax at once, and each lane adds the 32 positions' values of its
// channels. Every element is dequantized as kivi_element does it (code·scale + min, unfused, as the CPU). Positions in
// the ring (the newest, f16) are read as attend_kivi reads them, U at a time. The block's positions are split as
// tiles and ring positions separately, so both are shared out over the splits.
// The tile buffers of one warp: a group is 4·bits bytes of codes, then its f16 scale and minimum (20 bytes at 4 bits).
#define KIVI_TILE_WORDS (MAX_HEAD_DIM * 20 / 4)

template <int BITS>
__device__ __forceinline__ void attend_kivi_tiles_body(const float* q, KiviSource src, float* out, int heads, int kv_heads,
    int head_dim, float scale, float cap, int window, const int* pos0, i8* q8, float* q8d, int* q8s, int splits,
    float* part, int* count, float* qs, unsigned (*kt)[KIVI_TILE_WORDS], unsigned (*vt)[KIVI_TILE_WORDS])
{
    const int PER = KiviSource::PER, U = ATTN_UNROLL, B = 4 * BITS + 4;
    int h = blockIdx.x / splits, split = blockIdx.x % splits, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int p = *pos0;
    int first = window > 0 ? max(0, p - window + 1) : 0, kvh = h / (heads / kv_heads);
    src.begin(kvh, head_dim, p);
    // Quantized tiles [t0, t1) (wholly at or before p; the first may start before `first`), then ring positions [r0, p].
    int t0 = first / KIVI_GROUP, t1 = max(t0, src.quantized), r0 = max(first, t1 * KIVI_GROUP);
    int tiles = t1 - t0, ring = p + 1 - r0;
    int used = min(splits, max((tiles + ATTN_WARPS - 1) / ATTN_WARPS, (ring + ATTN_WARPS * U - 1) / (ATTN_WARPS * U)));
    used = max(used, 1);
    if (split >= used) return;
    int tr = (tiles + used - 1) / used, rr = (ring + used - 1) / used;
    int ta = t0 + split * tr, tb = min(t1, ta + tr), ra = r0 + split * rr, rb = min(p + 1, ra + rr);
    const float* qh = q + (long long)h * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = qh[d];
    float qr[PER], acc[PER];
    attend_query<KiviSource>(qh, head_dim, lane, qr, acc);
    __syncthreads(); // qs
    float m = NEG_INF, l = 0.f;
    int groups = src.groups, vwords = groups * B / 4, kwords = head_dim * B / 4;
    const u8* ks = (const u8*)kt[warp];
    const u8* vs = (const u8*)vt[warp];
    for (int t = ta + warp; t < tb; t += ATTN_WARPS)
    {
        const unsigned* kg = (const unsigned*)(src.kq + (long long)t * src.kv_dim * B);
        for (int w = lane; w < kwords; w += 32) kt[warp][w] = kg[w];
        const unsigned* vg = (const unsigned*)(src.vq + (((long long)t * KIVI_GROUP + lane) * kv_heads + kvh) * groups * B);
        for (int w = 0; w < vwords; w++) vt[warp][lane * vwords + w] = vg[w];
        __syncwarp();
        int j = t * KIVI_GROUP + lane; // this lane's position
        float sc = 0.f;
        for (int c = 0; c < head_dim; c++)
        {
            const u8* g = ks + c * B;
            int code = BITS == 4 ? (g[lane >> 1] >> ((lane & 1) << 2)) & 15 : (g[lane >> 2] >> ((lane & 3) << 1)) & 3;
            unsigned sm = *(const unsigned*)(g + 4 * BITS);
            float k = __fadd_rn(__fmul_rn((float)code, half_to_float((u16)(sm & 0xffff))), half_to_float((u16)(sm >> 16)));
            sc += qs[c] * k;
        }
        sc *= scale;
        if (cap > 0.f) sc = tanhf(sc * (1.f / cap)) * cap;
        if (j < first) sc = NEG_INF;
        float m2 = sc;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m2 = fmaxf(m2, __shfl_xor_sync(0xffffffffu, m2, o));
        m2 = fmaxf(m, m2); // finite: the tile's last position is at or after `first`
        float correction = expf(m - m2), e = expf(sc - m2);
        l = l * correction + warp_sum(e);
#pragma unroll
        for (int i = 0; i < PER; i++) acc[i] *= correction;
        for (int jj = 0; jj < KIVI_GROUP; jj++)
        {
            float ej = __shfl_sync(0xffffffffu, e, jj);
#pragma unroll
            for (int i = 0; i < PER; i++)
            {
                if (lane + 32 * i >= head_dim) break; // dimension lane + 32i: group i, element `lane` of it
                const u8* g = vs + (jj * groups + i) * B;
                int code = BITS == 4 ? (g[lane >> 1] >> ((lane & 1) << 2)) & 15 : (g[lane >> 2] >> ((lane & 3) << 1)) & 3;
                unsigned sm = *(const unsigned*)(g + 4 * BITS);
                float v = __fadd_rn(__fmul_rn((float)code, half_to_float((u16)(sm & 0xffff))), half_to_float((u16)(sm >> 16)));
                acc[i] += ej * v;
            }
        }
        m = m2;
        __syncwarp(); // the tile's shared memory is read before the next tile's copy
    }
    attend_positions<KiviSource, U>(src, qr, ra + warp * U, rb, ATTN_WARPS * U, head_dim, scale, cap, m, l, acc, lane);
    attend_finish<KiviSource, U>(m, l, acc, 0, h, heads, head_dim, split, splits, used, out, q8, q8d, q8s, part, count);
}

extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_kivi_tiles(const float* q, const u8* kq, const u8* vq,
    const u16* kr, const u16* vr, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window,
    int ring, int residual, int bits, const int* pos0, i8* q8, float* q8d, int* q8s, int splits, float* part, int* count)
{
    pdl_begin();
    __shared__ float qs[MAX_HEAD_DIM];                    // the query
    __shared__ unsigned kt[ATTN_WARPS][KIVI_TILE_WORDS]; // each warp's tile: key groups, channel after channel
    __shared__ unsigned vt[ATTN_WARPS][KIVI_TILE_WORDS]; // value groups, position after position
    KIVI_SOURCE;
    if (bits == 4) attend_kivi_tiles_body<4>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, splits, part, count, qs, kt, vt);
    else attend_kivi_tiles_body<2>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, splits, part, count, qs, kt, vt);
}

extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_batch_kivi(const float* q, const u8* kq, const u8* vq,
    const u16* kr, const u16* vr, float* out, int heads, int kv_heads, int head_dim, float scale, float cap, int window,
    int ring, int residual, int bits, const int* pos0, i8* q8, float* q8d, int* q8s)
{
    pdl_begin();
    KIVI_SOURCE;
    attend<KiviSource, 1>(q, src, out, heads, kv_heads, head_dim, scale, cap, window, pos0, q8, q8d, q8s, 1, nullptr, nullptr);
}

// A batch's queries over KIVI's cache, tiled as attend_tile_* (KiviTiles: each chunk read quantized and from the ring
// where the block's queries need both), heads of 64 or 128 dimensions; FITLM_CUDA_KIVI_TILES=1 (attend_batch_kivi: one
// block per query, element by element).
#define KIVI_TILE_ENTRY(HD) \
    extern "C" __global__ void __launch_bounds__(32 * ATTN_WARPS) attend_tile_kivi_h##HD(const float* q, const u8* kq, \
        const u8* vq, const u16* kr, const u16* vr, float* out, int n, int heads, int kv_heads, float scale, float cap, \
        int window, int ring, int residual, int bits, const int* pos0, i8* q8, float* q8d, int* q8s) \
    { \
        pdl_begin(); \
        int head_dim = HD; \
        KIVI_SOURCE; \
        KiviTiles tiles = { src, 0, 0 }; \
        attend_tile<KiviTiles, HD>(q, tiles, out, n, heads, kv_heads, scale, cap, window, pos0, q8, q8d, q8s); \
    }
KIVI_TILE_ENTRY(64)
KIVI_TILE_ENTRY(128)

// dst[t][0..width) = src[t][offset..offset + width) for n rows: the split of Phi-3's fused Q|K|V product.
extern "C" __global__ void copy_columns(const float* src, int src_width, int offset, float* dst,
                                        int width, int n)
{
    pdl_begin();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)width * n) return;
    long long t = i / width;
    dst[i] = src[t * src_width + offset + (i % width)];
}
