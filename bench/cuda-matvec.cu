// Issue 16's product-kernel measurements (docs/cuda.md): one-token Q4_0/Q8_0 products in the split layout, variants
// against matvec.cu's own matvec_q4_0_q8 / matvec_q8_0_q8 ("main"), each timed three ways: after an L2 flush, back to
// back on a stream (copies of the matrix rotated so none is read from L2), and back to back in a CUDA graph; then a
// mini decode, 32 layers of llama-7b's four products with 12 small "spin" kernels of 1.5 µs a layer around them, in
// one graph, with plain and with programmatic launches; and the card's read bandwidth (a read-only kernel over 4 GiB)
// and its copy. Random weights; each variant's outputs are compared with main's. Nothing here passes or fails.
// On the GPU machine (CUDA toolkit, no .NET): bench/cuda-matvec.sh [VARIANT-SUBSTRING]
#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <functional>
#include <string>
#include <cmath>
#endif
#include "common.cuh"
#include "matvec.cu"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA %s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(1); } } while (0)

// ------------------------------------------------------------------------------------------------ variants
// The variants read x through const __restrict__ pointers, which matvec.cu may not (see its pdl_wait_for): here x is
// never written, so programmatic launch cannot make them read a stale one.
// One warp per row. U blocks per lane per group; LAZY: x loaded in the product loop (else with the weights);
// the first group's weights are requested before griddepcontrol.wait (a no-op without the launch attribute).
template <bool Q4, int U, bool LAZY>
__device__ __forceinline__ float row_dot(const u8* __restrict__ W, int rows, int row, int cols, const i8* __restrict__ xq,
                                         const float* __restrict__ xd, const int* __restrict__ xs, int lane, int start, int step)
{
    const int QB = Q4 ? 16 : 32;
    int blocks = cols >> 5;
    const int4* qs = (const int4*)(W + (long long)row * blocks * QB);
    const u16* ds = (const u16*)(W + (long long)rows * blocks * QB) + (long long)row * blocks;
    const int4* xv = (const int4*)xq;
    float acc = 0.f;
    bool first = true;
    for (int b0 = start; b0 < blocks; b0 += step * U)
    {
        int4 w0[U], w1[U], x0[U], x1[U];
        float dw[U], dx[U];
        int sx[U];
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            int b = b0 + step * u;
            if (b < blocks)
            {
                w0[u] = ld_weights(qs + (long long)b * (QB / 16));
                if (!Q4) w1[u] = ld_weights(qs + (long long)b * 2 + 1);
                dw[u] = half_to_float(ds[b]);
            }
        }
        if (first) { pdl_wait(); first = false; }
        if (!LAZY)
        {
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                int b = b0 + step * u;
                if (b < blocks) { x0[u] = xv[2 * b]; x1[u] = xv[2 * b + 1]; dx[u] = xd[b]; if (Q4) sx[u] = xs[b]; }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            int b = b0 + step * u;
            if (b >= blocks) break;
            if (LAZY) { x0[u] = xv[2 * b]; x1[u] = xv[2 * b + 1]; dx[u] = xd[b]; if (Q4) sx[u] = xs[b]; }
            int sumi = Q4 ? dot_q4_0(w0[u], x0[u], x1[u]) - 8 * sx[u] : dot_q8_0(w0[u], w1[u], x0[u], x1[u]);
            acc += dw[u] * dx[u] * (float)sumi;
        }
    }
    if (first) pdl_wait();
    return acc;
}

// Two rows per warp sharing x's loads (load_pair and dot_pair below, a group of U blocks from b0 at a time).
template <bool Q4, int U>
__device__ __forceinline__ void load_pair(const u8* __restrict__ W, int rows, int row, int blocks, int b0,
                                          int4 (&wa)[U], int4 (&wb)[U], int4 (&wa1)[U], int4 (&wb1)[U], float (&da)[U], float (&db)[U]);
template <bool Q4, int U>
__device__ __forceinline__ void dot_pair(const i8* __restrict__ xq, const float* __restrict__ xd, const int* __restrict__ xs,
                                         int blocks, int b0, const int4 (&wa)[U], const int4 (&wb)[U], const int4 (&wa1)[U],
                                         const int4 (&wb1)[U], const float (&da)[U], const float (&db)[U], float& a0, float& a1);

