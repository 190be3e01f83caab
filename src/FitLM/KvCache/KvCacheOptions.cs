namespace FitLM.KvCache;

/// <summary>How keys and values are held (see docs/kv-cache.md).</summary>
public enum KvType
{
    /// <summary>Keys after RoPE and values in float32 (the reference).</summary>
    F32,
    /// <summary>Keys after RoPE and values in float16.</summary>
    F16,
    /// <summary>KIVI 2-bit: keys per channel over 32-token groups, values per token over 32-channel groups, recent tokens in f16.</summary>
    Kivi2,
    /// <summary>KIVI 4-bit.</summary>
    Kivi4,
    /// <summary>XQuant 4-bit: the layer input X (or its latent on the SVD basis of [Wk; Wv]) per token, K and V rematerialized.</summary>
    XQuant4,
    XQuant3,
    XQuant2,
    /// <summary>XQuant-CL: layer 0 as its token id, every later layer as a quantized delta from the previous layer's residual stream.</summary>
    XQuantCl,
}

/// <summary>What an XQuant store caches for each token and layer.</summary>
public enum XQuantForm
{
    /// <summary>X itself when it is no wider than K and V together (multi-head attention), else <see cref="Latent"/>.</summary>
    Auto,
    /// <summary>X's latent on the SVD basis of [Wk; Wv]: z = Uᵀ·[X·Wkᵀ; X·Wvᵀ], 2·KvDim wide; [k; v] = U·z.</summary>
    Latent,
    /// <summary>X's projections [X·Wkᵀ; X·Wvᵀ] themselves (X on the basis of W's own rows: no basis to store), RoPE after.</summary>
    Projections,
    /// <summary>X itself (Dim wide); K and V rematerialized through Wk and Wv.</summary>
    X,
}

/// <summary>What is dropped when the cache is full.</summary>
public enum KvEviction
{
    /// <summary>Nothing: the cache grows with the context.</summary>
    None,
    /// <summary>H2O heavy hitters plus a recent window, with StreamingLLM's attention sinks: a fixed budget of tokens.</summary>
    H2O,
}

/// <summary>The KV cache a model is loaded with: storage type, eviction and its budget.</summary>
public sealed record KvCacheOptions
{
    public KvType Type { get; init; } = KvType.F32;
    public KvEviction Evict { get; init; } = KvEviction.None;
    /// <summary>Tokens H2O keeps per layer and KV head (sinks + heavy hitters + recent window).</summary>
    public int Keep { get; init; }
    /// <summary>First tokens never evicted (StreamingLLM's attention sinks).</summary>
    public int Sinks { get; init; } = 4;
    /// <summary>KIVI: the most recent tokens kept in full precision (a multiple of the group size).</summary>
    public int Residual { get; init; } = 128;
    /// <summary>KIVI's residual window in float32 instead of float16 (with Residual ≥ context: no quantization at all).</summary>
    public bool FullPrecisionResidual { get; init; }
    /// <summary>What XQuant caches (the ablations of docs/kv-cache.md; Auto is the method).</summary>
    public XQuantForm XQuantForm { get; init; } = XQuantForm.Auto;
    /// <summary>XQuant's latent quantized per channel over 32-token groups (true) or per token over 32-element groups.</summary>
    public bool XQuantPerChannel { get; init; } = true;
    /// <summary>Bits per element of XQuant-CL's deltas.</summary>
    public int CrossLayerBits { get; init; } = 3;

    /// <summary>Tokens per page and per quantization group (KIVI's G).</summary>
    public const int Group = 32;

    public static readonly KvType[] AllTypes = Enum.GetValues<KvType>();

    public static string Name(KvType t) => t switch
    {
        KvType.F32 => "f32",
        KvType.F16 => "f16",
        KvType.Kivi2 => "kivi2",
        KvType.Kivi4 => "kivi4",
        KvType.XQuant4 => "xquant4",
        KvType.XQuant3 => "xquant3",
        KvType.XQuant2 => "xquant2",
        KvType.XQuantCl => "xquant-cl",
        _ => t.ToString(),
    };

    public static KvType ParseType(string s) =>
        AllTypes.FirstOrDefault(t => string.Equals(Name(t), s, StringComparison.OrdinalIgnoreCase), (KvType)(-1)) is var t && t >= 0 ? t
        : throw new FitLMException($"unknown KV type '{s}' (known: {string.Join(", ", AllTypes.Select(Name))})");

