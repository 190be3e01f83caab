using FitLM.Compression;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;
using Xunit;
using FitLM.Runtime;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM.Tests.BitStack;

/// <summary>Stacked files: the ladder, loading any prefix, resizing a live model, and clear errors for damaged files.</summary>
public class StackFileTests
{
    private static StackFixture F => StackFixture.Shared;

    [Fact]
    public void LadderIsMonotoneAndLevelByLevel()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        int m = layout.Matrices.Count;
        Assert.Equal(2 * 7, m);
        Assert.Equal(m * StackFixture.Options.Blocks, layout.Entries.Count);
        Assert.Equal(m, layout.BaseEntries);
        for (int k = 0; k <= layout.Entries.Count; k++)
        {
            var counts = layout.CountsAt(k);
            // BitStack's levels: no two matrices ever differ by more than one block.
            Assert.True(counts.Max() - counts.Min() <= 1, $"prefix {k}: counts {string.Join(",", counts)}");
            if (k > 0) Assert.True(layout.BytesAt(k) > layout.BytesAt(k - 1));
            Assert.Equal(k, layout.EntriesFor(layout.BytesAt(k)));
            if (k > 0) Assert.Equal(k - 1, layout.EntriesFor(layout.BytesAt(k) - 1));
        }
        Assert.Equal(-1, layout.EntriesFor(layout.FixedBytes - 1));
        // The file holds the conventional tensors, the blocks and a header.
        long tensors = src.Tensors.Sum(t => t.ByteSize);
        Assert.Equal(layout.BytesAt(layout.Entries.Count), tensors);
        Assert.True(new FileInfo(F.Stacked).Length > tensors);
        Assert.Equal(F.Result.MinimumBytes, layout.BytesAt(layout.BaseEntries));
    }

    [Fact]
    public void EveryPrefixOfTheStackLoadsAndRuns()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        float[]? full = null;
        for (int k = 0; k <= layout.Entries.Count; k++)
        {
            using var w = StackedWeights.Open(src, layout, k);
            Assert.Equal(k, w.LoadedEntries);
            Assert.Equal(layout.CountsAt(k), w.Counts);
            Assert.Equal(layout.BytesAt(k), w.WeightBytes);
            var t = new Transformer(src.Config, w, 16, 16);
            var logits = StackFixture.Logits(t, src.Config.Vocab);
            Assert.All(logits, x => Assert.True(float.IsFinite(x)));
            if (k == layout.Entries.Count) full = logits;
        }
        Assert.NotNull(full);
    }

    [Fact]
    public void LanguageModelLoadsTheLongestPrefixThatFits()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        foreach (int k in new[] { layout.BaseEntries, layout.BaseEntries + 5, layout.Entries.Count - 1, layout.Entries.Count })
        {
            // --weights: exactly the bytes of prefix k, or one byte short of prefix k + 1.
            foreach (long cap in new[] { layout.BytesAt(k), k < layout.Entries.Count ? layout.BytesAt(k + 1) - 1 : long.MaxValue / 4 })
            {
                using var lm = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 32, Stack = new StackLoadOptions { WeightBytes = cap } });
                var w = Assert.IsType<StackedWeights>(lm.Weights);
                Assert.Equal(k, w.LoadedEntries);
                Assert.Equal(layout.BytesAt(k), lm.Plan.ResidentWeightBytes - w.CacheBytes);
            }
        }
        // --memory: a whole-process budget; the plan holds it.
        const long runtime = 64L << 20;
        using (var lm = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 32, MemoryBudget = 1L << 40, RuntimeBytes = runtime }))
        {
            var w = (StackedWeights)lm.Weights;
            Assert.Equal(layout.Entries.Count, w.LoadedEntries);
            int mid = layout.BaseEntries + layout.Matrices.Count;
            // The plan counts everything the planner does (the working memory of re-materializing a matrix included).
            long budget = lm.Plan.TotalBytes - layout.BlockBytesBetween(mid, layout.Entries.Count);
            using var small = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 32, MemoryBudget = budget, RuntimeBytes = runtime });
            var sw = (StackedWeights)small.Weights;
            Assert.Equal(StackedWeights.DefaultCache, sw.CacheType);
            Assert.Equal(mid, sw.LoadedEntries);
            Assert.True(small.Plan.TotalBytes <= budget, $"plan {small.Plan.TotalBytes} > budget {budget}");
        }
    }

    [Fact]
    public void TooSmallABudgetSaysWhatWouldFit()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        var e = Assert.Throws<FitLMException>(() => LanguageModel.Load(F.Stacked,
            new LoadOptions { ContextLength = 32, Stack = new StackLoadOptions { WeightBytes = layout.BytesAt(layout.BaseEntries) - 1 } }));
        Assert.Contains("smallest whole model", e.Message);
        var e2 = Assert.Throws<FitLMException>(() => LanguageModel.Load(F.Stacked,
            new LoadOptions { ContextLength = 32, MemoryBudget = 8L << 20, RuntimeBytes = 64L << 20 }));
        Assert.Contains("--memory", e2.Message);
    }

    [Fact]
    public void ResizingDownThenUpGivesTheLogitsOfLoadingAtThatSize()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        int n = layout.Entries.Count, low = layout.BaseEntries + 3, mid = n - 4;
        float[] Fresh(int k)
        {
            using var w = StackedWeights.Open(src, layout, k);
            return StackFixture.Logits(new Transformer(src.Config, w, 16, 16), src.Config.Vocab);
        }
        var atLow = Fresh(low);
        var atMid = Fresh(mid);
        var atFull = Fresh(n);
        Assert.NotEqual(atLow, atFull);

        using var lm = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 16, MaxBatch = 16 });
        var live = (StackedWeights)lm.Weights;
        Assert.Equal(n, live.LoadedEntries);
        Assert.Equal(atFull, StackFixture.Logits(lm.Transformer, lm.Config.Vocab));

        Assert.Equal(layout.BytesAt(low), lm.Resize(layout.BytesAt(low)));
        Assert.Equal(low, live.LoadedEntries);
        Assert.Equal(atLow, StackFixture.Logits(lm.Transformer, lm.Config.Vocab));

        long read = live.BytesRead;
        lm.Resize(layout.BytesAt(mid));
        Assert.Equal(mid, live.LoadedEntries);
        // Growing reads only the new blocks.
        Assert.Equal(layout.BlockBytesBetween(low, mid), live.BytesRead - read);
        Assert.Equal(atMid, StackFixture.Logits(lm.Transformer, lm.Config.Vocab));

        lm.Resize(long.MaxValue / 4);
        Assert.Equal(atFull, StackFixture.Logits(lm.Transformer, lm.Config.Vocab));
    }

    [Fact]
    public void ThePlannerResizesToANewBudget()
    {
        using var lm = LanguageModel.Load(F.Stacked, new LoadOptions { ContextLength = 16, Stack = new StackLoadOptions { WeightBytes = F.Result.MinimumBytes } });
        var w = (StackedWeights)lm.Weights;
        var layout = w.Layout!;
        Assert.Equal(layout.BaseEntries, w.LoadedEntries);
        // A generous budget grows the model to the whole stack; one that cannot hold the smallest model is refused.
        Assert.Equal(layout.BytesAt(layout.Entries.Count), lm.ResizeToBudget(1L << 40));
        Assert.Contains("cannot hold", Assert.Throws<FitLMException>(() => lm.ResizeToBudget(1L << 20)).Message);
        Assert.Equal(layout.Entries.Count, w.LoadedEntries);
        using var plain = LanguageModel.Load(F.Original, new LoadOptions { ContextLength = 16 });
        Assert.Contains("only a stacked", Assert.Throws<FitLMException>(() => plain.Resize(1L << 20)).Message);
    }

    [Fact]
    public void DirectKernelAndCachesComputeTheSameModel()
    {
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        int k = layout.BaseEntries + 7;
        float[] Run(GgmlType? cache)
        {
            using var w = StackedWeights.Open(src, layout, k, cache);
            return StackFixture.Logits(new Transformer(src.Config, w, 16, 16), src.Config.Vocab);
        }
        var f32 = Run(GgmlType.F32);
        var direct = Run(null);
        var q8 = Run(GgmlType.Q8_0);
        // The prompt positions only: greedy decoding after them may pick a different token among near-ties.
        int n = 8 * src.Config.Vocab;
        double Max(float[] a, float[] b) => a.Take(n).Zip(b.Take(n), (x, y) => Math.Abs(x - y)).Max();
        double scale = f32.Max(Math.Abs);
        Assert.True(Max(f32, direct) < 1e-3 * scale, $"direct differs by {Max(f32, direct)}");
        Assert.True(Max(f32, q8) < 5e-2 * scale, $"q8_0 cache differs by {Max(f32, q8)}");
    }

    [Fact]
    public void MoreBlocksApproachTheOriginalModel()
    {
        float[] original;
        using (var lm = LanguageModel.Load(F.Original, new LoadOptions { ContextLength = 16, MaxBatch = 16 }))
            original = StackFixture.Logits(lm.Transformer, lm.Config.Vocab);
        using var src = StackFixture.Open(F.Stacked);
        var layout = StackLayout.Read(src);
        double Error(int k)
        {
            using var w = StackedWeights.Open(src, layout, k, GgmlType.F32);
            var l = StackFixture.Logits(new Transformer(src.Config, w, 16, 16), src.Config.Vocab);
            // Compare the prompt positions only (decoding may pick different tokens).
            int n = 8 * src.Config.Vocab;
            return Math.Sqrt(l.Take(n).Zip(original.Take(n), (a, b) => (double)(a - b) * (a - b)).Sum());
        }
        double baseError = Error(layout.BaseEntries), fullError = Error(layout.Entries.Count);
        Assert.True(fullError < 0.7 * baseError, $"full stack error {fullError} vs one block {baseError}");
    }

    [Fact]
    public void CompressionRefusesWhatItCannotDo()
    {
        var o = StackFixture.Options;
        string outPath = Path.Combine(F.Dir, "refused.gguf");
        Assert.Contains("calibration text", Assert.Throws<FitLMException>(() => BitStackCompressor.Compress(F.Original, "x", outPath, o)).Message);
        Assert.Contains("already a stacked", Assert.Throws<FitLMException>(() => BitStackCompressor.Compress(F.Stacked, F.CalibText, outPath, o)).Message);
        Assert.Contains("--blocks", Assert.Throws<FitLMException>(() => BitStackCompressor.Compress(F.Original, F.CalibText, outPath, o with { Blocks = 0 })).Message);
        Assert.False(File.Exists(outPath));
    }
}