template <bool Q4, int U>
__device__ __forceinline__ void row_dot2(const u8* __restrict__ W, int rows, int row, int cols, const i8* __restrict__ xq,
                                         const float* __restrict__ xd, const int* __restrict__ xs, int lane, float& a0, float& a1)
{
    int blocks = cols >> 5;
    float acc0 = 0.f, acc1 = 0.f;
    bool first = true;
    for (int b0 = lane; b0 < blocks; b0 += 32 * U)
    {
        int4 wa[U], wa1[U], wb[U], wb1[U];
        float dwa[U], dwb[U];
        load_pair<Q4, U>(W, rows, row, blocks, b0, wa, wb, wa1, wb1, dwa, dwb);
        if (first) { pdl_wait(); first = false; }
        dot_pair<Q4, U>(xq, xd, xs, blocks, b0, wa, wb, wa1, wb1, dwa, dwb, acc0, acc1);
    }
    if (first) pdl_wait();
    a0 = acc0;
    a1 = acc1;
}

#define KARGS const u8* __restrict__ W, int rows, int cols, const i8* __restrict__ xq, const float* __restrict__ xd, \
              const int* __restrict__ xs, float* __restrict__ y

// One warp per row, 4 rows per block.
template <bool Q4, int U, bool LAZY>
__device__ __forceinline__ void warp_row(KARGS)
{
    pdl_release();
    int row = blockIdx.x * 4 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) { pdl_wait(); return; }
    float s = warp_sum(row_dot<Q4, U, LAZY>(W, rows, row, cols, xq, xd, xs, lane, lane, 32));
    if (lane == 0) y[row] = s;
}

// Two rows per warp, 8 rows per block.
template <bool Q4, int U>
__device__ __forceinline__ void warp_row2(KARGS)
{
    pdl_release();
    int row = (blockIdx.x * 4 + (threadIdx.x >> 5)) * 2, lane = threadIdx.x & 31;
    if (row >= rows) { pdl_wait(); return; }
    float a0, a1;
    row_dot2<Q4, U>(W, rows, row, cols, xq, xd, xs, lane, a0, a1);
    a0 = warp_sum(a0);
    a1 = warp_sum(a1);
    if (lane == 0) { y[row] = a0; if (row + 1 < rows) y[row + 1] = a1; }
}

// WPR warps per row (4 / WPR rows per block), partial sums through shared memory.
template <bool Q4, int U, int WPR>
__device__ __forceinline__ void block_row(KARGS)
{
    __shared__ float part[4];
    pdl_release();
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * (4 / WPR) + w / WPR, k = w % WPR;
    float s = 0.f;
    if (row < rows) s = warp_sum(row_dot<Q4, U, true>(W, rows, row, cols, xq, xd, xs, lane, k * 32 + lane, 32 * WPR));
    else pdl_wait();
    if (lane == 0) part[w] = s;
    __syncthreads();
    if (k == 0 && lane == 0 && row < rows)
    {
        float t = 0.f;
        for (int i = 0; i < WPR; i++) t += part[w + i];
        y[row] = t;
    }
}

// Persistent: a grid of at most the blocks the GPU holds at once (the host sizes it), each warp taking row pairs
// v = warp, warp + all warps, ...; PIPE: the next pair's weights are requested before the current pair's products,
// so a warp keeps a pair's loads in flight across its rows (two register buffers).
template <bool Q4, int U>
__device__ __forceinline__ void load_pair(const u8* __restrict__ W, int rows, int row, int blocks, int b0,
                                          int4 (&wa)[U], int4 (&wb)[U], int4 (&wa1)[U], int4 (&wb1)[U], float (&da)[U], float (&db)[U])
{
    const int QB = Q4 ? 16 : 32;
    int rb = row + 1 < rows ? row + 1 : row;
    const int4* qa = (const int4*)(W + (long long)row * blocks * QB);
    const int4* qb = (const int4*)(W + (long long)rb * blocks * QB);
    const u16* sa = (const u16*)(W + (long long)rows * blocks * QB) + (long long)row * blocks;
    const u16* sb = (const u16*)(W + (long long)rows * blocks * QB) + (long long)rb * blocks;
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        int b = b0 + 32 * u;
        if (b < blocks)
        {
            wa[u] = ld_weights(qa + (long long)b * (QB / 16));
            wb[u] = ld_weights(qb + (long long)b * (QB / 16));
            if (!Q4) { wa1[u] = ld_weights(qa + (long long)b * 2 + 1); wb1[u] = ld_weights(qb + (long long)b * 2 + 1); }
            da[u] = half_to_float(sa[b]);
            db[u] = half_to_float(sb[b]);
        }
    }
}

