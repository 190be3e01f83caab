using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>A GGUF file as quantizer input: its metadata copied as llama-quantize copies it, tensors dequantized on demand.</summary>
public sealed class GgufInput : QuantizerInput
{
    /// <summary>Keys llama-quantize sets itself (moved to the end) or drops (split metadata).</summary>
    private static readonly HashSet<string> s_replacedKeys =
        ["general.quantization_version", "general.file_type", "split.no", "split.count", "split.tensors.count"];

    private readonly GgufFile _file;
    private readonly Dictionary<string, GgufTensorInfo> _infos;

    public override string Path => _file.Path;
    public override IReadOnlyList<InputTensor> Tensors { get; }
    public override int Alignment => (int)_file.Alignment;
    public override QuantizationShape Shape { get; }

    private GgufInput(GgufFile file)
    {
        _file = file;
        _infos = file.Tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        if (file.Find("split.count") is { } split && split.AsInt64() > 1)
            throw new FitLMException($"{file.Path}: one shard of a split GGUF; merge the shards first (llama-gguf-split --merge)");
        var list = file.Tensors.Select(t => new InputTensor(t.Name, t.Shape, t.Type)).ToList();
        list.Sort((a, b) => CompareNames(a.Name, b.Name));
        Tensors = list;
        Shape = ShapeOf(file);
    }

    /// <summary>From {arch}.block_count, attention.head_count(_kv) and expert_count.</summary>
    private static QuantizationShape ShapeOf(GgufFile f)
    {
        string arch = f.Find("general.architecture") is { Type: GgufValueType.String } a ? a.AsString() : "";
        int Int(string key, int fallback)
        {
            if (f.Find($"{arch}.{key}") is not { } v) return fallback;
            // Some architectures store per-layer arrays; llama.cpp's n_gqa() looks at layer 0.
            if (v.Type == GgufValueType.Array) return v.ArrayLength > 0 ? v.AsInt32Array()[0] : fallback;
            return v.IsInteger ? (int)v.AsInt64() : fallback;
        }
        int heads = Int("attention.head_count", 0);
        return new QuantizationShape(arch, Int("block_count", 0), heads, Int("attention.head_count_kv", heads), Int("expert_count", 0));
    }

    public static new GgufInput Open(string path)
    {
        var f = GgufFile.Open(path);
        try { return new GgufInput(f); }
        catch { f.Dispose(); throw; }
    }

    public override void AddMetadata(GgufWriter w, uint fileType)
    {
        foreach (var key in _file.MetadataKeys)
            if (!s_replacedKeys.Contains(key)) w.Add(key, _file.Metadata[key]);
        w.AddUInt32("general.quantization_version", HfToGgufConverter.QuantizationVersion);
        w.AddUInt32("general.file_type", fileType);
    }

    public override void ReadBytes(InputTensor t, Span<byte> dst) => _file.ReadTensorBytes(_infos[t.Name], 0, dst);

    public override void ReadFloats(InputTensor t, Span<float> dst, CancellationToken ct)
    {
        var info = _infos[t.Name];
        if (!GgmlTypes.IsSupported(info.Type))
            throw new FitLMException($"{Path}: tensor '{t.Name}' has type {info.Type}, which FitLM cannot dequantize");
        // Whole rows at a time, about 4 MiB of input each, so a large tensor is not read twice into memory.
        long rowBytes = GgmlTypes.RowBytes(info.Type, info.RowLength);
        long rowsPerChunk = Math.Max(1, (4L << 20) / Math.Max(1, rowBytes));
        var raw = new byte[rowsPerChunk * rowBytes];
        for (long r0 = 0; r0 < info.Rows; r0 += rowsPerChunk)
        {
            ct.ThrowIfCancellationRequested();
            long rows = Math.Min(rowsPerChunk, info.Rows - r0);
            var span = raw.AsSpan(0, (int)(rows * rowBytes));
            _file.ReadTensorBytes(info, r0 * rowBytes, span);
            Dequantize.Row(info.Type, span, dst.Slice((int)(r0 * info.RowLength), (int)(rows * info.RowLength)));
        }
    }

    public override void Dispose() => _file.Dispose();
}
