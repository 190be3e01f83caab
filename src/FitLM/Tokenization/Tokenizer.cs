using System.Collections.Concurrent;
using System.Text;
using FitLM.Formats;

namespace FitLM.Tokenization;

/// <summary>
/// A text tokenizer with llama.cpp's exact semantics (llama-vocab.cpp / unicode.cpp): SentencePiece-style
/// BPE ("llama" vocabularies: Llama 2, Phi-3, ...) and byte-level BPE ("gpt2" vocabularies: GPT-2, Llama 3,
/// Qwen2, StarCoder, DeepSeek, ...). Load it from GGUF metadata or from a Hugging Face tokenizer.json.
/// Instances are immutable and thread-safe.
/// </summary>
public sealed partial class Tokenizer
{
    private const char SpaceEscape = '\u2581';
    private const TokenAttr SpecialAttrs = TokenAttr.Unknown | TokenAttr.Control;

    private readonly string[] _tokens;
    private readonly float[]? _scores;
    private readonly float[] _scoreOrZero;
    private readonly int[] _types;
    private readonly TokenAttr[] _attrs;
    private readonly string[]? _mergeStrings;
    private readonly Dictionary<string, int> _tokenToId;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _tokenToIdSpan;
    private readonly int[] _specialCache;        // control / user-defined / unknown ids, longest text first
    private readonly byte[][] _pieces;           // token_to_piece(id, special: true)
    private readonly HashSet<int> _eog = new();
    private readonly int[] _spmByteTokens = new int[256];
    private readonly PreTokenizerSplitter? _splitter;
    private readonly BpeMerges? _bpe;
    private readonly ConcurrentDictionary<string, int[]> _wordCache = new();
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _wordCacheSpan;
    private readonly bool _byteEncode = true;
    private readonly bool _escapeWhitespaces;
    private readonly string _where;

    private int _bos = -1, _eos = -1, _eot = -1, _eom = -1, _unk = -1, _sep = -1, _pad = -1, _mask = -1;
    private int _fimPre = -1, _fimSuf = -1, _fimMid = -1, _fimPad = -1, _fimRep = -1, _fimSep = -1;

    public TokenizerKind Kind { get; }

    /// <summary>llama.cpp pre-tokenizer name (<c>tokenizer.ggml.pre</c>): "gpt-2", "llama-bpe", "qwen2", ...; "default" for SPM.</summary>
    public string PreTokenizer { get; }

    /// <summary>False when a Hugging Face pre-tokenizer matched none of llama.cpp's known ones (its regexes are used as given).</summary>
    public bool PreTokenizerRecognized { get; } = true;

    public int VocabSize => _tokens.Length;
    public int BosId => _bos;
    public int EosId => _eos;
    public int EotId => _eot;
    public bool AddBos { get; }
    public bool AddEos { get; }

    /// <summary>SPM: prepend a space to text that starts a fragment (tokenizer.ggml.add_space_prefix).</summary>
    public bool AddSpacePrefix { get; }

    /// <summary>Detokenizer clean-up of spaces before punctuation (llama.cpp's clean_spaces).</summary>
    public bool CleanSpaces { get; }

    /// <summary>BPE: a pre-token word that is itself a token is emitted without merging (llama3 style).</summary>
    public bool IgnoreMerges { get; }

    // ---- what a GGUF writer needs (the arrays are the tokenizer's own: do not modify) ----
    public string[] Tokens => _tokens;
    public float[]? Scores => _scores;
    public int[] TokenTypes => _types;
    public string[]? Merges => _mergeStrings;
    public int? PadId => _pad >= 0 ? _pad : null;
    public int? UnknownId => _unk >= 0 ? _unk : null;
    public int? SeparatorId => _sep >= 0 ? _sep : null;
    public int? MaskId => _mask >= 0 ? _mask : null;

    /// <summary>Token ids that end generation (eos, eot, eom, &lt;|im_end|&gt;, &lt;|eot_id|&gt;, FIM pad/rep/sep, ...).</summary>
    public IReadOnlyCollection<int> EndOfGenerationIds => _eog;

    public bool IsEndOfGeneration(int id) => _eog.Contains(id);

    /// <summary>The raw vocabulary string of a token.</summary>
    public string TokenText(int id) => _tokens[CheckId(id)];

    /// <summary>The llama.cpp token type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).</summary>
    public int TokenTypeOf(int id) => _types[CheckId(id)];

    public bool IsControl(int id) => (_attrs[CheckId(id)] & TokenAttr.Control) != 0;

