using FitLM.Adapters;
using FitLM.Model;

namespace FitLM.Tests.Adapters;

/// <summary>Models and adapters the adapter tests share.</summary>
internal static class AdapterTestData
{
    public static string? HfFolder => TestPaths.Shared is { } s ? Path.Combine(s, "models", "pycoder-29m") : null;
    public static string? Q8Gguf => TestPaths.Shared is { } s ? Path.Combine(s, "models", "pycoder-29m-gguf", "pycoder-29m-q8_0.gguf") : null;
    /// <summary>The PyTorch reference's PEFT adapter for pycoder-29m (rank 8, alpha 16, all seven projections, B non-zero).</summary>
    public static string? ReferenceAdapter => TestPaths.Shared is { } s ? Path.Combine(s, "finetune") : null;
    public static string? DevText => TestPaths.Shared is { } s ? Path.Combine(s, "data", "pycode-dev.txt") : null;

    /// <summary>An adapter as PEFT initializes one, with B random too so that it changes the output.</summary>
    public static LoraAdapter Random(ModelConfig config, IReadOnlyList<string> targets, int rank = 4, float alpha = 8, int seed = 7)
    {
        var adapter = LoraAdapter.Create(config, targets, rank, alpha, seed);
        var rng = new Random(seed + 1);
        foreach (var p in adapter.Pairs)
            for (int i = 0; i < p.B.Length; i++) p.B[i] = (float)(rng.NextDouble() - 0.5) * 0.05f;
        return adapter;
    }

    public static void AssertSame(LoraAdapter expected, LoraAdapter actual)
    {
        Xunit.Assert.Equal(expected.Rank, actual.Rank);
        Xunit.Assert.Equal(expected.Alpha, actual.Alpha);
        Xunit.Assert.Equal(expected.Targets, actual.Targets);
        Xunit.Assert.Equal(expected.Pairs.Select(p => p.Name), actual.Pairs.Select(p => p.Name));
        foreach (var (e, a) in expected.Pairs.Zip(actual.Pairs))
        {
            Xunit.Assert.Equal((e.Out, e.In), (a.Out, a.In));
            Xunit.Assert.Equal(e.A, a.A);
            Xunit.Assert.Equal(e.B, a.B);
        }
    }
}
