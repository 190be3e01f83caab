using System.Text;
using System.Text.RegularExpressions;

namespace FitLM.Tokenization;

/// <summary>
/// What llama.cpp derives from <c>tokenizer.ggml.pre</c> for a byte-level BPE vocabulary:
/// the split regexes (applied in sequence) and a few tokenizer flags.
/// </summary>
internal sealed record PreTokenizerConfig(
    string Name, string[] Regexes, bool IgnoreMerges = false, bool AddBos = false, bool CleanSpaces = true,
    bool ClearBos = false, bool AddSep = false)
{
    // The regex texts below are the ones llama.cpp's llama-vocab.cpp uses (C++ escapes = C# escapes).
    internal const string Gpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
    internal const string Llama3 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string Llama3Original = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string Qwen2 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string Qwen35 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string Jais2 = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}";
    internal const string DeepseekLlmLetters = "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF\U0001E900-\U0001E943]+";
    internal const string CjkHangul = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+";
    internal const string Deepseek3Main = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
    internal const string CjkKana = "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+";
    internal const string Poro = " ?[^(\\s|.,!?…。，、।۔،)]+";
    internal const string Tekken = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string Gpt4o = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string GraniteEmbMulti = "[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))*((?=[\\p{L}\\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}\\p{M}])([^a-z]))+((?=[\\p{L}\\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    internal const string CasedWords = "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|";
    internal const string FalconPunct = "[\\p{P}\\$\\+<=>\\^~\\|`]+";

    private static readonly string[] GptFamily = ["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais"];

    /// <summary>Resolves a llama.cpp pre-tokenizer name; throws for names llama.cpp (or FitLM) does not know.</summary>
    public static PreTokenizerConfig Resolve(string? pre, string where)
    {
        string name = string.IsNullOrEmpty(pre) ? "default" : pre;
        string[] gpt2 = [Gpt2];
        string[] starcoder = ["\\p{N}", Gpt2];
        string[] qwen2 = [Qwen2];
        switch (name)
        {
            case "default":
                return new(name, ["[\\p{P}\\$\\+<=>\\^~\\|]+", Gpt2, "\\p{N}+", "[0-9][0-9][0-9]"]);
            case "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral" or "midm-2.0" or "lfm2" or "jina-v5-nano":
                return new(name, [Llama3], IgnoreMerges: true, AddBos: true);
            case "minicpm5":
                return new(name, ["\\p{N}{1,3}", Llama3.Replace("\\p{N}{1,3}", "\\p{N}+")], IgnoreMerges: true);
            case "dbrx" or "smaug-bpe":
                return new(name, [Llama3]);
            case "deepseek-llm":
                return new(name, ["[\r\n]", DeepseekLlmLetters, "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", CjkHangul, "\\p{N}+"], CleanSpaces: false);
            case "deepseek-coder":
                return new(name, ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", CjkHangul, "\\p{N}"], CleanSpaces: false);
            case "deepseek-v3" or "hunyuan-dense" or "hy_v4" or "joyai-llm":
                return new(name, ["\\p{N}{1,3}", CjkKana, Deepseek3Main], CleanSpaces: false);
            case "spark2_5":
                return new(name, ["\\p{N}{1,3}", CjkKana, Deepseek3Main.Replace("+[\r\n]*|\\s*[\r\n]+|", "+|[\r\n]|"), "\\p{N}"], CleanSpaces: false);
            case "falcon":
                return new(name, [FalconPunct, Gpt2, "[0-9][0-9][0-9]"]);
            case "starcoder" or "refact" or "codeshell" or "exaone" or "minerva-7b" or "mellum2":
                return new(name, starcoder);
            case "command-r" or "smollm":
                return new(name, starcoder, CleanSpaces: false);
            case "jina-v1-en" or "jina-v2-code" or "roberta-bpe":
                return new(name, gpt2, AddSep: true);
            case "trillion" or "granite-docling":
                return new(name, gpt2, CleanSpaces: false);
            case "jais-2":
                return new(name, [Jais2]);
            case "qwen2" or "deepseek-r1-qwen" or "kormo" or "f2llmv2" or "hunyuan" or "solar-open" or "grok-2":
                return new(name, qwen2, CleanSpaces: false);
            case "megrez" or "stablelm2":
                return new(name, qwen2);
            case "qwen35":
                return new(name, [Qwen35], CleanSpaces: false);
            case "poro-chat":
                return new(name, [Poro], CleanSpaces: false);
            case "bloom" or "gpt3-finnish":
                return new(name, [Poro]);
            case "glm4" or "chatglm-bpe":
                return new(name, [Llama3], ClearBos: true);
            case "viking":
                return new(name, [Poro, "\\p{N}"], CleanSpaces: false);
            case "tekken":
                return new(name, [Tekken], IgnoreMerges: true, AddBos: true, CleanSpaces: false);
            case "chameleon":
                return new(name, ["<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", "\\p{N}",
                    "[\\p{P}!-/:-@\\[-`{-~]", Gpt2], AddBos: true, CleanSpaces: false);
            case "gpt-4o" or "llama4" or "kanana2" or "talkie" or "minimax-m2":
                return new(name, [Gpt4o], CleanSpaces: false);
            case "granite-embed-multi-97m":
                return new(name, [GraniteEmbMulti], IgnoreMerges: true, CleanSpaces: false);
            case "tiny_aya" or "cohere2moe":
                return new(name, ["\\d{1,3}(?=(?:\\d{3})*\\b)", CasedWords + "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"], CleanSpaces: false);
            case "youtu":
                return new(name, ["[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥\u3040-ゟ゠-ヿ]+",
                    CasedWords + "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"], IgnoreMerges: true, CleanSpaces: false);
            case "superbpe":
                return new(name, ["\\p{N}+", "(?=(\\d{3})+(?!\\d))"], CleanSpaces: false);
            case "bailingmoe" or "bailingmoe2" or "llada-moe":
                return new(name, ["'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"], CleanSpaces: false);
            case "seed-coder":
                return new(name, ["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"], CleanSpaces: false);
            case "ufakzeka":
                return new(name, ["[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"], CleanSpaces: false);
            case "laguna":
                return new(name, ["[^\\n]+|[\\n]+", Qwen2], CleanSpaces: false);
            case "exaone-moe":
                return new(name, ["(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+"]);
        }
        if (Array.IndexOf(GptFamily, name) >= 0) return new(name, gpt2);
        throw new FitLMException($"{where}: unsupported pre-tokenizer type '{name}'");
    }
}