    /// <summary>
    /// Bytes a token contributes to output text, as llama.cpp's token_to_piece(special: false):
    /// control and unknown tokens contribute nothing. Feed these to a UTF-8 <see cref="Decoder"/> when streaming.
    /// </summary>
    public byte[] TokenBytes(int id) => TokenBytes(id, special: false);

    /// <summary>token_to_piece: with <paramref name="special"/> control/unknown tokens render as their text.</summary>
    public byte[] TokenBytes(int id, bool special)
    {
        CheckId(id);
        if (!special && (_attrs[id] & SpecialAttrs) != 0) return [];
        return (byte[])_pieces[id].Clone();
    }

    private ReadOnlySpan<byte> Piece(int id, bool special)
    {
        CheckId(id);
        if (!special && (_attrs[id] & SpecialAttrs) != 0) return default;
        return _pieces[id];
    }

    private int CheckId(int id) =>
        (uint)id < (uint)_tokens.Length ? id : throw new ArgumentOutOfRangeException(nameof(id), $"token id {id} is outside the vocabulary (0..{_tokens.Length - 1})");

    // =====================================================================================
    // Loading
    // =====================================================================================

    /// <summary>Loads the tokenizer described by a GGUF file's tokenizer.ggml.* metadata.</summary>
    public static Tokenizer FromGguf(GgufFile gguf)
    {
        string where = Path.GetFileName(gguf.Path);
        var src = new TokenizerSource
        {
            Where = where,
            Model = Str(gguf, "tokenizer.ggml.model", where) ?? throw new FitLMException($"{where}: metadata 'tokenizer.ggml.model' is missing (no tokenizer in this file)"),
            Pre = Str(gguf, "tokenizer.ggml.pre", where),
            Tokens = Arr(gguf, "tokenizer.ggml.tokens", where, v => v.AsStringArray())
                     ?? throw new FitLMException($"{where}: metadata 'tokenizer.ggml.tokens' is missing"),
            Scores = Arr(gguf, "tokenizer.ggml.scores", where, v => v.Value is int[] or uint[] ? Array.ConvertAll(v.AsInt32Array(), x => (float)x) : v.AsFloatArray()),
            Types = Arr(gguf, "tokenizer.ggml.token_type", where, v => v.AsInt32Array()),
            GeneralName = Str(gguf, "general.name", where),
            Architecture = Str(gguf, "general.architecture", where),
        };
        if (src.Model == "gpt2")
        {
            var merges = Arr(gguf, "tokenizer.ggml.merges", where, v => v.AsStringArray())
                         ?? throw new FitLMException($"{where}: metadata 'tokenizer.ggml.merges' is missing (required for a gpt2 tokenizer)");
            src.MergeStrings = merges;
            src.MergePairs = ParseMerges(merges, where);
        }
        foreach (var (name, key) in SpecialKeys)
        {
            if (gguf.Find("tokenizer.ggml." + key) is { } v)
            {
                long id;
                try { id = v.AsInt64(); }
                catch (FitLMException e) { throw new FitLMException($"{where}: metadata 'tokenizer.ggml.{key}': {e.Message}"); }
                src.SpecialIds.Add((name, id));
            }
        }
        src.AddBos = Bool(gguf, "tokenizer.ggml.add_bos_token", where);
        src.AddEos = Bool(gguf, "tokenizer.ggml.add_eos_token", where);
        src.AddSep = Bool(gguf, "tokenizer.ggml.add_sep_token", where);
        src.AddSpacePrefix = Bool(gguf, "tokenizer.ggml.add_space_prefix", where);
        return new Tokenizer(src);
    }

    internal static readonly (string Name, string Key)[] SpecialKeys =
    [
        ("bos", "bos_token_id"), ("eos", "eos_token_id"), ("eot", "eot_token_id"), ("eom", "eom_token_id"),
        ("unk", "unknown_token_id"), ("sep", "seperator_token_id"), ("pad", "padding_token_id"), ("mask", "mask_token_id"),
        ("fim_pre", "fim_pre_token_id"), ("fim_suf", "fim_suf_token_id"), ("fim_mid", "fim_mid_token_id"),
        ("fim_pad", "fim_pad_token_id"), ("fim_rep", "fim_rep_token_id"), ("fim_sep", "fim_sep_token_id"),
        ("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"), ("fim_mid", "middle_token_id"),
    ];

    private static string? Str(GgufFile g, string key, string where)
    {
        var v = g.Find(key);
        if (v is null) return null;
        return v.Value as string ?? throw new FitLMException($"{where}: metadata '{key}' is not a string");
    }

