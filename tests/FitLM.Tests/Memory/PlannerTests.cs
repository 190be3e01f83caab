using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Tokenization;
using FsCheck;
using FsCheck.Fluent;
using Xunit;
using FitLM.Weights;

namespace FitLM.Tests.Memory;

/// <summary>A model's shapes without a file: what the planner needs to decide.</summary>
internal sealed class ShapeOnlySource(ModelConfig config, GgmlType type, bool tied) : IModelSource
{
    public string Path => "shapes-only";
    public ModelConfig Config => config;
    public Tokenizer Tokenizer => throw new NotSupportedException();
    public IReadOnlyList<TensorDesc> Tensors { get; } = Build(config, type, tied);
    public TensorDesc? Find(string name) => Tensors.FirstOrDefault(t => t.Name == name);
    public void Read(TensorDesc tensor, long offset, Span<byte> dst) => throw new NotSupportedException();
    public TensorLocation Locate(TensorDesc tensor) => new(Path, 0);
    public void Dispose() { }

    private static List<TensorDesc> Build(ModelConfig c, GgmlType type, bool tied)
    {
        var list = new List<TensorDesc>();
        void M(string name, long cols, long rows) => list.Add(new(name, [cols, rows], type, GgmlTypes.RowBytes(type, cols) * rows));
        void V(string name, long n) => list.Add(new(name, [n], GgmlType.F32, 4 * n));
        M("token_embd.weight", c.Dim, c.Vocab);
        if (!tied) M("output.weight", c.Dim, c.Vocab);
        V("output_norm.weight", c.Dim);
        for (int l = 0; l < c.Layers; l++)
        {
            V($"blk.{l}.attn_norm.weight", c.Dim);
            M($"blk.{l}.attn_q.weight", c.Dim, c.QDim);
            M($"blk.{l}.attn_k.weight", c.Dim, c.KvDim);
            M($"blk.{l}.attn_v.weight", c.Dim, c.KvDim);
            M($"blk.{l}.attn_output.weight", c.QDim, c.Dim);
            V($"blk.{l}.ffn_norm.weight", c.Dim);
            M($"blk.{l}.ffn_gate.weight", c.Dim, c.FfnDim);
            M($"blk.{l}.ffn_up.weight", c.Dim, c.FfnDim);
            M($"blk.{l}.ffn_down.weight", c.FfnDim, c.Dim);
        }
        return list;
    }
}

public class PlannerTests
{
    private static ModelConfig Config(int dim, int layers, int heads, int kvHeads, int ffn, int vocab) => new()
    {
        Architecture = "llama", Dim = dim, Layers = layers, Heads = heads, KvHeads = kvHeads, HeadDim = dim / heads,
        FfnDim = ffn, Vocab = vocab, RopeDims = dim / heads,
    };

    public sealed record Case(int DimIndex, int Layers, int KvDivisor, int FfnMultiple, int Vocab, GgmlType Type, bool Tied, long BudgetMiB, int Context);

    private static readonly Gen<Case> Cases =
        from dim in Gen.Choose(0, 3)
        from layers in Gen.Choose(1, 40)
        from kv in Gen.Elements(1, 2, 4, 8)
        from ffn in Gen.Choose(2, 4)
        from vocab in Gen.Elements(8192, 32000, 128256)
        from type in Gen.Elements(GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.F16)
        from tied in Gen.Elements(true, false)
        from budget in Gen.Choose(64, 16384)
        from ctx in Gen.Elements(256, 2048, 8192)
        select new Case(dim, layers, kv, ffn, vocab, type, tied, budget, ctx);

    [Fact]
    public void PlansStayWithinTheBudgetOrSayWhatWouldFit()
    {
        int[] dims = [512, 2048, 4096, 5120];
        int fitted = 0, refused = 0, streamed = 0;
        Prop.ForAll(Arb.From(Cases), k =>
        {
            int dim = dims[k.DimIndex];
            var c = Config(dim, k.Layers, 32, Math.Max(1, 32 / k.KvDivisor), dim * k.FfnMultiple / 256 * 256, k.Vocab);
            using var src = new ShapeOnlySource(c, k.Type, k.Tied);
            long budget = k.BudgetMiB << 20;
            var options = new Planner.Options { BudgetBytes = budget, Context = k.Context, RuntimeBytes = 60L << 20 };
            MemoryPlan plan;
            try
            {
                plan = Planner.Plan(src, options);
            }
            catch (FitLMException e)
            {
                // Refused: the message names a budget that works, and that budget does.
                var m = System.Text.RegularExpressions.Regex.Match(e.Message, @"--memory (\d+)MiB");
                Assert.True(m.Success, e.Message);
                long minimum = long.Parse(m.Groups[1].Value) << 20;
                Assert.True(minimum > budget, $"refused {budget} but says {minimum} would do");
                var retry = Planner.Plan(src, options with { BudgetBytes = minimum });
                Assert.True(retry.TotalBytes <= minimum);
                refused++;
                return;
            }
            Assert.True(plan.TotalBytes <= budget, $"plan holds {plan.TotalBytes} bytes of a {budget} budget");
            Assert.Equal(src.Tensors.Count, plan.Tensors.Count);
            Assert.Equal(src.Tensors.Sum(t => t.ByteSize), plan.ResidentWeightBytes + plan.StreamedWeightBytes);
            // Streaming only when everything does not fit.
            long everything = plan.RuntimeBytes + plan.KvBytes + plan.ScratchBytes + src.Tensors.Sum(t => t.ByteSize);
            Assert.Equal(everything > budget, plan.Streams);
            if (plan.Streams) streamed++;
            fitted++;
        }).Check(FsCheck.Config.QuickThrowOnFailure.WithMaxTest(500).WithQuietOnSuccess(true));
        Assert.True(fitted > 0 && refused > 0 && streamed > 0, $"cases should cover every outcome: {fitted} fitted ({streamed} streaming), {refused} refused");
    }

    [Fact]
    public void AmpleBudgetKeepsEverythingResident()
    {
        using var src = new ShapeOnlySource(Config(2048, 16, 32, 4, 5632, 32000), GgmlType.Q8_0, false);
        var plan = Planner.Plan(src, new Planner.Options { BudgetBytes = 4L << 30, Context = 2048, RuntimeBytes = 60L << 20 });
        Assert.False(plan.Streams);
        Assert.Equal(0, plan.StreamedBytesPerToken);
    }

    [Fact]
    public void TightBudgetStreamsLayersAndKeepsWhatFits()
    {
        using var src = new ShapeOnlySource(Config(2048, 16, 32, 4, 5632, 32000), GgmlType.Q8_0, false);
        var plan = Planner.Plan(src, new Planner.Options { BudgetBytes = 320L << 20, Context = 512, RuntimeBytes = 50L << 20 });
        Assert.True(plan.Streams);
        Assert.True(plan.TotalBytes <= 320L << 20);
        Assert.Equal(Placement.Streamed, plan.PlacementOf("token_embd.weight")); // one row per token: streamed first
        Assert.True(plan.StreamedBytesPerToken < plan.StreamedWeightBytes);
        // Naive streams everything regardless.
        var naive = Planner.Plan(src, new Planner.Options { BudgetBytes = 4L << 30, Context = 512, RuntimeBytes = 50L << 20, Mode = StreamMode.Naive, StreamEverything = true });
        Assert.All(naive.Tensors.Where(t => t.Tensor.Shape.Length == 2), t => Assert.Equal(Placement.Streamed, t.Placement));
    }
}
