// attend_tile_kivi_* (a batch's attention over KIVI's cache, tiled) against attend_batch_kivi (forward.cu) in the
// emulator: a cache filled by kv_store_kivi and kivi_quantize in passes of n rows, as a prefill in batches fills it,
// and after each pass the attention of its n queries through both kernels (each query reads the tiles quantized at
// its own position quantized, the rest from the ring). Outputs within 1e-5 of their largest; exit code 1 if not.
#include <cstdio>
#include <random>

struct Config { int heads, kvHeads, headDim, bits, residual, window, pass, positions; float cap; };

using Tile = void (*)(const float*, const u8*, const u8*, const u16*, const u16*, float*, int, int, int, float, float, int, int, int, int,
                      const int*, i8*, float*, int*);

static double check(const Config& c, Tile tile, unsigned seed)
{
    const int G = 32, B = 4 * c.bits + 4, groups = (c.headDim + G - 1) / G, kvDim = c.kvHeads * c.headDim;
    int tiles = (c.positions + G - 1) / G, ring = std::min(tiles, (c.residual + c.pass + G - 1) / G + 3);
    std::vector<u8> kq((size_t)tiles * kvDim * B), vq((size_t)tiles * G * c.kvHeads * groups * B);
    for (auto& b : kq) b = 0xff; // a tile not yet quantized holds what it held: here NaN scales, which no query may read
    for (auto& b : vq) b = 0xff;
    std::vector<u16> kr((size_t)ring * G * kvDim), vr(kr.size());
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<int> pos(1);
    double worst = 0;
    for (int p0 = 0; p0 < c.positions; p0 += c.pass)
    {
        int n = std::min(c.pass, c.positions - p0);
        std::vector<float> k((size_t)n * kvDim), v(k.size()), q((size_t)n * c.heads * c.headDim), a(q.size()), b(q.size());
        for (auto& x : k) x = normal(rng);
        for (auto& x : v) x = normal(rng);
        for (auto& x : q) x = normal(rng);
        pos[0] = p0;
        emu::launch(kv_store_kivi, { (unsigned)((n * kvDim + 255) / 256) }, { 256 }, (const float*)k.data(), (const float*)v.data(), kr.data(),
                    vr.data(), n, kvDim, ring, (const int*)pos.data());
        emu::launch(kivi_quantize, { (unsigned)(n / G + 2), (unsigned)c.kvHeads }, { 32 }, (const u16*)kr.data(), (const u16*)vr.data(), kq.data(),
                    vq.data(), n, kvDim, c.kvHeads, c.headDim, ring, c.residual, c.bits, (const int*)pos.data());
        float scale = 1.f / std::sqrt((float)c.headDim);
        emu::launch(attend_batch_kivi, { (unsigned)c.heads, (unsigned)n }, { 128 }, (const float*)q.data(), (const u8*)kq.data(), (const u8*)vq.data(),
                    (const u16*)kr.data(), (const u16*)vr.data(), a.data(), c.heads, c.kvHeads, c.headDim, scale, c.cap, c.window, ring, c.residual,
                    c.bits, (const int*)pos.data(), (i8*)nullptr, (float*)nullptr, (int*)nullptr);
        if (n < 32) continue; // FitLM takes the tiled kernel for batches of 32 rows or more
        emu::launch(tile, { (unsigned)c.heads, (unsigned)((n + 31) / 32) }, { 128 }, (const float*)q.data(), (const u8*)kq.data(), (const u8*)vq.data(),
                    (const u16*)kr.data(), (const u16*)vr.data(), b.data(), n, c.heads, c.kvHeads, scale, c.cap, c.window, ring, c.residual, c.bits,
                    (const int*)pos.data(), (i8*)nullptr, (float*)nullptr, (int*)nullptr);
        double top = 0, diff = 0;
        for (size_t i = 0; i < a.size(); i++) { top = std::max(top, (double)std::fabs(a[i])); diff = std::max(diff, (double)std::fabs(a[i] - b[i])); }
        worst = std::max(worst, std::isfinite(diff) ? diff / top : 1.0);
    }
    return worst;
}

int main()
{
    Config configs[] = {
        { 2, 1, 64, 4, 32, 0, 40, 140, 0.f },     // passes of 40 with a 32-position window: tiles quantized inside a pass
        { 2, 2, 64, 2, 32, 0, 64, 128, 0.f },
        { 1, 1, 128, 4, 128, 0, 64, 224, 0.f },   // llama's head width, the default window
        { 2, 1, 128, 2, 64, 0, 70, 140, 0.f },
        { 2, 2, 64, 4, 32, 50, 48, 144, 30.f },   // a sliding window and soft-capped scores
    };
    bool ok = true;
    unsigned seed = 11;
    for (auto& c : configs)
    {
        double e = check(c, c.headDim == 64 ? attend_tile_kivi_h64 : attend_tile_kivi_h128, seed++);
        bool pass = e <= 1e-5;
        ok &= pass;
        printf("heads %d/%d, dim %d, kivi%d:r%d, window %d, cap %g, passes of %d, %d positions: max |tiled - per query| / max = %.2e %s\n",
               c.heads, c.kvHeads, c.headDim, c.bits, c.residual, c.window, c.cap, c.pass, c.positions, e, pass ? "ok" : "FAIL");
    }
    return ok ? 0 : 1;
}