    private static bool? Bool(GgufFile g, string key, string where)
    {
        var v = g.Find(key);
        if (v is null) return null;
        try { return v.AsBool(); }
        catch (FitLMException e) { throw new FitLMException($"{where}: metadata '{key}': {e.Message}"); }
    }

    private static T? Arr<T>(GgufFile g, string key, string where, Func<GgufValue, T> get) where T : class
    {
        var v = g.Find(key);
        if (v is null) return null;
        try { return get(v); }
        catch (FitLMException e) { throw new FitLMException($"{where}: metadata '{key}' has the wrong type: {e.Message}"); }
    }

    internal static List<(string, string)> ParseMerges(IReadOnlyList<string> merges, string where)
    {
        var pairs = new List<(string, string)>(merges.Count);
        for (int i = 0; i < merges.Count; i++)
        {
            string m = merges[i] ?? "";
            int pos = m.Length > 1 ? m.IndexOf(' ', 1) : -1;
            if (pos < 0 || pos == m.Length - 1)
                throw new FitLMException($"{where}: malformed BPE merge #{i} '{m}' (expected two pieces separated by a space)");
            pairs.Add((m[..pos], m[(pos + 1)..]));
        }
        return pairs;
    }

    /// <summary>Everything both loaders hand to the common constructor.</summary>
    internal sealed class TokenizerSource
    {
        public required string Where;
        public required string Model;           // "llama" (SPM) or "gpt2" (BPE)
        public string? Pre;
        public PreTokenizerConfig? PreOverride; // HF pre-tokenizers that match no llama.cpp name
        public required string[] Tokens;
        public float[]? Scores;
        public int[]? Types;
        public List<(string, string)>? MergePairs;
        public string[]? MergeStrings;
        public List<(string Name, long Id)> SpecialIds = new();
        public bool? AddBos, AddEos, AddSep, AddSpacePrefix;
        public bool? CleanSpaces, IgnoreMerges;
        public string? GeneralName, Architecture;
        public Dictionary<int, TokenAttr>? ExtraAttrs;
    }

