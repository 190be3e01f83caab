using FitLM.Evaluation;
using FitLM.Model;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>
/// Perplexity of the quantized GGUF files against the BF16 Hugging Face weights on the same chunks: close
/// for Q8_0, and worse as the bits go down — which a wrong block layout or a broken kernel would upset.
/// (The 100-chunk comparison with llama.cpp's own numbers is in docs/perplexity.md.)
/// </summary>
public class PerplexityTests(ITestOutputHelper output)
{
    private const int Chunks = 3;

    private static double Ppl(string model, int[] tokens)
    {
        using var lm = LanguageModel.Load(model, 512, 512);
        return Perplexity.Run(lm, tokens, 512, Chunks).Ppl;
    }

    [Fact]
    public void QuantizedFilesTrackTheFullPrecisionModel()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent"); return; }
        string hf = Path.Combine(shared, "models", "pycoder-29m");
        string text = File.ReadAllText(Path.Combine(shared, "data", "pycode-dev.txt"))[..60_000];
        int[] tokens;
        using (var src = ModelSource.Open(hf)) tokens = src.Tokenizer.Encode(text);
        double reference = Ppl(hf, tokens);
        output.WriteLine($"hf bf16: {reference:F4}");
        var ppl = new Dictionary<string, double>();
        foreach (var q in new[] { "q8_0", "q4_k_m", "q4_0", "q3_k_m", "q2_k" })
        {
            ppl[q] = Ppl(Path.Combine(shared, "models", "pycoder-29m-gguf", $"pycoder-29m-{q}.gguf"), tokens);
            output.WriteLine($"{q}: {ppl[q]:F4} ({100 * (ppl[q] / reference - 1):+0.00;-0.00}%)");
        }
        Assert.InRange(reference, 2.0, 12.0);
        Assert.InRange(ppl["q8_0"] / reference, 0.995, 1.005);
        Assert.InRange(ppl["q4_k_m"] / reference, 0.99, 1.05);
        Assert.InRange(ppl["q4_0"] / reference, 0.99, 1.06);
        Assert.InRange(ppl["q3_k_m"] / reference, 1.0, 1.12);
        Assert.InRange(ppl["q2_k"] / reference, 1.05, 1.35);
        Assert.True(ppl["q2_k"] > ppl["q3_k_m"] && ppl["q3_k_m"] > ppl["q8_0"], "fewer bits should not give a better model");
    }
}
