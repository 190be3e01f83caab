// Decode matrix-vector kernels: y[r] = dot(W[r], x) for one token, x and y float32. Compiled at first use by NVRTC
// (Nvrtc.cs) after common.cuh (types, fp16 conversion, warp sums). Two families:
//  - Q4_K, Q6_K, F32, F16, BF16 in GGUF's block layouts exactly as the file stores them
//    (src/FitLM/Tensors/BlockLayout.cs): each element decoded as Dequantize.cs decodes it, then multiplied with x.
//  - Q4_0 and Q8_0 in a split layout (quants, then scales: see "int8 decode" below) against x quantized to q8_0,
//    in integers: the CPU's numerics for those types.
//
// Shape of the first family: one warp per row, WARPS rows per thread block. A warp walks its row tile by tile: a
// tile is a whole number of blocks whose size is a multiple of 16 bytes. GGUF blocks are not 16-byte aligned inside
// a row (q6_K is 210 bytes), so a thread cannot read its own block with wide loads; instead the warp copies the tile
// into shared memory with 16-byte loads (a warp instruction then reads 512 contiguous bytes), and each lane decodes
// its part of the tile from shared memory, where any alignment is cheap. When the row does not start 16-byte
// aligned (rows of odd byte length) the copy falls back to 4-byte or 1-byte loads: correct, slower, and not the
// layout of real models. The lanes' partial sums are added with warp shuffles; lane 0 writes y[r].

struct alignas(16) v4 { u32 a, b, c, d; };
struct alignas(16) f4 { float x, y, z, w; };

#define WARPS 8           // rows per thread block (256 threads)
#define TILE_MAX 1152     // bytes of the largest tile (q4_K: 8 blocks), a multiple of 16
#define LOADS ((TILE_MAX / 16 + 31) / 32) // 16-byte loads per lane for the largest tile (3)

// Each warp's tile; declared as 16-byte vectors so that it is 16-byte aligned.
__shared__ v4 tiles[WARPS][TILE_MAX / 16];

__device__ __forceinline__ u16 ld16(const u8* p) { return *(const u16*)p; }
__device__ __forceinline__ u32 ld32(const u8* p) { return *(const u32*)p; }

// Copies n bytes of the row into this warp's tile. All 16-byte loads are issued before the first store, so a lane
// has up to LOADS loads in flight (latency hiding comes from that and from the other warps of the SM).
__device__ __forceinline__ void stage(u8* dst, const u8* __restrict__ src, int n, int lane)
{
    if ((((u64)src) & 15) == 0)
    {
        int n16 = n >> 4;
        const v4* s = (const v4*)src;
        v4* d = (v4*)dst;
        v4 r[LOADS];
#pragma unroll
        for (int k = 0; k < LOADS; k++) { int i = lane + 32 * k; if (i < n16) r[k] = s[i]; }
#pragma unroll
        for (int k = 0; k < LOADS; k++) { int i = lane + 32 * k; if (i < n16) d[i] = r[k]; }
        for (int i = (n16 << 4) + lane; i < n; i += 32) dst[i] = src[i];
    }
    else if ((((u64)src) & 3) == 0)
    {
        int n4 = n >> 2;
        for (int i = lane; i < n4; i += 32) ((u32*)dst)[i] = ((const u32*)src)[i];
        for (int i = (n4 << 2) + lane; i < n; i += 32) dst[i] = src[i];
    }
    else
    {
        for (int i = lane; i < n; i += 32) dst[i] = src[i];
    }
    __syncwarp();
}

// The loop every kernel shares. T gives the block size in elements and bytes, the blocks per tile, and
// decode4(tile, e, w): elements e..e+3 (e a multiple of 4) of the tile as floats, decoded as Dequantize.cs does.
// Lane l takes elements 4l..4l+3 of every 128, so a warp's x loads are 512 contiguous bytes (4 L1 wavefronts). The
// first version gave each lane whole blocks: its x loads touched 32 lines per instruction, and the quantized
// kernels reached only 13-31% of the copy bandwidth on an H100 (F32, whose lanes read x nearly contiguously: 92%).
//
// NB > 1 is the same walk for up to NB tokens at once (n of them, n <= NB): x is [n x cols] and y [n x rows], and each
// decoded weight is multiplied with every token's x, so a batch of prefill reads the weights once per NB tokens
// instead of once per token (llama.cpp's mul_mat_vec for small batches does the same). cols must be a multiple of 4
// when n > 1 (every row of x then starts 16-byte aligned); CudaMatVec checks.
template <typename T, int NB>
__device__ __forceinline__ void matvec(const u8* __restrict__ W, long long row_bytes, int rows, int cols,
                                       const float* x, float* y, int n)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * WARPS + warp;
    if (row >= rows) return; // the whole warp leaves together; warps do not synchronize with each other
    const u8* w = W + (long long)row * row_bytes;
    u8* tile = (u8*)tiles[warp];
    int blocks = cols / T::ELEMS;
    float acc[NB];
#pragma unroll
    for (int t = 0; t < NB; t++) acc[t] = 0.f;
    for (int b0 = 0; b0 < blocks; b0 += T::TILE)
    {
        int nb = blocks - b0 < T::TILE ? blocks - b0 : T::TILE;
        stage(tile, w + (long long)b0 * T::BYTES, nb * T::BYTES, lane);
        const float* xt = x + (long long)b0 * T::ELEMS;
        int m = nb * T::ELEMS; // a multiple of 32 for the block types; any length for f32/f16/bf16
        for (int e = 4 * lane; e < m; e += 128)
        {
            if constexpr (T::ELEMS == 1)
            {
                if (e + 4 > m) // the last elements of a float row whose length is not a multiple of 4
                {
                    for (int i = e; i < m; i++)
                    {
                        float wi = T::decode1(tile, i);
#pragma unroll
                        for (int t = 0; t < NB; t++)
                            if (t < n) acc[t] += wi * xt[(long long)t * cols + i];
                    }
                    continue;
                }
            }
            float v[4];
            T::decode4(tile, e, v);
#pragma unroll
            for (int t = 0; t < NB; t++)
            {
                if (t < n)
                {
                    f4 xv = *(const f4*)(xt + (long long)t * cols + e);
                    acc[t] += v[0] * xv.x + v[1] * xv.y + v[2] * xv.z + v[3] * xv.w;
                }
            }
        }
        __syncwarp(); // every lane is done with the tile before the next copy overwrites it
    }
#pragma unroll
    for (int t = 0; t < NB; t++)
    {
        if (t < n)
        {
            float sum = warp_sum(acc[t]);
            if (lane == 0) y[(long long)t * rows + row] = sum;
        }
    }
}