    private Tokenizer(TokenizerSource src)
    {
        _where = src.Where;
        string where = src.Where;
        int n = src.Tokens.Length;
        if (n == 0) throw new FitLMException($"{where}: the tokenizer vocabulary is empty");

        // ---- vocab type, defaults, pre-tokenizer (llama_vocab::impl::load order) ----
        PreTokenizerConfig? pre = null;
        bool addBos = false, addEos = false, addSpacePrefix = false, cleanSpaces = false, ignoreMerges = false;
        switch (src.Model)
        {
            case "llama":
                Kind = TokenizerKind.Spm;
                _bos = 1; _eos = 2; _unk = 0;
                PreTokenizer = "default";
                addSpacePrefix = true; cleanSpaces = false; addBos = true; addEos = false;
                break;
            case "gpt2":
                Kind = TokenizerKind.BytePairGpt2;
                _bos = 11; _eos = 11;
                pre = src.PreOverride ?? PreTokenizerConfig.Resolve(src.Pre, where);
                PreTokenizer = pre.Name;
                PreTokenizerRecognized = src.PreOverride is null;
                addSpacePrefix = false; cleanSpaces = pre.CleanSpaces; ignoreMerges = pre.IgnoreMerges; addBos = pre.AddBos;
                if (pre.ClearBos) _bos = -1;
                if (src.MergePairs is null) throw new FitLMException($"{where}: BPE merges are missing");
                break;
            default:
                throw new FitLMException($"{where}: unsupported tokenizer model '{src.Model}' (FitLM supports 'llama' and 'gpt2')");
        }
        if (src.AddSpacePrefix is { } asp) addSpacePrefix = asp;
        if (src.CleanSpaces is { } cs) cleanSpaces = cs;
        if (src.IgnoreMerges is { } im) ignoreMerges |= im;

        // ---- tokens, scores, types ----
        if (src.Scores is { } sc && sc.Length < n) throw new FitLMException($"{where}: tokenizer scores has {sc.Length} entries for {n} tokens");
        if (src.Types is { } ty && ty.Length < n) throw new FitLMException($"{where}: tokenizer token_type has {ty.Length} entries for {n} tokens");
        _tokens = new string[n];
        _types = new int[n];
        _attrs = new TokenAttr[n];
        _scores = src.Scores is null ? null : src.Scores.Length == n ? src.Scores : src.Scores[..n];
        _scoreOrZero = _scores ?? new float[n];
        _tokenToId = new Dictionary<string, int>(n, StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            string word = src.Tokens[i];
            if (string.IsNullOrEmpty(word)) word = $"[EMPTY_{i}]";
            _tokens[i] = word;
            _tokenToId.TryAdd(word, i);
            int t = src.Types?[i] ?? TokenType.Normal;
            _types[i] = t;
            _attrs[i] = t switch
            {
                TokenType.Unknown => TokenAttr.Unknown,
                TokenType.Unused => TokenAttr.Unused,
                TokenType.Normal => TokenAttr.Normal,
                TokenType.Control => TokenAttr.Control,
                TokenType.UserDefined => TokenAttr.UserDefined,
                TokenType.Byte => TokenAttr.Byte,
                _ => TokenAttr.Undefined,
            };
        }
        _tokenToIdSpan = _tokenToId.GetAlternateLookup<ReadOnlySpan<char>>();
        _wordCacheSpan = _wordCache.GetAlternateLookup<ReadOnlySpan<char>>();
        _mergeStrings = src.MergeStrings;

        if (Kind == TokenizerKind.BytePairGpt2)
        {
            _splitter = new PreTokenizerSplitter(pre!.Regexes, where);
            _bpe = new BpeMerges(_tokenToId, n, src.MergePairs!);
        }

        // ---- special token ids ----
        ref int Slot(string name)
        {
            switch (name)
            {
                case "bos": return ref _bos;
                case "eos": return ref _eos;
                case "eot": return ref _eot;
                case "eom": return ref _eom;
                case "unk": return ref _unk;
                case "sep": return ref _sep;
                case "pad": return ref _pad;
                case "mask": return ref _mask;
                case "fim_pre": return ref _fimPre;
                case "fim_suf": return ref _fimSuf;
                case "fim_mid": return ref _fimMid;
                case "fim_pad": return ref _fimPad;
                case "fim_rep": return ref _fimRep;
                default: return ref _fimSep;
            }
        }
        foreach (var name in new[] { "bos", "eos", "unk" })
            if (Slot(name) >= n) Slot(name) = -1; // default out of vocab range: disabled
        foreach (var (name, id) in src.SpecialIds)
        {
            if (id >= 0 && id < n) { Slot(name) = (int)id; continue; }
            if (id < 0) continue; // "none"
            if (name is "bos" or "eos" or "unk")
                throw new FitLMException($"{where}: special token id {name} = {id} is outside the vocabulary (0..{n - 1})");
            // other special ids out of range: llama.cpp warns and keeps the default
        }

        if (src.AddBos is { } ab) addBos = ab;
        if (src.AddEos is { } ae) addEos = ae;
        if (addBos && _bos < 0) throw new FitLMException($"{where}: add_bos_token is true, but no bos_token_id is set");
        if (addEos && _eos < 0) throw new FitLMException($"{where}: add_eos_token is true, but no eos_token_id is set");
        AddBos = addBos; AddEos = addEos; AddSpacePrefix = addSpacePrefix; CleanSpaces = cleanSpaces; IgnoreMerges = ignoreMerges;
        _escapeWhitespaces = false;

        DetectSpecialTokensByText();

        // ---- special token cache: longest text (in UTF-8 bytes) first ----
        var special = new List<int>();
        for (int i = 0; i < n; i++)
            if ((_attrs[i] & (TokenAttr.Control | TokenAttr.UserDefined | TokenAttr.Unknown)) != 0) special.Add(i);
        var byteLen = special.ToDictionary(i => i, i => UnicodeUtil.Utf8Length(_tokens[i]));
        _specialCache = special.OrderByDescending(i => byteLen[i]).ThenBy(i => i).ToArray();

        // ---- token → piece cache (special = true) ----
        _pieces = new byte[n][];
        for (int i = 0; i < n; i++) _pieces[i] = ComputePiece(i);

        // ---- SPM byte fallback table ----
        for (int b = 0; b < 256; b++)
        {
            _spmByteTokens[b] = -1;
            if (_tokenToId.TryGetValue($"<0x{b:X2}>", out int bt)) _spmByteTokens[b] = bt;
            else if (b < 0x80 && _tokenToId.TryGetValue(((char)b).ToString(), out bt)) _spmByteTokens[b] = bt;
        }

        // ---- per-token attributes llama.cpp sets by model name ----
        string modelName = (src.GeneralName ?? "").ToLowerInvariant();
        string preName = src.Pre ?? "";
        string arch = src.Architecture ?? "";
        if (new[] { "jina-v2-de", "jina-v2-es", "jina-v2-code" }.Any(preName.Contains) || new[] { "nomic-bert-moe", "jina-bert-v3" }.Any(arch.Contains))
        {
            if (_tokenToId.TryGetValue("<mask>", out int m)) _attrs[m] |= TokenAttr.LStrip;
        }
        else if (modelName.Contains("phi-3") || modelName.Contains("phi3"))
        {
            foreach (int id in _specialCache) _attrs[id] |= TokenAttr.RStrip;
            if (_tokenToId.TryGetValue("</s>", out int es)) _attrs[es] |= TokenAttr.RStrip;
            foreach (var t in new[] { "<unk>", "<s>", "<|endoftext|>" })
                if (_tokenToId.TryGetValue(t, out int id)) _attrs[id] &= ~TokenAttr.RStrip;
        }
        else if (modelName.Contains("modern-bert"))
        {
            if (_tokenToId.TryGetValue("[MASK]", out int m)) _attrs[m] |= TokenAttr.LStrip;
        }
        if (src.ExtraAttrs is { } extra)
            foreach (var (id, a) in extra) _attrs[id] |= a;
    }

