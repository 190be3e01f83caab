using System.Text;
using System.Text.Json;

namespace FitLM.Tokenization;

public sealed partial class Tokenizer
{
    /// <summary>
    /// Loads a Hugging Face tokenizer folder (tokenizer.json, tokenizer_config.json, optionally config.json) and
    /// builds the tokenizer llama.cpp would use after converting it to GGUF: the same token list and types,
    /// merges, special ids, add-BOS/EOS flags and the llama.cpp pre-tokenizer the HF pre_tokenizer corresponds to.
    /// </summary>
    public static Tokenizer FromHuggingFace(string folder)
    {
        string tokPath = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(tokPath)) throw new FitLMException($"{tokPath}: file not found (a Hugging Face tokenizer needs tokenizer.json)");
        using var tokDoc = ReadJson(tokPath);
        using var cfgDoc = File.Exists(Path.Combine(folder, "tokenizer_config.json")) ? ReadJson(Path.Combine(folder, "tokenizer_config.json")) : null;
        using var modelCfgDoc = File.Exists(Path.Combine(folder, "config.json")) ? ReadJson(Path.Combine(folder, "config.json")) : null;
        var root = tokDoc.RootElement;
        var tcfg = cfgDoc?.RootElement;
        var mcfg = modelCfgDoc?.RootElement;

        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new FitLMException($"{tokPath}: 'model' is missing");
        string modelType = Prop(model, "type") is { ValueKind: JsonValueKind.String } mt ? mt.GetString()! : "BPE";
        if (modelType != "BPE")
            throw new FitLMException($"{tokPath}: tokenizer model type '{modelType}' is not supported (FitLM supports BPE)");
        if (Prop(model, "vocab") is not { ValueKind: JsonValueKind.Object } vocabEl)
            throw new FitLMException($"{tokPath}: 'model.vocab' is missing or not an object");

        // ---- vocabulary and added tokens ----
        var vocab = new Dictionary<int, string>();
        foreach (var p in vocabEl.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new FitLMException($"{tokPath}: vocab entry '{p.Name}' has an invalid id");
            vocab.TryAdd(id, p.Name);
        }
        var added = new List<(int Id, string Content, bool Special, bool LStrip, bool RStrip)>();
        if (Prop(root, "added_tokens") is { ValueKind: JsonValueKind.Array } addedEl)
        {
            foreach (var a in addedEl.EnumerateArray())
            {
                if (Prop(a, "id") is not { ValueKind: JsonValueKind.Number } idEl || !idEl.TryGetInt32(out int id) || id < 0 ||
                    Prop(a, "content") is not { ValueKind: JsonValueKind.String } contentEl)
                    throw new FitLMException($"{tokPath}: malformed entry in 'added_tokens'");
                added.Add((id, contentEl.GetString()!, GetBool(a, "special") ?? false, GetBool(a, "lstrip") ?? false, GetBool(a, "rstrip") ?? false));
            }
        }

        // ---- kind ----
        var preTok = Prop(root, "pre_tokenizer");
        var normalizer = Prop(root, "normalizer");
        bool byteLevel = HasType(preTok, "ByteLevel") || HasType(Prop(root, "decoder"), "ByteLevel");
        bool metaspace = HasType(preTok, "Metaspace");
        bool byteFallback = GetBool(model, "byte_fallback") ?? false;
        bool spaceReplace = FindNodes(normalizer, "Replace").Any(r => Prop(r, "content")?.GetString() == "\u2581");
        TokenizerKind kind;
        if (byteLevel) kind = TokenizerKind.BytePairGpt2;
        else if (byteFallback || metaspace || spaceReplace) kind = TokenizerKind.Spm;
        else throw new FitLMException($"{tokPath}: neither a byte-level (ByteLevel) nor a SentencePiece-style (byte_fallback / Metaspace / '▁') BPE tokenizer; not supported");