/// <summary>Shrinking a live stack gives memory back. Process-wide counters: runs alone.</summary>
[Collection(SequentialCollection.Name)]
public class StackMemoryTests
{
    [Fact]
    public void ShrinkingFreesTheDroppedBlocks()
    {
        var f = StackFixture.Shared;
        using var src = StackFixture.Open(f.Stacked);
        var layout = StackLayout.Read(src);
        using var w = StackedWeights.Open(src, layout, layout.Entries.Count);
        long before = NativeBuffer.LiveBytes;
        long blocksBefore = w.ResidentBytes;
        int low = layout.BaseEntries;
        w.ResizeEntries(low);
        long freed = before - NativeBuffer.LiveBytes;
        long dropped = layout.BlockBytesBetween(low, layout.Entries.Count);
        Assert.True(freed >= dropped, $"freed {freed} bytes, dropped blocks hold {dropped}");
        Assert.True(blocksBefore - w.ResidentBytes >= dropped);
        w.ResizeEntries(layout.Entries.Count);
        Assert.InRange(NativeBuffer.LiveBytes - before, -4096, 4096);
    }
}

/// <summary>Damaged stacked files end in one clear FitLMException, never a crash or a wrong model.</summary>
public class StackCorruptionTests
{
    private static StackFixture F => StackFixture.Shared;