template <bool Q4, int U>
__device__ __forceinline__ void dot_pair(const i8* __restrict__ xq, const float* __restrict__ xd, const int* __restrict__ xs,
                                         int blocks, int b0, const int4 (&wa)[U], const int4 (&wb)[U], const int4 (&wa1)[U],
                                         const int4 (&wb1)[U], const float (&da)[U], const float (&db)[U], float& a0, float& a1)
{
    const int4* xv = (const int4*)xq;
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        int b = b0 + 32 * u;
        if (b >= blocks) break;
        int4 x0 = xv[2 * b], x1 = xv[2 * b + 1];
        float dx = xd[b];
        int sx = Q4 ? xs[b] : 0;
        int sa = Q4 ? dot_q4_0(wa[u], x0, x1) - 8 * sx : dot_q8_0(wa[u], wa1[u], x0, x1);
        int sb = Q4 ? dot_q4_0(wb[u], x0, x1) - 8 * sx : dot_q8_0(wb[u], wb1[u], x0, x1);
        a0 += da[u] * dx * (float)sa;
        a1 += db[u] * dx * (float)sb;
    }
}

// Rows of at most 32·U blocks (cols <= 1024·U): one group of loads a row pair.
template <bool Q4, int U, bool PIPE>
__device__ __forceinline__ void persistent_rows(KARGS)
{
    pdl_release();
    int lane = threadIdx.x & 31, warps = gridDim.x * 4, blocks = cols >> 5;
    int pairs = (rows + 1) / 2;
    int v = blockIdx.x * 4 + (threadIdx.x >> 5);
    int4 wa[U], wb[U], wa1[U], wb1[U], na[U], nb[U], na1[U], nb1[U];
    float da[U], db[U], ma[U], mb[U];
    if (v < pairs) load_pair<Q4, U>(W, rows, 2 * v, blocks, lane, wa, wb, wa1, wb1, da, db);
    pdl_wait();
    for (; v < pairs; v += warps)
    {
        int n = v + warps;
        if (PIPE && n < pairs) load_pair<Q4, U>(W, rows, 2 * n, blocks, lane, na, nb, na1, nb1, ma, mb);
        float a0 = 0.f, a1 = 0.f;
        dot_pair<Q4, U>(xq, xd, xs, blocks, lane, wa, wb, wa1, wb1, da, db, a0, a1);
        a0 = warp_sum(a0);
        a1 = warp_sum(a1);
        int row = 2 * v;
        if (lane == 0) { y[row] = a0; if (row + 1 < rows) y[row + 1] = a1; }
        if (PIPE)
        {
#pragma unroll
            for (int u = 0; u < U; u++) { wa[u] = na[u]; wb[u] = nb[u]; wa1[u] = na1[u]; wb1[u] = nb1[u]; da[u] = ma[u]; db[u] = mb[u]; }
        }
        else if (n < pairs) load_pair<Q4, U>(W, rows, 2 * n, blocks, lane, wa, wb, wa1, wb1, da, db);
    }
}

