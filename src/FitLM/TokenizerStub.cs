// TEMPORARY STUB so the rest of the library compiles until the real FitLM.Tokenization.Tokenizer lands.
// The csproj drops this file automatically once src/FitLM/Tokenization/Tokenizer.cs exists.
// Whoever writes the real Tokenizer: delete this file if it gets in your way.
namespace FitLM.Tokenization;


public sealed class Tokenizer
{
    public static Tokenizer FromGguf(FitLM.Formats.GgufFile gguf) => new();
    public static Tokenizer FromHuggingFace(string folder) => new();
    public int VocabSize => 0;
    public int BosId => -1;
    public int EosId => -1;
    public bool AddBos => false;
    public bool AddEos => false;
    public bool IsEndOfGeneration(int id) => false;
    public int[] Encode(string text, bool addSpecial = true, bool parseSpecial = false) => throw new NotImplementedException();
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial = false) => throw new NotImplementedException();
    public byte[] TokenBytes(int id) => throw new NotImplementedException();
    public string TokenText(int id) => throw new NotImplementedException();
    public TokenizerKind Kind => TokenizerKind.Spm;
    public string PreTokenizer => "";
    public string[] Tokens => [];
    public float[]? Scores => null;
    public int[] TokenTypes => [];
    public string[]? Merges => null;
    public int? PadId => null;
    public int? UnknownId => null;
}
