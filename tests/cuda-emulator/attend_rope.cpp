// attend_rope_* (RoPE, KV store and one token's attention in one launch, FITLM_CUDA_FUSED_ATTN) against rope_qk,
// kv_store_* and attend_* in turn (forward.cu) in the emulator: f32 and f16 caches, element-wise and row-reading
// sources, NEOX and interleaved pairs, partial rotary, GQA, a sliding window. The cache row written at the token's
// position must be equal bit for bit, the outputs within 1e-6 of their largest. Exit code 1 if not.
#include <cstdio>
#include <random>

template <typename T> static T to(float f);
template <> float to<float>(float f) { return f; }
template <> u16 to<u16>(float f) { return float_to_half(f); }

using Rope = void (*)(const float*, const float*, const float*, void*, void*, float*, int, int, int, float, float, int, const int*, i8*, float*,
                      int*, int, float*, int*, const float*, const float*, int, int);

template <typename T>
static bool check(const char* name, void* fused, void* store, void* attend, int heads, int kvHeads, int hd, int half, int neox, int window, int positions)
{
    const int splits = 13, kvDim = kvHeads * hd;
    std::mt19937 rng(heads * 131 + hd * 7 + half + neox);
    std::normal_distribution<float> normal;
    std::uniform_real_distribution<float> angle(-3.1f, 3.1f);
    std::vector<float> cosT((size_t)positions * half), sinT(cosT.size());
    for (size_t i = 0; i < cosT.size(); i++) { float a = angle(rng); cosT[i] = std::cos(a); sinT[i] = std::sin(a); }
    std::vector<T> kc((size_t)positions * kvDim), vc(kc.size());
    for (size_t i = 0; i < kc.size(); i++) { kc[i] = to<T>(normal(rng)); vc[i] = to<T>(normal(rng)); }
    std::vector<float> part((size_t)heads * splits * (256 + 2));
    std::vector<int> count(heads), pos(1);
    double worst = 0;
    bool rows = true;
    for (int p : { 0, 5, 17, positions / 2, positions - 1 })
    {
        std::vector<float> q(heads * hd), k(kvDim), v(kvDim), a(q.size()), b(q.size());
        for (auto& x : q) x = normal(rng);
        for (auto& x : k) x = normal(rng);
        for (auto& x : v) x = normal(rng);
        pos[0] = p;
        auto kc2 = kc, vc2 = vc;
        float scale = 1.f / std::sqrt((float)hd);
        // Fused.
        emu::launch((Rope)fused, { (unsigned)(heads * splits), 1 }, { 128 }, (const float*)q.data(), (const float*)k.data(), (const float*)v.data(),
                    (void*)kc2.data(), (void*)vc2.data(), b.data(), heads, kvHeads, hd, scale, 0.f, window, (const int*)pos.data(), (i8*)nullptr,
                    (float*)nullptr, (int*)nullptr, splits, part.data(), count.data(), (const float*)cosT.data(), (const float*)sinT.data(), half, neox);
        // In turn: rope_qk rotates q and k in place, kv_store writes the row, attend reads it.
        emu::launch(rope_qk, { (unsigned)(((heads + kvHeads) * half + 255) / 256) }, { 256 }, q.data(), k.data(), (const float*)cosT.data(),
                    (const float*)sinT.data(), 1, heads, kvHeads, hd, half, neox, (const int*)pos.data());
        using Store = void (*)(const float*, const float*, T*, T*, int, int, const int*);
        emu::launch((Store)store, { (unsigned)((kvDim + 255) / 256) }, { 256 }, (const float*)k.data(), (const float*)v.data(), kc.data(), vc.data(), 1,
                    kvDim, (const int*)pos.data());
        using Attend = void (*)(const float*, const T*, const T*, float*, int, int, int, float, float, int, const int*, i8*, float*, int*, int, float*, int*);
        emu::launch((Attend)attend, { (unsigned)(heads * splits), 1 }, { 128 }, (const float*)q.data(), (const T*)kc.data(), (const T*)vc.data(), a.data(),
                    heads, kvHeads, hd, scale, 0.f, window, (const int*)pos.data(), (i8*)nullptr, (float*)nullptr, (int*)nullptr, splits, part.data(),
                    count.data());
        rows &= memcmp(kc.data(), kc2.data(), kc.size() * sizeof(T)) == 0 && memcmp(vc.data(), vc2.data(), vc.size() * sizeof(T)) == 0;
        double top = 0, diff = 0;
        for (size_t i = 0; i < a.size(); i++) { top = std::max(top, (double)std::fabs(a[i])); diff = std::max(diff, (double)std::fabs(a[i] - b[i])); }
        worst = std::max(worst, diff / top);
    }
    bool ok = rows && worst <= 1e-6;
    printf("%s: heads %d/%d, dim %d, %d rotated pairs (%s), window %d: cache %s, max |fused - in turn| / max = %.2e %s\n", name, heads, kvHeads, hd, half,
           neox ? "neox" : "interleaved", window, rows ? "identical" : "DIFFERENT", worst, ok ? "ok" : "FAIL");
    return ok;
}

int main()
{
    bool ok = check<float>("attend_rope_f32", (void*)attend_rope_f32, (void*)kv_store_f32, (void*)attend_f32, 4, 2, 64, 32, 1, 0, 100);
    ok &= check<float>("attend_rope_f32", (void*)attend_rope_f32, (void*)kv_store_f32, (void*)attend_f32, 4, 4, 80, 20, 0, 30, 90);
    ok &= check<u16>("attend_rope_f16", (void*)attend_rope_f16, (void*)kv_store_f16, (void*)attend_f16, 4, 2, 64, 32, 0, 0, 100);
    ok &= check<u16>("attend_rope_f16_h128", (void*)attend_rope_f16_h128, (void*)kv_store_f16, (void*)attend_f16_h128, 4, 1, 128, 64, 1, 0, 120);
    ok &= check<u16>("attend_rope_f16_h64", (void*)attend_rope_f16_h64, (void*)kv_store_f16, (void*)attend_f16_h64, 2, 2, 64, 16, 1, 40, 80);
    return ok ? 0 : 1;
}