#define V1(name, MINB, body) extern "C" __global__ void __launch_bounds__(128, MINB) name(KARGS) { body; }
V1(a4_u8, 1, (warp_row<true, 8, false>(W, rows, cols, xq, xd, xs, y)))
V1(a4_u4_m6, 6, (warp_row<true, 4, false>(W, rows, cols, xq, xd, xs, y)))
V1(l4_u8_m8, 8, (warp_row<true, 8, true>(W, rows, cols, xq, xd, xs, y)))
V1(l4_u4_m12, 12, (warp_row<true, 4, true>(W, rows, cols, xq, xd, xs, y)))
V1(l4_u16_m4, 4, (warp_row<true, 16, true>(W, rows, cols, xq, xd, xs, y)))
V1(r4_u4_m6, 6, (warp_row2<true, 4>(W, rows, cols, xq, xd, xs, y)))
V1(r4_u8_m4, 4, (warp_row2<true, 8>(W, rows, cols, xq, xd, xs, y)))
V1(b4_w2_u8, 8, (block_row<true, 8, 2>(W, rows, cols, xq, xd, xs, y)))
V1(b4_w4_u4, 12, (block_row<true, 4, 4>(W, rows, cols, xq, xd, xs, y)))
V1(b4_w4_u8, 8, (block_row<true, 8, 4>(W, rows, cols, xq, xd, xs, y)))
V1(a8_u4, 1, (warp_row<false, 4, false>(W, rows, cols, xq, xd, xs, y)))
V1(l8_u4_m8, 8, (warp_row<false, 4, true>(W, rows, cols, xq, xd, xs, y)))
V1(l8_u2_m12, 12, (warp_row<false, 2, true>(W, rows, cols, xq, xd, xs, y)))
V1(l8_u8_m4, 4, (warp_row<false, 8, true>(W, rows, cols, xq, xd, xs, y)))
V1(r8_u2_m8, 8, (warp_row2<false, 2>(W, rows, cols, xq, xd, xs, y)))
V1(b8_w2_u4, 8, (block_row<false, 4, 2>(W, rows, cols, xq, xd, xs, y)))
V1(b8_w4_u2, 12, (block_row<false, 2, 4>(W, rows, cols, xq, xd, xs, y)))
V1(b8_w4_u4, 8, (block_row<false, 4, 4>(W, rows, cols, xq, xd, xs, y)))
V1(p4_u4, 6, (persistent_rows<true, 4, false>(W, rows, cols, xq, xd, xs, y)))
V1(p4_u4_pipe, 4, (persistent_rows<true, 4, true>(W, rows, cols, xq, xd, xs, y)))
V1(p8_u4_pipe, 2, (persistent_rows<false, 4, true>(W, rows, cols, xq, xd, xs, y)))

// ------------------------------------------------------------------------------------------------ helpers
extern "C" __global__ void flush_read(const int4* __restrict__ p, long long n, int* sink)
{
    int acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        acc ^= p[i].x;
    if (acc == 0x12345678) sink[0] = acc;
}

// Read roof: grid-stride, four independent 16-byte loads in flight per thread.
extern "C" __global__ void read_roof(const int4* __restrict__ p, long long n, int* sink)
{
    int acc = 0;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride)
    {
        int4 a = ld_weights(p + i), b = ld_weights(p + i + stride), c = ld_weights(p + i + 2 * stride), d = ld_weights(p + i + 3 * stride);
        acc ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    for (; i < n; i += stride) acc ^= p[i].x;
    if (acc == 0x12345678) sink[0] = acc;
}

extern "C" __global__ void spin(int ns, int* sink)
{
    pdl_release();
    pdl_wait();
    u64 t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < (u64)ns);
    if (threadIdx.x == 0) sink[blockIdx.x] = (int)(t - t0);
}

// ------------------------------------------------------------------------------------------------ host
#ifndef __CUDACC_RTC__
// persistent: the grid is at most the blocks the GPU holds at once, divided by `share` (so that the next launch's blocks
// fit beside it and, under programmatic launch, start early).
struct Variant { const char* name; const void* fn; bool q4; int rowsPerBlock; bool main; int maxCols = 1 << 30; bool persistent = false; int share = 1; };