        int n = Math.Max(vocab.Count == 0 ? 0 : vocab.Keys.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        if (mcfg is { } mc && Prop(mc, "vocab_size") is { ValueKind: JsonValueKind.Number } vs && vs.TryGetInt32(out int cfgVocab) && cfgVocab > n)
            n = cfgVocab;
        if (n == 0) throw new FitLMException($"{tokPath}: the vocabulary is empty");

        var tokens = new string[n];
        var types = new int[n];
        for (int i = 0; i < n; i++)
        {
            if (vocab.TryGetValue(i, out var t))
            {
                tokens[i] = t;
                types[i] = kind == TokenizerKind.Spm && IsByteToken(t) ? TokenType.Byte : TokenType.Normal;
            }
            else
            {
                tokens[i] = $"[PAD{i}]";
                types[i] = TokenType.Unused;
            }
        }
        var extra = new Dictionary<int, TokenAttr>();
        foreach (var a in added)
        {
            if (a.Special || LooksSpecial(a.Content))
            {
                tokens[a.Id] = a.Content;
                types[a.Id] = TokenType.Control;
            }
            else
            {
                tokens[a.Id] = a.Content.Replace('\u2581', ' '); // llama.cpp expects user-defined tokens pre-normalized
                types[a.Id] = TokenType.UserDefined;
            }
            var attr = (a.LStrip ? TokenAttr.LStrip : 0) | (a.RStrip ? TokenAttr.RStrip : 0);
            if (attr != 0) extra[a.Id] = attr;
        }
        string? unkContent = Prop(model, "unk_token")?.ValueKind == JsonValueKind.String ? Prop(model, "unk_token")!.Value.GetString() : null;
        int unkFromModel = unkContent is null ? -1 : Array.IndexOf(tokens, unkContent);
        if (kind == TokenizerKind.Spm && unkFromModel >= 0) types[unkFromModel] = TokenType.Unknown;

        // ---- merges ----
        var pairs = new List<(string, string)>();
        var mergeStrings = new List<string>();
        if (Prop(model, "merges") is { ValueKind: JsonValueKind.Array } mergesEl)
        {
            int i = 0;
            foreach (var m in mergesEl.EnumerateArray())
            {
                if (m.ValueKind == JsonValueKind.String)
                {
                    string s = m.GetString()!;
                    pairs.AddRange(ParseMerges([s], $"{tokPath} merge #{i}"));
                    mergeStrings.Add(s);
                }
                else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 &&
                         m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                {
                    string a = m[0].GetString()!, b = m[1].GetString()!;
                    pairs.Add((a, b));
                    // gguf-py writes pairs as "a b" with spaces inside a part encoded as U+0120
                    mergeStrings.Add(a.Replace(' ', '\u0120') + " " + b.Replace(' ', '\u0120'));
                }
                else throw new FitLMException($"{tokPath}: malformed merge #{i} (expected \"a b\" or [\"a\", \"b\"])");
                i++;
            }
        }
        else if (kind == TokenizerKind.BytePairGpt2)
            throw new FitLMException($"{tokPath}: 'model.merges' is missing");

        var src = new TokenizerSource
        {
            Where = tokPath,
            Model = kind == TokenizerKind.Spm ? "llama" : "gpt2",
            Tokens = tokens,
            Types = types,
            ExtraAttrs = extra,
            IgnoreMerges = GetBool(model, "ignore_merges") == true ? true : null,
        };

        if (kind == TokenizerKind.BytePairGpt2)
        {
            src.MergePairs = pairs;
            src.MergeStrings = mergeStrings.ToArray();
            var (name, cfg) = MapPreTokenizer(preTok, tokPath);
            src.Pre = name;
            src.PreOverride = cfg;
        }
        else
        {
            src.Scores = SpmScores(tokens, types, pairs);
            src.AddSpacePrefix = SpmAddSpacePrefix(normalizer, preTok);
        }

        // ---- special tokens (gguf-py SpecialVocab: tokenizer_config.json, then config.json) ----
        var contentToAddedId = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var a in added) contentToAddedId.TryAdd(a.Content, a.Id);
        var contents = new Dictionary<string, string>();
        foreach (var typ in new[] { "bos", "eos", "unk", "sep", "pad", "mask" })
        {
            int id = -1;
            if (tcfg is { } tc && Prop(tc, typ + "_token") is { } entry)
            {
                string? content = entry.ValueKind == JsonValueKind.String ? entry.GetString()
                    : entry.ValueKind == JsonValueKind.Object && Prop(entry, "content") is { ValueKind: JsonValueKind.String } ce ? ce.GetString() : null;
                if (content is not null)
                {
                    contents[typ] = content;
                    if (contentToAddedId.TryGetValue(content, out int aid)) id = aid;
                    else if (vocab.Count > 0 && Array.IndexOf(tokens, content) is >= 0 and var vid) id = vid;
                }
            }
            if (id < 0 && mcfg is { } mc2 && Prop(mc2, typ + "_token_id") is { ValueKind: JsonValueKind.Number } idEl && idEl.TryGetInt64(out long cid))
                id = (int)Math.Clamp(cid, -1, int.MaxValue);
            if (id < 0 && typ == "unk") id = unkFromModel;
            if (id >= 0) src.SpecialIds.Add((typ, id));
        }

