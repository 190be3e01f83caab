using FitLM.Backends.Cuda;
using Xunit;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>The CUBIN cache, with a fake compiler: no GPU or NVRTC needed.</summary>
public sealed class KernelCacheTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "fitlm-kcache-" + Guid.NewGuid().ToString("N"));
    private int _compiles;

    private KernelCache Cache() => new(_dir, (source, options) =>
    {
        _compiles++;
        return System.Text.Encoding.UTF8.GetBytes($"cubin of {source} with {string.Join(' ', options)}");
    });

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, true);
    }

    [Fact]
    public void Key_ChangesWithSourceOptionsVersionAndArch()
    {
        string[] o = ["--gpu-architecture=sm_90", "-default-device"];
        string k = KernelCache.Key("src", o, "13.0", "sm_90");
        Assert.Equal(k, KernelCache.Key("src", [.. o], "13.0", "sm_90"));
        Assert.NotEqual(k, KernelCache.Key("src2", o, "13.0", "sm_90"));
        Assert.NotEqual(k, KernelCache.Key("src", ["--gpu-architecture=sm_90"], "13.0", "sm_90"));
        Assert.NotEqual(k, KernelCache.Key("src", o, "12.8", "sm_90"));
        Assert.NotEqual(k, KernelCache.Key("src", o, "13.0", "sm_89"));
        Assert.StartsWith("sm_90-", k, StringComparison.Ordinal);
        // Length-prefixed parts: moving text from one part to the next is another key.
        Assert.NotEqual(KernelCache.Key("ab", ["c"], "v", "a"), KernelCache.Key("a", ["bc"], "v", "a"));
    }

    [Fact]
    public void SecondUse_ReadsTheCache_AndLogsOnlyTheCompile()
    {
        var log = new List<string>();
        byte[] first = Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90", log.Add);
        byte[] second = Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90", log.Add);
        Assert.Equal(first, second);
        Assert.Equal(1, _compiles);
        Assert.Equal($"compiling CUDA kernels for sm_90 (first use; cached in {_dir})", Assert.Single(log));
        Assert.Empty(Directory.GetFiles(_dir, "*.tmp"));
        Cache().GetOrCompile("src", ["-x"], "13.0", "sm_80");
        Assert.Equal(2, _compiles);
    }

    [Theory]
    [InlineData("flip")]
    [InlineData("truncate")]
    [InlineData("empty")]
    [InlineData("garbage")]
    public void CorruptEntry_IsRecompiledAndReplaced(string damage)
    {
        byte[] good = Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90");
        string path = Assert.Single(Directory.GetFiles(_dir));
        byte[] file = File.ReadAllBytes(path);
        switch (damage)
        {
            case "flip": file[^1] ^= 0x40; break;
            case "truncate": file = file[..(file.Length - 3)]; break;
            case "empty": file = []; break;
            default: file = System.Text.Encoding.ASCII.GetBytes("not a cache entry at all, just some text"); break;
        }
        File.WriteAllBytes(path, file);
        byte[] again = Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90");
        Assert.Equal(good, again);
        Assert.Equal(2, _compiles);
        Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90"); // the bad entry was replaced
        Assert.Equal(2, _compiles);
    }

    [Fact]
    public void UnwritableDirectory_StillCompiles()
    {
        File.WriteAllText(_dir, "a file where the cache folder should be");
        try
        {
            byte[] cubin = Cache().GetOrCompile("src", ["-x"], "13.0", "sm_90");
            Assert.NotEmpty(cubin);
        }
        finally
        {
            File.Delete(_dir);
        }
    }

    [Fact]
    public void DefaultDirectory_IsUnderTheUserCache()
    {
        Assert.EndsWith(Path.Combine("fitlm", "cuda"), KernelCache.DefaultDirectory(), StringComparison.Ordinal);
    }

    [Fact]
    public void KernelSource_IsEmbedded_AndIncludesNothing()
    {
        string source = CudaMatVec.Source();
        Assert.DoesNotMatch(@"(?m)^\s*#\s*include", source);
        // ENTRY(name, T) defines the float types' matvec_name and matmul8_name, INT_ENTRY the quantized types' _q8 kernels,
        // and each type but bf16 has its prefill dequantizer: the names CudaMatVec and CudaGemm look up.
        foreach (var t in CudaMatVec.Types)
        {
            string name = FitLM.Tensors.GgmlTypes.Name(t).ToLowerInvariant();
            if (CudaMatVec.QuantizesActivations(t))
            {
                Assert.Contains($"INT_ENTRY(matvec_{name}_q8, ", source, StringComparison.Ordinal);
                if (t == FitLM.Tensors.GgmlType.Q4_0) Assert.Contains("INT_ENTRY(matvec2_q4_0_q8, ", source, StringComparison.Ordinal);
                Assert.Contains($"INT_ENTRY(matmul8_{name}_q8, ", source, StringComparison.Ordinal);
                Assert.Contains($" dequant_f16_{name}(", source, StringComparison.Ordinal);
            }
            else Assert.Contains($"ENTRY({name}, ", source, StringComparison.Ordinal);
        }
        string forward = KernelModule.Source("forward.cu");
        Assert.DoesNotMatch(@"(?m)^\s*#\s*include", forward);
        foreach (string kernel in new[] { "add_bias", "add", "softcap", "gate_act", "rope_qk", "copy_columns", "kv_store_kivi" })
            Assert.Matches($@"extern ""C"" __global__ void {kernel}\(", forward);
        foreach (string kernel in new[] { "add_rmsnorm_q8", "add_rmsnorm_lane", "kivi_quantize", "attend_kivi", "attend_kivi_tiles", "attend_batch_kivi" })
            Assert.Matches($@"extern ""C"" __global__ void __launch_bounds__\([^)]*\) {kernel}\(", forward);
        Assert.Contains("KV_ENTRIES(f32, KvF32)", forward, StringComparison.Ordinal);
        Assert.Contains("KV_ENTRIES(f16, KvF16)", forward, StringComparison.Ordinal);
        foreach (int width in ForwardKernels.RowHeadDims)
            Assert.Contains($"VEC_ENTRY(f16_h{width}, KvF16, {width / 32}, ", forward, StringComparison.Ordinal);
        foreach (int width in ForwardKernels.TileHeadDims)
        {
            Assert.Contains($"TILE_ENTRY(f32_h{width}, KvF32, {width})", forward, StringComparison.Ordinal);
            Assert.Contains($"TILE_ENTRY(f16_h{width}, KvF16, {width})", forward, StringComparison.Ordinal);
        }
        Assert.Contains($"#define TILE_Q {ForwardKernels.TileQueries}", forward, StringComparison.Ordinal);
        Assert.DoesNotMatch(@"(?m)^\s*#\s*include", KernelModule.Source("common.cuh"));
        Assert.Throws<FitLMException>(() => KernelModule.Source("missing.cu"));
    }

    // A kernel launched as a programmatic dependent launch (CudaDevice.Programmatic) that touched memory an earlier
    // kernel writes before griddepcontrol.wait would race that kernel: each one's first statement is pdl_begin, except
    // the integer products (int_matmul), whose one-token rows request their first weights (read-only) before the wait,
    // and add_rmsnorm_lane, which requests the norm's weights before it.
    [Theory]
    [InlineData("matvec.cu", 15)]
    [InlineData("forward.cu", 19)]
    public void EveryKernel_WaitsForThePreviousOneBeforeTouchingMemory(string file, int kernels)
    {
        string source = KernelModule.Source(file);
        var definitions = System.Text.RegularExpressions.Regex.Matches(source, @"extern ""C"" __global__ void[^{;]*\{([\s\\]*)(\S[^\n]*)");
        Assert.Equal(kernels, definitions.Count);
        foreach (System.Text.RegularExpressions.Match m in definitions)
        {
            string first = m.Groups[2].Value;
            Assert.True(first.StartsWith("pdl_begin();", StringComparison.Ordinal) || first.StartsWith("int_matmul<KIND, NB, R>(", StringComparison.Ordinal)
                || first.StartsWith("int_matmul_loop<KIND, R>(", StringComparison.Ordinal) || first.StartsWith("int_matmul_scaled<KIND, R>(", StringComparison.Ordinal)
                || first.StartsWith("fold_norm_rows<KIND, R>(", StringComparison.Ordinal) || first.StartsWith("gate_up_act<KIND>(", StringComparison.Ordinal)
                || (m.Value.Contains(" add_rmsnorm_lane(", StringComparison.Ordinal) && first.StartsWith("pdl_release();", StringComparison.Ordinal)),
                $"{m.Value.Split('(')[0]}... begins with: {first}");
        }
        string common = KernelModule.Source("common.cuh");
        Assert.Contains("griddepcontrol.wait", common, StringComparison.Ordinal);
        Assert.Contains("griddepcontrol.launch_dependents", common, StringComparison.Ordinal);
        if (file == "forward.cu")
        {
            // add_rmsnorm_lane: the release, the weights, the wait, then x.
            int norm = source.IndexOf(" add_rmsnorm_lane(", StringComparison.Ordinal);
            int normRelease = source.IndexOf("pdl_release();", norm, StringComparison.Ordinal), normWeights = source.IndexOf("wv[k] = ", norm, StringComparison.Ordinal);
            int normWait = source.IndexOf("pdl_wait();", norm, StringComparison.Ordinal), normX = source.IndexOf("v[k] = xr[k]", norm, StringComparison.Ordinal);
            Assert.True(norm > 0 && norm < normRelease && normRelease < normWeights && normWeights < normWait && normWait < normX,
                "add_rmsnorm_lane: release, weights, wait, then x");
            Assert.DoesNotMatch(@"const float\* __restrict__ (x|y|q|k|v|g|u)\b", source);
            return;
        }
        // int_matmul: the release first; then either the one-token rows or a wait before any other row.
        int body = source.IndexOf("__device__ __forceinline__ void int_matmul(", StringComparison.Ordinal);
        int release = source.IndexOf("pdl_release();", body, StringComparison.Ordinal);
        int oneToken = source.IndexOf("split_rows_one_token<KIND == 0, R>(", body, StringComparison.Ordinal);
        int wait = source.IndexOf("pdl_wait();", oneToken, StringComparison.Ordinal), other = source.IndexOf("int_row<KIND, NB>(", body, StringComparison.Ordinal);
        Assert.True(body > 0 && body < release && release < oneToken && oneToken < wait && wait < other, "int_matmul: release, one-token rows, else wait then the row");
        // int_matmul_loop (the persistent probe): the release first, then only one-token rows.
        int loop = source.IndexOf("__device__ __forceinline__ void int_matmul_loop(", StringComparison.Ordinal);
        int loopRelease = source.IndexOf("pdl_release();", loop, StringComparison.Ordinal), loopRows = source.IndexOf("split_rows_one_token<KIND == 0, R>(", loop, StringComparison.Ordinal);
        Assert.True(loop > 0 && loop < loopRelease && loopRelease < loopRows, "int_matmul_loop: release, then the one-token rows");
        // The folded norm's kernels: the release first; the writer requests only the norm's weights before its rows wait.
        foreach (string name in new[] { "fold_norm_rows(", "int_matmul_scaled(", "gate_up_act(" })
        {
            int at = source.IndexOf("__device__ __forceinline__ void " + name, StringComparison.Ordinal);
            int atRelease = source.IndexOf("pdl_release();", at, StringComparison.Ordinal), atRows = source.IndexOf("split_rows_one_token<KIND == 0, ", at, StringComparison.Ordinal);
            int next = source.IndexOf("__device__ __forceinline__ void ", at + 1, StringComparison.Ordinal);
            Assert.True(at > 0 && at < atRelease && atRelease < atRows && (next < 0 || atRows < next), $"{name}: release, then the one-token rows");
            string before = source[atRelease..atRows];
            Assert.DoesNotMatch(@"\b(x|xq|xd|xs|partials)\[", before);
        }
        // split_rows_one_token: weights requested, then the wait, then the first read of x.
        int rowsBody = source.IndexOf("__device__ __forceinline__ void split_rows_one_token(", StringComparison.Ordinal);
        int weights = source.IndexOf("ld_weights(", rowsBody, StringComparison.Ordinal);
        int rowsWait = source.IndexOf("pdl_wait_for(xv, xd, xs);", rowsBody, StringComparison.Ordinal), x = source.IndexOf("x0[u] = xv[2 * b]", rowsBody, StringComparison.Ordinal);
        Assert.True(rowsBody > 0 && rowsBody < weights && weights < rowsWait && rowsWait < x, "split_rows_one_token: weights, wait, then x");
        // Loads through a const __restrict__ pointer may be scheduled above the wait: none on what an earlier kernel writes.
        Assert.DoesNotMatch(@"const (float|i8|int)\* __restrict__ (x|xq|xd|xs|xb)\b", source);
        Assert.DoesNotContain("__ldg", source, StringComparison.Ordinal);
    }
}
