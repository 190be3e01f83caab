using System.Runtime.InteropServices;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Adapters;

/// <summary>
/// A LoRA adapter in the GGUF layout of llama.cpp's convert_lora_to_gguf.py, which llama.cpp's --lora loads
/// (src/llama-adapter.cpp): metadata general.architecture (the base model's), general.type = "adapter",
/// adapter.type = "lora", adapter.lora.alpha (f32); per adapted matrix "&lt;base name&gt;.lora_a" with ggml shape
/// [In, Rank] (torch's A [Rank × In]) and "&lt;base name&gt;.lora_b" with ggml shape [Rank, Out] (B [Out × Rank]).
/// The converter permutes lora_b's q/k rows as it does the base weights, so a llama-family adapter is in the
/// interleaved order of the family's GGUF files.
/// </summary>
public static class GgufAdapterFile
{
    /// <summary>Reads the adapter at <paramref name="path"/> for the model <paramref name="source"/>: shapes checked, B in the model's row order.</summary>
    public static LoraAdapter Read(string path, IModelSource source, CancellationToken ct = default)
    {
        var config = source.Config;
        using var file = GgufFile.Open(path);
        string type = file.Find("general.type")?.AsString() ?? "model";
        if (type != "adapter") throw new FitLMException($"{path}: a model, not a LoRA adapter (general.type is '{type}'); give the adapter to --lora and the model to -m");
        string kind = file.Find("adapter.type")?.AsString() ?? "(none)";
        if (kind != "lora") throw new FitLMException($"{path}: adapter.type '{kind}' is not supported (only LoRA adapters are read)");
        string arch = file.Find("general.architecture")?.AsString() ?? throw new FitLMException($"{path}: metadata 'general.architecture' is missing");
        if (!config.Family.GgufNames.Contains(arch))
            throw new FitLMException($"{path}: the adapter is for a {arch} model and {source.Path} is {config.Architecture}; the adapter was made for another model");

        var a = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        var b = new Dictionary<string, GgufTensorInfo>(StringComparer.Ordinal);
        foreach (var t in file.Tensors)
        {
            bool isA = t.Name.EndsWith(".lora_a", StringComparison.Ordinal), isB = t.Name.EndsWith(".lora_b", StringComparison.Ordinal);
            if (!isA && !isB) throw new FitLMException($"{path}: tensor '{t.Name}' is not a LoRA matrix (.lora_a or .lora_b); norms and embeddings in adapters are not supported");
            string name = t.Name[..^".lora_a".Length];
            if (PeftAdapterFolder.ShortTarget(name) == null)
                throw new FitLMException($"{path}: tensor '{t.Name}' adapts '{name}'; only the attention and FFN projections (q,k,v,o,gate,up,down) can be adapted");
            if (t.Shape.Length != 2) throw new FitLMException($"{path}: tensor '{t.Name}' has {t.Shape.Length} dimensions, a LoRA matrix has 2");
            if (!GgmlTypes.IsSupported(t.Type)) throw new FitLMException($"{path}: tensor '{t.Name}' has type {t.Type}, which FitLM cannot read");
            if (!(isA ? a : b).TryAdd(name, t)) throw new FitLMException($"{path}: two tensors named '{t.Name}'");
        }
        if (a.Count == 0) throw new FitLMException($"{path}: no LoRA tensors");
        int rank = -1;
        var pairs = new List<LoraPair>();
        foreach (var (name, ta) in a)
        {
            if (!b.TryGetValue(name, out var tb)) throw new FitLMException($"{path}: '{ta.Name}' has no .lora_b beside it");
            int r = (int)ta.Shape[1];
            if (tb.Shape[0] != r) throw new FitLMException($"{path}: '{ta.Name}' has rank {r} and its lora_b {tb.Shape[0]}");
            if (rank >= 0 && r != rank) throw new FitLMException($"{path}: matrices of rank {rank} and {r}; one rank for all is supported");
            rank = r;
            var pair = new LoraPair(name, r, (int)ta.Shape[0], (int)tb.Shape[1]);
            ReadFloats(file, ta, pair.A);
            ReadFloats(file, tb, pair.B);
            pairs.Add(pair);
            ct.ThrowIfCancellationRequested();
        }
        foreach (var name in b.Keys)
            if (!a.ContainsKey(name)) throw new FitLMException($"{path}: '{b[name].Name}' has no .lora_a beside it");
        // llama.cpp: an adapter without alpha (0) is applied at scale 1, i.e. alpha = rank.
        float alpha = (float)file.GetDouble("adapter.lora.alpha", 0);
        if (!(alpha > 0)) alpha = rank;
        var adapter = PeftAdapterFolder.Assemble(rank, alpha, pairs);
        LoraFile.CheckAgainst(adapter, source, path);
        bool fileInterleaved = config.Family.ConverterPermutesQk, modelInterleaved = QkRowOrder.IsPermuted(source);
        foreach (var p in adapter.Pairs)
            QkRowOrder.Reorder(p, config, fileInterleaved, modelInterleaved).CopyTo(p.B, 0);
        return adapter;
    }