// The same tile walk writing each decoded weight as fp16 instead of multiplying it: rows [0, rows) of W into
// out [rows × cols], for the prefill's cuBLAS products (CudaGemm.cs). One warp per row, as above.
template <typename T>
__device__ __forceinline__ void dequant_f16(const u8* __restrict__ W, long long row_bytes, int rows, int cols,
                                            u16* out)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row = blockIdx.x * WARPS + warp;
    if (row >= rows) return;
    const u8* w = W + (long long)row * row_bytes;
    u8* tile = (u8*)tiles[warp];
    u16* o = out + (long long)row * cols;
    int blocks = cols / T::ELEMS;
    for (int b0 = 0; b0 < blocks; b0 += T::TILE)
    {
        int nb = blocks - b0 < T::TILE ? blocks - b0 : T::TILE;
        stage(tile, w + (long long)b0 * T::BYTES, nb * T::BYTES, lane);
        u16* ot = o + (long long)b0 * T::ELEMS;
        int m = nb * T::ELEMS;
        for (int e = 4 * lane; e < m; e += 128)
        {
            if constexpr (T::ELEMS == 1)
            {
                if (e + 4 > m)
                {
                    for (int i = e; i < m; i++) ot[i] = float_to_half(T::decode1(tile, i));
                    continue;
                }
            }
            float v[4];
            T::decode4(tile, e, v);
#pragma unroll
            for (int i = 0; i < 4; i++) ot[e + i] = float_to_half(v[i]);
        }
        __syncwarp();
    }
}

// ------------------------------------------------------------------------------------------------ q4_K
// block_q4_K (144 bytes): half d; half dmin; u8 scales[12] (eight 6-bit scale/min pairs); u8 qs[128].
// Chunk c (64 elements) uses qs[32c..32c+31]: low nibbles are sub-block 2c, high nibbles sub-block 2c+1;
// x = d*sc*q - dmin*m. Tile: 8 blocks = 1152 bytes. 144 is a multiple of 16, so qs is 4-byte aligned: one load.
struct Q4_K
{
    static const int ELEMS = 256, BYTES = 144, TILE = 8;
    static __device__ __forceinline__ void decode4(const u8* t, int e, float* w)
    {
        const u8* blk = t + (e >> 8) * BYTES;
        int within = e & 255, c = within >> 6, hi = (within >> 5) & 1, l = within & 31, s = 2 * c + hi;
        // BlockDecode.ScalesMinsK4, one sub-block: scales/mins 0-3 are the low 6 bits of bytes 0-3 / 4-7; 4-7 take
        // their low 4 bits from byte 8+j's nibbles and their top 2 bits from the top of bytes j / 4+j.
        const u8* sc = blk + 4;
        int scale, min;
        if (s < 4) { scale = sc[s] & 63; min = sc[4 + s] & 63; }
        else { scale = (sc[s + 4] & 15) | ((sc[s - 4] >> 6) << 4); min = (sc[s + 4] >> 4) | ((sc[s] >> 6) << 4); }
        float d1 = half_to_float(ld16(blk)) * (float)scale, m1 = half_to_float(ld16(blk + 2)) * (float)min;
        u32 q = ld32(blk + 16 + 32 * c + l);
        if (hi) q >>= 4;
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = d1 * (float)((q >> (8 * i)) & 15) - m1;
    }
};

// ------------------------------------------------------------------------------------------------ f16, bf16, f32
// "Blocks" of one element; a tile is 1024 bytes. Rows of any length (decode1 for the last elements).
struct F32
{
    static const int ELEMS = 1, BYTES = 4, TILE = 256;
    static __device__ __forceinline__ float decode1(const u8* t, int i) { return ((const float*)t)[i]; }
    static __device__ __forceinline__ void decode4(const u8* t, int e, float* w)
    {
        f4 v = *(const f4*)(t + 4 * e);
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
    }
};

template <bool BF>
struct Half16
{
    static const int ELEMS = 1, BYTES = 2, TILE = 512;
    static __device__ __forceinline__ float convert(u16 h) { return BF ? bf16_to_float(h) : half_to_float(h); }
    static __device__ __forceinline__ float decode1(const u8* t, int i) { return convert(((const u16*)t)[i]); }
    static __device__ __forceinline__ void decode4(const u8* t, int e, float* w)
    {
        u32 a = ld32(t + 2 * e), b = ld32(t + 2 * e + 4); // 8-byte aligned in the tile
        w[0] = convert((u16)(a & 0xFFFF)); w[1] = convert((u16)(a >> 16));
        w[2] = convert((u16)(b & 0xFFFF)); w[3] = convert((u16)(b >> 16));
    }
};

// ------------------------------------------------------------------------------------------------ entry points
// Launch: grid ceil(rows / WARPS), block 32 * WARPS threads, no dynamic shared memory (CudaMatVec.cs). matvec_* is
// one token; matmul8_* up to 8 (n), the prefill batch's tokens eight at a time; dequant_f16_* the rows as fp16.
#define ENTRY(name, T) \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) matvec_##name(const u8* __restrict__ W, long long row_bytes, \
        int rows, int cols, const float* x, float* y) \
    { pdl_begin(); matvec<T, 1>(W, row_bytes, rows, cols, x, y, 1); } \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) matmul8_##name(const u8* __restrict__ W, long long row_bytes, \
        int rows, int cols, const float* x, float* y, int n) \
    { pdl_begin(); matvec<T, 8>(W, row_bytes, rows, cols, x, y, n); } \
    extern "C" __global__ void __launch_bounds__(32 * WARPS) dequant_f16_##name(const u8* __restrict__ W, long long row_bytes, \
        int rows, int cols, u16* out) \
    { pdl_begin(); dequant_f16<T>(W, row_bytes, rows, cols, out); }

// q4_K's one-token and batch products are the integer kernels below; its prefill dequantizer is this file's walk.
extern "C" __global__ void __launch_bounds__(32 * WARPS) dequant_f16_q4_k(const u8* __restrict__ W, long long row_bytes,
    int rows, int cols, u16* out)
{ pdl_begin(); dequant_f16<Q4_K>(W, row_bytes, rows, cols, out); }
ENTRY(f32, F32)
ENTRY(f16, Half16<false>)
ENTRY(bf16, Half16<true>)


// ------------------------------------------------------------------------------------------------ int8 decode
// Q4_0 and Q8_0 rows against x quantized to q8_0 (ActivationQuant.Q8_0Scalar: per 32-block d = amax/127 rounded to
// fp16, q = round-to-even(x·127/amax)), with integer dot products (dp4a: four int8 products and their sum in one
// instruction): y[r] = Σ_b d_w·d_x·Σ_j w_j·q_j, the CPU's numerics for these types (IntDot), and a quarter of the
// float kernels' arithmetic: decoding 4-bit weights to floats kept those kernels at 19-37% of the copy bandwidth on
// an H100 (fitlm devices --check), bound by the ALU rather than by memory.