    private static readonly string[] EotTexts = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>"];
    private static readonly string[] FimPreTexts = ["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>", "<|prefix|>"];
    private static readonly string[] FimSufTexts = ["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>", "<|suffix|>"];
    private static readonly string[] FimMidTexts = ["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>", "<|middle|>"];
    private static readonly string[] FimPadTexts = ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
    private static readonly string[] FimRepTexts = ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
    private static readonly string[] FimSepTexts = ["<|file_sep|>"];
    private static readonly string[] EogTexts = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~["];

    /// <summary>llama.cpp's text-based detection of EOT/EOM/FIM/EOG tokens (forcing them to control type).</summary>
    private void DetectSpecialTokensByText()
    {
        int n = _tokens.Length;
        void Find(ref int slot, string[] texts)
        {
            if (slot >= 0) return;
            int best = -1;
            foreach (var t in texts)
                if (_tokenToId.TryGetValue(t, out int id) && (best < 0 || id < best)) best = id;
            if (best < 0) return;
            slot = best;
            _attrs[best] |= TokenAttr.Control;
        }
        Find(ref _eot, EotTexts);
        Find(ref _eom, ["<|eom_id|>"]);
        Find(ref _fimPre, FimPreTexts);
        Find(ref _fimSuf, FimSufTexts);
        Find(ref _fimMid, FimMidTexts);
        Find(ref _fimPad, FimPadTexts);
        Find(ref _fimRep, FimRepTexts);
        Find(ref _fimSep, FimSepTexts);

        for (int i = 0; i < n; i++)
            if ((_attrs[i] & TokenAttr.Control) != 0 && _tokens[i].Contains("unused", StringComparison.Ordinal))
                _attrs[i] |= TokenAttr.Unused;

        foreach (int id in new[] { _fimPad, _fimRep, _fimSep }) if (id >= 0) _eog.Add(id);
        foreach (var t in EogTexts)
        {
            if (!_tokenToId.TryGetValue(t, out int id)) continue;
            _eog.Add(id);
            _attrs[id] |= TokenAttr.Control;
        }
        foreach (var t in new[] { "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>" })
            if (_tokenToId.TryGetValue(t, out int id)) _attrs[id] = TokenAttr.UserDefined;
        foreach (int id in new[] { _eos, _eot, _eom }) if (id >= 0) _eog.Add(id);

        int Eog(string text) => _eog.FirstOrDefault(id => _tokens[id] == text, -1);
        int end = Eog("<|end|>");
        if (end >= 0 && ((Eog("<|return|>") >= 0 && Eog("<|call|>") >= 0) || ((Eog("<|call|>") >= 0 || Eog("<|calls|>") >= 0) && Eog("<|flush|>") >= 0)))
        {
            _eog.Remove(end);
            _attrs[end] = TokenAttr.UserDefined;
        }
        int s = Eog("</s>");
        if (s >= 0 && Eog("<|tool_response>") >= 0)
        {
            _eog.Remove(s);
            _attrs[s] = TokenAttr.Normal;
        }
    }

    /// <summary>token_to_piece(id, lstrip: 0, special: true).</summary>
    private byte[] ComputePiece(int id)
    {
        var attr = _attrs[id];
        string text = _tokens[id];
        if ((attr & (SpecialAttrs | TokenAttr.UserDefined)) != 0) return Encoding.UTF8.GetBytes(text);
        if ((attr & TokenAttr.Normal) != 0)
        {
            if (Kind == TokenizerKind.Spm || _escapeWhitespaces) return Encoding.UTF8.GetBytes(text.Replace(SpaceEscape, ' '));
            return DecodeByteLevel(text);
        }
        if ((attr & TokenAttr.Byte) != 0) return [TokenToByte(text)];
        return [];
    }

    /// <summary>strtol(text.substr(3, 2), 16): the byte of a "&lt;0xNN&gt;" token.</summary>
    private static byte TokenToByte(string text)
    {
        int v = 0;
        for (int i = 3; i < Math.Min(5, text.Length); i++)
        {
            int d = HexDigit(text[i]);
            if (d < 0) break;
            v = v * 16 + d;
        }
        return (byte)v;
    }

    private static int HexDigit(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };

    /// <summary>llama_decode_text: byte-level chars back to bytes.</summary>
    private static byte[] DecodeByteLevel(string text)
    {
        var bytes = new List<byte>(text.Length);
        Span<byte> tmp = stackalloc byte[4];
        for (int i = 0; i < text.Length; i++)
        {
            int cp = text[i];
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) cp = char.ConvertToUtf32(text[i], text[++i]);
            else if (char.IsSurrogate(text[i])) cp = 0xFFFD;
            int b = UnicodeUtil.ByteOfChar(cp);
            if (b >= 0) { bytes.Add((byte)b); continue; }
            int k = UnicodeUtil.EncodeUtf8(cp, tmp);
            var sb = new StringBuilder("[UNK_BYTE_0x");
            for (int j = 0; j < k; j++) sb.Append(tmp[j].ToString("x2"));
            sb.Append(text).Append(']');
            bytes.AddRange(Encoding.UTF8.GetBytes(sb.ToString()));
        }
        return bytes.ToArray();
    }

