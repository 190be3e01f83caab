using FitLM.Formats;

namespace FitLM.Tokenization;

public sealed partial class Tokenizer
{
    /// <summary>
    /// Loads only the vocabulary of a model: a GGUF file's tokenizer.ggml.* metadata (no tensors, architecture or
    /// hyperparameters needed, so llama.cpp's vocabulary-only ggml-vocab-*.gguf files load), or a Hugging Face
    /// folder's tokenizer.json (no weights read). `fitlm tokenize` and `detokenize` need nothing more.
    /// </summary>
    public static Tokenizer Load(string path)
    {
        if (string.IsNullOrWhiteSpace(path)) throw new FitLMException("no model given (-m MODEL: a .gguf file or a Hugging Face folder)");
        if (Directory.Exists(path)) return FromHuggingFace(path);
        if (!File.Exists(path)) throw new FitLMException($"{path}: no such file or folder");
        using var gguf = GgufFile.Open(path);
        return FromGguf(gguf);
    }

    /// <summary>Whether <paramref name="id"/> is a token of this vocabulary.</summary>
    public bool IsValidId(int id) => (uint)id < (uint)_tokens.Length;
}
