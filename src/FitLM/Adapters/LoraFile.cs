using FitLM.Model;

namespace FitLM.Adapters;

/// <summary>
/// Opens a LoRA adapter whatever its form, told by its content: a PEFT folder (adapter_config.json and
/// adapter_model.safetensors, or that safetensors file itself) or a GGUF LoRA file as llama.cpp's
/// convert_lora_to_gguf writes it. The adapter comes back in the loaded model's row order, checked against its shapes.
/// </summary>
public static class LoraFile
{
    public static LoraAdapter Load(string path, IModelSource source, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no adapter given (--lora PATH: a PEFT adapter folder or a GGUF LoRA file)");
        if (Directory.Exists(path)) return PeftAdapterFolder.Read(path, source, ct);
        if (!File.Exists(path)) throw new FitLMException($"{path}: no such adapter file or folder");
        if (StartsWithGgufMagic(path)) return GgufAdapterFile.Read(path, source, ct);
        if (string.Equals(Path.GetFileName(path), PeftAdapterFolder.WeightsFile, StringComparison.Ordinal))
            return PeftAdapterFolder.Read(Path.GetDirectoryName(Path.GetFullPath(path))!, source, ct);
        if (path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase))
            throw new FitLMException($"{path}: only safetensors adapters are read (save the adapter with safe_serialization=True)");
        throw new FitLMException($"{path}: not a LoRA adapter (give a PEFT adapter folder or a GGUF LoRA file)");
    }

    /// <summary>Float32 bytes the adapter's A and B matrices take in memory.</summary>
    public static long Bytes(LoraAdapter adapter) => adapter.Pairs.Sum(p => (long)(p.A.Length + p.B.Length) * sizeof(float));

    /// <summary>
    /// Refuses an adapter for another model: every adapted matrix must be in the model with the adapter's [Out × In].
    /// </summary>
    public static void CheckAgainst(LoraAdapter adapter, IModelSource source, string adapterPath)
    {
        foreach (var p in adapter.Pairs)
        {
            if (p.Name.Contains(".ffn_", StringComparison.Ordinal) && ModelValidation.IsBundled(source))
                throw new FitLMException($"{adapterPath}: {source.Path} is a prepared model that bundles its FFN, so the adapter's '{p.Name}' cannot be applied; merge the adapter into the original model (fitlm export), then prepare it");
            var t = source.Find(p.Name)
                ?? throw new FitLMException($"{adapterPath}: the adapter changes '{p.Name}', which {source.Path} does not have; the adapter was made for another model");
            if (t.Shape.Length != 2 || t.RowLength != p.In || t.Rows != p.Out)
                throw new FitLMException($"{adapterPath}: '{p.Name}' is [{p.Out} x {p.In}] in the adapter but [{t.Rows} x {t.RowLength}] in {source.Path}; the adapter was made for another model");
        }
    }

    private static bool StartsWithGgufMagic(string path)
    {
        Span<byte> magic = stackalloc byte[4];
        try
        {
            using var f = File.OpenHandle(path);
            return RandomAccess.Read(f, magic, 0) == 4 && magic.SequenceEqual("GGUF"u8);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"{path}: cannot read: {e.Message}", e);
        }
    }
}