    // =====================================================================================
    // Encoding
    // =====================================================================================

    /// <summary>
    /// Tokenizes text as llama_tokenize does. <paramref name="addSpecial"/> adds BOS/EOS per <see cref="AddBos"/>/<see cref="AddEos"/>;
    /// <paramref name="parseSpecial"/> lets control-token texts in the input become their ids (user-defined tokens always do).
    /// </summary>
    public int[] Encode(string text, bool addSpecial = true, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>(text.Length / 3 + 4);
        var fragments = text.Length == 0 ? [] : Partition(text, parseSpecial);
        if (Kind == TokenizerKind.Spm)
        {
            bool isPrevSpecial = true;
            if (addSpecial && AddBos) output.Add(_bos);
            foreach (var f in fragments)
            {
                if (f.Token >= 0) { output.Add(f.Token); isPrevSpecial = true; continue; }
                var sb = new StringBuilder(f.Length + 1);
                if (AddSpacePrefix && isPrevSpecial) sb.Append(' ');
                sb.Append(text, f.Offset, f.Length);
                sb.Replace(' ', SpaceEscape);
                EncodeSpm(sb.ToString(), output);
                isPrevSpecial = false;
            }
            if (addSpecial && AddEos) output.Add(_eos);
        }
        else
        {
            if (addSpecial && AddBos) output.Add(_bos);
            foreach (var f in fragments)
            {
                if (f.Token >= 0) { output.Add(f.Token); continue; }
                EncodeBpe(text.AsSpan(f.Offset, f.Length), output);
            }
            if (addSpecial && AddEos) output.Add(_eos);
        }
        return output.ToArray();
    }

    private readonly record struct Fragment(int Token, int Offset, int Length);

    private static bool IsCSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';

    /// <summary>tokenizer_st_partition: split out special / user-defined token texts, longest first.</summary>
    private List<Fragment> Partition(string text, bool parseSpecial)
    {
        var frags = new List<Fragment> { new(-1, 0, text.Length) };
        foreach (int sid in _specialCache)
        {
            var attr = _attrs[sid];
            if (!parseSpecial && (attr & SpecialAttrs) != 0) continue;
            string st = _tokens[sid];
            List<Fragment>? next = null;
            for (int fi = 0; fi < frags.Count; fi++)
            {
                var f = frags[fi];
                int match = f.Token >= 0 ? -1 : text.IndexOf(st, f.Offset, f.Length, StringComparison.Ordinal);
                if (match < 0)
                {
                    next?.Add(f);
                    continue;
                }
                next ??= frags.GetRange(0, fi);
                int baseOff = f.Offset, baseLen = f.Length;
                while (match >= 0)
                {
                    if (match > baseOff)
                    {
                        int leftLen = match - baseOff;
                        if ((attr & TokenAttr.LStrip) != 0)
                            while (leftLen > 0 && IsCSpace(text[baseOff + leftLen - 1])) leftLen--;
                        if (leftLen > 0) next.Add(new(-1, baseOff, leftLen));
                    }
                    next.Add(new(sid, 0, 0));
                    if (match + st.Length >= baseOff + baseLen) { baseLen = 0; break; }
                    int rOff = match + st.Length;
                    int rLen = baseLen - (match - baseOff + st.Length);
                    if ((attr & TokenAttr.RStrip) != 0)
                        while (rLen > 0 && IsCSpace(text[rOff])) { rOff++; rLen--; }
                    baseOff = rOff; baseLen = rLen;
                    match = baseLen > 0 ? text.IndexOf(st, baseOff, baseLen, StringComparison.Ordinal) : -1;
                }
                if (baseLen > 0) next.Add(new(-1, baseOff, baseLen));
            }
            if (next is not null) frags = next;
        }
        return frags;
    }