    /// <summary>
    /// Writes <paramref name="adapter"/> (rows in the order the model <paramref name="source"/> is loaded in) to
    /// <paramref name="path"/> as convert_lora_to_gguf does, F32, under a temporary name renamed when complete.
    /// </summary>
    public static void Write(LoraAdapter adapter, string path, IModelSource source, CancellationToken ct = default)
    {
        string arch = source is GgufSource g ? g.File.GetString("general.architecture") : source.Config.Family.GgufNameWritten;
        Write(adapter, path, source.Config, QkRowOrder.IsPermuted(source), arch, ct);
    }

    /// <summary>As <see cref="Write(LoraAdapter, string, IModelSource, CancellationToken)"/>, for a model of <paramref name="config"/> whose q/k rows are <paramref name="qkPermuted"/>; <paramref name="architecture"/> is the base GGUF's general.architecture.</summary>
    public static void Write(LoraAdapter adapter, string path, ModelConfig config, bool qkPermuted, string architecture, CancellationToken ct = default)
    {
        using var w = new GgufWriter(path, GgufWriter.DefaultAlignment, ct);
        w.AddString("general.architecture", architecture);
        w.AddString("general.type", "adapter");
        w.AddString("adapter.type", "lora");
        w.AddFloat32("adapter.lora.alpha", adapter.Alpha);
        w.AddUInt32("general.file_type", 0); // LLAMA_FTYPE_ALL_F32, as the converter's --outtype f32 writes
        foreach (var p in adapter.Pairs)
        {
            w.AddTensor(p.Name + ".lora_a", [p.In, p.Rank], GgmlType.F32);
            w.AddTensor(p.Name + ".lora_b", [p.Rank, p.Out], GgmlType.F32);
        }
        bool fileInterleaved = config.Family.ConverterPermutesQk;
        foreach (var p in adapter.Pairs)
        {
            w.WriteTensor(p.Name + ".lora_a", MemoryMarshal.AsBytes(p.A.AsSpan()));
            w.WriteTensor(p.Name + ".lora_b", MemoryMarshal.AsBytes(QkRowOrder.Reorder(p, config, qkPermuted, fileInterleaved).AsSpan()));
        }
        w.Complete();
    }

    private static void ReadFloats(GgufFile file, GgufTensorInfo t, float[] dst)
    {
        var bytes = new byte[t.ByteSize];
        file.ReadTensorBytes(t, 0, bytes);
        Dequantize.Row(t.Type, bytes, dst);
        foreach (var x in dst)
            if (!float.IsFinite(x)) throw new FitLMException($"{file.Path}: tensor '{t.Name}' holds a NaN or infinite value");
    }
}