/// <summary>
/// Splits text into pre-token words exactly as llama.cpp's unicode_regex_split does: the regexes
/// run in sequence, each one re-splitting the pieces of the previous; text a regex does not match
/// stays a piece of its own. The GPT-2 and llama3 expressions use llama.cpp's hand-written
/// splitters (with their exact quirks); other expressions run as ECMAScript regexes over a
/// "collapsed" text in which every codepoint is one char (categories folded to placeholder chars
/// where the regex uses \p{..}), again as llama.cpp does with std::regex.
/// </summary>
internal sealed class PreTokenizerSplitter
{
    private abstract class Step
    {
        public abstract List<int> Apply(Context ctx, List<int> offsets);
    }

    private sealed class Context(int[] cps, int count)
    {
        public readonly int[] Cps = cps;
        public readonly int Count = count;
        private string? _collapsed, _wide;

        public CpFlags F(int pos, int ini, int end) => pos >= ini && pos < end ? UnicodeUtil.Flags(Cps[pos]) : CpFlags.None;

        public string Collapsed => _collapsed ??= BuildCollapsed();
        public string Wide => _wide ??= BuildWide();

        private string BuildCollapsed()
        {
            return string.Create(Count, this, static (span, ctx) =>
            {
                for (int i = 0; i < span.Length; i++)
                {
                    int cp = ctx.Cps[i];
                    if (cp < 128) { span[i] = (char)cp; continue; }
                    var f = UnicodeUtil.Flags(cp);
                    if ((f & CpFlags.Whitespace) != 0) { span[i] = '\v'; continue; }
                    span[i] = (f & CpFlags.CategoryMask) switch
                    {
                        CpFlags.Number => '\u00D1',
                        CpFlags.Letter => '\u00D2',
                        CpFlags.Punctuation => '\u00D3',
                        CpFlags.Mark => '\u00D4',
                        CpFlags.Symbol => '\u00D5',
                        _ => '\u00D0',
                    };
                }
            });
        }