__device__ __forceinline__ int dp4a(int a, int b, int c)
{
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// x [n × cols] to q8_0: one warp per 32-block, lane j takes element j. q [n × cols] int8, d [n × cols/32] the
// fp16-rounded scales as floats, s [n × cols/32] the blocks' sums of q (Q4_0's -8 offset: Σ(w-8)q = Σwq - 8Σq).
extern "C" __global__ void quantize_q8_0(const float* x, long long blocks, i8* q,
                                         float* d, int* s)
{
    pdl_begin();
    long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (b >= blocks) return;
    quantize_block_q8_0(x[b * 32 + (threadIdx.x & 31)], b, q, d, s);
}

// Q4_0 and Q8_0 in the split layout the upload writes (DeviceLayout.cs): a matrix of R rows of B blocks is all its
// quants first, [R·B × QB bytes] (QB = 16 for q4_0, 32 for q8_0; each block's bytes as GGUF orders them), then all
// its scales, [R·B] fp16. The same bytes as the file's, but every block's quants start 16-byte aligned, so a lane
// reads them with one or two 16-byte loads. Reading GGUF's 18- and 34-byte blocks in place takes 2-byte loads (the
// only alignment they have): a warp's load instruction then spans ~5 L1 wavefronts for 64 useful bytes, about the
// 13 bytes per cycle an SM needs from memory, and llama.cpp's kernels of that layout stop at 70-74% of the copy
// bandwidth on an H100 (../shared/README.md, GPU anchor); so did this file's (one 128-thread block per row).
//
// One warp per row, SPLIT_WARPS rows per thread block; lane l takes blocks l, l + 32, ...: a warp's weight loads are
// 512 (q4_0) or 1024 (q8_0) contiguous bytes and its scale loads 64. For a batch (split_row), UNROLL groups of loads
// are issued before the first dot product, so a lane has 64 bytes in flight; one token has its own loop
// (split_rows_one_token). Up to NB tokens at once (n of them): every decoded weight block meets each token's x, so a
// small batch reads the weights once.
//
// Up to three matrices of the same input and type in one launch (Q, K and V; gate and up): warps [0, s0) take the
// first one's rows, the next s1 the second's, the rest the third's; launches of a few microseconds each cost more
// than the tail of one longer one.
#define SPLIT_WARPS 4

// The integer kernels' last step: each token's lane sums added across the warp, lane 0 writing y[t·rows + row].
template <int NB>
__device__ __forceinline__ void write_rows(const float* acc, float* y, int rows, int row, int n, int lane)
{
#pragma unroll
    for (int t = 0; t < NB; t++)
    {
        if (t >= n) break;
        float sum = warp_sum(acc[t]);
        if (lane == 0) y[(long long)t * rows + row] = sum;
    }
}

// One block's integer dot product with x's q8_0 block (x0: elements 0-15, x1: 16-31). q4_0: byte k of w holds element k
// (low nibble) and element k + 16 (high nibble), as 0..15; the caller subtracts 8·Σq. q8_0: w0, w1 the 32 int8 weights.
__device__ __forceinline__ int dot_q4_0(int4 w, int4 x0, int4 x1)
{
    const int m = 0x0F0F0F0F;
    int s = dp4a(w.x & m, x0.x, 0);
    s = dp4a(w.y & m, x0.y, s);
    s = dp4a(w.z & m, x0.z, s);
    s = dp4a(w.w & m, x0.w, s);
    s = dp4a((w.x >> 4) & m, x1.x, s);
    s = dp4a((w.y >> 4) & m, x1.y, s);
    s = dp4a((w.z >> 4) & m, x1.z, s);
    return dp4a((w.w >> 4) & m, x1.w, s);
}

__device__ __forceinline__ int dot_q8_0(int4 w0, int4 w1, int4 x0, int4 x1)
{
    int s = dp4a(w0.x, x0.x, 0);
    s = dp4a(w0.y, x0.y, s);
    s = dp4a(w0.z, x0.z, s);
    s = dp4a(w0.w, x0.w, s);
    s = dp4a(w1.x, x1.x, s);
    s = dp4a(w1.y, x1.y, s);
    s = dp4a(w1.z, x1.z, s);
    return dp4a(w1.w, x1.w, s);
}

// A 16-byte load of weights: not kept in L1 (each byte is read once), fetched from DRAM in 256-byte L2 sectors.
__device__ __forceinline__ int4 ld_weights(const int4* p)
{
    int4 r;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.s32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

// pdl_wait with x's pointers passed through the instruction: every load of x then depends on its result and cannot be
// scheduled before it. x is read with coherent loads: under programmatic launch this kernel runs while the one before
// it writes x, so x is not read-only for its lifetime, which ld.global.nc (and const __restrict__, which lets the
// compiler choose it, and move such loads above an asm statement) requires. Two first versions broke that, one with
// const __restrict__ pointers, one with explicit non-coherent loads: devices --check on an H100 decoded pycoder Q4_0 and Q8_0 with logits
// off by 1.2-1.7 (top-1 0-2 of 40) under programmatic launch, and right without it.
__device__ __forceinline__ void pdl_wait_for(const int4*& a, const float*& b, const int*& c)
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" : "+l"(a), "+l"(b), "+l"(c) : : "memory");
#endif
}

// One token (decode), R rows per warp (1, or 2 sharing each load of x): the weights and scales of a group of U blocks
// are requested first, then x's quants, scale and sum, then the products. U = 8 (q4_0) or 4 (q8_0) with one row, so a
// lane has 128 bytes of weights in flight; weights are read once, so they skip L1 and ask the L2 for 256-byte sectors
// (ld_weights). With two rows (U = 4), x is loaded per block in the product loop, which keeps the kernel at 80
// registers (six thread blocks an SM): the all-first version needs ~150.
// The first group's weights are requested before the wait (pdl_wait_for): nothing writes weights during a step, so
// under programmatic launch their fetch overlaps the kernels before this one. On an H100 (bench/cuda-matvec.cu, 32
// layers of llama-7b's Q4_0 products in one graph, 3.64 GB): this loop with two rows 1656-1660 µs plain and 1425-1428
// with programmatic launch, with one row 1788-1793 and 1697-1704 (the bench's variants, which may read x before the
// wait since nothing writes it there: two rows 1567-1581 plain, 1357-1358 programmatic).
// Against split_row's 64 bytes in flight with x loaded per block after the weights arrived, llama-7b decode had gone
// from 332.6 to 340.3 tokens/s (Q4_0) and 261.5 to 272.6 (Q8_0); U = 4 for q4_0 one row was 1.9% slower.
// What a one-token row does around its products (split_rows_one_token's Finish): after_wait() once the kernels before
// have completed, finish() on every lane once the rows' products are summed, write() by lane 0 for each row.
// PlainRows writes y; NormScaledRows (a folded RMSNorm's reader) and FoldRows (its writer) are below.
struct PlainRows
{
    __device__ __forceinline__ void after_wait(int lane) {}
    __device__ __forceinline__ void finish(int lane) {}
    __device__ __forceinline__ void write(float* y, int i, float v) { y[i] = v; }
};

// PAIRED: R / 2 rows of W and the same rows of W2 (gate and up), written as rows + i for W2's row i (gate_up_act).
template <bool Q4, int R, typename Finish = PlainRows, bool PAIRED = false>
__device__ __forceinline__ void split_rows_one_token(const u8* __restrict__ W, int rows, int row, int cols,
                                                     const i8* xq, const float* xd,
                                                     const int* xs, float* y, int lane, Finish&& fin = Finish(),
                                                     const u8* __restrict__ W2 = nullptr)
{
    const int QB = Q4 ? 16 : 32, U = R == 4 ? 2 : R == 2 ? 4 : Q4 ? 8 : 4, RM = PAIRED ? R / 2 : R; // RM: rows of each matrix
    const bool xFirst = R == 1;
    int blocks = cols >> 5;
    const int4* qs[R];
    const u16* ds[R];
#pragma unroll
    for (int r = 0; r < R; r++)
    {
        const u8* M = PAIRED && r >= RM ? W2 : W;
        int rr = row + r % RM < rows ? row + r % RM : rows - 1; // past the last row: read the last again, write nothing
        qs[r] = (const int4*)(M + (long long)rr * blocks * QB);
        ds[r] = (const u16*)(M + (long long)rows * blocks * QB) + (long long)rr * blocks;
    }
    const int4* xv = (const int4*)xq;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.f;
    bool waited = false;
    for (int b0 = lane; b0 < blocks; b0 += 32 * U)
    {
        int4 w0[R][U], w1[R][U], x0[U], x1[U];
        float dw[R][U], dx[U];
        int sx[U];
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            int b = b0 + 32 * u;
            if (b < blocks)
            {
#pragma unroll
                for (int r = 0; r < R; r++)
                {
                    w0[r][u] = ld_weights(qs[r] + (long long)b * (QB / 16));
                    if (!Q4) w1[r][u] = ld_weights(qs[r] + (long long)b * 2 + 1);
                    dw[r][u] = half_to_float(ds[r][b]);
                }
            }
        }
        if (!waited) { pdl_wait_for(xv, xd, xs); waited = true; fin.after_wait(lane); }
        if (xFirst)
        {
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                int b = b0 + 32 * u;
                if (b < blocks) { x0[u] = xv[2 * b]; x1[u] = xv[2 * b + 1]; dx[u] = xd[b]; if (Q4) sx[u] = xs[b]; }
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            int b = b0 + 32 * u;
            if (b >= blocks) break;
            if (!xFirst) { x0[u] = xv[2 * b]; x1[u] = xv[2 * b + 1]; dx[u] = xd[b]; if (Q4) sx[u] = xs[b]; }
#pragma unroll
            for (int r = 0; r < R; r++)
            {
                int sumi = Q4 ? dot_q4_0(w0[r][u], x0[u], x1[u]) - 8 * sx[u] : dot_q8_0(w0[r][u], w1[r][u], x0[u], x1[u]);
                acc[r] += dw[r][u] * dx[u] * (float)sumi;
            }
        }
    }
    if (!waited) { pdl_wait(); fin.after_wait(lane); }
    fin.finish(lane);
#pragma unroll
    for (int r = 0; r < R; r++)
    {
        float sum = warp_sum(acc[r]);
        int i = row + r % RM;
        if (lane == 0 && i < rows) fin.write(y, PAIRED && r >= RM ? rows + i : i, sum);
    }
}

