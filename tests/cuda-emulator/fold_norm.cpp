// The folded RMSNorm (matvec.cu's fold_norm_* and *_scaled, FITLM_CUDA_FOLD_NORM) against the unfolded chain in the
// emulator: a one-token product y = W·a (matvec2_q4_0_q8 / matvec_q8_0_q8), then x += y and o = RMSNorm(x) ⊙ w in
// q8_0 (the norm kernel's arithmetic, here in C++), then Q/K/V-like products of o (three matrices, one launch); and
// the same through fold_norm_* and the *_scaled readers. The residual must be equal bit for bit; the readers' outputs
// within 2e-3 of their largest (rounding x·(1/rms)·w against x·w moves a code only at a rounding edge). Exit code 1 if not.
#include <cstdio>
#include "harness.h"

using Product = void (*)(const u8*, const u8*, const u8*, float*, float*, float*, int, int, int, int, const i8*, const float*, const int*, int);
using Scaled = void (*)(const u8*, const u8*, const u8*, float*, float*, float*, int, int, int, int, const i8*, const float*, const int*, const float*, float);
using Fold = void (*)(const u8*, int, int, const i8*, const float*, const int*, float*, const float*, i8*, float*, int*, float*);

static std::mt19937 rng(7);

static std::vector<u8> matrix(bool q4, int rows, int cols) { return split_matrix(rng, q4, rows, cols, -6); }
static void quantize(const std::vector<float>& v, Q8& out) { quantize_q8_0_host(v.data(), (int)v.size(), out); }

static bool check(const char* name, bool q4, Product plain, Fold fold, Product reader, Scaled scaled, int rowsPerWarp)
{
    const int dim = 256, inner = 384, rows[3] = { 96, 64, 64 };
    const float eps = 1e-5f;
    auto W = matrix(q4, dim, inner);
    std::vector<std::vector<u8>> R = { matrix(q4, rows[0], dim), matrix(q4, rows[1], dim), matrix(q4, rows[2], dim) };
    std::normal_distribution<float> normal;
    std::vector<float> a(inner), x(dim), w(dim);
    for (auto& v : a) v = normal(rng);
    for (auto& v : x) v = 4.f * normal(rng);
    for (auto& v : w) v = 0.5f + 0.1f * normal(rng);
    Q8 aq(inner);
    quantize(a, aq);
    // Unfolded: y = W·a, x += y, o = x·(1/rms)·w in q8_0, then the readers.
    std::vector<float> y(dim), xa = x;
    emu::launch(plain, { (unsigned)(dim / 4) }, { 128 }, (const u8*)W.data(), (const u8*)nullptr, (const u8*)nullptr, y.data(), (float*)nullptr,
                (float*)nullptr, dim, 0, 0, inner, (const i8*)aq.q.data(), (const float*)aq.d.data(), (const int*)aq.s.data(), 1);
    float ss = 0.f;
    for (int i = 0; i < dim; i++) { xa[i] += y[i]; ss += xa[i] * xa[i]; }
    float scale = 1.f / std::sqrt(ss / (float)dim + eps);
    std::vector<float> o(dim);
    for (int i = 0; i < dim; i++) o[i] = xa[i] * scale * w[i];
    Q8 oq(dim);
    quantize(o, oq);
    int per = 4 * rowsPerWarp;
    unsigned grid = 0;
    for (int r : rows) grid += (r + per - 1) / per;
    std::vector<float> ya[3], yb[3];
    for (int m = 0; m < 3; m++) { ya[m].assign(rows[m], 0.f); yb[m].assign(rows[m], 0.f); }
    emu::launch(reader, { grid }, { 128 }, (const u8*)R[0].data(), (const u8*)R[1].data(), (const u8*)R[2].data(), ya[0].data(), ya[1].data(), ya[2].data(),
                rows[0], rows[1], rows[2], dim, (const i8*)oq.q.data(), (const float*)oq.d.data(), (const int*)oq.s.data(), 1);
    // Folded.
    std::vector<float> xb = x, partials(dim / 32);
    Q8 fq(dim);
    emu::launch(fold, { (unsigned)(dim / 32) }, { 32u * 32 / 2 }, (const u8*)W.data(), dim, inner, (const i8*)aq.q.data(), (const float*)aq.d.data(),
                (const int*)aq.s.data(), xb.data(), (const float*)w.data(), fq.q.data(), fq.d.data(), fq.s.data(), partials.data());
    emu::launch(scaled, { grid }, { 128 }, (const u8*)R[0].data(), (const u8*)R[1].data(), (const u8*)R[2].data(), yb[0].data(), yb[1].data(), yb[2].data(),
                rows[0], rows[1], rows[2], dim, (const i8*)fq.q.data(), (const float*)fq.d.data(), (const int*)fq.s.data(), (const float*)partials.data(), eps);
    bool same = memcmp(xa.data(), xb.data(), dim * 4) == 0;
    int codes = 0;
    for (int i = 0; i < dim; i++) codes += oq.q[i] != fq.q[i];
    double top = 0, diff = 0;
    for (int m = 0; m < 3; m++)
        for (int r = 0; r < rows[m]; r++) { top = std::max(top, (double)std::fabs(ya[m][r])); diff = std::max(diff, (double)std::fabs(ya[m][r] - yb[m][r])); }
    bool ok = same && diff / top < 2e-3 && top > 0;
    printf("%s: residual %s, %d of %d codes differ, readers' max |folded - unfolded| / max = %.2e %s\n", name, same ? "identical" : "DIFFERENT",
           codes, dim, diff / top, ok ? "ok" : "FAIL");
    return ok;
}

int main()
{
    bool ok = check("q4_0", true, matvec2_q4_0_q8, fold_norm_q4_0, matvec2_q4_0_q8, matvec2_q4_0_q8_scaled, 2);
    ok &= check("q4_0, one row a warp", true, matvec2_q4_0_q8, fold_norm_q4_0, matvec_q4_0_q8, matvec_q4_0_q8_scaled, 1);
    ok &= check("q8_0", false, matvec_q8_0_q8, fold_norm_q8_0, matvec_q8_0_q8, matvec_q8_0_q8_scaled, 1);
    return ok ? 0 : 1;
}
