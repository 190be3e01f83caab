using FitLM.Adapters;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Adapters;

/// <summary>PEFT folders and GGUF LoRA files: written and read back bit for bit, q/k rows in each format's order.</summary>
public sealed class AdapterFileTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-lora-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void PeftFolderRoundTripsOnAPermutedGgufModel()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        Assert.True(QkRowOrder.IsPermuted(src));
        var adapter = AdapterTestData.Random(src.Config, LoraAdapter.AllTargets);
        string dir = Path.Combine(_dir, "peft");
        PeftAdapterFolder.Write(adapter, dir, src);
        AdapterTestData.AssertSame(adapter, PeftAdapterFolder.Read(dir, src));
        Assert.Equal(2, Directory.GetFiles(dir).Length); // adapter_config.json, adapter_model.safetensors, no temp files

        // On disk, PEFT's names and rotate-half q rows: the loaded model's interleaved rows converted back.
        using var st = SafetensorsFile.Open(Path.Combine(dir, PeftAdapterFolder.WeightsFile));
        Assert.Equal(2 * adapter.Pairs.Count, st.Tensors.Count);
        var q = adapter.Find("blk.1.attn_q.weight")!;
        var info = st.Tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"];
        Assert.Equal(new long[] { q.Out, q.Rank }, info.Shape);
        var raw = ReadFloats(st, info);
        Assert.Equal(QkRowOrder.Convert(q.B, q.Rank, src.Config.Heads, toInterleaved: false), raw);
        Assert.NotEqual(q.B, raw);
        var v = adapter.Find("blk.1.attn_v.weight")!;
        Assert.Equal(v.B, ReadFloats(st, st.Tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]));
        string config = File.ReadAllText(Path.Combine(dir, PeftAdapterFolder.ConfigFile));
        Assert.Contains("\"peft_type\": \"LORA\"", config);
        Assert.Contains("\"down_proj\"", config);
    }

    [Fact]
    public void GgufAdapterRoundTripsInLlamaCppLayout()
    {
        using var src = ModelSource.Open(TestPaths.DemoModel);
        var adapter = AdapterTestData.Random(src.Config, ["q", "k", "down"], rank: 3, alpha: 5);
        string path = Path.Combine(_dir, "adapter.gguf");
        GgufAdapterFile.Write(adapter, path, src);
        AdapterTestData.AssertSame(adapter, GgufAdapterFile.Read(path, src));
        AdapterTestData.AssertSame(adapter, LoraFile.Load(path, src)); // told apart from a PEFT folder by content

        using var f = GgufFile.Open(path);
        Assert.Equal("adapter", f.GetString("general.type"));
        Assert.Equal("lora", f.GetString("adapter.type"));
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(5.0, f.GetDouble("adapter.lora.alpha", 0));
        var q = adapter.Find("blk.0.attn_q.weight")!;
        var a = f.GetTensor("blk.0.attn_q.weight.lora_a");
        var b = f.GetTensor("blk.0.attn_q.weight.lora_b");
        Assert.Equal(new long[] { q.In, q.Rank }, a.Shape);  // ggml ne: [n_in, rank]
        Assert.Equal(new long[] { q.Rank, q.Out }, b.Shape); // ggml ne: [rank, n_out]
        Assert.Equal(GgmlType.F32, b.Type);
        // A llama GGUF model and its adapter share the interleaved order: B is stored as loaded.
        var bytes = new byte[b.ByteSize];
        f.ReadTensorBytes(b, 0, bytes);
        Assert.Equal(q.B, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray());
    }

    [Fact]
    public void ReferenceAdapterLoadsAndConvertsBetweenFormatsAndRowOrders()
    {
        if (AdapterTestData.ReferenceAdapter is not { } reference) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var hf = ModelSource.Open(AdapterTestData.HfFolder!);
        using var gguf = ModelSource.Open(AdapterTestData.Q8Gguf!);
        var forHf = PeftAdapterFolder.Read(reference, hf);
        var forGguf = PeftAdapterFolder.Read(reference, gguf);
        Assert.Equal(8, forHf.Rank);
        Assert.Equal(16f, forHf.Alpha);
        Assert.Equal(LoraAdapter.AllTargets, forHf.Targets);
        Assert.Equal(8 * 7, forHf.Pairs.Count);
        // The HF folder keeps PEFT's order; the llama GGUF file is interleaved, so q/k rows differ and v rows do not.
        var k = forGguf.Find("blk.2.attn_k.weight")!;
        Assert.Equal(QkRowOrder.Convert(forHf.Find("blk.2.attn_k.weight")!.B, 8, hf.Config.KvHeads, toInterleaved: true), k.B);
        Assert.Equal(forHf.Find("blk.2.attn_v.weight")!.B, forGguf.Find("blk.2.attn_v.weight")!.B);

        // Written as GGUF from the HF-loaded adapter, read for either model: the same as PEFT's for that model.
        string path = Path.Combine(_dir, "reference.gguf");
        GgufAdapterFile.Write(forHf, path, hf);
        AdapterTestData.AssertSame(forGguf, GgufAdapterFile.Read(path, gguf));
        AdapterTestData.AssertSame(forHf, GgufAdapterFile.Read(path, hf));
        // And back to PEFT from the GGUF-loaded one: the reference's own tensors.
        string peft = Path.Combine(_dir, "peft");
        PeftAdapterFolder.Write(forGguf, peft, gguf);
        using var original = SafetensorsFile.Open(Path.Combine(reference, PeftAdapterFolder.WeightsFile));
        using var again = SafetensorsFile.Open(Path.Combine(peft, PeftAdapterFolder.WeightsFile));
        Assert.Equal(original.Tensors.Keys.Order(), again.Tensors.Keys.Order());
        foreach (var name in original.Tensors.Keys)
            Assert.Equal(ReadFloats(original, original.Tensors[name]), ReadFloats(again, again.Tensors[name]));
    }

    [Fact]
    public void AdapterForAnotherModelIsRefusedNamingTheTensorAndShapes()
    {
        if (AdapterTestData.ReferenceAdapter is not { } reference) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var src = ModelSource.Open(AdapterTestData.Q8Gguf!);
        var other = AdapterTestData.Random(src.Config with { FfnDim = 1024 }, ["up"]);
        string dir = Path.Combine(_dir, "other");
        PeftAdapterFolder.Write(other, dir, src.Config, qkPermuted: true, "other");
        var e = Assert.Throws<FitLMException>(() => LoraFile.Load(dir, src));
        output.WriteLine(e.Message);
        Assert.Contains("blk.0.ffn_up.weight", e.Message);
        Assert.Contains("[1024 x 512]", e.Message);
        Assert.Contains("[1280 x 512]", e.Message);
        Assert.Contains("another model", e.Message);
    }

    private static float[] ReadFloats(SafetensorsFile f, SafetensorsTensorInfo t)
    {
        var bytes = new byte[t.ByteSize];
        f.ReadTensorBytes(t, 0, bytes);
        var result = new float[t.Elements];
        Dequantize.Row(t.Type, bytes, result);
        return result;
    }
}