template <bool Q4, int NB>
__device__ __forceinline__ void split_row(const u8* __restrict__ W, int rows, int row, int cols,
                                          const i8* xq, const float* xd,
                                          const int* xs, float* y, int n, int lane)
{
    const int QB = Q4 ? 16 : 32, UNROLL = Q4 ? 4 : 2;
    int blocks = cols >> 5;
    const int4* qs = (const int4*)(W + (long long)row * blocks * QB);
    const u16* ds = (const u16*)(W + (long long)rows * blocks * QB) + (long long)row * blocks;
    float acc[NB];
#pragma unroll
    for (int t = 0; t < NB; t++) acc[t] = 0.f;
    for (int b0 = lane; b0 < blocks; b0 += 32 * UNROLL)
    {
        int4 w0[UNROLL], w1[UNROLL];
        float dw[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
        {
            int b = b0 + 32 * u;
            if (b < blocks)
            {
                w0[u] = qs[(long long)b * (QB / 16)];
                if (!Q4) w1[u] = qs[(long long)b * 2 + 1];
                dw[u] = half_to_float(ds[b]);
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
        {
            int b = b0 + 32 * u;
            if (b >= blocks) break;
#pragma unroll
            for (int t = 0; t < NB; t++)
            {
                if (t >= n) break;
                const int4* xv = (const int4*)(xq + (long long)t * cols + b * 32); // 16-byte aligned: cols % 32 == 0
                int4 x0 = xv[0], x1 = xv[1];
                // Σ(w - 8)·q = Σw·q - 8·Σq
                int sumi = Q4 ? dot_q4_0(w0[u], x0, x1) - 8 * xs[t * blocks + b] : dot_q8_0(w0[u], w1[u], x0, x1);
                acc[t] += dw[u] * xd[t * blocks + b] * (float)sumi;
            }
        }
    }
    write_rows<NB>(acc, y, rows, row, n, lane);
}

// q4_K rows (GGUF's layout: 144-byte blocks are 16-byte aligned as they are) against x in q8_K (quantize_q8_k), as
// IntDot's q4_K × q8_K: per sub-block of 32, scale·Σq4·q8, less min·(its two bsums), times d and dmin and x's d.
// Eight lanes per block, four blocks per warp step: lane j takes qs bytes [16j, 16j + 16), the low nibbles being
// elements 16h.. of sub-block 2c and the high ones of sub-block 2c + 1 (c = j/2, h = j%2): one 16-byte load.
template <int NB>
__device__ __forceinline__ void q4k_row(const u8* __restrict__ W, int row, int cols, const i8* xq,
                                        const float* xd, const int* xs, float* y,
                                        int rows, int n, int lane)
{
    int blocks = cols >> 8, j = lane & 7, c = j >> 1, h = j & 1, s0 = 2 * c, s1 = 2 * c + 1;
    const u8* w = W + (long long)row * blocks * 144;
    float acc[NB];
#pragma unroll
    for (int t = 0; t < NB; t++) acc[t] = 0.f;
    for (int b = lane >> 3; b < blocks; b += 4)
    {
        const u8* blk = w + (long long)b * 144;
        int4 qv = *(const int4*)(blk + 16 + 16 * j);
        float d = half_to_float(ld16(blk)), dmin = half_to_float(ld16(blk + 2));
        const u8* sc = blk + 4; // BlockDecode.ScaleMinK4: 6-bit scales and mins of sub-blocks 0-3, then 4-7 split
        int sc0, m0, sc1, m1;
        if (s0 < 4) { sc0 = sc[s0] & 63; m0 = sc[4 + s0] & 63; }
        else { sc0 = (sc[s0 + 4] & 15) | ((sc[s0 - 4] >> 6) << 4); m0 = (sc[s0 + 4] >> 4) | ((sc[s0] >> 6) << 4); }
        if (s1 < 4) { sc1 = sc[s1] & 63; m1 = sc[4 + s1] & 63; }
        else { sc1 = (sc[s1 + 4] & 15) | ((sc[s1 - 4] >> 6) << 4); m1 = (sc[s1 + 4] >> 4) | ((sc[s1] >> 6) << 4); }
        const int m = 0x0F0F0F0F;
#pragma unroll
        for (int t = 0; t < NB; t++)
        {
            if (t >= n) break;
            const i8* xb = xq + (long long)t * cols + (long long)b * 256;
            int4 x0 = *(const int4*)(xb + 32 * s0 + 16 * h), x1 = *(const int4*)(xb + 32 * s1 + 16 * h);
            int p0 = dp4a(qv.x & m, x0.x, 0);
            p0 = dp4a(qv.y & m, x0.y, p0);
            p0 = dp4a(qv.z & m, x0.z, p0);
            p0 = dp4a(qv.w & m, x0.w, p0);
            int p1 = dp4a((qv.x >> 4) & m, x1.x, 0);
            p1 = dp4a((qv.y >> 4) & m, x1.y, p1);
            p1 = dp4a((qv.z >> 4) & m, x1.z, p1);
            p1 = dp4a((qv.w >> 4) & m, x1.w, p1);
            const int* bs = xs + ((long long)t * blocks + b) * 16;
            int msum = m0 * bs[2 * s0 + h] + m1 * bs[2 * s1 + h];
            acc[t] += xd[(long long)t * blocks + b] * (d * (float)(sc0 * p0 + sc1 * p1) - dmin * (float)msum);
        }
    }
    write_rows<NB>(acc, y, rows, row, n, lane);
}

// q6_K rows in the split layout (SplitLayout.cs: each block's first 208 bytes, ql[128] qh[64] scales[16], then all the
// d's) against x in q8_K, as IntDot's q6_K × q8_K: per sub-block of 16, scale·Σ(q - 32)·q8 = scale·(Σq·q8 - 32·bsum).
// Eight lanes per block: lane j takes elements 128h + 32k + [0, 32) (h = j/4, k = j%4): ql bytes [64h + 32(k%2), +32)
// (high nibbles when k >= 2) and qh bytes [128 + 32h, +32) (bits 2k, 2k+1): four 16-byte loads.
template <int NB>
__device__ __forceinline__ void q6k_row(const u8* __restrict__ W, int row, int cols, const i8* xq,
                                        const float* xd, const int* xs, float* y,
                                        int rows, int n, int lane)
{
    int blocks = cols >> 8, j = lane & 7, h = j >> 2, k = j & 3;
    const u8* w = W + (long long)row * blocks * 208;
    const u16* ds = (const u16*)(W + (long long)rows * blocks * 208) + (long long)row * blocks;
    int shiftLow = k >= 2 ? 4 : 0, shiftHigh = 2 * k, g = 8 * h + 2 * k; // g: the first of the lane's two sub-blocks of 16
    float acc[NB];
#pragma unroll
    for (int t = 0; t < NB; t++) acc[t] = 0.f;
    for (int b = lane >> 3; b < blocks; b += 4)
    {
        const u8* blk = w + (long long)b * 208;
        const int4* ql = (const int4*)(blk + 64 * h + 32 * (k & 1));
        const int4* qh = (const int4*)(blk + 128 + 32 * h);
        int4 l0 = ql[0], l1 = ql[1], h0 = qh[0], h1 = qh[1];
        int lo[8] = { l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w }, hi[8] = { h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w };
        int q[8];
#pragma unroll
        for (int i = 0; i < 8; i++) q[i] = ((lo[i] >> shiftLow) & 0x0F0F0F0F) | (((hi[i] >> shiftHigh) & 0x03030303) << 4);
        int sa = (i8)blk[192 + g], sb = (i8)blk[192 + g + 1];
        float d = half_to_float(ds[b]);
#pragma unroll
        for (int t = 0; t < NB; t++)
        {
            if (t >= n) break;
            const int4* xv = (const int4*)(xq + (long long)t * cols + (long long)b * 256 + 128 * h + 32 * k);
            int4 x0 = xv[0], x1 = xv[1];
            int pa = dp4a(q[0], x0.x, 0);
            pa = dp4a(q[1], x0.y, pa);
            pa = dp4a(q[2], x0.z, pa);
            pa = dp4a(q[3], x0.w, pa);
            int pb = dp4a(q[4], x1.x, 0);
            pb = dp4a(q[5], x1.y, pb);
            pb = dp4a(q[6], x1.z, pb);
            pb = dp4a(q[7], x1.w, pb);
            const int* bs = xs + ((long long)t * blocks + b) * 16;
            acc[t] += xd[(long long)t * blocks + b] * d * (float)(sa * (pa - 32 * bs[g]) + sb * (pb - 32 * bs[g + 1]));
        }
    }
    write_rows<NB>(acc, y, rows, row, n, lane);
}

// Row `row` of one matrix, by type: 0 q4_0, 1 q8_0 (split, x in q8_0), 2 q4_K (GGUF layout), 3 q6_K (split; both x in q8_K).
template <int KIND, int NB>
__device__ __forceinline__ void int_row(const u8* W, int rows, int row, int cols, const i8* xq, const float* xd, const int* xs,
                                        float* y, int n, int lane)
{
    if (KIND == 0) split_row<true, NB>(W, rows, row, cols, xq, xd, xs, y, n, lane);
    else if (KIND == 1) split_row<false, NB>(W, rows, row, cols, xq, xd, xs, y, n, lane);
    else if (KIND == 2) q4k_row<NB>(W, row, cols, xq, xd, xs, y, rows, n, lane);
    else q6k_row<NB>(W, row, cols, xq, xd, xs, y, rows, n, lane);
}

// Which matrix of up to three (warps [0, s0) the first's, the next s1 the second's, the rest the third's, each padded to
// whole thread blocks of SPLIT_WARPS·R rows) and which of its rows warp v takes: W, y and rows set, the row returned.
template <int R>
__device__ __forceinline__ int matrix_row(int v, const u8* W0, const u8* W1, const u8* W2, float* y0, float* y1, float* y2,
                                          int rows0, int rows1, int rows2, const u8*& W, float*& y, int& rows)
{
    const int RB = SPLIT_WARPS * R; // rows a thread block takes
    int s0 = (rows0 + RB - 1) / RB * SPLIT_WARPS, s1 = (rows1 + RB - 1) / RB * SPLIT_WARPS;
    W = W0;
    y = y0;
    rows = rows0;
    if (v >= s0 + s1) { W = W2; y = y2; rows = rows2; v -= s0 + s1; }
    else if (v >= s0) { W = W1; y = y1; rows = rows1; v -= s0; }
    return v * R;
}

// Launch: grid ceil(rows0/(SPLIT_WARPS·R)) + ceil(rows1/(SPLIT_WARPS·R)) + ceil(rows2/(SPLIT_WARPS·R)) blocks of
// 32·SPLIT_WARPS threads, R rows a warp; rows1 = rows2 = 0 for one matrix. x is [n × cols] quantized by quantize_q8_0 or
// quantize_q8_k; y_i is [n × rows_i].
template <int KIND, int NB, int R>
__device__ __forceinline__ void int_matmul(const u8* W0, const u8* W1, const u8* W2, float* y0, float* y1, float* y2,
    int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, int n)
{
    pdl_release();
    int lane = threadIdx.x & 31;
    const u8* W;
    float* y;
    int rows, row = matrix_row<R>(blockIdx.x * SPLIT_WARPS + (threadIdx.x >> 5), W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, W, y, rows);
    if (row >= rows) return; // the padding of a matrix's last thread block
    if constexpr (KIND <= 1 && NB == 1) split_rows_one_token<KIND == 0, R>(W, rows, row, cols, xq, xd, xs, y, lane);
    else
    {
        pdl_wait();
        int_row<KIND, NB>(W, rows, row, cols, xq, xd, xs, y, n, lane);
    }
}

// The one-token q4_0/q8_0 rows as a persistent loop (matvec*_loop, FITLM_CUDA_PERSISTENT=N in CudaMatVec): a grid of N
// thread blocks an SM at most, each warp taking the warps int_matmul would have launched, w, w + all warps, ... in
// turn. A product then keeps its warps resident from its first row to its last instead of launching several waves of
// blocks, and with N below the occupancy the next product's blocks fit beside it and, under programmatic launch,
// request their first weights while this one finishes (in bench/cuda-matvec.cu's mini decode each of llama-7b's Q4_0
// products took 1.7-2.2 µs more than its bytes at the read roof, a Q8_0 one 0.7 µs; docs/cuda.md).
template <int KIND, int R>
__device__ __forceinline__ void int_matmul_loop(const u8* W0, const u8* W1, const u8* W2, float* y0, float* y1, float* y2,
    int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs)
{
    pdl_release();
    const int RB = SPLIT_WARPS * R;
    int lane = threadIdx.x & 31;
    int total = ((rows0 + RB - 1) / RB + (rows1 + RB - 1) / RB + (rows2 + RB - 1) / RB) * SPLIT_WARPS, stride = gridDim.x * SPLIT_WARPS;
    bool any = false;
    for (int v = blockIdx.x * SPLIT_WARPS + (threadIdx.x >> 5); v < total; v += stride)
    {
        const u8* W;
        float* y;
        int rows, row = matrix_row<R>(v, W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, W, y, rows);
        if (row >= rows) continue; // the padding of a matrix's last thread block
        split_rows_one_token<KIND == 0, R>(W, rows, row, cols, xq, xd, xs, y, lane);
        any = true;
    }
    if (!any) pdl_wait();
}

#define LOOP_ENTRY(name, KIND, R, MIN_BLOCKS) \
    extern "C" __global__ void __launch_bounds__(32 * SPLIT_WARPS, MIN_BLOCKS) name(const u8* __restrict__ W0, \
        const u8* __restrict__ W1, const u8* __restrict__ W2, float* y0, float* y1, \
        float* y2, int rows0, int rows1, int rows2, int cols, const i8* xq, \
        const float* xd, const int* xs, int n) \
    { int_matmul_loop<KIND, R>(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, cols, xq, xd, xs); }

// ---- A folded RMSNorm (FITLM_CUDA_FOLD_NORM=1, CudaBackend): the residual add and RMSNorm between a one-token product
// (the output projection, the down projection) and the products that read the norm (Q/K/V, gate/up) without a kernel
// of their own. q8_0's codes do not change when a block is scaled, and its scale scales with it: so the writer, whose
// thread blocks take 32 rows each, adds its rows to the residual x and writes q8_0 of x ⊙ w (the norm's weights, not
// yet divided by the RMS) and each block's Σx²; each reader sums those 1/32 partial sums (the same order in every
// warp), and multiplies its rows by 1/√(Σx²/dim + ε). Against the norm kernel's arithmetic the codes and scales differ
// only where rounding x·(1/rms)·w and x·w differently moves a code at a rounding edge, or the fp16 scale's rounding.

// The reader's part: the partial sums requested once the kernels before have completed (at most 4 a lane: dim ≤
// 4096; 8 made the two-row kernel spill at its 80 registers), the scale computed when the rows are summed.
struct NormScaledRows
{
    const float* partials;
    int parts;
    float eps;
    float pv[4];
    float scale;
    __device__ __forceinline__ void after_wait(int lane)
    {
#pragma unroll
        for (int k = 0; k < 4; k++) pv[k] = lane + 32 * k < parts ? partials[lane + 32 * k] : 0.f;
    }
    __device__ __forceinline__ void finish(int lane)
    {
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < 4; k++) ss += pv[k];
        scale = 1.f / sqrtf(warp_sum(ss) / (float)(parts * 32) + eps);
    }
    __device__ __forceinline__ void write(float* y, int i, float v) { y[i] = v * scale; }
};

// The writer's part: its block's 32 rows into shared memory (y there is the block's first row's slot), and its first
// warp's residual elements (x[row0 + lane]) requested once the kernels before have completed.
struct FoldRows
{
    const float* x;
    int row0;
    float xr;
    __device__ __forceinline__ void after_wait(int lane) { if (threadIdx.x < 32) xr = x[row0 + lane]; }
    __device__ __forceinline__ void finish(int lane) {}
    __device__ __forceinline__ void write(float* y, int i, float v) { y[i - row0] = v; }
};

// One token's rows of one q4_0/q8_0 matrix (rows % 32 == 0), 32 a thread block (32 / R warps), then the folded norm:
// x[i] += y[i], q8_0 of x ⊙ w into (q, qd, qs) and Σx² of each 32 rows into partials. y itself is not written.
template <int KIND, int R>
__device__ __forceinline__ void fold_norm_rows(const u8* W, int rows, int cols, const i8* xq, const float* xd, const int* xs,
                                               float* x, const float* __restrict__ w, i8* q, float* qd, int* qs, float* partials)
{
    __shared__ float ys[32];
    pdl_release();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = blockIdx.x * 32;
    float wn = warp == 0 ? w[row0 + lane] : 0.f; // the norm's weights: nothing in a step writes them
    FoldRows fin = { x, row0, 0.f };
    split_rows_one_token<KIND == 0, R>(W, rows, row0 + warp * R, cols, xq, xd, xs, ys, lane, fin);
    __syncthreads();
    if (warp != 0) return;
    float r = fin.xr + ys[lane];
    x[row0 + lane] = r;
    quantize_block_q8_0(r * wn, blockIdx.x, q, qd, qs);
    float ss = warp_sum(r * r);
    if (lane == 0) partials[blockIdx.x] = ss;
}

// The reader: int_matmul's one-token rows (up to three matrices) times the folded norm's 1/RMS.
template <int KIND, int R>
__device__ __forceinline__ void int_matmul_scaled(const u8* W0, const u8* W1, const u8* W2, float* y0, float* y1, float* y2,
    int rows0, int rows1, int rows2, int cols, const i8* xq, const float* xd, const int* xs, const float* partials, float eps)
{
    pdl_release();
    int lane = threadIdx.x & 31;
    const u8* W;
    float* y;
    int rows, row = matrix_row<R>(blockIdx.x * SPLIT_WARPS + (threadIdx.x >> 5), W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, W, y, rows);
    if (row >= rows) { pdl_wait(); return; }
    NormScaledRows fin = { partials, cols / 32, eps };
    split_rows_one_token<KIND == 0, R>(W, rows, row, cols, xq, xd, xs, y, lane, fin);
}

// ---- Gate, up and the activation in one launch (gate_up_act_*, FITLM_CUDA_FUSED_ACT=1, a probe): a thread block takes 32
// outputs, each of its 16 warps two gate rows and the same two up rows (four rows sharing x's loads), and its first
// warp computes act(g)·u of the 32 (gated_act, as gate_act) and writes them and their q8_0 for the down projection:
// one launch a layer fewer. Its x may be a folded norm's (partials not null: the rows times its 1/RMS, as
// NormScaledRows), or the products' scratch.
struct GateUpRows
{
    float* g;
    float* u;
    int row0, rows;
    NormScaledRows norm; // used where norm.partials is not null
    __device__ __forceinline__ void after_wait(int lane) { if (norm.partials != nullptr) norm.after_wait(lane); }
    __device__ __forceinline__ void finish(int lane) { if (norm.partials != nullptr) norm.finish(lane); else norm.scale = 1.f; }
    __device__ __forceinline__ void write(float* y, int i, float v)
    {
        v *= norm.scale;
        if (i < rows) g[i - row0] = v;
        else u[i - rows - row0] = v;
    }
};

template <int KIND>
__device__ __forceinline__ void gate_up_act(const u8* Wg, const u8* Wu, int rows, int cols, const i8* xq, const float* xd, const int* xs,
                                            const float* partials, float eps, int act, float* o, i8* q, float* qd, int* qs)
{
    __shared__ float g[32], u[32];
    pdl_release();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = blockIdx.x * 32;
    GateUpRows fin = { g, u, row0, rows, { partials, cols / 32, eps } };
    split_rows_one_token<KIND == 0, 4, GateUpRows&, true>(Wg, rows, row0 + 2 * warp, cols, xq, xd, xs, nullptr, lane, fin, Wu);
    __syncthreads();
    if (warp != 0) return;
    float r = gated_act(act, g[lane], u[lane]);
    o[row0 + lane] = r;
    if (q != nullptr) quantize_block_q8_0(r, blockIdx.x, q, qd, qs);
}

#define ACT_ENTRY(name, KIND) \
    extern "C" __global__ void __launch_bounds__(32 * 16) name(const u8* __restrict__ Wg, const u8* __restrict__ Wu, int rows, \
        int cols, const i8* xq, const float* xd, const int* xs, const float* partials, float eps, int act, float* o, i8* q, \
        float* qd, int* qs) \
    { gate_up_act<KIND>(Wg, Wu, rows, cols, xq, xd, xs, partials, eps, act, o, q, qd, qs); }

#define FOLD_ENTRY(name, KIND, R) \
    extern "C" __global__ void __launch_bounds__(32 * 32 / R) name(const u8* __restrict__ W, int rows, int cols, \
        const i8* xq, const float* xd, const int* xs, float* x, const float* __restrict__ w, i8* q, float* qd, int* qs, \
        float* partials) \
    { fold_norm_rows<KIND, R>(W, rows, cols, xq, xd, xs, x, w, q, qd, qs, partials); }

#define SCALED_ENTRY(name, KIND, R, MIN_BLOCKS) \
    extern "C" __global__ void __launch_bounds__(32 * SPLIT_WARPS, MIN_BLOCKS) name(const u8* __restrict__ W0, \
        const u8* __restrict__ W1, const u8* __restrict__ W2, float* y0, float* y1, \
        float* y2, int rows0, int rows1, int rows2, int cols, const i8* xq, \
        const float* xd, const int* xs, const float* partials, float eps) \
    { int_matmul_scaled<KIND, R>(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, cols, xq, xd, xs, partials, eps); }

#define INT_ENTRY(name, KIND, NB, R, MIN_BLOCKS) \
    extern "C" __global__ void __launch_bounds__(32 * SPLIT_WARPS, MIN_BLOCKS) name(const u8* __restrict__ W0, \
        const u8* __restrict__ W1, const u8* __restrict__ W2, float* y0, float* y1, \
        float* y2, int rows0, int rows1, int rows2, int cols, const i8* xq, \
        const float* xd, const int* xs, int n) \
    { int_matmul<KIND, NB, R>(W0, W1, W2, y0, y1, y2, rows0, rows1, rows2, cols, xq, xd, xs, n); }

// matvec2_q4_0_q8: two rows a warp, for matrices with at least as many rows as columns (CudaMatVec picks it): in a
// graph (bench/cuda-matvec.cu), Q/K/V 12.79 µs against 14.05 for one row, gate/up 19.83 against 23.39, Wo 5.60 against
// 6.38, but a down projection 12.51 against 11.87 and 4096 × 14336 15.40 against 13.41 (half the warps, each with a
// long row). Six thread blocks an SM.
INT_ENTRY(matvec2_q4_0_q8, 0, 1, 2, 6)
// One row a warp: at least three (q4_0) and five (q8_0) thread blocks an SM, the occupancy of the loop as measured
// (NVRTC 11.8: 151 and 93 registers); a variant that read x through non-coherent loads compiled to 197 registers.
INT_ENTRY(matvec_q4_0_q8, 0, 1, 1, 3)
INT_ENTRY(matmul8_q4_0_q8, 0, 8, 1, 1)
INT_ENTRY(matvec_q8_0_q8, 1, 1, 1, 5)
INT_ENTRY(matmul8_q8_0_q8, 1, 8, 1, 1)
INT_ENTRY(matvec_q4_k_q8, 2, 1, 1, 1)
INT_ENTRY(matmul8_q4_k_q8, 2, 8, 1, 1)
INT_ENTRY(matvec_q6_k_q8, 3, 1, 1, 1)
INT_ENTRY(matmul8_q6_k_q8, 3, 8, 1, 1)
LOOP_ENTRY(matvec2_q4_0_q8_loop, 0, 2, 6)
LOOP_ENTRY(matvec_q4_0_q8_loop, 0, 1, 3)
LOOP_ENTRY(matvec_q8_0_q8_loop, 1, 1, 5)
FOLD_ENTRY(fold_norm_q4_0, 0, 2)
FOLD_ENTRY(fold_norm_q8_0, 1, 2)
SCALED_ENTRY(matvec2_q4_0_q8_scaled, 0, 2, 6)
SCALED_ENTRY(matvec_q4_0_q8_scaled, 0, 1, 3)
SCALED_ENTRY(matvec_q8_0_q8_scaled, 1, 1, 5)
ACT_ENTRY(gate_up_act_q4_0, 0)
ACT_ENTRY(gate_up_act_q8_0, 1)

// The index of the first element of largest magnitude in a 256-block (q8_K's `max`), and that magnitude in amax:
// (|x|, index) reduced across the warp, the larger |x| winning and ties going to the lower index. Lane l reads
// elements l, l + 32, ...
__device__ __forceinline__ int first_max_abs_256(const float* xb, int lane, float& amax)
{
    float best = -1.f;
    int at = 0;
    for (int j = lane; j < 256; j += 32)
    {
        float a = fabsf(xb[j]);
        if (a > best) { best = a; at = j; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        float b2 = __shfl_xor_sync(0xffffffffu, best, o);
        int a2 = __shfl_xor_sync(0xffffffffu, at, o);
        if (b2 > best || (b2 == best && a2 < at)) { best = b2; at = a2; }
    }
    amax = best;
    return at;
}

// x [n × cols] to q8_K (ActivationQuant.Q8_KScalar): per 256-block, `max` the first value of largest magnitude, iscale =
// -127/max, q = min(127, round-to-even(iscale·x)), d = 1/iscale (a zero block: q = 0, d = 0), and the sums of q of each
// 16 (bsums, as int). One warp per block, lane l taking elements l + 32i.
extern "C" __global__ void quantize_q8_k(const float* x, long long blocks, i8* q,
                                         float* d, int* bsums)
{
    pdl_begin();
    long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (b >= blocks) return;
    const float* xb = x + b * 256;
    float best;
    int at = first_max_abs_256(xb, lane, best);
    float iscale = best == 0.f ? 0.f : -127.f / xb[at];
#pragma unroll
    for (int i = 0; i < 8; i++)
    {
        int qi = best == 0.f ? 0 : min(127, __float2int_rn(iscale * xb[lane + 32 * i]));
        q[b * 256 + lane + 32 * i] = (i8)qi;
        // Lanes 0-15 hold group 2i's elements, lanes 16-31 group 2i + 1's.
        int sum = qi;
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if ((lane & 15) == 0) bsums[b * 16 + 2 * i + (lane >> 4)] = sum;
    }
    if (lane == 0) d[b] = best == 0.f ? 0.f : 1.f / iscale;
}

// Rows [r0, r0 + m) of a split Q4_0/Q8_0 matrix of `rows` rows as fp16, into out [m × cols] (the prefill's cuBLAS
// products): one thread per block, x = d·(q - 8) or d·q as Dequantize.cs computes it, written as four 16-byte stores.
template <bool Q4>
__device__ __forceinline__ void dequant_split(const u8* __restrict__ W, int rows, int cols, int r0, int m, u16* out)
{
    const int QB = Q4 ? 16 : 32;
    long long blocks = cols >> 5;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)m * blocks) return;
    long long b = (long long)r0 * blocks + i;
    const u8* q = W + b * QB;
    float d = half_to_float(((const u16*)(W + (long long)rows * blocks * QB))[b]);
    u16 h[32];
#pragma unroll
    for (int k = 0; k < 16; k++)
    {
        if (Q4)
        {
            int v = q[k];
            h[k] = float_to_half((float)((v & 15) - 8) * d);
            h[k + 16] = float_to_half((float)((v >> 4) - 8) * d);
        }
        else
        {
            h[k] = float_to_half((float)(i8)q[k] * d);
            h[k + 16] = float_to_half((float)(i8)q[k + 16] * d);
        }
    }
    v4* o = (v4*)(out + i * 32); // 64-byte aligned: out is, and each block is 32 halves
#pragma unroll
    for (int k = 0; k < 4; k++)
        o[k] = v4{ (u32)h[8 * k] | ((u32)h[8 * k + 1] << 16), (u32)h[8 * k + 2] | ((u32)h[8 * k + 3] << 16),
                   (u32)h[8 * k + 4] | ((u32)h[8 * k + 5] << 16), (u32)h[8 * k + 6] | ((u32)h[8 * k + 7] << 16) };
}

extern "C" __global__ void dequant_f16_q4_0(const u8* __restrict__ W, int rows, int cols, int r0, int m, u16* out)
{ pdl_begin(); dequant_split<true>(W, rows, cols, r0, m, out); }

extern "C" __global__ void dequant_f16_q8_0(const u8* __restrict__ W, int rows, int cols, int r0, int m, u16* out)
{ pdl_begin(); dequant_split<false>(W, rows, cols, r0, m, out); }

// Rows [r0, r0 + m) of a split q6_K matrix as fp16: eight threads per block, thread j (h = j/4, k = j%4) taking elements
// 128h + 32k + [0, 32), x = (d·scale)·(q - 32) as Dequantize.Q6_K computes it.
extern "C" __global__ void dequant_f16_q6_k(const u8* __restrict__ W, int rows, int cols, int r0, int m, u16* out)
{
    pdl_begin();
    long long blocks = cols >> 8;
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)m * blocks * 8) return;
    long long local = i >> 3;
    int j = (int)(i & 7), h = j >> 2, k = j & 3;
    long long b = (long long)r0 * blocks + local;
    const u8* blk = W + b * 208;
    float d = half_to_float(((const u16*)(W + (long long)rows * blocks * 208))[b]);
    u16 v[32];
