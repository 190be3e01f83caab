using FitLM.Conversion;
using FitLM.Formats;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Robustness;

/// <summary>
/// Corrupt mixture-of-experts files end in one line of FitLMException naming the problem: absurd expert counts,
/// experts used out of range, expert stacks or routers of the wrong shape. Never another exception or an
/// allocation sized by the corrupt field. Made from a synthesized tiny-moe (qwen3moe, 2 layers, 8 experts of 128, top-2).
/// </summary>
public sealed class MoeCorruptTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-moe-corrupt-").FullName;
    private readonly string _good;

    public MoeCorruptTests()
    {
        _good = Path.Combine(_dir, "good.gguf");
        SyntheticModel.Write(_good, SyntheticShape.Parse("tiny-moe"), "q8_0", TestPaths.DemoModel, seed: 9);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>
    /// A copy of the good file with metadata replaced (a null value removes the key) and tensors reshaped (their bytes
    /// then a pattern of the new size).
    /// </summary>
    private string Rewrite(string name, Dictionary<string, GgufValue?>? metadata = null, Dictionary<string, long[]>? shapes = null)
    {
        string path = Path.Combine(_dir, name + ".gguf");
        using var g = GgufFile.Open(_good);
        using var w = new GgufWriter(path);
        foreach (var key in g.MetadataKeys)
        {
            if (metadata != null && metadata.TryGetValue(key, out var v)) { if (v is { } value) w.Add(key, value); }
            else w.Add(key, g.Metadata[key]);
        }
        foreach (var t in g.Tensors) w.AddTensor(t.Name, shapes?.GetValueOrDefault(t.Name) ?? t.Shape, t.Type);
        foreach (var t in w.Tensors)
        {
            var bytes = new byte[t.ByteSize];
            var original = g.GetTensor(t.Name);
            if (original.ByteSize == t.ByteSize) g.ReadTensorBytes(original, 0, bytes);
            else for (int i = 0; i < bytes.Length; i++) bytes[i] = (byte)(i * 7);
            w.WriteTensor(t.Name, bytes);
        }
        w.Complete();
        return path;
    }

    private static GgufValue U32(uint v) => new(GgufValueType.UInt32, v);

    private static string LoadError(string path)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<FitLMException>(() =>
        {
            using var lm = LanguageModel.Load(path, 16, 4);
            lm.Transformer.Forward([1], 0, new float[lm.Config.Vocab], 0);
        });
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 64L << 20, "a corrupt field sized an allocation");
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Fact]
    public void TheGoodFileLoads()
    {
        using var lm = LanguageModel.Load(_good, 16, 4);
        Assert.Equal(8, lm.Config.ExpertCount);
    }

    [Theory]
    [InlineData(0u, "holds routed experts, but the model's expert count is 0")]
    [InlineData(1_000_000_000u, "expert count 1000000000 is out of range")]
    [InlineData(4096u, "tensor 'blk.0.ffn_gate_inp.weight' has shape [256, 8], expected [256, 4096]")]
    [InlineData(1u, "experts used per token 2 is out of range (1..1)")]
    public void AbsurdExpertCounts(uint count, string expected) =>
        Assert.Contains(expected, LoadError(Rewrite($"count-{count}", new() { ["qwen3moe.expert_count"] = U32(count) })));

    [Fact]
    public void MissingExpertCountWithExpertTensors() =>
        Assert.Contains("holds routed experts", LoadError(Rewrite("count-missing", new() { ["qwen3moe.expert_count"] = null })));

    [Theory]
    [InlineData(0u, "experts used per token 0 is out of range (1..8)")]
    [InlineData(9u, "experts used per token 9 is out of range (1..8)")]
    [InlineData(0xFFFFFFFFu, "expert_used_count 4294967295 is out of range")]
    public void ExpertsUsedOutOfRange(uint used, string expected) =>
        Assert.Contains(expected, LoadError(Rewrite($"used-{used}", new() { ["qwen3moe.expert_used_count"] = U32(used) })));

    [Fact]
    public void MissingExpertsUsed() =>
        Assert.Contains("expert_used_count", LoadError(Rewrite("used-missing", new() { ["qwen3moe.expert_used_count"] = null })));

    [Fact]
    public void AbsurdExpertWidth() =>
        Assert.Contains("expert feed-forward length", LoadError(Rewrite("width", new() { ["qwen3moe.expert_feed_forward_length"] = U32(1u << 30) })));

    [Theory]
    [InlineData("blk.1.ffn_gate_exps.weight", new long[] { 256, 128, 7 })]
    [InlineData("blk.0.ffn_up_exps.weight", new long[] { 256, 64, 8 })]
    [InlineData("blk.0.ffn_down_exps.weight", new long[] { 128, 256 * 8 })]
    [InlineData("blk.1.ffn_down_exps.weight", new long[] { 256, 128, 8 })]
    public void ExpertStacksOfTheWrongShape(string tensor, long[] shape) =>
        Assert.Contains($"tensor '{tensor}' has shape [{string.Join(", ", shape)}]", LoadError(Rewrite("shape", shapes: new() { [tensor] = shape })));

    [Fact]
    public void RouterRowsOtherThanTheExpertCount() =>
        Assert.Contains("tensor 'blk.1.ffn_gate_inp.weight' has shape [256, 9], expected [256, 8]",
            LoadError(Rewrite("router", shapes: new() { ["blk.1.ffn_gate_inp.weight"] = [256, 9] })));
}
