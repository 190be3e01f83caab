// attend_tile_* (a batch's attention over a dense cache, tiled; attend_tile over DenseTiles) against attend_batch_*
// (one block per query) in the emulator: f32 and f16 caches, heads of 64 and 128, GQA, a sliding window with
// soft-capping, batches that do not start on a tile. Outputs within 1e-5 of their largest; exit code 1 if not.
#include <cstdio>
#include <random>

template <typename T> static T to(float f);
template <> float to<float>(float f) { return f; }
template <> u16 to<u16>(float f) { return float_to_half(f); }

template <typename T>
static bool check(const char* name, void* tile, void* batch, int heads, int kvHeads, int hd, int window, float cap, int p0, int n)
{
    const int kvDim = kvHeads * hd, positions = p0 + n;
    std::mt19937 rng(hd * 17 + p0 + n);
    std::normal_distribution<float> normal;
    std::vector<T> kc((size_t)positions * kvDim), vc(kc.size());
    for (size_t i = 0; i < kc.size(); i++) { kc[i] = to<T>(normal(rng)); vc[i] = to<T>(normal(rng)); }
    std::vector<float> q((size_t)n * heads * hd), a(q.size()), b(q.size());
    for (auto& x : q) x = normal(rng);
    std::vector<int> pos = { p0 };
    float scale = 1.f / std::sqrt((float)hd);
    using Batch = void (*)(const float*, const T*, const T*, float*, int, int, int, float, float, int, const int*, i8*, float*, int*);
    using Tile = void (*)(const float*, const T*, const T*, float*, int, int, int, float, float, int, const int*, i8*, float*, int*);
    emu::launch((Batch)batch, { (unsigned)heads, (unsigned)n }, { 128 }, (const float*)q.data(), (const T*)kc.data(), (const T*)vc.data(), a.data(), heads,
                kvHeads, hd, scale, cap, window, (const int*)pos.data(), (i8*)nullptr, (float*)nullptr, (int*)nullptr);
    emu::launch((Tile)tile, { (unsigned)heads, (unsigned)((n + 31) / 32) }, { 128 }, (const float*)q.data(), (const T*)kc.data(), (const T*)vc.data(),
                b.data(), n, heads, kvHeads, scale, cap, window, (const int*)pos.data(), (i8*)nullptr, (float*)nullptr, (int*)nullptr);
    double top = 0, diff = 0;
    for (size_t i = 0; i < a.size(); i++) { top = std::max(top, (double)std::fabs(a[i])); diff = std::max(diff, (double)std::fabs(a[i] - b[i])); }
    bool ok = diff / top <= 1e-5;
    printf("%s: heads %d/%d, window %d, cap %g, rows %d-%d: max |tiled - per query| / max = %.2e %s\n", name, heads, kvHeads, window, cap, p0,
           p0 + n - 1, diff / top, ok ? "ok" : "FAIL");
    return ok;
}

int main()
{
    bool ok = check<float>("attend_tile_f32_h64", (void*)attend_tile_f32_h64, (void*)attend_batch_f32, 2, 1, 64, 0, 0.f, 37, 40);
    ok &= check<float>("attend_tile_f32_h128", (void*)attend_tile_f32_h128, (void*)attend_batch_f32, 1, 1, 128, 0, 0.f, 0, 36);
    ok &= check<u16>("attend_tile_f16_h64", (void*)attend_tile_f16_h64, (void*)attend_batch_f16, 2, 2, 64, 40, 30.f, 21, 36);
    ok &= check<u16>("attend_tile_f16_h128", (void*)attend_tile_f16_h128, (void*)attend_batch_f16, 2, 1, 128, 0, 0.f, 60, 33);
    return ok ? 0 : 1;
}