static std::vector<Variant> variants()
{
    return {
        { "main q4_0", (const void*)matvec_q4_0_q8, true, 4, true },
        { "main2 q4_0", (const void*)matvec2_q4_0_q8, true, 8, true },
        { "a4_u8", (const void*)a4_u8, true, 4, false },
        { "a4_u4_m6", (const void*)a4_u4_m6, true, 4, false },
        { "l4_u8_m8", (const void*)l4_u8_m8, true, 4, false },
        { "l4_u4_m12", (const void*)l4_u4_m12, true, 4, false },
        { "l4_u16_m4", (const void*)l4_u16_m4, true, 4, false },
        { "r4_u4_m6", (const void*)r4_u4_m6, true, 8, false },
        { "r4_u8_m4", (const void*)r4_u8_m4, true, 8, false },
        { "b4_w2_u8", (const void*)b4_w2_u8, true, 2, false },
        { "b4_w4_u4", (const void*)b4_w4_u4, true, 1, false },
        { "b4_w4_u8", (const void*)b4_w4_u8, true, 1, false },
        { "p4_u4", (const void*)p4_u4, true, 8, false, 4096, true },
        { "p4_u4_h", (const void*)p4_u4, true, 8, false, 4096, true, 2 },
        { "p4_u4_pipe", (const void*)p4_u4_pipe, true, 8, false, 4096, true },
        { "p4_u4_pipe_h", (const void*)p4_u4_pipe, true, 8, false, 4096, true, 2 },
        { "loop q4_0", (const void*)matvec_q4_0_q8_loop, true, 4, true, 1 << 30, true },
        { "loop2 q4_0", (const void*)matvec2_q4_0_q8_loop, true, 8, true, 1 << 30, true },
        { "loop2 q4_0 h", (const void*)matvec2_q4_0_q8_loop, true, 8, true, 1 << 30, true, 2 },
        { "main q8_0", (const void*)matvec_q8_0_q8, false, 4, true },
        { "p8_u4_pipe", (const void*)p8_u4_pipe, false, 8, false, 4096, true },
        { "loop q8_0", (const void*)matvec_q8_0_q8_loop, false, 4, true, 1 << 30, true },
        { "loop q8_0 h", (const void*)matvec_q8_0_q8_loop, false, 4, true, 1 << 30, true, 2 },
        { "a8_u4", (const void*)a8_u4, false, 4, false },
        { "l8_u4_m8", (const void*)l8_u4_m8, false, 4, false },
        { "l8_u2_m12", (const void*)l8_u2_m12, false, 4, false },
        { "l8_u8_m4", (const void*)l8_u8_m4, false, 4, false },
        { "r8_u2_m8", (const void*)r8_u2_m8, false, 8, false },
        { "b8_w2_u4", (const void*)b8_w2_u4, false, 2, false },
        { "b8_w4_u2", (const void*)b8_w4_u2, false, 1, false },
        { "b8_w4_u4", (const void*)b8_w4_u4, false, 1, false },
    };
}

struct X { i8* q; float* d; int* s; };

static cudaStream_t g_stream;

// A launch on g_stream; pdl: with the programmatic-serialization attribute.
static void launch_ex(const void* fn, unsigned grid, unsigned block, void** args, bool pdl)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(block);
    cfg.stream = g_stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelExC(&cfg, fn, args));
}

// One launch of variant v on matrix W (rows × cols) into y.
static int g_sms;
static const Variant* g_main[2]; // main's one-row kernels, q8_0 and q4_0: what a variant without long rows falls back to

static void launch(const Variant& v, const u8* W, int rows, int cols, X x, float* y, bool pdl)
{
    if (cols > v.maxCols) { launch(*g_main[v.q4], W, rows, cols, x, y, pdl); return; }
    unsigned grid = (rows + v.rowsPerBlock - 1) / v.rowsPerBlock;
    if (v.persistent)
    {
        int per = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per, v.fn, 128, 0));
        grid = std::min<unsigned>(grid, (unsigned)std::max(1, per * g_sms / v.share));
    }
    if (v.main)
    {
        const u8* w1 = nullptr; const u8* w2 = nullptr; float* y1 = nullptr; float* y2 = nullptr;
        int r1 = 0, r2 = 0, n = 1;
        void* args[] = { &W, &w1, &w2, &y, &y1, &y2, &rows, &r1, &r2, &cols, &x.q, &x.d, &x.s, &n };
        launch_ex(v.fn, grid, 128, args, pdl);
    }
    else
    {
        void* args[] = { &W, &rows, &cols, &x.q, &x.d, &x.s, &y };
        launch_ex(v.fn, grid, 128, args, pdl);
    }
}