    // ---- SPM ----

    private readonly record struct SpmBigram(int Left, int Right, int Size);

    /// <summary>
    /// Queue key for llm_bigram_spm::comparator (highest score first, then leftmost) as one ascending ulong:
    /// the score's bits mapped to an order-preserving integer, negated, above the left index.
    /// </summary>
    private static ulong SpmKey(float score, int left)
    {
        if (score == 0f) score = 0f; // -0 == +0 in the C++ comparison
        int bits = BitConverter.SingleToInt32Bits(score);
        uint ordered = bits >= 0 ? (uint)bits | 0x80000000u : ~(uint)bits; // ascending with the float value
        return ((ulong)~ordered << 32) | (uint)left;                       // descending score, ascending left
    }

    /// <summary>llm_tokenizer_spm_session::tokenize over text already escaped with U+2581.</summary>
    private void EncodeSpm(string text, List<int> output)
    {
        int len = text.Length;
        if (len == 0) return;
        var start = new int[len];
        var size = new int[len];
        int count = 0;
        for (int i = 0; i < len;)
        {
            int l = char.IsHighSurrogate(text[i]) && i + 1 < len && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            start[count] = i; size[count] = l; count++; i += l;
        }
        var prev = new int[count];
        var next = new int[count];
        for (int k = 0; k < count; k++) { prev[k] = k - 1; next[k] = k + 1 < count ? k + 1 : -1; }

        var queue = new PriorityQueue<SpmBigram, ulong>();
        void TryAdd(int left, int right)
        {
            if (left < 0 || right < 0) return;
            int sz = size[left] + size[right];
            if (!_tokenToIdSpan.TryGetValue(text.AsSpan(start[left], sz), out int id)) return;
            queue.Enqueue(new SpmBigram(left, right, sz), SpmKey(_scoreOrZero[id], left));
        }
        for (int k = 1; k < count; k++) TryAdd(k - 1, k);

        while (queue.TryDequeue(out var bg, out _))
        {
            int l = bg.Left, r = bg.Right;
            if (size[l] == 0 || size[r] == 0 || size[l] + size[r] != bg.Size) continue;
            size[l] += size[r];
            size[r] = 0;
            next[l] = next[r];
            if (next[r] >= 0) prev[next[r]] = l;
            TryAdd(prev[l], l);
            TryAdd(l, next[l]);
        }

        Span<byte> buf = stackalloc byte[8];
        for (int k = 0; k != -1; k = next[k])
        {
            var span = text.AsSpan(start[k], size[k]);
            if (_tokenToIdSpan.TryGetValue(span, out int id)) { output.Add(id); continue; }
            int nb = Encoding.UTF8.GetBytes(span, buf);
            for (int j = 0; j < nb; j++) output.Add(SpmByteToken(buf[j]));
        }
    }

    private int SpmByteToken(byte b)
    {
        int id = _spmByteTokens[b];
        if (id >= 0) return id;
        if (_unk >= 0) return _unk;
        throw new FitLMException($"{_where}: the vocabulary has no byte token <0x{b:X2}> to encode this text");
    }

    // ---- BPE ----

    private void EncodeBpe(ReadOnlySpan<char> fragment, List<int> output)
    {
        string? escaped = _escapeWhitespaces ? fragment.ToString().Replace(' ', SpaceEscape) : null;
        var cps = UnicodeUtil.ToCodepoints(escaped ?? fragment, out int n);
        var offsets = _splitter!.Split(cps, n);
        char[] word = new char[64];
        Span<byte> utf8 = stackalloc byte[4];
        int pos = 0;
        foreach (int len in offsets)
        {
            if (len == 0) continue;
            int wl = 0;
            for (int i = pos; i < pos + len; i++)
            {
                if (word.Length - wl < 4) Array.Resize(ref word, word.Length * 2);
                int cp = cps[i];
                if (_byteEncode)
                {
                    int k = UnicodeUtil.EncodeUtf8(cp, utf8);
                    for (int j = 0; j < k; j++) word[wl++] = UnicodeUtil.ByteToChar[utf8[j]];
                }
                else if (cp > 0xFFFF) { string pair = char.ConvertFromUtf32(cp); word[wl++] = pair[0]; word[wl++] = pair[1]; }
                else word[wl++] = (char)cp;
            }
            pos += len;
            var w = word.AsSpan(0, wl);
            if (_wordCacheSpan.TryGetValue(w, out var ids)) { output.AddRange(ids); continue; }
            int before = output.Count;
            EncodeWord(w, output);
            if (_wordCache.Count > 200_000) _wordCache.Clear();
            _wordCache.TryAdd(w.ToString(), output.GetRange(before, output.Count - before).ToArray());
        }
    }

