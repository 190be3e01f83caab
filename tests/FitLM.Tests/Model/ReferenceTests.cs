using System.Text.Json;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>
/// Numerics against Hugging Face transformers (float32 from the BF16 weights): reference.json beside each
/// model holds the prompt's ids, logits at every position and 64 greedy tokens.
/// </summary>
public class ReferenceTests(ITestOutputHelper output)
{
    public sealed record Reference(string PromptText, int[] PromptIds, float[][] First8, double[] L2, int[] Greedy)
    {
        public static Reference Load(string path)
        {
            var r = JsonDocument.Parse(File.ReadAllText(path)).RootElement;
            return new Reference(
                r.GetProperty("prompt_text").GetString()!,
                r.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                r.GetProperty("prompt_logits_first8_each_pos").EnumerateArray().Select(a => a.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray(),
                r.GetProperty("prompt_logits_l2_each_pos").EnumerateArray().Select(e => e.GetDouble()).ToArray(),
                r.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        }
    }

    /// <summary>Checks a loaded model against a reference: tokenizer ids, logits at every position, greedy ids.</summary>
    internal static void AssertMatchesReference(LanguageModel lm, Reference reference, ITestOutputHelper output)
    {
        Assert.Equal(reference.PromptIds, lm.Tokenizer.Encode(reference.PromptText));
        int v = lm.Config.Vocab, n = reference.PromptIds.Length;
        var logits = new float[n * v];
        lm.Transformer.Forward(reference.PromptIds, 0, logits, 0);
        double maxAbs = 0, maxRel = 0;
        for (int t = 0; t < n; t++)
        {
            for (int i = 0; i < 8; i++) maxAbs = Math.Max(maxAbs, Math.Abs(logits[t * v + i] - reference.First8[t][i]));
            double l2 = Math.Sqrt(logits.AsSpan(t * v, v).ToArray().Sum(x => (double)x * x));
            maxRel = Math.Max(maxRel, Math.Abs(l2 - reference.L2[t]) / reference.L2[t]);
        }
        output.WriteLine($"max |logit - ref| (first 8, all positions) = {maxAbs:E3}; max relative L2 error = {maxRel:E3}");
        Assert.True(maxAbs <= 2e-3, $"logits differ from transformers by {maxAbs}");
        Assert.True(maxRel <= 1e-4, $"logit L2 norms differ from transformers by {maxRel} relative");

        // Greedy continuation with the KV cache, one token at a time.
        var last = logits.AsSpan((n - 1) * v, v).ToArray();
        Assert.Equal(reference.Greedy, GreedyContinuation.Ids(lm.Transformer, last, n, reference.Greedy.Length));
    }

    [Theory]
    [InlineData("pycoder-29m")]
    [InlineData("pycoder-reglu-31m")]
    [InlineData("pycoder-moe")]
    public void HuggingFaceFolderMatchesTransformers(string name)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", name);
        using var lm = LanguageModel.Load(folder, 256);
        AssertMatchesReference(lm, Reference.Load(Path.Combine(folder, "reference.json")), output);
    }

    /// <summary>
    /// The trained mixture of experts (Qwen3-MoE, 32 experts, top-4) after `fitlm convert`: the GGUF still gives
    /// transformers' logits and greedy ids (its stacked expert tensors are the folder's per-expert ones).
    /// </summary>
    [Fact]
    public void ConvertedMixtureOfExpertsMatchesTransformers()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; nothing to compare"); return; }
        string folder = Path.Combine(shared, "models", "pycoder-moe");
        var dir = Directory.CreateTempSubdirectory("fitlm-moe-");
        try
        {
            string gguf = Path.Combine(dir.FullName, "pycoder-moe.f16.gguf");
            var r = Cli.CliRunner.Run("convert", "-m", folder, "-o", gguf, "--type", "f16");
            Assert.True(r.ExitCode == 0, r.StdErr);
            using var lm = LanguageModel.Load(gguf, 256);
            Assert.Equal(32, lm.Config.ExpertCount);
            Assert.Equal(4, lm.Config.ExpertsUsed);
            AssertMatchesReference(lm, Reference.Load(Path.Combine(folder, "reference.json")), output);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