static void launch_spin(int ns, int* sink, bool pdl)
{
    void* args[] = { &ns, &sink };
    launch_ex((const void*)spin, 1, 32, args, pdl);
}

static unsigned long long g_rng = 88172645463325252ull;
static unsigned rnd() { g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17; return (unsigned)g_rng; }

static u16 half_bits(float f)
{
    // f in [2^-8, 2^-6): exponent 8..10 normal halfs; mantissa random.
    unsigned m = rnd() & 1023, e = 7 + (rnd() % 2);
    (void)f;
    return (u16)((e << 10) | m);
}

static size_t matrix_bytes(bool q4, int rows, int cols) { return (size_t)rows * (cols / 32) * ((q4 ? 16 : 32) + 2); }

// Host pools the matrices are copied from: random quants, and valid fp16 scales.
static std::vector<u8> g_quants;
static std::vector<u16> g_scales;

static void copy_from_pool(u8* dst, size_t bytes, const u8* pool, size_t poolBytes)
{
    size_t off = (rnd() % 4096) * 16;
    for (size_t done = 0; done < bytes;)
    {
        size_t n = std::min(bytes - done, poolBytes - off);
        CK(cudaMemcpy(dst + done, pool + off, n, cudaMemcpyHostToDevice));
        done += n;
        off = 0;
    }
}

static u8* make_matrix(bool q4, int rows, int cols)
{
    if (g_quants.empty())
    {
        g_quants.resize(64 << 20);
        for (size_t i = 0; i < g_quants.size(); i += 4) { unsigned r = rnd(); memcpy(&g_quants[i], &r, 4); }
        g_scales.resize(8 << 20);
        for (auto& h : g_scales) h = half_bits(0);
    }
    size_t blocks = (size_t)rows * (cols / 32), qb = q4 ? 16 : 32;
    u8* p;
    CK(cudaMalloc(&p, blocks * (qb + 2)));
    copy_from_pool(p, blocks * qb, g_quants.data(), g_quants.size());
    copy_from_pool(p + blocks * qb, blocks * 2, (const u8*)g_scales.data(), g_scales.size() * 2);
    return p;
}

static X make_x(int cols)
{
    int blocks = cols / 32;
    std::vector<i8> q(cols);
    std::vector<float> d(blocks);
    std::vector<int> s(blocks);
    for (int b = 0; b < blocks; b++)
    {
        int sum = 0;
        for (int j = 0; j < 32; j++) { q[b * 32 + j] = (i8)((int)(rnd() % 255) - 127); sum += q[b * 32 + j]; }
        d[b] = 0.01f + (rnd() % 1000) * 1e-5f;
        s[b] = sum;
    }
    X x;
    CK(cudaMalloc(&x.q, cols));
    CK(cudaMalloc(&x.d, blocks * 4));
    CK(cudaMalloc(&x.s, blocks * 4));
    CK(cudaMemcpy(x.q, q.data(), cols, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(x.d, d.data(), blocks * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(x.s, s.data(), blocks * 4, cudaMemcpyHostToDevice));
    return x;
}

static int4* g_flush;
static long long g_flushN;
static int* g_sink;

static void flush()
{
    void* args[] = { &g_flush, &g_flushN, &g_sink };
    CK(cudaLaunchKernel((const void*)flush_read, dim3(132 * 8), dim3(256), args, 0, g_stream));
}

static float elapsed_us(std::function<void()> body)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a, g_stream));
    body();
    CK(cudaEventRecord(b, g_stream));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return ms * 1000.f;
}