        private string BuildWide()
        {
            return string.Create(Count, this, static (span, ctx) =>
            {
                for (int i = 0; i < span.Length; i++)
                {
                    int cp = ctx.Cps[i];
                    if (cp > 0x7F && UnicodeUtil.IsWhitespace(cp)) span[i] = '\v';
                    else if (cp > 0xFFFF) span[i] = '\uFFFF'; // one char per codepoint; astral ranges are not expressible
                    else span[i] = (char)cp;
                }
            });
        }
    }

    private readonly Step[] _steps;

    public PreTokenizerSplitter(IReadOnlyList<string> regexes, string where)
    {
        _steps = new Step[regexes.Count];
        for (int i = 0; i < regexes.Count; i++) _steps[i] = MakeStep(regexes[i], where);
    }

    /// <summary>Returns the lengths (in codepoints) of consecutive pieces covering cps[0..count); may contain zeros.</summary>
    public List<int> Split(int[] cps, int count)
    {
        var ctx = new Context(cps, count);
        var offsets = new List<int>(1) { count };
        foreach (var s in _steps) offsets = s.Apply(ctx, offsets);
        return offsets;
    }

    private static readonly string[] CategoryNames = ["\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}", "\\p{Lm}", "\\p{Lo}"];

    private static Step MakeStep(string regex, string where)
    {
        if (regex == PreTokenizerConfig.Gpt2) return new Gpt2Step();
        if (regex == PreTokenizerConfig.Llama3 || regex == PreTokenizerConfig.Llama3Original) return new Llama3Step();
        bool collapsed = CategoryNames.Any(regex.Contains);
        string pattern;
        if (collapsed)
        {
            if (regex.Any(c => c >= 128))
                throw new FitLMException($"{where}: pre-tokenizer regex mixes unicode categories and non-ASCII characters (not supported by llama.cpp): {regex}");
            pattern = CollapseRegex(regex);
        }
        else pattern = WidenRegex(regex);
        pattern = ToDotNet(pattern);
        try
        {
            return new RegexStep(new Regex(pattern, RegexOptions.ECMAScript | RegexOptions.Compiled), collapsed);
        }
        catch (ArgumentException e)
        {
            throw new FitLMException($"{where}: cannot compile pre-tokenizer regex '{regex}': {e.Message}", e);
        }
    }