    private void EncodeWord(ReadOnlySpan<char> word, List<int> output)
    {
        if (IgnoreMerges && _tokenToIdSpan.TryGetValue(word, out int whole)) { output.Add(whole); return; }
        _bpe!.Merge(word, output, this);
    }

    /// <summary>Output for a final BPE symbol that is not a vocabulary token.</summary>
    internal void BpeFallback(ReadOnlySpan<char> symbol, List<int> output)
    {
        if (_byteEncode)
        {
            // llama.cpp looks up each single UTF-8 byte of the symbol; only ASCII ones can be tokens.
            foreach (char c in symbol)
                if (c < 0x80 && _tokenToIdSpan.TryGetValue(new ReadOnlySpan<char>(in c), out int id)) output.Add(id);
            return;
        }
        Span<byte> buf = stackalloc byte[8];
        int nb = Encoding.UTF8.GetBytes(symbol, buf);
        for (int j = 0; j < nb; j++)
            if (_tokenToId.TryGetValue($"<0x{buf[j]:X2}>", out int id)) output.Add(id);
    }

    // =====================================================================================
    // Decoding
    // =====================================================================================

    /// <summary>
    /// Detokenizes as llama.cpp's common_detokenize: with <paramref name="skipSpecial"/> control tokens render as
    /// nothing, otherwise as their text. SPM drops the leading space of the first token; byte-level tokenizers with
    /// <see cref="CleanSpaces"/> tidy " ," / " 's" etc. Invalid UTF-8 becomes U+FFFD.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecial = false) =>
        Encoding.UTF8.GetString(DecodeBytes(ids, skipSpecial));

    /// <summary>The exact bytes llama_detokenize(remove_special: false, unparse_special: !skipSpecial) produces.</summary>
    public byte[] DecodeBytes(ReadOnlySpan<int> ids, bool skipSpecial = false)
    {
        var buf = new byte[Math.Max(16, ids.Length * 4)];
        int total = 0;
        bool removeSpace = AddSpacePrefix;
        foreach (int id in ids)
        {
            var piece = Piece(id, special: !skipSpecial);
            if (removeSpace && piece.Length > 0 && piece[0] == (byte)' ') piece = piece[1..];
            removeSpace = false;
            if (total + piece.Length > buf.Length) Array.Resize(ref buf, Math.Max(buf.Length * 2, total + piece.Length));
            piece.CopyTo(buf.AsSpan(total));
            total += piece.Length;
        }
        if (CleanSpaces) total = CleanUpSpaces(buf, total);
        return buf[..total];
    }

    /// <summary>The three in-place clean-up passes of llama_vocab::impl::detokenize.</summary>
    private static int CleanUpSpaces(byte[] text, int total)
    {
        int total1 = total;
        total = total > 0 ? 1 : 0;
        for (int i = 1; i < total1; ++i)
        {
            byte x = text[i];
            if (text[i - 1] == ' ' && x is (byte)'?' or (byte)'!' or (byte)'.' or (byte)',') total--;
            text[total++] = x;
        }

        int total2 = total;
        total = total > 0 ? 1 : 0;
        for (int i = 1; i < total2; ++i)
        {
            byte x = text[i];
            if (x == '\'' && i + 1 < total2 && text[i - 1] == ' ' && text[i + 1] == ' ')
            {
                total--;
                text[++i] = 0;
            }
            text[total++] = x;
        }

        int total3 = total;
        total = total > 0 ? 1 : 0;
        for (int i = 1; i < total3; ++i)
        {
            byte x = text[i];
            if (text[i - 1] == ' ' && x == '\'' && i + 1 < total3)
            {
                byte x1 = text[i + 1];
                if (x1 is (byte)'t' or (byte)'d') { }
                else if (x1 is (byte)'s' or (byte)'m') total--;
                else if (i + 2 < total3)
                {
                    byte x2 = text[i + 2];
                    if (x1 == 'l' && x2 == 'l') { }
                    else if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
                }
            }
            text[total++] = x;
        }
        return total;
    }
}
