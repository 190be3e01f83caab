using System.Text;
using System.Text.Json;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;
using FitLM.Conversion;

namespace FitLM.Tests.Converters;

/// <summary>
/// Tiny random models of each architecture written as Hugging Face folders, converted, and run both ways:
/// the GGUF (llama.cpp layout: permuted Q/K for llama/mistral, NEOX for qwen) must give the logits the HF
/// folder gives. Covers what pycoder does not: Q/K/V biases (permuted for llama), Qwen3's Q/K norms and a
/// head_dim that is not hidden/heads, tied embeddings, BF16 and F32 safetensors, linear RoPE scaling.
/// </summary>
public sealed class SyntheticConvertTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-synthetic-convert-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private const int Vocab = 8192, Dim = 64, Heads = 4, KvHeads = 2, Ffn = 96, Layers = 2;

    /// <summary>Writes a safetensors file of (HF name, HF shape, values) in the given dtype.</summary>
    private static void WriteSafetensors(string path, IReadOnlyList<(string name, long[] shape, float[] data)> tensors, string dtype)
    {
        int esz = dtype == "F32" ? 4 : 2;
        var header = new Dictionary<string, object>();
        long offset = 0;
        foreach (var (name, shape, data) in tensors)
        {
            header[name] = new { dtype, shape, data_offsets = new[] { offset, offset + (long)data.Length * esz } };
            offset += (long)data.Length * esz;
        }
        var json = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(header));
        int pad = (8 - json.Length % 8) % 8;
        using var f = File.Create(path);
        f.Write(BitConverter.GetBytes((ulong)(json.Length + pad)));
        f.Write(json);
        for (int i = 0; i < pad; i++) f.WriteByte((byte)' ');
        foreach (var (_, _, data) in tensors)
        {
            var type = dtype switch { "F32" => GgmlType.F32, "F16" => GgmlType.F16, _ => GgmlType.BF16 };
            var bytes = new byte[GgmlTypes.RowBytes(type, data.Length)];
            Quantize.Row(type, data, bytes);
            f.Write(bytes);
        }
    }

    private string MakeModel(string shared, string modelType, string dtype, int headDim, bool bias, bool qkNorm, bool tied, object? ropeScaling)
    {
        string folder = Path.Combine(_dir, $"{modelType}-{dtype}-hd{headDim}");
        Directory.CreateDirectory(folder);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(shared, "models", "pycoder-29m", f), Path.Combine(folder, f));
        var config = new Dictionary<string, object>
        {
            ["model_type"] = modelType,
            ["hidden_size"] = Dim,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["head_dim"] = headDim,
            ["intermediate_size"] = Ffn,
            ["num_hidden_layers"] = Layers,
            ["vocab_size"] = Vocab,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 10000.0,
            ["max_position_embeddings"] = 512,
            ["tie_word_embeddings"] = tied,
            ["attention_bias"] = bias,
            ["hidden_act"] = "silu",
            ["bos_token_id"] = 0,
            ["eos_token_id"] = 1,
        };
        if (ropeScaling != null) config["rope_scaling"] = ropeScaling;
        File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config));

        var rng = new Random(modelType.GetHashCode(StringComparison.Ordinal) & 0xffff);
        float[] Rand(long n, float scale, float mean = 0) =>
            Enumerable.Range(0, (int)n).Select(_ => mean + scale * (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var t = new List<(string, long[], float[])>();
        void Add(string name, float scale, float mean, params long[] shape) => t.Add((name, shape, Rand(shape.Aggregate(1L, (a, b) => a * b), scale, mean)));
        Add("model.embed_tokens.weight", 0.5f, 0, Vocab, Dim);
        Add("model.norm.weight", 0.2f, 1, Dim);
        if (!tied) Add("lm_head.weight", 0.2f, 0, Vocab, Dim);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", 0.2f, 1, Dim);
            Add(p + "post_attention_layernorm.weight", 0.2f, 1, Dim);
            Add(p + "self_attn.q_proj.weight", 0.3f, 0, Heads * headDim, Dim);
            Add(p + "self_attn.k_proj.weight", 0.3f, 0, KvHeads * headDim, Dim);
            Add(p + "self_attn.v_proj.weight", 0.3f, 0, KvHeads * headDim, Dim);
            Add(p + "self_attn.o_proj.weight", 0.2f, 0, Dim, Heads * headDim);
            if (bias)
            {
                Add(p + "self_attn.q_proj.bias", 0.5f, 0, Heads * headDim);
                Add(p + "self_attn.k_proj.bias", 0.5f, 0, KvHeads * headDim);
                Add(p + "self_attn.v_proj.bias", 0.5f, 0, KvHeads * headDim);
            }
            if (qkNorm)
            {
                Add(p + "self_attn.q_norm.weight", 0.3f, 1, headDim);
                Add(p + "self_attn.k_norm.weight", 0.3f, 1, headDim);
            }
            Add(p + "mlp.gate_proj.weight", 0.2f, 0, Ffn, Dim);
            Add(p + "mlp.up_proj.weight", 0.2f, 0, Ffn, Dim);
            Add(p + "mlp.down_proj.weight", 0.2f, 0, Dim, Ffn);
        }
        // Two shards, as transformers writes larger models.
        int half = t.Count / 2;
        WriteSafetensors(Path.Combine(folder, "model-00001-of-00002.safetensors"), t[..half], dtype);
        WriteSafetensors(Path.Combine(folder, "model-00002-of-00002.safetensors"), t[half..], dtype);
        var map = t.Select((x, i) => (x.Item1, i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors"))
            .ToDictionary(x => x.Item1, x => x.Item2);
        File.WriteAllText(Path.Combine(folder, "model.safetensors.index.json"), JsonSerializer.Serialize(new { metadata = new { }, weight_map = map }));
        return folder;
    }

    private static float[] Logits(string path, int[] ids)
    {
        using var lm = LanguageModel.Load(path, 64);
        var logits = new float[ids.Length * lm.Config.Vocab];
        lm.Transformer.Forward(ids, 0, logits, 0);
        return logits;
    }

    [Theory]
    // model type, dtype, head_dim, bias, qk norm, tied, linear rope factor; expected GGUF architecture
    [InlineData("llama", "F32", 16, true, false, false, 2.0, "llama")]
    [InlineData("mistral", "BF16", 16, false, false, true, 0.0, "llama")]
    [InlineData("qwen2", "F32", 16, true, false, true, 0.0, "qwen2")]
    [InlineData("qwen3", "BF16", 32, false, true, false, 0.0, "qwen3")]
    public void GgufGivesTheLogitsOfTheHuggingFaceFolder(string modelType, string dtype, int headDim, bool bias, bool qkNorm, bool tied,
        double linearRope, string ggufArch)
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent: no tokenizer.json to build models with"); return; }
        object? scaling = linearRope > 0 ? new Dictionary<string, object> { ["rope_type"] = "linear", ["factor"] = linearRope } : null;
        string folder = MakeModel(shared, modelType, dtype, headDim, bias, qkNorm, tied, scaling);
        string gguf = Path.Combine(_dir, $"{modelType}.gguf");
        var result = HfToGgufConverter.Convert(folder, gguf, GgmlType.F32);
        output.WriteLine($"{modelType}: {result.Tensors} tensors, {result.Bytes:N0} bytes, {result.Seconds:F2} s");

        using (var f = GgufFile.Open(gguf))
        {
            Assert.Equal(ggufArch, f.GetString("general.architecture"));
            Assert.Equal(headDim != Dim / Heads, f.Find($"{ggufArch}.attention.key_length") != null);
            if (headDim != Dim / Heads) Assert.Equal(headDim, f.GetInt($"{ggufArch}.attention.key_length"));
            Assert.Equal(!tied, f.FindTensor("output.weight") != null);
            Assert.Equal(bias, f.FindTensor("blk.0.attn_q.bias") != null);
            Assert.Equal(qkNorm, f.FindTensor("blk.1.attn_k_norm.weight") != null);
            if (linearRope > 0)
            {
                Assert.Equal("linear", f.GetString($"{ggufArch}.rope.scaling.type"));
                Assert.Equal(linearRope, f.GetDouble($"{ggufArch}.rope.scaling.factor", 0), 6);
            }
            foreach (var t in f.Tensors) Assert.Equal(GgmlType.F32, t.Type);
        }
        using (var src = GgufSource.Open(gguf))
            Assert.Equal(ggufArch is "llama" ? RopeStyle.Interleaved : RopeStyle.Neox, src.Config.RopeStyle);

        int[] ids = [0, 17, 4000, 123, 8191, 5, 77, 901, 3, 2500, 42, 42, 7000, 1];
        var expected = Logits(folder, ids);
        var actual = Logits(gguf, ids);
        double maxAbs = 0, scale = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            maxAbs = Math.Max(maxAbs, Math.Abs(expected[i] - actual[i]));
            scale = Math.Max(scale, Math.Abs(expected[i]));
        }
        output.WriteLine($"{modelType}: max |logit(gguf) - logit(hf)| = {maxAbs:E3} (logits up to {scale:F2})");
        Assert.True(maxAbs <= 1e-4 * scale + 1e-5, $"{modelType}: the GGUF's logits differ from the HF folder's by {maxAbs}");
    }

    [Fact]
    public void Llama3RopeFactorsAreThoseOfTheConverter()
    {
        // Llama 3.1: theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192.
        var f = HfToGgufConverter.Llama3RopeFactors(500000f, 128, new Llama3RopeScaling(8f, 1f, 4f, 8192));
        Assert.Equal(64, f.Length);
        Assert.Equal(1f, f[0]);
        Assert.Equal(8f, f[^1]);
        for (int i = 1; i < f.Length; i++) Assert.True(f[i] >= f[i - 1], "factors grow with the wavelength");
        // A smoothed one, computed in float64 from the formula: within float32 rounding.
        int k = Array.FindIndex(f, x => x > 1f && x < 8f);
        Assert.True(k > 0);
        double freq = 1.0 / Math.Pow(500000.0, 2.0 * k / 128), wavelen = 2 * Math.PI / freq;
        double smooth = (8192 / wavelen - 1) / (4 - 1);
        Assert.Equal(1 / ((1 - smooth) / 8 + smooth), f[k], 4);
    }
}