static float graph_us(std::function<void()> body, int reps)
{
    cudaGraph_t g;
    cudaGraphExec_t e;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
    body();
    CK(cudaStreamEndCapture(g_stream, &g));
    CK(cudaGraphInstantiate(&e, g, 0));
    CK(cudaGraphLaunch(e, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    std::vector<float> t;
    for (int r = 0; r < reps; r++) t.push_back(elapsed_us([&] { CK(cudaGraphLaunch(e, g_stream)); }));
    CK(cudaGraphExecDestroy(e));
    CK(cudaGraphDestroy(g));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main(int argc, char** argv)
{
    const char* only = argc > 1 ? argv[1] : "";
    CK(cudaSetDevice(0));
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    g_sms = prop.multiProcessorCount;
    g_flushN = (256LL << 20) / 16;
    CK(cudaMalloc(&g_flush, 256LL << 20));
    CK(cudaMemset(g_flush, 1, 256LL << 20));
    CK(cudaMalloc(&g_sink, 4096));
    auto vs = variants();
    for (auto& v : vs) if (!strcmp(v.name, v.q4 ? "main q4_0" : "main q8_0")) g_main[v.q4] = &v;
    for (auto& v : vs)
    {
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, v.fn));
        int blocks = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, v.fn, 128, 0));
        printf("%-10s %3d registers, %2d blocks (%2d warps) per SM\n", v.name, fa.numRegs, blocks, blocks * 4);
    }

    // Read roof over 4 GiB.
    {
        long long n = (4LL << 30) / 16;
        int4* big;
        CK(cudaMalloc(&big, n * 16));
        CK(cudaMemset(big, 2, n * 16));
        for (int grid : { 132 * 4, 132 * 8, 132 * 16 })
        {
            void* args[] = { &big, &n, &g_sink };
            std::vector<float> t;
            for (int r = 0; r < 5; r++)
                t.push_back(elapsed_us([&] { CK(cudaLaunchKernel((const void*)read_roof, dim3(grid), dim3(256), args, 0, g_stream)); }));
            std::sort(t.begin(), t.end());
            printf("read roof, grid %d x 256: %.0f GB/s (4 GiB in %.0f us)\n", grid, n * 16 / (t[2] * 1e3), t[2]);
        }
        std::vector<float> t;
        for (int r = 0; r < 5; r++) t.push_back(elapsed_us([&] { CK(cudaMemcpyAsync(big, big + n / 2, n * 8, cudaMemcpyDeviceToDevice, g_stream)); }));
        std::sort(t.begin(), t.end());
        printf("copy 2 GiB: %.0f GB/s (read + write)\n", 2.0 * n * 8 / (t[2] * 1e3));
        CK(cudaFree(big));
    }

    struct Shape { const char* name; int rows, cols; };
    std::vector<Shape> shapes = { { "O 4096x4096", 4096, 4096 }, { "QKV 12288x4096", 12288, 4096 }, { "gate+up 22016x4096", 22016, 4096 },
                                  { "down 4096x11008", 4096, 11008 }, { "anchor 4096x14336", 4096, 14336 }, { "head 32000x4096", 32000, 4096 } };
    X x = make_x(14336);
    float* y;
    CK(cudaMalloc(&y, 32000 * 4 * 64));
    std::vector<float> ref(32000), out(32000);
    for (bool q4 : { true, false })
    {
        for (auto& sh : shapes)
        {
            size_t bytes = matrix_bytes(q4, sh.rows, sh.cols);
            int copies = std::max<int>(2, (int)((300LL << 20) / bytes + 1));
            std::vector<u8*> ms;
            for (int c = 0; c < copies; c++) ms.push_back(make_matrix(q4, sh.rows, sh.cols));
            printf("\n%s %s: %.1f MB, %d copies\n%-10s %9s %7s %9s %7s %9s %7s %9s\n", q4 ? "Q4_0" : "Q8_0", sh.name, bytes / 1e6, copies,
                   "variant", "flush us", "GB/s", "strm us", "GB/s", "graph us", "GB/s", "max rel");
            bool haveRef = false;
            for (auto& v : vs)
            {
                if (v.q4 != q4 || (only[0] && !strstr(v.name, only) && !v.main) || sh.cols > v.maxCols) continue;
                launch(v, ms[0], sh.rows, sh.cols, x, y, false);
                CK(cudaStreamSynchronize(g_stream));
                CK(cudaMemcpy(out.data(), y, sh.rows * 4, cudaMemcpyDeviceToHost));
                double maxRel = 0;
                if (!haveRef) { ref = out; haveRef = true; }
                else
                    for (int r = 0; r < sh.rows; r++)
                        maxRel = std::max(maxRel, (double)fabsf(out[r] - ref[r]) / (fabsf(ref[r]) + 1e-3));
                std::vector<float> tf;
                for (int r = 0; r < 9; r++)
                {
                    flush();
                    tf.push_back(elapsed_us([&] { launch(v, ms[r % copies], sh.rows, sh.cols, x, y, false); }));
                }
                std::sort(tf.begin(), tf.end());
                int iters = 100;
                float ts = elapsed_us([&] { for (int i = 0; i < iters; i++) launch(v, ms[i % copies], sh.rows, sh.cols, x, y, false); }) / iters;
                float tg = graph_us([&] { for (int i = 0; i < iters; i++) launch(v, ms[i % copies], sh.rows, sh.cols, x, y, false); }, 5) / iters;
                printf("%-10s %9.2f %7.0f %9.2f %7.0f %9.2f %7.0f %9.1e\n", v.name, tf[4], bytes / (tf[4] * 1e3), ts, bytes / (ts * 1e3), tg,
                       bytes / (tg * 1e3), maxRel);
            }
            for (auto m : ms) CK(cudaFree(m));
        }
    }

    // Mini decode: 32 layers of llama-7b's four products with `spins` small kernels of `ns` each around them, in a graph.
    for (bool q4 : { true, false })
    {
        struct L { const u8 *qkv, *o, *gu, *down; };
        std::vector<L> layers;
        for (int l = 0; l < 32; l++)
            layers.push_back({ make_matrix(q4, 12288, 4096), make_matrix(q4, 4096, 4096), make_matrix(q4, 22016, 4096), make_matrix(q4, 4096, 11008) });
        double bytes = 32.0 * (matrix_bytes(q4, 12288, 4096) + matrix_bytes(q4, 4096, 4096) + matrix_bytes(q4, 22016, 4096) + matrix_bytes(q4, 4096, 11008));
        printf("\nmini decode %s: 32 layers, %.2f GB of products per token\n", q4 ? "Q4_0" : "Q8_0", bytes / 1e9);
        printf("%-10s %-6s %10s %10s %10s %10s\n", "variant", "launch", "products", "+spins", "spins", "GB/s prod");
        int ns = 1500;
        float spinsOnly = 0;
        for (bool pdl : { false, true })
        {
            spinsOnly = graph_us([&] { for (int l = 0; l < 32; l++) for (int s = 0; s < 12; s++) launch_spin(ns, g_sink, pdl); }, 5);
            for (auto& v : vs)
            {
                if (v.q4 != q4 || (only[0] && !strstr(v.name, only) && !v.main)) continue;
                auto step = [&](bool spins) {
                    for (auto& ly : layers)
                    {
                        if (spins) launch_spin(ns, g_sink, pdl);
                        launch(v, ly.qkv, 12288, 4096, x, y, pdl);
                        if (spins) for (int s = 0; s < 4; s++) launch_spin(ns, g_sink, pdl);
                        launch(v, ly.o, 4096, 4096, x, y, pdl);
                        if (spins) for (int s = 0; s < 3; s++) launch_spin(ns, g_sink, pdl);
                        launch(v, ly.gu, 22016, 4096, x, y, pdl);
                        if (spins) for (int s = 0; s < 2; s++) launch_spin(ns, g_sink, pdl);
                        launch(v, ly.down, 4096, 11008, x, y, pdl);
                        if (spins) for (int s = 0; s < 2; s++) launch_spin(ns, g_sink, pdl);
                    }
                };
                float tp = graph_us([&] { step(false); }, 5), ta = graph_us([&] { step(true); }, 5);
                printf("%-10s %-6s %10.1f %10.1f %10.1f %10.0f\n", v.name, pdl ? "pdl" : "plain", tp, ta, spinsOnly, bytes / (tp * 1e3));
            }
        }
        for (auto& ly : layers) { CK(cudaFree((void*)ly.qkv)); CK(cudaFree((void*)ly.o)); CK(cudaFree((void*)ly.gu)); CK(cudaFree((void*)ly.down)); }
    }
    printf("\ndone\n");
    return 0;
}
#endif
