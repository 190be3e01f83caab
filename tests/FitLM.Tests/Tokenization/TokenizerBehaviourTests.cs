using System.Text;
using FitLM.Formats;
using FitLM.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Tokenization;

/// <summary>Special-token handling, byte-exact streaming, Hugging Face loading and error reporting.</summary>
public sealed class TokenizerBehaviourTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _tmp = Directory.CreateTempSubdirectory("fitlm-tok-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_tmp, recursive: true); } catch (IOException) { }
    }

    private Tokenizer? Vocab(string name)
    {
        var shared = TestPaths.Shared;
        var path = shared is null ? null : Path.Combine(shared, "tokenizer-tests", $"ggml-vocab-{name}.gguf");
        if (path is null || !File.Exists(path))
        {
            output.WriteLine($"ggml-vocab-{name}.gguf is absent (../shared missing): skipping");
            return null;
        }
        using var gguf = GgufFile.Open(path);
        return Tokenizer.FromGguf(gguf);
    }

    private static int Id(Tokenizer t, string text) => Enumerable.Range(0, t.VocabSize).First(i => t.TokenText(i) == text);

    [Fact]
    public void ControlTokensAreParsedOnlyWhenAsked()
    {
        var t = Vocab("starcoder");
        if (t is null) return;
        const string text = "<fim_prefix>def f():<fim_suffix>\n<fim_middle>";
        var parsed = t.Encode(text, addSpecial: false, parseSpecial: true);
        Assert.Equal(1, parsed[0]);
        Assert.Contains(3, parsed);
        Assert.Equal(2, parsed[^1]);
        var plain = t.Encode(text, addSpecial: false, parseSpecial: false);
        Assert.DoesNotContain(1, plain);
        Assert.DoesNotContain(3, plain);
        Assert.Equal(text, t.Decode(parsed));
        Assert.Equal(text, t.Decode(plain));
        Assert.Equal("def f():\n", t.Decode(parsed, skipSpecial: true));
        Assert.Empty(t.TokenBytes(1));
        Assert.Equal("<fim_prefix>"u8.ToArray(), t.TokenBytes(1, special: true));
        Assert.True(t.IsEndOfGeneration(0));   // <|endoftext|>
        Assert.True(t.IsEndOfGeneration(4));   // <fim_pad>
        Assert.False(t.IsEndOfGeneration(1));
        Assert.False(t.AddBos);
    }

    [Fact]
    public void UserDefinedTokensAreAlwaysSplitOut()
    {
        var t = Vocab("deepseek-coder");
        if (t is null) return;
        int oUmlaut = Id(t, "ö");
        Assert.Equal(TokenType.UserDefined, t.TokenTypeOf(oUmlaut));
        var ids = t.Encode("schön", addSpecial: false);
        Assert.Contains(oUmlaut, ids);
        Assert.Equal("schön", t.Decode(ids));
        // add_bos_token is true in this file: BOS first
        Assert.True(t.AddBos);
        Assert.Equal(t.BosId, t.Encode("x")[0]);
        Assert.True(t.IsEndOfGeneration(t.EosId));
        Assert.True(t.IsEndOfGeneration(Id(t, "<｜end▁of▁sentence｜>")));
    }

    [Fact]
    public void SpmAddsBosAndSpacePrefixAndDecodes()
    {
        var t = Vocab("llama-spm");
        if (t is null) return;
        Assert.Equal(TokenizerKind.Spm, t.Kind);
        Assert.True(t.AddBos && t.AddSpacePrefix && !t.AddEos);
        var ids = t.Encode("Hello world");
        Assert.Equal(new[] { 1, 15043, 3186 }, ids);
        Assert.Equal("Hello world", t.Decode(ids.AsSpan(1)));
        Assert.Equal("<s> Hello world", t.Decode(ids));
        Assert.Equal(new[] { 1 }, t.Encode(""));
        Assert.Empty(t.Encode("", addSpecial: false));
        Assert.True(t.IsEndOfGeneration(2));
        Assert.Equal(" Hello", Encoding.UTF8.GetString(t.TokenBytes(15043)));
        // byte fallback: a character missing from the vocabulary becomes <0xNN> tokens
        var emoji = t.Encode("\U0001F9C0", addSpecial: false);
        Assert.All(emoji.Skip(1), id => Assert.Equal(TokenType.Byte, t.TokenTypeOf(id)));
        Assert.Equal("\U0001F9C0", t.Decode(emoji));
    }

    [Fact]
    public void Phi3SpecialTokensStripFollowingWhitespace()
    {
        var t = Vocab("phi-3");
        if (t is null) return;
        // llama.cpp gives phi-3's special tokens RSTRIP: the newline after <|user|> and <|end|> is dropped.
        var ids = t.Encode("<|user|>\nHi<|end|>\n", addSpecial: false, parseSpecial: true);
        Assert.Equal(new[] { 32010, Id(t, "▁Hi"), 32007 }, ids);
        Assert.True(t.IsEndOfGeneration(32007));
        Assert.True(t.IsEndOfGeneration(32000));
        Assert.Equal(32000, t.EosId);
    }

    /// <summary>GPT-2's bytes_to_unicode, written out independently of the implementation.</summary>
    private static char[] Gpt2ByteChars()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var map = new char[256];
        foreach (var b in bs) map[b] = (char)b;
        int n = 0;
        for (int b = 0; b < 256; b++) if (!bs.Contains(b)) map[b] = (char)(256 + n++);
        return map;
    }

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("deepseek-coder")]
    public void ByteLevelPiecesReproduceArbitraryBytes(string name)
    {
        var t = Vocab(name);
        if (t is null) return;
        var chars = Gpt2ByteChars();
        // deepseek-coder lacks normal tokens for the 13 bytes that never occur in UTF-8 (it has user-defined ones)
        var byteToken = chars.Select(c => Enumerable.Range(0, t.VocabSize)
            .FirstOrDefault(i => t.TokenText(i) == c.ToString() && t.TokenTypeOf(i) == TokenType.Normal, -1)).ToArray();
        var usable = Enumerable.Range(0, 256).Where(b => byteToken[b] >= 0).Select(b => (byte)b).ToArray();
        Assert.True(usable.Length >= 243, $"only {usable.Length} byte tokens");
        var rng = new Random(1234);
        for (int round = 0; round < 200; round++)
        {
            var bytes = new byte[rng.Next(0, 64)];
            for (int i = 0; i < bytes.Length; i++) bytes[i] = usable[rng.Next(usable.Length)];
            var ids = bytes.Select(b => byteToken[b]).ToArray();
            Assert.Equal(bytes, ids.SelectMany(id => t.TokenBytes(id)).ToArray());
            // the detokenizer is byte-exact too, unless its clean_spaces pass applies
            if (!t.CleanSpaces) Assert.Equal(bytes, t.DecodeBytes(ids));
        }
    }

    private static string RandomText(Random rng, int length)
    {
        string[] pool = ["a", "Z", " ", "  ", "\n", "\t", "'s", "'LL", "1", "42", "9999", ".", ",", "!", "?", "é", "ß", "Ж", "中", "文", "한",
            "\u0301", "\u00A0", "\u3000", "\U0001F600", "\U0001F44D\U0001F3FD", "\u200D", "\u2581", "<", "|", "$", "\r\n", "😁", "ö", "ü"];
        var sb = new StringBuilder();
        while (sb.Length < length) sb.Append(pool[rng.Next(pool.Length)]);
        return sb.ToString();
    }

    [Theory]
    [InlineData("gpt-2")]
    [InlineData("starcoder")]
    [InlineData("falcon")]
    [InlineData("deepseek-coder")]
    [InlineData("llama-spm")]
    [InlineData("phi-3")]
    public void StreamingPiecesThroughUtf8DecoderReproducesText(string name)
    {
        var t = Vocab(name);
        if (t is null) return;
        var rng = new Random(name.Length * 7919);
        for (int round = 0; round < 100; round++)
        {
            string s = RandomText(rng, rng.Next(1, 80));
            var ids = t.Encode(s, addSpecial: false);
            var decoder = new UTF8Encoding(false, throwOnInvalidBytes: false).GetDecoder();
            var sb = new StringBuilder();
            foreach (int id in ids)
            {
                var b = t.TokenBytes(id);
                var buf = new char[b.Length + 4];
                int nc = decoder.GetChars(b, 0, b.Length, buf, 0, flush: false);
                sb.Append(buf, 0, nc);
            }
            // SPM pieces turn U+2581 back into spaces (llama.cpp does the same)
            string expected = t.Kind == TokenizerKind.Spm ? " " + s.Replace('\u2581', ' ') : s;
            Assert.Equal(expected, sb.ToString());
        }
    }

    // ---- Hugging Face loading ----

    private string WriteFolder(string name, string tokenizerJson, string? tokenizerConfig = null, string? config = null)
    {
        var dir = Path.Combine(_tmp, name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tokenizerJson);
        if (tokenizerConfig != null) File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), tokenizerConfig);
        if (config != null) File.WriteAllText(Path.Combine(dir, "config.json"), config);
        return dir;
    }

    private static string SpmStyleJson()
    {
        var vocab = new List<string> { "<unk>", "<s>", "</s>" };
        vocab.AddRange(Enumerable.Range(0, 256).Select(b => $"<0x{b:X2}>"));
        vocab.AddRange(["▁", "a", "b", "▁a", "ab", "▁ab"]);
        string v = string.Join(",", vocab.Select((s, i) => $"\"{s}\":{i}"));
        return """
        {"version":"1.0","added_tokens":[{"id":0,"content":"<unk>","special":true},{"id":1,"content":"<s>","special":true},{"id":2,"content":"</s>","special":true}],
         "normalizer":{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},
         "pre_tokenizer":null,
         "model":{"type":"BPE","unk_token":"<unk>","byte_fallback":true,"vocab":{VOCAB},"merges":["▁ a","a b","▁a b"]}}
        """.Replace("VOCAB", v);
    }

    [Fact]
    public void HuggingFaceSentencePieceStyleBpe()
    {
        var dir = WriteFolder("spm", SpmStyleJson(), """{"bos_token":"<s>","eos_token":{"content":"</s>"},"add_bos_token":true}""");
        var t = Tokenizer.FromHuggingFace(dir);
        Assert.Equal(TokenizerKind.Spm, t.Kind);
        Assert.True(t.AddSpacePrefix);
        Assert.Equal((1, 2, 0), (t.BosId, t.EosId, t.UnknownId ?? -1));
        int Tok(string s) => Id(t, s);
        Assert.Equal(new[] { 1, Tok("▁ab"), Tok("▁ab") }, t.Encode("ab ab"));
        Assert.Equal(new[] { Tok("▁ab"), Tok("<0x63>") }, t.Encode("abc", addSpecial: false));
        Assert.Equal("abc", t.Decode(t.Encode("abc", addSpecial: false)));
        Assert.Equal(TokenType.Byte, t.TokenTypes[Tok("<0x41>")]);
        Assert.Equal(TokenType.Unknown, t.TokenTypes[0]);
        Assert.Equal(TokenType.Control, t.TokenTypes[1]);
        Assert.NotNull(t.Scores);
        Assert.True(t.Scores![Tok("▁a")] > t.Scores[Tok("ab")]); // earlier merge, higher score
    }

    private static string ByteLevelJson(string preTokenizer, string extraAdded = "")
    {
        var chars = Gpt2ByteChars();
        var vocab = chars.Select(c => c.ToString()).Concat(["Ġh", "Ġhi", "hi"]).ToList();
        string Esc(string s) => System.Text.Json.JsonSerializer.Serialize(s);
        string v = string.Join(",", vocab.Select((s, i) => $"{Esc(s)}:{i + 1}"));
        return """
        {"added_tokens":[{"id":0,"content":"<|begin_of_text|>","special":true}EXTRA],
         "pre_tokenizer":PRE,
         "decoder":{"type":"ByteLevel"},
         "model":{"type":"BPE","vocab":{"<|begin_of_text|>":0,VOCAB},"merges":[["Ġ","h"],["Ġh","i"],"h i"]}}
        """.Replace("EXTRA", extraAdded).Replace("PRE", preTokenizer).Replace("VOCAB", v);
    }

    [Fact]
    public void HuggingFaceLlama3StylePreTokenizerMapsToLlamaBpe()
    {
        const string pre = """{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]}""";
        var dir = WriteFolder("llama3", ByteLevelJson(pre, """,{"id":260,"content":"<tool>","special":false}"""), """{"bos_token":"<|begin_of_text|>"}""");
        var t = Tokenizer.FromHuggingFace(dir);
        Assert.Equal("llama-bpe", t.PreTokenizer);
        Assert.True(t.PreTokenizerRecognized);
        Assert.True(t.IgnoreMerges);
        Assert.True(t.AddBos); // llama.cpp's default for llama3
        Assert.Equal(0, t.BosId);
        Assert.Equal(new[] { 0, Id(t, "hi"), Id(t, "Ġhi") }, t.Encode("hi hi"));
        Assert.Equal(TokenType.UserDefined, t.TokenTypes[260]);
        Assert.Equal(new[] { Id(t, "hi"), 260 }, t.Encode("hi<tool>", addSpecial: false));
        Assert.Equal("<tool>", t.Decode([260]));
    }

    [Fact]
    public void HuggingFaceUnknownSplitIsUsedButFlagged()
    {
        const string pre = """{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"String":"|"},"behavior":"Isolated"},{"type":"ByteLevel","use_regex":false}]}""";
        var t = Tokenizer.FromHuggingFace(WriteFolder("custom", ByteLevelJson(pre)));
        Assert.False(t.PreTokenizerRecognized);
        Assert.Equal("hi|hi", t.Decode(t.Encode("hi|hi", addSpecial: false)));
        Assert.Equal(3, t.Encode("hi|hi", addSpecial: false).Length);
    }

    // ---- bad data ----

    [Fact]
    public void BadHuggingFaceDataIsReported()
    {
        var missing = Path.Combine(_tmp, "none");
        Directory.CreateDirectory(missing);
        Assert.Contains("tokenizer.json", Assert.Throws<FitLMException>(() => Tokenizer.FromHuggingFace(missing)).Message);

        var broken = WriteFolder("broken", "{\"model\": {\"type\": \"BPE\", \"vocab\": ");
        Assert.Contains("malformed JSON", Assert.Throws<FitLMException>(() => Tokenizer.FromHuggingFace(broken)).Message);

        var unigram = WriteFolder("unigram", """{"model":{"type":"Unigram","vocab":[["a",0.0]]}}""");
        Assert.Contains("Unigram", Assert.Throws<FitLMException>(() => Tokenizer.FromHuggingFace(unigram)).Message);

        var badMerge = WriteFolder("badmerge", ByteLevelJson("""{"type":"ByteLevel"}""").Replace("\"h i\"", "\"hi\""));
        Assert.Contains("merge", Assert.Throws<FitLMException>(() => Tokenizer.FromHuggingFace(badMerge)).Message);

        var badId = WriteFolder("badid", """{"model":{"type":"BPE","vocab":{"a":-3},"merges":[]},"pre_tokenizer":{"type":"ByteLevel"}}""");
        Assert.Contains("invalid id", Assert.Throws<FitLMException>(() => Tokenizer.FromHuggingFace(badId)).Message);
    }

    private string WriteGguf(string name, Action<GgufWriter> fill)
    {
        var path = Path.Combine(_tmp, name + ".gguf");
        using var w = new GgufWriter(path);
        w.AddString("general.architecture", "llama");
        fill(w);
        w.Complete();
        return path;
    }

    private Exception LoadGguf(string path)
    {
        using var g = GgufFile.Open(path);
        return Assert.Throws<FitLMException>(() => Tokenizer.FromGguf(g));
    }

    [Fact]
    public void BadGgufTokenizerMetadataIsReported()
    {
        var noModel = WriteGguf("nomodel", _ => { });
        Assert.Contains("tokenizer.ggml.model", LoadGguf(noModel).Message);

        var noMerges = WriteGguf("nomerges", w =>
        {
            w.AddString("tokenizer.ggml.model", "gpt2");
            w.AddArray("tokenizer.ggml.tokens", new[] { "a", "b" });
        });
        var e = LoadGguf(noMerges);
        Assert.Contains("merges", e.Message);
        Assert.Contains("nomerges.gguf", e.Message);

        var badMerge = WriteGguf("badmerge", w =>
        {
            w.AddString("tokenizer.ggml.model", "gpt2");
            w.AddArray("tokenizer.ggml.tokens", new[] { "a", "b", "ab" });
            w.AddArray("tokenizer.ggml.merges", new[] { "ab" });
        });
        Assert.Contains("malformed BPE merge", LoadGguf(badMerge).Message);

        var badBos = WriteGguf("badbos", w =>
        {
            w.AddString("tokenizer.ggml.model", "llama");
            w.AddArray("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>" });
            w.AddUInt32("tokenizer.ggml.bos_token_id", 7);
        });
        Assert.Contains("outside the vocabulary", LoadGguf(badBos).Message);

        var shortTypes = WriteGguf("shorttypes", w =>
        {
            w.AddString("tokenizer.ggml.model", "llama");
            w.AddArray("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>" });
            w.AddArray("tokenizer.ggml.token_type", new[] { 2, 3 });
        });
        Assert.Contains("token_type", LoadGguf(shortTypes).Message);

        var badPre = WriteGguf("badpre", w =>
        {
            w.AddString("tokenizer.ggml.model", "gpt2");
            w.AddString("tokenizer.ggml.pre", "no-such-pre");
            w.AddArray("tokenizer.ggml.tokens", new[] { "a", "b", "ab" });
            w.AddArray("tokenizer.ggml.merges", new[] { "a b" });
        });
        Assert.Contains("no-such-pre", LoadGguf(badPre).Message);

        var unknownModel = WriteGguf("t5", w =>
        {
            w.AddString("tokenizer.ggml.model", "t5");
            w.AddArray("tokenizer.ggml.tokens", new[] { "a" });
        });
        Assert.Contains("'t5'", LoadGguf(unknownModel).Message);
    }

    public static TheoryData<string> PreNames => new()
    {
        "default", "gpt-2", "llama3", "llama-bpe", "deepseek-llm", "deepseek-coder", "deepseek-v3", "spark2_5", "falcon", "starcoder",
        "refact", "command-r", "smollm", "qwen2", "qwen35", "stablelm2", "megrez", "mpt", "olmo", "dbrx", "smaug-bpe", "poro-chat",
        "bloom", "chatglm-bpe", "viking", "jais", "jais-2", "tekken", "chameleon", "gpt-4o", "llama4", "granite-embed-multi-97m",
        "tiny_aya", "youtu", "superbpe", "bailingmoe", "seed-coder", "ufakzeka", "grok-2", "laguna", "exaone-moe", "minicpm5",
        "trillion", "exaone", "minerva-7b", "codeshell", "roberta-bpe",
    };

    [Theory]
    [MemberData(nameof(PreNames))]
    public void KnownPreTokenizersCompileAndCoverTheText(string pre)
    {
        var path = WriteGguf("pre-" + pre, w =>
        {
            w.AddString("tokenizer.ggml.model", "gpt2");
            w.AddString("tokenizer.ggml.pre", pre);
            var tokens = Gpt2ByteChars().Select(c => c.ToString()).ToList();
            tokens.AddRange(["Ġt", "Ġth", "Ġthe"]);
            w.AddArray("tokenizer.ggml.tokens", tokens.ToArray());
            w.AddArray("tokenizer.ggml.merges", new[] { "Ġ t", "Ġt h", "Ġth e" });
            w.AddUInt32("tokenizer.ggml.bos_token_id", 0);
        });
        using var g = GgufFile.Open(path);
        var t = Tokenizer.FromGguf(g);
        Assert.Equal(pre, t.PreTokenizer);
        const string text = "Hello the world's 12345 dogs!!  \n\n\tÄpfel 我想在apple工作 Привет 🦙 ----- x=1; IMGIMGAZ <sentinel:3> ";
        var ids = t.Encode(text, addSpecial: false);
        Assert.Equal(text, Encoding.UTF8.GetString(ids.SelectMany(id => t.TokenBytes(id)).ToArray()));
        Assert.Contains(Id(t, "Ġthe"), ids);
    }

    [Fact]
    public void MinimalGgufTokenizerWorks()
    {
        var path = WriteGguf("mini", w =>
        {
            w.AddString("tokenizer.ggml.model", "gpt2");
            w.AddString("tokenizer.ggml.pre", "qwen2");
            var chars = Gpt2ByteChars().Select(c => c.ToString()).ToList();
            chars.AddRange(["ab", "abc", "<|im_end|>"]);
            w.AddArray("tokenizer.ggml.tokens", chars.ToArray());
            w.AddArray("tokenizer.ggml.merges", new[] { "a b", "ab c" });
            w.AddUInt32("tokenizer.ggml.eos_token_id", 258);
        });
        using var g = GgufFile.Open(path);
        var t = Tokenizer.FromGguf(g);
        Assert.Equal("qwen2", t.PreTokenizer);
        Assert.False(t.CleanSpaces);
        Assert.Equal(new[] { 257, 256 }, t.Encode("abcab", addSpecial: false));
        Assert.True(t.IsEndOfGeneration(258));
        Assert.True(t.IsControl(258)); // forced to control by its text, as llama.cpp does
        Assert.Equal(new[] { 258 }, t.Encode("<|im_end|>", addSpecial: false, parseSpecial: true));
        Assert.Equal("12", t.Decode(t.Encode("12", addSpecial: false)));
        Assert.Equal(2, t.Encode("12", addSpecial: false).Length); // qwen2 splits digits one by one
    }
}
