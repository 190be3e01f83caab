using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>One tensor of a quantizer's input, in the order the output file lists it.</summary>
public sealed record InputTensor(string Name, long[] Shape, GgmlType Type)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
    public long Bytes => GgmlTypes.RowBytes(Type, Elements);
}

/// <summary>
/// What <see cref="GgufQuantizer"/> reads: a GGUF file, or a Hugging Face folder seen as the F32 GGUF that
/// llama.cpp's converter would write from it (so `fitlm quantize HF_FOLDER` equals convert-then-quantize).
/// </summary>
public abstract class QuantizerInput : IDisposable
{
    /// <summary>The path given (file or folder).</summary>
    public abstract string Path { get; }

    /// <summary>Tensors in llama-quantize's order: those outside the blocks first, then block by block, by name within each.</summary>
    public abstract IReadOnlyList<InputTensor> Tensors { get; }

    /// <summary>The hyper-parameters llama.cpp's type mix looks at.</summary>
    public abstract QuantizationShape Shape { get; }

    /// <summary>The GGUF alignment the output keeps (general.alignment, else 32).</summary>
    public abstract int Alignment { get; }

    /// <summary>Writes the input's metadata with general.file_type = <paramref name="fileType"/>, as llama-quantize copies it.</summary>
    public abstract void AddMetadata(GgufWriter w, uint fileType);

    /// <summary>The tensor's stored bytes (its <see cref="InputTensor.Type"/>), for tensors that keep their type.</summary>
    public abstract void ReadBytes(InputTensor t, Span<byte> dst);

    /// <summary>The tensor as float32 (dequantized or converted as needed).</summary>
    public abstract void ReadFloats(InputTensor t, Span<float> dst, CancellationToken ct);

    public abstract void Dispose();

    /// <summary>Opens a GGUF file or a Hugging Face model folder.</summary>
    public static QuantizerInput Open(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no input model given");
        if (Directory.Exists(path)) return HfFolderInput.Open(path);
        if (!File.Exists(path)) throw new FitLMException($"{path}: no such file or folder");
        return GgufInput.Open(path);
    }

    /// <summary>llama-quantize's tensor order (llama_model_loader's weight_name_comparer).</summary>
    public static int CompareNames(string a, string b)
    {
        int la = Layer(a), lb = Layer(b);
        return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a, b);
    }

    private static int Layer(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int l) ? l : -1;
    }
}
