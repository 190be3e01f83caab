namespace FitLM.Tokenization;

/// <summary>The two tokenizer algorithms FitLM implements (llama.cpp's SPM and BPE vocab types).</summary>
public enum TokenizerKind
{
    /// <summary>SentencePiece-style BPE: score-driven merges over text with spaces as U+2581, byte fallback (GGUF model "llama").</summary>
    Spm,

    /// <summary>Byte-level BPE with GPT-2's byte↔unicode mapping, merge ranks and a regex pre-tokenizer (GGUF model "gpt2").</summary>
    BytePairGpt2,
}

/// <summary>llama.cpp token types as stored in <c>tokenizer.ggml.token_type</c>.</summary>
public static class TokenType
{
    public const int Undefined = 0;
    public const int Normal = 1;
    public const int Unknown = 2;
    public const int Control = 3;
    public const int UserDefined = 4;
    public const int Unused = 5;
    public const int Byte = 6;
}

/// <summary>llama.cpp's per-token attribute bits (llama_token_attr).</summary>
[Flags]
internal enum TokenAttr
{
    Undefined = 0,
    Unknown = 1 << 0,
    Unused = 1 << 1,
    Normal = 1 << 2,
    Control = 1 << 3,
    UserDefined = 1 << 4,
    Byte = 1 << 5,
    Normalized = 1 << 6,
    LStrip = 1 << 7,
    RStrip = 1 << 8,
    SingleWord = 1 << 9,
}
