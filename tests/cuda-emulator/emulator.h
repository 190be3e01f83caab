// A CUDA emulator for checking FitLM's kernels on a machine without a GPU (tests/cuda-emulator/README.md): each
// thread block runs as blockDim.x host threads with real barriers for __syncthreads and for each warp's shuffles; the
// blocks of a launch run one after another, so a kernel's __shared__ variables (static here) belong to the block that
// runs. The few PTX helpers of the kernel files (cvt, dp4a, cache-hinted loads) are given in C++ below;
// CudaEmulatorTests removes their asm versions before compiling. Slow (a host thread per GPU thread): small shapes.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct int4 { int x, y, z, w; };
struct uint4 { unsigned x, y, z, w; };
struct uint2 { unsigned x, y; };
struct float4 { float x, y, z, w; };
struct float2 { float x, y; };
inline int4 make_int4(int a, int b, int c, int d) { return { a, b, c, d }; }

namespace emu
{
struct Warp
{
    explicit Warp(int n) : bar(n) {}
    std::barrier<> bar;
    uint64_t slot[32];
};
struct Block
{
    explicit Block(int n) : bar(n) {}
    std::barrier<> bar;
    std::vector<std::unique_ptr<Warp>> warps;
};
inline thread_local dim3 t_thread, t_block;
inline dim3 g_blockDim, g_gridDim;
inline thread_local Block* t_blk;

template <typename T>
T shfl(T v, int src)
{
    Warp& w = *t_blk->warps[t_thread.x / 32];
    uint64_t bits = 0;
    static_assert(sizeof(T) <= 8);
    memcpy(&bits, &v, sizeof(T));
    w.slot[t_thread.x % 32] = bits;
    w.bar.arrive_and_wait();
    T r;
    uint64_t got = w.slot[src];
    memcpy(&r, &got, sizeof(T));
    w.bar.arrive_and_wait();
    return r;
}

inline unsigned g_launches; // seeds each launch's block order

// Runs kernel(args...) over grid × block threads (grid.y rows of grid.x blocks): blockDim host threads take the blocks
// one after another, all finishing a block before any starts the next (its __shared__ variables are the next one's).
// The blocks run in a shuffled order (the same every run): a kernel whose block reads what another block of the same
// launch writes, without the atomics that order them, gives wrong results here as it may on a GPU.
template <typename K, typename... A>
void launch(K kernel, dim3 grid, dim3 block, A... args)
{
    g_blockDim = block;
    g_gridDim = grid;
    int n = (int)(block.x * block.y * block.z), blocks = (int)(grid.x * grid.y);
    std::vector<std::unique_ptr<Block>> all;
    for (int b = 0; b < blocks; b++)
    {
        all.push_back(std::make_unique<Block>(n));
        for (int w = 0; w < (n + 31) / 32; w++) all.back()->warps.push_back(std::make_unique<Warp>(std::min(32, n - 32 * w)));
    }
    std::vector<int> order(blocks);
    for (int b = 0; b < blocks; b++) order[b] = b;
    uint64_t r = 0x9E3779B97F4A7C15ull * ++g_launches;
    for (int b = blocks - 1; b > 0; b--)
    {
        r ^= r << 13; r ^= r >> 7; r ^= r << 17;
        std::swap(order[b], order[(int)(r % (uint64_t)(b + 1))]);
    }
    std::barrier<> done(n);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; i++)
        threads.emplace_back([&, i] {
            for (int b : order)
            {
                t_thread = { (unsigned)i, 0, 0 };
                t_block = { (unsigned)(b % grid.x), (unsigned)(b / grid.x), 0 };
                t_blk = all[b].get();
                kernel(args...);
                t_blk->warps[i / 32]->bar.arrive_and_drop(); // an exited thread no longer holds its warp or block back
                t_blk->bar.arrive_and_drop();
                done.arrive_and_wait();
            }
        });
    for (auto& t : threads) t.join();
}
} // namespace emu

#define threadIdx (emu::t_thread)
#define blockIdx (emu::t_block)
#define blockDim (emu::g_blockDim)
#define gridDim (emu::g_gridDim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __CUDACC_RTC__ 1

inline void __syncthreads() { emu::t_blk->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::t_blk->warps[threadIdx.x / 32]->bar.arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int o) { return emu::shfl(v, (int)((threadIdx.x % 32) ^ o)); }
template <typename T> T __shfl_sync(unsigned, T v, int src) { return emu::shfl(v, src & 31); }
template <typename T> T __shfl_down_sync(unsigned, T v, int d) { int s = (int)(threadIdx.x % 32) + d; return emu::shfl(v, s < 32 ? s : (int)(threadIdx.x % 32)); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float f) { return (int)std::nearbyint(f); }
template <typename A, typename B> inline auto min(A a, B b) { return a < b ? a : b; }
template <typename A, typename B> inline auto max(A a, B b) { return a > b ? a : b; }
#include <math.h>

typedef unsigned short u16;
inline float half_to_float(u16 h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
inline u16 float_to_half(float f) { _Float16 v = (_Float16)f; u16 h; memcpy(&h, &v, 2); return h; }
inline float bf16_to_float(u16 h) { unsigned bits = (unsigned)h << 16; float f; memcpy(&f, &bits, 4); return f; }
inline int dp4a(int a, int b, int c)
{
    for (int k = 0; k < 4; k++) c += (int)(signed char)(a >> (8 * k)) * (int)(signed char)(b >> (8 * k));
    return c;
}
inline int4 ld_weights(const int4* p) { return *p; }
inline float ld_l2(const float* p) { return *(volatile const float*)p; }