    /// <summary>
    /// A type with optional modifiers, "TYPE[:MOD]...": kivi2:r32 (a 32-token full-precision window),
    /// xquant4:proj or :x or :latent (what XQuant caches), xquant4:pt (latent quantized per token),
    /// xquant-cl:b2 (delta bits). The modifiers reproduce the ablations of docs/kv-cache.md.
    /// </summary>
    public static KvCacheOptions Parse(string spec)
    {
        var parts = spec.Split(':');
        var o = new KvCacheOptions { Type = ParseType(parts[0]) };
        foreach (var m in parts.Skip(1))
        {
            int number = m.Length > 1 && int.TryParse(m.AsSpan(1), out int v) ? v : -1;
            o = m.ToLowerInvariant() switch
            {
                "latent" when o.IsXQuant => o with { XQuantForm = XQuantForm.Latent },
                "proj" when o.IsXQuant => o with { XQuantForm = XQuantForm.Projections },
                "x" when o.IsXQuant => o with { XQuantForm = XQuantForm.X },
                "pt" when o.IsXQuant => o with { XQuantPerChannel = false },
                ['r', ..] when o.IsKivi && number >= 0 => o with { Residual = number },
                ['b', ..] when o.Type == KvType.XQuantCl && number > 0 => o with { CrossLayerBits = number },
                _ => throw new FitLMException($"KV type '{spec}': unknown modifier '{m}' for {Name(o.Type)} (kivi: rN; xquant: latent, proj, x, pt; xquant-cl: bN)"),
            };
        }
        return o;
    }

    /// <summary>The spec <see cref="Parse"/> reads back: the type and whatever differs from its defaults.</summary>
    public string Spec
    {
        get
        {
            var d = new KvCacheOptions();
            string s = Name(Type);
            if (IsKivi && Residual != d.Residual) s += $":r{Residual}";
            if (IsXQuant && XQuantForm != d.XQuantForm) s += XQuantForm switch { XQuantForm.Latent => ":latent", XQuantForm.Projections => ":proj", _ => ":x" };
            if (IsXQuant && !XQuantPerChannel) s += ":pt";
            if (Type == KvType.XQuantCl && CrossLayerBits != d.CrossLayerBits) s += $":b{CrossLayerBits}";
            return s;
        }
    }

    public static KvEviction ParseEviction(string s) => s.ToLowerInvariant() switch
    {
        "none" => KvEviction.None,
        "h2o" => KvEviction.H2O,
        _ => throw new FitLMException($"unknown KV eviction '{s}' (known: none, h2o)"),
    };

    /// <summary>Bits per element of the quantized types (0 for the float ones).</summary>
    public int Bits => Type switch
    {
        KvType.Kivi2 or KvType.XQuant2 => 2,
        KvType.XQuant3 => 3,
        KvType.Kivi4 or KvType.XQuant4 => 4,
        KvType.XQuantCl => CrossLayerBits,
        _ => 0,
    };

    public bool IsXQuant => Type is KvType.XQuant2 or KvType.XQuant3 or KvType.XQuant4;
    public bool IsKivi => Type is KvType.Kivi2 or KvType.Kivi4;

    /// <summary>A one-line description: "f16", "kivi2 (R=128)", "f16 + h2o keep 256, 4 sinks".</summary>
    public override string ToString()
    {
        string s = Spec;
        if (IsKivi) s += $" (R={Residual})";
        if (Evict == KvEviction.H2O) s += $" + h2o keep {Keep}, {Sinks} sinks";
        return s;
    }

    /// <summary>Checks the combination; throws a FitLMException naming the problem.</summary>
    public void Validate()
    {
        if (!Enum.IsDefined(Type)) throw new FitLMException($"unknown KV type {(int)Type}");
        if (Evict == KvEviction.H2O)
        {
            if (Type is not (KvType.F32 or KvType.F16))
                throw new FitLMException($"--kv-evict h2o works with --kv f32 or f16, not {Name(Type)}");
            if (Sinks < 0) throw new FitLMException($"--kv-sinks {Sinks} is out of range (0 or more)");
            if (Keep < Sinks + 2) throw new FitLMException($"--kv-keep {Keep} is too small: it must exceed the {Sinks} sinks by at least 2 (a heavy hitter and a recent token)");
        }
        else if (Keep != 0) throw new FitLMException("--kv-keep needs --kv-evict h2o");
        if (Residual < 0 || Residual % Group != 0)
            throw new FitLMException($"KIVI residual {Residual} must be a multiple of the group size {Group}");
        if (CrossLayerBits is < 2 or > 4) throw new FitLMException($"XQuant-CL bits {CrossLayerBits} out of range (2..4)");
    }
}
