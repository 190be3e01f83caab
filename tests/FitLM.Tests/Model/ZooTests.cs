using System.Text.Json;
using FitLM.Model;
using FitLM.Model.Architectures;
using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Model;

/// <summary>
/// ../shared/models/zoo: one tiny random-weight Hugging Face model per architecture people run, with
/// transformers' logits. Every family FitLM describes must reproduce them, directly and after `fitlm convert`;
/// a family it does not describe must be refused in one line that names it.
/// </summary>
public sealed class ZooTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-zoo-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static string? Zoo => TestPaths.Shared is { } s && Directory.Exists(Path.Combine(s, "models", "zoo")) ? Path.Combine(s, "models", "zoo") : null;

    /// <summary>The registered family a zoo folder's config.json names, or null.</summary>
    private static ArchitectureFamily? FamilyOf(string folder)
    {
        var c = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "config.json"))).RootElement;
        var archs = c.TryGetProperty("architectures", out var a) ? a.EnumerateArray().Select(e => e.GetString()!).ToList() : [];
        return ArchitectureRegistry.FindHuggingFace(archs, c.TryGetProperty("model_type", out var t) ? t.GetString() : null);
    }

    private sealed record ZooReference(int[] PromptIds, (int Id, float Logit)[][] Top5, int[] Greedy)
    {
        public static ZooReference Load(string folder)
        {
            var r = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "reference.json"))).RootElement;
            return new ZooReference(
                r.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                r.GetProperty("logits_top5_each_pos").EnumerateArray()
                    .Select(pos => pos.EnumerateArray().Select(p => (p[0].GetInt32(), p[1].GetSingle())).ToArray()).ToArray(),
                r.GetProperty("greedy_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        }
    }

    /// <summary>transformers' top-5 logits at every prompt position within 2e-3, and its greedy ids (KV cache, one token at a time).</summary>
    private void AssertReproduces(string model, string folder)
    {
        var reference = ZooReference.Load(folder);
        using var lm = LanguageModel.Load(model, 128);
        int v = lm.Config.Vocab, n = reference.PromptIds.Length;
        var logits = new float[n * v];
        lm.Transformer.Forward(reference.PromptIds, 0, logits, 0);
        double maxAbs = 0;
        for (int t = 0; t < n; t++)
            foreach (var (id, logit) in reference.Top5[t])
                maxAbs = Math.Max(maxAbs, Math.Abs(logits[t * v + id] - logit));
        output.WriteLine($"{Path.GetFileName(model)}: max |logit - transformers| over the top 5 of {n} positions = {maxAbs:E3}");
        Assert.True(maxAbs <= 2e-3, $"{model}: top-5 logits differ from transformers by {maxAbs}");

        var last = logits.AsSpan((n - 1) * v, v).ToArray();
        Assert.Equal(reference.Greedy, GreedyContinuation.Ids(lm.Transformer, last, n, reference.Greedy.Length));
    }

    public static TheoryData<string> Supported => new()
    {
        "tiny-llama3", "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3", "tiny-gemma2", "tiny-gemma3",
        "tiny-mixtral", "tiny-qwen2moe", "tiny-qwen3moe", "tiny-olmoe",
    };

    [Theory]
    [MemberData(nameof(Supported))]
    public void SupportedFamiliesReproduceTransformers(string name)
    {
        if (Zoo is not { } zoo) { output.WriteLine("../shared/models/zoo is absent"); return; }
        string folder = Path.Combine(zoo, name);
        AssertReproduces(folder, folder);
    }

    /// <summary>A family no description covers (a zoo folder's config relabelled) is refused in one line that names it.</summary>
    [Theory]
    [InlineData("FalconForCausalLM", "falcon")]
    [InlineData("DeepseekV3ForCausalLM", "deepseek_v3")]
    public void OtherFamiliesAreRefusedInOneLineThatNamesThem(string architecture, string modelType)
    {
        if (Zoo is not { } zoo) { output.WriteLine("../shared/models/zoo is absent"); return; }
        string folder = Path.Combine(_dir, modelType);
        Directory.CreateDirectory(folder);
        foreach (var f in Directory.GetFiles(Path.Combine(zoo, "tiny-llama3"))) File.Copy(f, Path.Combine(folder, Path.GetFileName(f)));
        string config = File.ReadAllText(Path.Combine(folder, "config.json"))
            .Replace("\"LlamaForCausalLM\"", $"\"{architecture}\"").Replace("\"model_type\": \"llama\"", $"\"model_type\": \"{modelType}\"");
        File.WriteAllText(Path.Combine(folder, "config.json"), config);
        Assert.Null(FamilyOf(folder));
        var r = CliRunner.Run("info", "-m", folder);
        Assert.NotEqual(0, r.ExitCode);
        string line = r.StdErr.Trim();
        Assert.DoesNotContain('\n', line);
        Assert.StartsWith("error: ", line);
        Assert.EndsWith($"unsupported architecture '{modelType}' (supported: {ArchitectureRegistry.SupportedNames})", line);
    }

    public static TheoryData<string> Families => new(ArchitectureRegistry.All.Select(f => f.Name));

    /// <summary>
    /// HF folder → `fitlm convert` → GGUF: the GGUF loads with the folder's configuration, changed only as the
    /// family's description says the converter changes it (its GGUF name, its GGUF RoPE layout, Llama 3 RoPE
    /// scaling moved into rope_freqs.weight), and still reproduces transformers.
    /// </summary>
    [Theory]
    [MemberData(nameof(Families))]
    public void EveryFamilyRoundTripsThroughConvert(string name)
    {
        if (Zoo is not { } zoo) { output.WriteLine("../shared/models/zoo is absent"); return; }
        var family = ArchitectureRegistry.Find(name)!;
        var folders = Directory.GetDirectories(zoo).Order().Where(d => FamilyOf(d) == family).ToList();
        Assert.True(folders.Count > 0, $"no model of family '{name}' in {zoo}: add one to test it");
        foreach (var folder in folders)
        {
            string gguf = Path.Combine(_dir, Path.GetFileName(folder) + ".gguf");
            var r = CliRunner.Run("convert", "-m", folder, "-o", gguf, "--type", "f32");
            Assert.True(r.ExitCode == 0, r.StdErr);
            output.WriteLine(r.StdOut.Trim());

            ModelConfig hf;
            using (var src = HuggingFaceSource.Open(folder)) hf = src.Config;
            using var converted = GgufSource.Open(gguf);
            var written = ArchitectureRegistry.GetGguf(family.GgufNameWritten, gguf);
            // Gemma's norms are written as 1 + w, so the GGUF's need no offset.
            var expected = hf with { Architecture = written.Name, RopeStyle = written.GgufRopeStyle, RopeLlama3 = null, NormWeightOffset = 0 };
            Assert.Equal(expected, converted.Config);
            Assert.Equal(hf.RopeLlama3 != null, converted.Find("rope_freqs.weight") != null);
            Assert.Equal(family.GgufNameWritten, converted.File.GetString("general.architecture"));
            AssertReproduces(gguf, folder);
        }
    }
}
