using Xunit;
using System.Text.Json;
using FitLM.Adapters;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Tests.Training;

/// <summary>../shared/finetune: PyTorch's LoRA loss, gradients and AdamW losses on pycoder-29m (torch-lora-reference.py).</summary>
internal sealed class TorchReference
{
    public required string ModelFolder { get; init; }
    public required int[][] Batch { get; init; }
    public required JsonElement Json { get; init; }
    public double Loss => Json.GetProperty("loss_mean_next_token_ce").GetDouble();
    public double LossWithoutLora => Json.GetProperty("loss_without_lora").GetDouble();

    public static TorchReference? Load()
    {
        if (TestPaths.Shared is not { } shared) return null;
        string dir = Path.Combine(shared, "finetune");
        if (!File.Exists(Path.Combine(dir, "lora-reference.json"))) return null;
        return new TorchReference
        {
            ModelFolder = Path.Combine(shared, "models", "pycoder-29m"),
            Batch = JsonSerializer.Deserialize<int[][]>(File.ReadAllText(Path.Combine(dir, "lora-batch.json")))!,
            Json = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "lora-reference.json"))).RootElement,
        };
    }

    /// <summary>The PEFT name of a GGUF matrix name's A or B ("blk.3.attn_q.weight" → "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight").</summary>
    public static string PeftName(string gguf, char ab)
    {
        var parts = gguf.Split('.');
        string module = parts[2] switch
        {
            "attn_q" => "self_attn.q_proj", "attn_k" => "self_attn.k_proj", "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj", "ffn_gate" => "mlp.gate_proj", "ffn_up" => "mlp.up_proj", _ => "mlp.down_proj",
        };
        return $"base_model.model.model.layers.{parts[1]}.{module}.lora_{ab}.weight";
    }

    /// <summary>The reference's initial adapter (F32 safetensors in Hugging Face row order, as the folder model loads).</summary>
    public static LoraAdapter InitialAdapter(FitLM.Model.ModelConfig config)
    {
        var adapter = LoraAdapter.Create(config, LoraAdapter.AllTargets, 8, 16f, 0);
        using var f = SafetensorsFile.Open(Path.Combine(TestPaths.Shared!, "finetune", "adapter_model.safetensors"));
        foreach (var p in adapter.Pairs)
        {
            Read(f, PeftName(p.Name, 'A'), p.A);
            Read(f, PeftName(p.Name, 'B'), p.B);
        }
        return adapter;
    }

    private static void Read(SafetensorsFile f, string name, float[] dst)
    {
        var t = f.Tensors[name];
        Assert.Equal(GgmlType.F32, t.Type);
        Assert.Equal(4L * dst.Length, t.ByteSize);
        f.ReadTensorBytes(t, 0, System.Runtime.InteropServices.MemoryMarshal.AsBytes(dst.AsSpan()));
    }
}
