// The persistent one-token products (matvec.cu's matvec*_loop, FITLM_CUDA_PERSISTENT) against the kernels they loop
// (matvec_q4_0_q8, matvec2_q4_0_q8, matvec_q8_0_q8) in the emulator: three matrices of different heights in one
// launch, the loop's grid cut to a few blocks so that each warp takes several rows. Each row's arithmetic is the same,
// so the outputs must be equal bit for bit; exit code 1 if not.
#include <cstdio>
#include "harness.h"

using Kernel = void (*)(const u8*, const u8*, const u8*, float*, float*, float*, int, int, int, int, const i8*, const float*, const int*, int);

static bool check(const char* name, Kernel plain, Kernel loop, bool q4, int rowsPerWarp, unsigned seed)
{
    const int cols = 256, blocks = cols / 32, QB = q4 ? 16 : 32, rows[3] = { 40, 13, 29 };
    std::mt19937 rng(seed);
    std::vector<std::vector<u8>> w(3);
    for (int m = 0; m < 3; m++) w[m] = split_matrix(rng, q4, rows[m], cols, -8);
    std::vector<float> x(cols);
    std::normal_distribution<float> normal;
    for (auto& v : x) v = normal(rng);
    std::vector<i8> xq(cols);
    std::vector<float> xd(blocks);
    std::vector<int> xs(blocks);
    long long nb = blocks;
    emu::launch(quantize_q8_0, { (unsigned)((blocks * 32 + 255) / 256) }, { 256 }, (const float*)x.data(), nb, xq.data(), xd.data(), xs.data());
    int per = 4 * rowsPerWarp;
    unsigned grid = 0;
    for (int m = 0; m < 3; m++) grid += (rows[m] + per - 1) / per;
    std::vector<float> y[2][3];
    for (int k = 0; k < 2; k++)
    {
        for (int m = 0; m < 3; m++) y[k][m].assign(rows[m], -1.f);
        emu::launch(k == 0 ? plain : loop, { k == 0 ? grid : 3u }, { 128 }, (const u8*)w[0].data(), (const u8*)w[1].data(), (const u8*)w[2].data(),
                    y[k][0].data(), y[k][1].data(), y[k][2].data(), rows[0], rows[1], rows[2], cols, (const i8*)xq.data(), (const float*)xd.data(),
                    (const int*)xs.data(), 1);
    }
    bool same = true;
    for (int m = 0; m < 3; m++) same &= memcmp(y[0][m].data(), y[1][m].data(), rows[m] * 4) == 0;
    // And the plain kernel against the split layout's arithmetic in double: q4_0 byte j holds elements j (low
    // nibble) and j + 16 (high), less 8; q8_0 its 32 int8 weights.
    double worst = 0;
    for (int m = 0; m < 3; m++)
        for (int r = 0; r < rows[m]; r++)
        {
            const u16* d = (const u16*)(w[m].data() + (size_t)rows[m] * blocks * QB);
            double sum = 0, mag = 0;
            for (int b = 0; b < blocks; b++)
            {
                const u8* qb = w[m].data() + ((size_t)r * blocks + b) * QB;
                long long dot = 0;
                for (int e = 0; e < 32; e++)
                {
                    int wq = q4 ? ((e < 16 ? qb[e] & 15 : qb[e - 16] >> 4) - 8) : (int)(i8)qb[e];
                    dot += (long long)wq * xq[b * 32 + e];
                }
                sum += (double)half_to_float(d[r * blocks + b]) * xd[b] * (double)dot;
                mag += std::fabs((double)half_to_float(d[r * blocks + b]) * xd[b] * (double)dot);
            }
            worst = std::max(worst, std::fabs(y[0][m][r] - sum) / (mag + 1e-30));
        }
    same &= worst < 1e-5;
    printf("%s: %s (plain grid %u, loop grid 3); plain against double: %.1e\n", name, same ? "identical" : "DIFFERENT", grid, worst);
    return same;
}

int main()
{
    bool ok = check("matvec_q4_0_q8_loop", matvec_q4_0_q8, matvec_q4_0_q8_loop, true, 1, 1);
    ok &= check("matvec2_q4_0_q8_loop", matvec2_q4_0_q8, matvec2_q4_0_q8_loop, true, 2, 2);
    ok &= check("matvec_q8_0_q8_loop", matvec_q8_0_q8, matvec_q8_0_q8_loop, false, 1, 3);
    return ok ? 0 : 1;
}
