// What the product harnesses share: a random matrix in the split layout the upload writes (all quants, then the
// fp16 scales, SplitLayout.cs), and quantize_q8_0's arithmetic (common.cuh's quantize_block_q8_0) on the host.
#pragma once
#include <random>
#include <vector>

struct Q8
{
    std::vector<i8> q;
    std::vector<float> d;
    std::vector<int> s;
    explicit Q8(int n) : q(n), d(n / 32), s(n / 32) {}
};

// rows × cols of q4_0 (16 bytes of quants a block) or q8_0 (32), scales in [2^e, 2^(e+1)).
inline std::vector<u8> split_matrix(std::mt19937& rng, bool q4, int rows, int cols, int e)
{
    int blocks = cols / 32, QB = q4 ? 16 : 32;
    std::vector<u8> w((size_t)rows * blocks * (QB + 2));
    for (size_t i = 0; i < (size_t)rows * blocks * QB; i++) w[i] = (u8)rng();
    u16* d = (u16*)(w.data() + (size_t)rows * blocks * QB);
    for (int i = 0; i < rows * blocks; i++) d[i] = float_to_half(std::ldexp(1.f + (rng() % 1000) / 1000.f, e));
    return w;
}

inline void quantize_q8_0_host(const float* v, int n, Q8& out)
{
    for (int b = 0; b < n / 32; b++)
    {
        float amax = 0.f;
        for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(v[b * 32 + j]));
        float id = amax != 0.f ? 127.f / amax : 0.f;
        int sum = 0;
        for (int j = 0; j < 32; j++) { int q = (int)std::nearbyint(v[b * 32 + j] * id); out.q[b * 32 + j] = (i8)q; sum += q; }
        out.d[b] = half_to_float(float_to_half(amax / 127.f));
        out.s[b] = sum;
    }
}