    /// <summary>llama.cpp's rewrite of \p{..} classes into the collapsed placeholder alphabet.</summary>
    private static string CollapseRegex(string re)
    {
        static string Map(string cat) => cat switch
        {
            "\\p{N}" => "\u00D10-9",
            "\\p{P}" => "\u00D3!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
            "\\p{M}" => "\u00D4",
            "\\p{S}" => "\u00D5\\$\\+<->^`\\|",
            _ => "\u00D2A-Za-z", // \p{L} and its sub-categories
        };
        var sb = new StringBuilder(re.Length + 32);
        bool inside = false;
        for (int i = 0; i < re.Length; i++)
        {
            char c = re[i];
            if (c == '[' && (i == 0 || re[i - 1] != '\\')) { sb.Append('['); inside = true; continue; }
            if (inside && c == ']' && re[i - 1] != '\\') { sb.Append(']'); inside = false; continue; }
            if (c == '\\' && i + 3 < re.Length && re[i + 1] == 'p' && re[i + 2] == '{')
            {
                int close = re.IndexOf('}', i + 3);
                if (close >= 0 && close <= i + 10)
                {
                    string pat = re.Substring(i, close - i + 1);
                    if (Array.IndexOf(CategoryNames, pat) >= 0)
                    {
                        if (!inside) sb.Append('[');
                        sb.Append(Map(pat));
                        if (!inside) sb.Append(']');
                        i = close;
                        continue;
                    }
                }
            }
            sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>Drops astral codepoints from a wregex pattern (the text side maps them to U+FFFF).</summary>
    private static string WidenRegex(string re)
    {
        if (!re.Any(char.IsSurrogate)) return re;
        var sb = new StringBuilder(re.Length);
        for (int i = 0; i < re.Length; i++)
        {
            if (char.IsHighSurrogate(re[i]) && i + 1 < re.Length)
            {
                i++; // skip the pair; also skip a following "-<astral>" range end
                if (i + 3 < re.Length && re[i + 1] == '-' && char.IsHighSurrogate(re[i + 2])) i += 3;
                continue;
            }
            sb.Append(re[i]);
        }
        return sb.ToString();
    }

    /// <summary>ECMAScript '$' is end of input only; .NET's also matches before a final newline.</summary>
    private static string ToDotNet(string re)
    {
        if (!re.Contains('$')) return re;
        var sb = new StringBuilder(re.Length + 4);
        bool inClass = false;
        for (int i = 0; i < re.Length; i++)
        {
            char c = re[i];
            if (c == '\\' && i + 1 < re.Length) { sb.Append(c).Append(re[++i]); continue; }
            if (c == '[') inClass = true;
            else if (c == ']') inClass = false;
            if (c == '$' && !inClass) { sb.Append("\\z"); continue; }
            sb.Append(c);
        }
        return sb.ToString();
    }

    private sealed class RegexStep(Regex regex, bool collapsed) : Step
    {
        public override List<int> Apply(Context ctx, List<int> offsets)
        {
            string text = collapsed ? ctx.Collapsed : ctx.Wide;
            var result = new List<int>(offsets.Count * 2);
            int start = 0;
            foreach (int offset in offsets)
            {
                int startIdx = 0;
                if (offset > 0)
                {
                    for (var m = regex.Match(text, start, offset); m.Success; m = m.NextMatch())
                    {
                        int pos = m.Index - start;
                        if (pos > startIdx) result.Add(pos - startIdx);
                        result.Add(m.Length);
                        startIdx = pos + m.Length;
                    }
                }
                if (startIdx < offset) result.Add(offset - startIdx);
                start += offset;
            }
            return result;
        }
    }

    // Port of unicode_regex_split_custom_gpt2:
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    private sealed class Gpt2Step : Step
    {
        public override List<int> Apply(Context ctx, List<int> offsets)
        {
            var result = new List<int>(Math.Max(16, ctx.Count / 3));
            var cps = ctx.Cps;
            int start = 0;
            foreach (int offset in offsets)
            {
                int ini = start, end = start + offset;
                start = end;
                int prevEnd = ini;
                void Add(int e) { if (e > prevEnd) result.Add(e - prevEnd); prevEnd = e; }
                int Cpt(int p) => p >= ini && p < end ? cps[p] : -1;

                int pos = ini;
                while (pos < end)
                {
                    int cpt = cps[pos];
                    var flags = ctx.F(pos, ini, end);

                    if (cpt == '\'' && pos + 1 < end)
                    {
                        int n1 = cps[pos + 1];
                        if (n1 is 's' or 't' or 'm' or 'd') { pos += 2; Add(pos); continue; }
                        if (pos + 2 < end)
                        {
                            int n2 = cps[pos + 2];
                            if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) { pos += 3; Add(pos); continue; }
                        }
                    }

                    var flags2 = cpt == ' ' ? ctx.F(pos + 1, ini, end) : flags;
                    if ((flags2 & CpFlags.Letter) != 0)
                    {
                        if (cpt == ' ') pos++;
                        while ((flags2 & CpFlags.Letter) != 0) flags2 = ctx.F(++pos, ini, end);
                        Add(pos);
                        continue;
                    }
                    if ((flags2 & CpFlags.Number) != 0)
                    {
                        if (cpt == ' ') pos++;
                        while ((flags2 & CpFlags.Number) != 0) flags2 = ctx.F(++pos, ini, end);
                        Add(pos);
                        continue;
                    }
                    if ((flags2 & (CpFlags.Whitespace | CpFlags.Letter | CpFlags.Number)) == 0 && flags2 != CpFlags.None)
                    {
                        if (cpt == ' ') pos++;
                        while ((flags2 & (CpFlags.Whitespace | CpFlags.Letter | CpFlags.Number)) == 0 && flags2 != CpFlags.None)
                            flags2 = ctx.F(++pos, ini, end);
                        Add(pos);
                        continue;
                    }

                    int nws = 0;
                    while ((ctx.F(pos + nws, ini, end) & CpFlags.Whitespace) != 0) nws++;
                    if (nws > 1 && Cpt(pos + nws) != -1) { pos += nws - 1; Add(pos); continue; }
                    if (nws > 0) { pos += nws; Add(pos); continue; }
                    Add(++pos);
                }
            }
            return result;
        }
    }

    // Port of unicode_regex_split_custom_llama3:
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    private sealed class Llama3Step : Step
    {
        public override List<int> Apply(Context ctx, List<int> offsets)
        {
            var result = new List<int>(Math.Max(16, ctx.Count / 3));
            var cps = ctx.Cps;
            int start = 0;
            foreach (int offset in offsets)
            {
                int ini = start, end = start + offset;
                start = end;
                int prevEnd = ini;
                void Add(int e) { if (e > prevEnd) result.Add(e - prevEnd); prevEnd = e; }
                int Cpt(int p) => p >= ini && p < end ? cps[p] : -1;

                int pos = ini;
                while (pos < end)
                {
                    int cpt = cps[pos];
                    var flags = ctx.F(pos, ini, end);

                    if (cpt == '\'' && pos + 1 < end)
                    {
                        int n1 = UnicodeUtil.ToLower(cps[pos + 1]);
                        if (n1 is 's' or 't' or 'm' or 'd') { pos += 2; Add(pos); continue; }
                        if (pos + 2 < end)
                        {
                            int n2 = UnicodeUtil.ToLower(cps[pos + 2]);
                            if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) { pos += 3; Add(pos); continue; }
                        }
                    }

                    if (!(cpt == '\r' || cpt == '\n' || (flags & CpFlags.Number) != 0))
                    {
                        if ((flags & CpFlags.Letter) != 0 || (ctx.F(pos + 1, ini, end) & CpFlags.Letter) != 0)
                        {
                            pos++;
                            while ((ctx.F(pos, ini, end) & CpFlags.Letter) != 0) pos++;
                            Add(pos);
                            continue;
                        }
                    }

                    if ((flags & CpFlags.Number) != 0)
                    {
                        int n0 = pos;
                        while ((ctx.F(pos, ini, end) & CpFlags.Number) != 0)
                        {
                            if (++pos - n0 >= 3) { Add(pos); n0 = pos; }
                        }
                        Add(pos);
                        continue;
                    }

                    var flags2 = cpt == ' ' ? ctx.F(pos + 1, ini, end) : flags;
                    if ((flags2 & (CpFlags.Whitespace | CpFlags.Letter | CpFlags.Number)) == 0 && flags != CpFlags.None)
                    {
                        if (cpt == ' ') pos++;
                        while ((flags2 & (CpFlags.Whitespace | CpFlags.Letter | CpFlags.Number)) == 0 && flags2 != CpFlags.None)
                            flags2 = ctx.F(++pos, ini, end);
                        int c2 = Cpt(pos);
                        while (c2 == '\r' || c2 == '\n') c2 = Cpt(++pos);
                        Add(pos);
                        continue;
                    }

                    int nws = 0, lastEndRn = 0;
                    while ((ctx.F(pos + nws, ini, end) & CpFlags.Whitespace) != 0)
                    {
                        int c2 = Cpt(pos + nws);
                        if (c2 == '\r' || c2 == '\n') lastEndRn = pos + nws + 1;
                        nws++;
                    }
                    if (lastEndRn > 0) { pos = lastEndRn; Add(pos); continue; }
                    if (nws > 1 && Cpt(pos + nws) != -1) { pos += nws - 1; Add(pos); continue; }
                    if (nws > 0) { pos += nws; Add(pos); continue; }
                    Add(++pos);
                }
            }
            return result;
        }
    }
}