        // ---- add_bos / add_eos ----
        src.AddBos = tcfg is { } t1 ? GetBool(t1, "add_bos_token") : null;
        src.AddEos = tcfg is { } t2 ? GetBool(t2, "add_eos_token") : null;
        if (TemplateSingle(Prop(root, "post_processor")) is { } single)
        {
            string? first = SpecialTokenOf(single.FirstOrDefault());
            string? last = SpecialTokenOf(single.LastOrDefault());
            src.AddBos ??= first is not null && contents.TryGetValue("bos", out var bc) && first == bc;
            src.AddEos ??= last is not null && contents.TryGetValue("eos", out var ec) && last == ec;
        }
        return new Tokenizer(src);
    }

    private static JsonDocument ReadJson(string path)
    {
        try
        {
            var bytes = File.ReadAllBytes(path);
            // Strings are decoded lazily by JsonElement, which throws InvalidOperationException on bad UTF-8.
            if (!System.Text.Unicode.Utf8.IsValid(bytes)) throw new FitLMException($"{path}: not valid UTF-8 (corrupt file?)");
            return JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new FitLMException($"{path}: malformed JSON: {e.Message}", e);
        }
        catch (IOException e)
        {
            throw new FitLMException($"{path}: {e.Message}", e);
        }
    }

    private static JsonElement? Prop(JsonElement? e, string name) =>
        e is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static bool? GetBool(JsonElement e, string name) =>
        Prop(e, name) is { } v && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;

    /// <summary>All nodes of a given "type" inside a (possibly Sequence-nested) component.</summary>
    private static IEnumerable<JsonElement> FindNodes(JsonElement? node, string type)
    {
        if (node is not { ValueKind: JsonValueKind.Object } o) yield break;
        if (Prop(o, "type")?.GetString() == type) yield return o;
        foreach (var listName in new[] { "pretokenizers", "normalizers", "decoders", "processors" })
            if (Prop(o, listName) is { ValueKind: JsonValueKind.Array } arr)
                foreach (var child in arr.EnumerateArray())
                    foreach (var x in FindNodes(child, type)) yield return x;
    }

    private static bool HasType(JsonElement? node, string type) => FindNodes(node, type).Any();

    private static bool IsByteToken(string t) =>
        t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>' && HexDigit(t[3]) >= 0 && HexDigit(t[4]) >= 0;

    /// <summary>convert_hf_to_gguf's does_token_look_special.</summary>
    private static bool LooksSpecial(string t) =>
        t is "<pad>" or "<mask>" or "<2mass>" or "[@BOS@]"
        || (t.StartsWith("<|", StringComparison.Ordinal) && t.EndsWith("|>", StringComparison.Ordinal))
        || (t.StartsWith("<｜", StringComparison.Ordinal) && t.EndsWith("｜>", StringComparison.Ordinal))
        || (t.StartsWith("<unused", StringComparison.Ordinal) && t.EndsWith('>'));

    /// <summary>
    /// SentencePiece-style scores for a tokenizer.json BPE: a token made by merge #r scores -(r+1), so llama.cpp's
    /// highest-score-first merging follows the merge order; single characters score 0, other tokens no merge
    /// can produce score -1e9.
    /// </summary>
    private static float[] SpmScores(string[] tokens, int[] types, List<(string, string)> merges)
    {
        var scores = new float[tokens.Length];
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Length; i++) index.TryAdd(tokens[i], i);
        var done = new bool[tokens.Length];
        for (int r = 0; r < merges.Count; r++)
        {
            if (index.TryGetValue(merges[r].Item1 + merges[r].Item2, out int id) && !done[id])
            {
                scores[id] = -(r + 1);
                done[id] = true;
            }
        }
        for (int i = 0; i < tokens.Length; i++)
        {
            if (done[i] || types[i] != TokenType.Normal) continue;
            var t = tokens[i];
            bool single = t.Length == 1 || (t.Length == 2 && char.IsSurrogatePair(t[0], t[1]));
            if (!single) scores[i] = -1e9f;
        }
        return scores;
    }

    private static bool? SpmAddSpacePrefix(JsonElement? normalizer, JsonElement? preTok)
    {
        if (FindNodes(normalizer, "Prepend").Any(p => Prop(p, "prepend")?.GetString() == "\u2581")) return true;
        foreach (var ms in FindNodes(preTok, "Metaspace"))
        {
            if (Prop(ms, "prepend_scheme")?.GetString() is { } scheme) return scheme != "never";
            return GetBool(ms, "add_prefix_space") ?? true;
        }
        if (normalizer is { ValueKind: JsonValueKind.Object }) return false;
        return null;
    }

    private static List<JsonElement>? TemplateSingle(JsonElement? post)
    {
        foreach (var tp in FindNodes(post, "TemplateProcessing"))
            if (Prop(tp, "single") is { ValueKind: JsonValueKind.Array } single)
                return single.EnumerateArray().ToList();
        return null;
    }

    private static string? SpecialTokenOf(JsonElement item) =>
        Prop(item, "SpecialToken") is { } st && Prop(st, "id") is { ValueKind: JsonValueKind.String } id ? id.GetString() : null;

    // ---- HF pre_tokenizer → llama.cpp pre-tokenizer ----

    private const string HfQwen2 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    private const string HfContractions = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
    private const string AdaptedContractions = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

    /// <summary>
    /// Translates the HF pre_tokenizer into llama.cpp's regex list and, where it is one llama.cpp knows, its name.
    /// Returns (name, null) for known ones, ("default", config-with-derived-regexes) otherwise.
    /// </summary>
    private static (string Name, PreTokenizerConfig? Override) MapPreTokenizer(JsonElement? preTok, string where)
    {
        var regexes = new List<string>();
        bool exact = true;
        void Walk(JsonElement? node)
        {
            if (node is not { ValueKind: JsonValueKind.Object } o) return;
            switch (Prop(o, "type")?.GetString())
            {
                case "Sequence":
                    if (Prop(o, "pretokenizers") is { ValueKind: JsonValueKind.Array } arr)
                        foreach (var c in arr.EnumerateArray()) Walk(c);
                    break;
                case "ByteLevel":
                    if (GetBool(o, "use_regex") ?? true) regexes.Add(PreTokenizerConfig.Gpt2);
                    if (GetBool(o, "add_prefix_space") == true) exact = false;
                    break;
                case "Split":
                    string? re = Prop(o, "pattern") is { } pat
                        ? Prop(pat, "Regex")?.GetString() ?? (Prop(pat, "String")?.GetString() is { } lit ? EscapeLiteral(lit) : null)
                        : null;
                    if (re is null) throw new FitLMException($"{where}: Split pre-tokenizer without a pattern");
                    if (Prop(o, "behavior")?.GetString() is { } beh && beh != "Isolated") exact = false;
                    if (GetBool(o, "invert") == true) exact = false;
                    regexes.Add(re);
                    break;
                case "Digits":
                    regexes.Add(GetBool(o, "individual_digits") == true ? "\\p{N}" : "\\p{N}+");
                    break;
                case "Punctuation":
                    regexes.Add(PreTokenizerConfig.FalconPunct);
                    break;
                default:
                    throw new FitLMException($"{where}: pre-tokenizer '{Prop(o, "type")?.GetString()}' is not supported for byte-level BPE");
            }
        }
        Walk(preTok);

        bool Is(params string[] expected) => regexes.SequenceEqual(expected);
        const string gpt2 = PreTokenizerConfig.Gpt2;
        if (exact)
        {
            if (Is(gpt2)) return ("gpt-2", null);
            if (Is("\\p{N}", gpt2)) return ("starcoder", null);
            if (Is(PreTokenizerConfig.FalconPunct, gpt2, "\\p{N}+", "[0-9][0-9][0-9]") || Is(PreTokenizerConfig.FalconPunct, gpt2, "[0-9][0-9][0-9]")) return ("falcon", null);
            if (Is(PreTokenizerConfig.Llama3Original) || Is(PreTokenizerConfig.Llama3)) return ("llama-bpe", null);
            if (Is(HfQwen2) || Is(PreTokenizerConfig.Qwen2)) return ("qwen2", null);
            if (Is("[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", PreTokenizerConfig.CjkHangul, "\\p{N}")) return ("deepseek-coder", null);
            if (Is("[\r\n]", PreTokenizerConfig.DeepseekLlmLetters, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", PreTokenizerConfig.CjkHangul, "\\p{N}+")) return ("deepseek-llm", null);
        }
        var adapted = regexes.Select(r => r.Replace(HfContractions, AdaptedContractions)).ToArray();
        if (adapted.Length == 0) adapted = [gpt2];
        return ("default", new PreTokenizerConfig("default", adapted));
    }

    private static string EscapeLiteral(string s)
    {
        var sb = new StringBuilder(s.Length * 2);
        foreach (char c in s)
        {
            if ("\\^$.|?*+()[]{}".Contains(c)) sb.Append('\\');
            sb.Append(c);
        }
        return sb.ToString();
    }
}
