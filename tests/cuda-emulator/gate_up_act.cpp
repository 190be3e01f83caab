// gate_up_act_* (gate, up and the activation in one launch, FITLM_CUDA_FUSED_ACT) against the products in one launch
// (matvec2_q4_0_q8 / matvec_q8_0_q8, or their *_scaled forms after a folded norm) and gated_act with q8_0 after them,
// in the emulator: SiLU and GELU, x quantized or a folded norm's. Each row's sums are taken in the same order, so
// the outputs and their q8_0 must be equal bit for bit; exit code 1 if not.
#include <cstdio>
#include "harness.h"

using Product = void (*)(const u8*, const u8*, const u8*, float*, float*, float*, int, int, int, int, const i8*, const float*, const int*, int);
using Scaled = void (*)(const u8*, const u8*, const u8*, float*, float*, float*, int, int, int, int, const i8*, const float*, const int*, const float*, float);
using Act = void (*)(const u8*, const u8*, int, int, const i8*, const float*, const int*, const float*, float, int, float*, i8*, float*, int*);

static std::mt19937 rng(3);

static std::vector<u8> matrix(bool q4, int rows, int cols) { return split_matrix(rng, q4, rows, cols, -7); }

static bool check(const char* name, bool q4, Product plain, Scaled scaled, Act fused, int rowsPerWarp, int act, bool folded)
{
    const int cols = 256, rows = 96, blocks = cols / 32;
    auto Wg = matrix(q4, rows, cols), Wu = matrix(q4, rows, cols);
    std::vector<i8> xq(cols);
    std::vector<float> xd(blocks), partials(blocks);
    std::vector<int> xs(blocks);
    for (int b = 0; b < blocks; b++)
    {
        int sum = 0;
        for (int j = 0; j < 32; j++) { xq[b * 32 + j] = (i8)((int)(rng() % 255) - 127); sum += xq[b * 32 + j]; }
        xd[b] = 0.005f + (rng() % 1000) * 1e-5f;
        xs[b] = sum;
        partials[b] = 10.f + (rng() % 1000) * 0.01f;
    }
    const float eps = 1e-5f;
    std::vector<float> g(rows), u(rows), o(rows), fo(rows), fqd(rows / 32);
    std::vector<i8> fq(rows);
    std::vector<int> fqs(rows / 32);
    unsigned grid = 2 * (unsigned)((rows + 4 * rowsPerWarp - 1) / (4 * rowsPerWarp));
    if (folded)
        emu::launch(scaled, { grid }, { 128 }, (const u8*)Wg.data(), (const u8*)Wu.data(), (const u8*)nullptr, g.data(), u.data(), (float*)nullptr, rows, rows, 0,
                    cols, (const i8*)xq.data(), (const float*)xd.data(), (const int*)xs.data(), (const float*)partials.data(), eps);
    else
        emu::launch(plain, { grid }, { 128 }, (const u8*)Wg.data(), (const u8*)Wu.data(), (const u8*)nullptr, g.data(), u.data(), (float*)nullptr, rows, rows, 0,
                    cols, (const i8*)xq.data(), (const float*)xd.data(), (const int*)xs.data(), 1);
    for (int i = 0; i < rows; i++) o[i] = gated_act(act, g[i], u[i]);
    Q8 oq(rows);
    quantize_q8_0_host(o.data(), rows, oq);
    emu::launch(fused, { (unsigned)(rows / 32) }, { 512 }, (const u8*)Wg.data(), (const u8*)Wu.data(), rows, cols, (const i8*)xq.data(),
                (const float*)xd.data(), (const int*)xs.data(), folded ? (const float*)partials.data() : (const float*)nullptr, eps, act, fo.data(),
                fq.data(), fqd.data(), fqs.data());
    bool same = memcmp(o.data(), fo.data(), rows * 4) == 0 && memcmp(oq.q.data(), fq.data(), rows) == 0
        && memcmp(oq.d.data(), fqd.data(), rows / 32 * 4) == 0 && memcmp(oq.s.data(), fqs.data(), rows / 32 * 4) == 0;
    printf("%s, act %d, %s: %s\n", name, act, folded ? "a folded norm's x" : "x from the scratch", same ? "identical" : "DIFFERENT");
    return same;
}

int main()
{
    bool ok = true;
    for (int act : { 0, 2 })
        for (bool folded : { false, true })
        {
            ok &= check("gate_up_act_q4_0", true, matvec2_q4_0_q8, matvec2_q4_0_q8_scaled, gate_up_act_q4_0, 2, act, folded);
            ok &= check("gate_up_act_q8_0", false, matvec_q8_0_q8, matvec_q8_0_q8_scaled, gate_up_act_q8_0, 1, act, folded);
        }
    return ok ? 0 : 1;
}
