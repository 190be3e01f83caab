// attend_kivi_tiles against attend_kivi (forward.cu) in the emulator: a KIVI cache filled by kv_store_kivi and
// kivi_quantize in passes of 23 positions, as a prefill in small batches fills it, and after each pass one query at its
// last position through both kernels.
// The two read the same elements (the tile kernel copies quantized tiles to shared memory, scores a tile's 32
// positions at once); only the order of float sums differs. Exit code 1 if any output differs by more than 1e-5 of
// the largest.
#include <cstdio>
#include <random>

struct Config { int heads, kvHeads, headDim, bits, residual, window, splits, positions; float cap; };

static double check(const Config& c, unsigned seed)
{
    const int G = 32, B = 4 * c.bits + 4, groups = (c.headDim + G - 1) / G, kvDim = c.kvHeads * c.headDim;
    const int pass = 23;
    int tiles = (c.positions + G - 1) / G, ring = std::min(tiles, (c.residual + pass + G - 1) / G + 3);
    std::vector<u8> kq((size_t)tiles * kvDim * B), vq((size_t)tiles * G * c.kvHeads * groups * B);
    std::vector<u16> kr((size_t)ring * G * kvDim), vr(kr.size());
    std::vector<float> k(pass * kvDim), v(pass * kvDim), q(c.heads * c.headDim), a(q.size()), b(q.size());
    std::vector<float> part((size_t)c.heads * c.splits * (256 + 2));
    std::vector<int> count(c.heads), pos(1);
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    double worst = 0;
    for (int p0 = 0; p0 < c.positions; p0 += pass)
    {
        int n = std::min(pass, c.positions - p0);
        for (auto& x : k) x = normal(rng);
        for (auto& x : v) x = normal(rng);
        pos[0] = p0;
        emu::launch(kv_store_kivi, { (unsigned)((n * kvDim + 255) / 256) }, { 256 }, k.data(), v.data(), kr.data(), vr.data(), n, kvDim, ring,
                    (const int*)pos.data());
        emu::launch(kivi_quantize, { (unsigned)(n / G + 2), (unsigned)c.kvHeads }, { 32 }, (const u16*)kr.data(), (const u16*)vr.data(), kq.data(),
                    vq.data(), n, kvDim, c.kvHeads, c.headDim, ring, c.residual, c.bits, (const int*)pos.data());
        int p = p0 + n - 1;
        pos[0] = p;
        for (auto& x : q) x = normal(rng);
        float scale = 1.f / std::sqrt((float)c.headDim);
        for (int which = 0; which < 2; which++)
            emu::launch(which == 0 ? attend_kivi : attend_kivi_tiles, { (unsigned)(c.heads * c.splits), 1 }, { 128 }, (const float*)q.data(),
                        (const u8*)kq.data(), (const u8*)vq.data(), (const u16*)kr.data(), (const u16*)vr.data(), which == 0 ? a.data() : b.data(),
                        c.heads, c.kvHeads, c.headDim, scale, c.cap, c.window, ring, c.residual, c.bits, (const int*)pos.data(),
                        (i8*)nullptr, (float*)nullptr, (int*)nullptr, c.splits, part.data(), count.data());
        double top = 0, diff = 0;
        for (size_t i = 0; i < a.size(); i++) { top = std::max(top, (double)std::fabs(a[i])); diff = std::max(diff, (double)std::fabs(a[i] - b[i])); }
        for (int x : count) if (x != 0) { printf("  position %d: a split count was left at %d\n", p, x); return 1; }
        worst = std::max(worst, diff / top);
    }
    return worst;
}

int main()
{
    Config configs[] = {
        { 4, 2, 64, 4, 32, 0, 13, 160, 0.f },   // GQA, a 32-position window (devices --check's kivi4:r32)
        { 4, 2, 64, 2, 32, 0, 5, 140, 0.f },    // kivi2
        { 2, 1, 128, 4, 128, 0, 13, 300, 0.f }, // llama's head width, the default window
        { 4, 4, 80, 4, 32, 0, 7, 120, 0.f },    // a width that is not a multiple of 32 (groups of 32 and 16)
        { 2, 2, 64, 4, 32, 50, 6, 150, 30.f },  // a sliding window and soft-capped scores
        { 2, 1, 256, 2, 32, 0, 13, 100, 0.f },  // Gemma's 256
        { 2, 2, 64, 4, 32, 0, 1, 100, 0.f },    // one split
    };
    bool ok = true;
    unsigned seed = 1;
    for (auto& c : configs)
    {
        double e = check(c, seed++);
        bool pass = e <= 1e-5;
        ok &= pass;
        printf("heads %d/%d, dim %d, kivi%d:r%d, window %d, cap %g, splits %d, %d positions: max |tiles - elements| / max |elements| = %.2e %s\n",
               c.heads, c.kvHeads, c.headDim, c.bits, c.residual, c.window, c.cap, c.splits, c.positions, e, pass ? "ok" : "FAIL");
    }
    return ok ? 0 : 1;
}
