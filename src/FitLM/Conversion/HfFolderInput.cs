using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>
/// A Hugging Face folder as quantizer input: the tensors and metadata llama.cpp's converter writes with
/// --outtype f32 (Q/K rows permuted for interleaved RoPE, rope_freqs computed), read straight from the
/// safetensors shards, so no intermediate F32 file is needed.
/// </summary>
public sealed class HfFolderInput : QuantizerInput
{
    private readonly HuggingFaceSource _src;
    private readonly Dictionary<string, PlannedTensor> _plan;

    public override string Path => _src.Path;
    public override IReadOnlyList<InputTensor> Tensors { get; }
    public override int Alignment => GgufWriter.DefaultAlignment;
    public override QuantizationShape Shape { get; }

    private HfFolderInput(HuggingFaceSource src)
    {
        _src = src;
        var plan = HfToGgufConverter.Plan(src, GgmlType.F32);
        _plan = plan.ToDictionary(p => p.Name, StringComparer.Ordinal);
        Tensors = plan.Select(p => new InputTensor(p.Name, p.Shape, p.Type)).ToList();
        var c = src.Config;
        Shape = new QuantizationShape(HfToGgufConverter.GgufArchitecture(c.Architecture), c.Layers, c.Heads, c.KvHeads, Experts: 0);
    }

    public static new HfFolderInput Open(string folder)
    {
        var src = HuggingFaceSource.Open(folder);
        try { return new HfFolderInput(src); }
        catch { src.Dispose(); throw; }
    }

    public override void AddMetadata(GgufWriter w, uint fileType) => HfToGgufConverter.AddMetadata(w, _src, fileType);

    public override void ReadBytes(InputTensor t, Span<byte> dst)
    {
        // Every planned tensor is F32 here (convert --outtype f32).
        var f = new float[t.Elements];
        ReadFloats(t, f, CancellationToken.None);
        System.Runtime.InteropServices.MemoryMarshal.Cast<float, byte>(f).CopyTo(dst);
    }

    public override void ReadFloats(InputTensor t, Span<float> dst, CancellationToken ct)
    {
        var p = _plan[t.Name];
        long n = p.Elements;
        if (p.Data != null)
        {
            p.Data.CopyTo(dst);
            return;
        }
        var s = p.Source!;
        var raw = new byte[n * GgmlTypes.BlockBytes(s.Type)];
        ct.ThrowIfCancellationRequested();
        _src.Read(s, 0, raw);
        if (p.PermuteHeads == 0)
        {
            Dequantize.Row(s.Type, raw, dst[..(int)n]);
            return;
        }
        var f = new float[n];
        Dequantize.Row(s.Type, raw, f);
        // As the converter: rows of one element for 1-D tensors (biases), whole rows otherwise.
        int permRowLength = p.Shape.Length == 1 ? 1 : (int)p.Shape[0];
        int headRows = (int)(n / permRowLength / p.PermuteHeads);
        HfToGgufConverter.PermuteForInterleavedRope(f, dst[..(int)n], permRowLength, headRows);
    }

    public override void Dispose() => _src.Dispose();
}