#pragma unroll
    for (int l = 0; l < 32; l++)
    {
        int q = ((blk[64 * h + 32 * (k & 1) + l] >> (k >= 2 ? 4 : 0)) & 15) | (((blk[128 + 32 * h + l] >> (2 * k)) & 3) << 4);
        float dl = d * (float)(i8)blk[192 + (128 * h + 32 * k + l) / 16];
        v[l] = float_to_half(dl * (float)(q - 32));
    }
    v4* o = (v4*)(out + local * 256 + 128 * h + 32 * k); // 64-byte aligned
#pragma unroll
    for (int s = 0; s < 4; s++)
        o[s] = v4{ (u32)v[8 * s] | ((u32)v[8 * s + 1] << 16), (u32)v[8 * s + 2] | ((u32)v[8 * s + 3] << 16),
                   (u32)v[8 * s + 4] | ((u32)v[8 * s + 5] << 16), (u32)v[8 * s + 6] | ((u32)v[8 * s + 7] << 16) };
}

// ------------------------------------------------------------------------------------------------ prefill activations
// x [total] as fp16 after the CPU's activation quantization for the weight type (CudaGemm: the prefill's numerics then
// follow the CPU's, whose perplexity matches llama.cpp's): format 0 leaves x as it is (float weights), 1 is q8_0
// (32-blocks, as quantize_q8_0), 2 is q8_K (ActivationQuant.Q8_KScalar: 256-blocks, iscale = -127/max where max is the
// first value of largest magnitude, q = min(127, round(iscale·x)), d = 1/iscale). One warp per block (cols is a
// multiple of the block), lane l taking elements l, l + 32, ...; the fp16 of q·d rounds, which moves a value by at
// most 2^-11 of itself. (One thread per block, serially, took 15% of a llama-7b pp512.)
extern "C" __global__ void quantize_to_f16(const float* x, u16* out, long long total, int format)
{
    pdl_begin();
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (format == 0)
    {
        if (i < total) out[i] = float_to_half(x[i]);
        return;
    }
    int lane = threadIdx.x & 31;
    int bs = format == 1 ? 32 : 256;
    long long start = (i >> 5) * bs;
    if (start >= total) return; // whole warps leave together: total is a multiple of the block
    const float* xb = x + start;
    u16* ob = out + start;
    if (format == 1)
    {
        float v = xb[lane];
        float amax = warp_max_abs(v);
        float d = half_to_float(float_to_half(amax / 127.f));
        float id = amax != 0.f ? 127.f / amax : 0.f;
        ob[lane] = float_to_half((float)__float2int_rn(v * id) * d);
        return;
    }
    float best;
    int at = first_max_abs_256(xb, lane, best);
    if (best == 0.f)
    {
        for (int j = lane; j < 256; j += 32) ob[j] = 0;
        return;
    }
    float iscale = -127.f / xb[at], d = 1.f / iscale;
    for (int j = lane; j < 256; j += 32) ob[j] = float_to_half((float)min(127, __float2int_rn(iscale * xb[j])) * d);
}
