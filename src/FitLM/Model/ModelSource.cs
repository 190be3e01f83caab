using FitLM.Formats;
using FitLM.Tensors;
using FitLM.Tokenization;

namespace FitLM.Model;

/// <summary>A tensor as the engine sees it: GGUF name, ggml shape order (Shape[0] = row length), type, bytes.</summary>
public sealed record TensorDesc(string Name, long[] Shape, GgmlType Type, long ByteSize)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
    public int RowLength => (int)Shape[0];
    public int Rows => (int)(Elements / Shape[0]);
}

/// <summary>
/// A model on storage: its configuration, tokenizer and tensors under llama.cpp's GGUF names, whatever
/// the file format. Weight providers read tensor bytes through it; nothing above it knows the format.
/// </summary>
public interface IModelSource : IDisposable
{
    string Path { get; }
    ModelConfig Config { get; }
    Tokenizer Tokenizer { get; }
    IReadOnlyList<TensorDesc> Tensors { get; }
    TensorDesc? Find(string name);
    /// <summary>Reads bytes of a tensor's data, starting <paramref name="offset"/> bytes into it.</summary>
    void Read(TensorDesc tensor, long offset, Span<byte> dst);
    /// <summary>Where a tensor's bytes lie on storage, for readers that bypass this interface (direct I/O).</summary>
    TensorLocation Locate(TensorDesc tensor);
}

/// <summary>A tensor's bytes on storage: file and absolute offset (its length is the tensor's ByteSize).</summary>
public readonly record struct TensorLocation(string File, long Offset);

public static class ModelSource
{
    /// <summary>Opens a .gguf file or a Hugging Face folder.</summary>
    public static IModelSource Open(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no model given (-m MODEL: a .gguf file or a Hugging Face folder)");
        if (Directory.Exists(path)) return HuggingFaceSource.Open(path);
        if (!File.Exists(path)) throw new FitLMException($"{path}: no such file or folder");
        return GgufSource.Open(path);
    }

    public static TensorDesc Get(this IModelSource source, string name) =>
        source.Find(name) ?? throw new FitLMException($"{source.Path}: tensor '{name}' is missing");

    /// <summary>Reads a whole tensor as float32 (norm weights, biases).</summary>
    public static float[] ReadFloats(this IModelSource source, TensorDesc t)
    {
        if (t.Elements > 1 << 28) throw new FitLMException($"{source.Path}: tensor '{t.Name}' is too large to read as floats");
        var bytes = new byte[t.ByteSize];
        source.Read(t, 0, bytes);
        var result = new float[t.Elements];
        Dequantize.Row(t.Type, bytes, result);
        return result;
    }
}