    private static void ExpectError(string path, string expected)
    {
        var e = Assert.Throws<FitLMException>(() =>
        {
            using var lm = LanguageModel.Load(path, new LoadOptions { ContextLength = 16 });
        });
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    private static string Variant(string name, Func<string, GgufValue, GgufValue?>? meta = null,
        Func<GgufTensorInfo, (string, long[], GgmlType)?>? tensor = null) =>
        StackFixture.Rewrite(F.Stacked, Path.Combine(F.Dir, name + ".gguf"), meta, tensor);

    [Fact]
    public void RewrittenUnchangedFileLoads()
    {
        string p = Variant("same");
        using var lm = LanguageModel.Load(p, new LoadOptions { ContextLength = 16 });
        Assert.IsType<StackedWeights>(lm.Weights);
    }

    [Fact]
    public void TruncatedFilesFailClearly()
    {
        var bytes = File.ReadAllBytes(F.Stacked);
        using var g = GgufFile.Open(F.Stacked);
        long lastBlock = g.DataOffset + g.Tensors[^1].Offset;
        foreach (long len in new[] { 10L, 4000L, g.DataOffset - 10, g.DataOffset + 1000, lastBlock + 3, bytes.Length - 1L })
        {
            string p = Path.Combine(F.Dir, $"truncated-{len}.gguf");
            File.WriteAllBytes(p, bytes.AsSpan(0, (int)len).ToArray());
            var e = Assert.Throws<FitLMException>(() =>
            {
                using var lm = LanguageModel.Load(p, new LoadOptions { ContextLength = 16 });
            });
            Assert.Contains(p, e.Message);
        }
    }

    [Fact]
    public void BadStackMetadataFailsClearly()
    {
        ExpectError(Variant("method", (k, v) => k == StackLayout.MethodKey ? GgufValue.Of("bitstack9") : v), "unknown stack method");
        ExpectError(Variant("version", (k, v) => k == StackLayout.VersionKey ? new GgufValue(GgufValueType.UInt32, 7u) : v), "version 7");
        ExpectError(Variant("noorder", (k, v) => k == StackLayout.OrderKey ? null : v), "'fitlm.stack.order' is missing");
        ExpectError(Variant("shortorder", (k, v) => k == StackLayout.OrderKey ? GgufValue.Of(((int[])v.Value)[..^1]) : v), "entries");
        ExpectError(Variant("badindex", (k, v) =>
        {
            if (k != StackLayout.OrderKey) return v;
            var a = ((int[])v.Value).ToArray();
            a[5] = 999;
            return GgufValue.Of(a);
        }), "names no matrix");
        ExpectError(Variant("twice", (k, v) =>
        {
            if (k != StackLayout.OrderKey) return v;
            var a = ((int[])v.Value).ToArray();
            a[^1] = a[0] == a[^1] ? a[1] : a[0];
            return GgufValue.Of(a);
        }), "more than");
        ExpectError(Variant("badname", (k, v) =>
        {
            if (k != StackLayout.MatricesKey) return v;
            var a = ((string[])v.Value).ToArray();
            a[0] = "blk.9.attn_q.weight";
            return GgufValue.Of(a);
        }), "is not a linear weight");
        ExpectError(Variant("ranks", (k, v) => k == StackLayout.RanksKey ? GgufValue.Of(new[] { 2 }) : v), "ranks");
        ExpectError(Variant("ordertype", (k, v) => k == StackLayout.OrderKey ? GgufValue.Of(((int[])v.Value).Select(x => (float)x).ToArray()) : v), "not an array of int32");
    }

    [Fact]
    public void BadBlockTensorsFailClearly()
    {
        ExpectError(Variant("missing", tensor: t => t.Name == "blk.1.ffn_up.weight.1.u" ? null : (t.Name, t.Shape, t.Type)), "'blk.1.ffn_up.weight.1.u' is missing");
        ExpectError(Variant("type", tensor: t => t.Name == "blk.0.attn_k.weight.0.sign" ? (t.Name, t.Shape, GgmlType.F32) : (t.Name, t.Shape, t.Type)), "expected F16");
        ExpectError(Variant("shape", tensor: t => t.Name == "blk.0.attn_v.weight.2.v" ? (t.Name, [t.Shape[0] + 1, t.Shape[1]], t.Type) : (t.Name, t.Shape, t.Type)), "has shape");
        ExpectError(Variant("stray", tensor: t => t.Name == "blk.0.attn_v.weight.2.v" ? ("blk.0.attn_v.weight.7.v", t.Shape, t.Type) : (t.Name, t.Shape, t.Type)), "missing");
        ExpectError(Variant("nonorm", tensor: t => t.Name == "blk.1.ffn_norm.weight" ? null : (t.Name, t.Shape, t.Type)), "blk.1.ffn_norm.weight");
    }
}
