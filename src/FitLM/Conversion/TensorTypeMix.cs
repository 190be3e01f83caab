using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>The hyper-parameters llama.cpp's type choice looks at.</summary>
/// <param name="Architecture">general.architecture.</param>
/// <param name="Layers">{arch}.block_count.</param>
/// <param name="Heads">{arch}.attention.head_count.</param>
/// <param name="KvHeads">{arch}.attention.head_count_kv.</param>
/// <param name="Experts">{arch}.expert_count (0 for dense models).</param>
public sealed record QuantizationShape(string Architecture, int Layers, int Heads, int KvHeads, int Experts)
{
    /// <summary>llama.cpp's n_gqa(): query heads per KV head (0 when unknown).</summary>
    public int GroupedQueryRatio => KvHeads > 0 ? Heads / KvHeads : 0;

    /// <summary>llama.cpp's LLM_TYPE_70B: an 80-layer llama with grouped KV heads.</summary>
    public bool IsLlama70B => Architecture == "llama" && Layers == 80 && Heads != KvHeads;

    public bool IsFalcon => Architecture == "falcon";
}

/// <summary>
/// llama.cpp's per-tensor type choice (llama_tensor_get_type in src/llama-quant.cpp) for the file types
/// FitLM writes: which tensors may be quantized at all (2-D and larger weights, not norms), output.weight in
/// Q6_K, the _S/_M/_L mixes that give attn_v and ffn_down more bits in the layers where
/// use_more_bits says so, and the fallback to a 32-block type where rows are not whole 256-element blocks.
/// Tensors must be offered in file order (the counters that pick layers advance per tensor, as in llama.cpp).
/// </summary>
public sealed class TensorTypeMix
{
    private enum Category { TokenEmbd, AttentionQ, AttentionV, AttentionK, AttentionQkv, AttentionKvB, AttentionOutput, FfnUp, FfnGate, FfnDown, Output, Other }

    private readonly QuantizationType _type;
    private readonly QuantizationShape _shape;
    private readonly bool _hasImportance;
    private readonly bool _tiedEmbeddings;
    private readonly int _attentionV;
    private int _iAttentionV, _iFfnDown, _iFfnGate, _iFfnUp;

    /// <summary>Tensors whose rows did not fit the chosen type and fell back (name, wanted, got).</summary>
    public List<(string Name, GgmlType Wanted, GgmlType Got)> Fallbacks { get; } = new();

    /// <param name="tensorNames">Every tensor of the model, in file order (attn_v layers are counted over all of them).</param>
    public TensorTypeMix(QuantizationType type, QuantizationShape shape, IEnumerable<string> tensorNames, bool hasImportance)
    {
        _type = type;
        _shape = shape;
        _hasImportance = hasImportance;
        _tiedEmbeddings = true;
        foreach (var n in tensorNames)
        {
            var c = Categorize(n);
            if (IsAttentionVLike(c)) _attentionV++;
            if (c == Category.Output) _tiedEmbeddings = false;
        }
    }

    /// <summary>
    /// llama.cpp's tensor_allows_quantization for the tensors of the architectures FitLM reads: 2-D (or
    /// larger) tensors whose name ends in "weight", except norms and MoE router weights.
    /// </summary>
    public static bool AllowsQuantization(string name, int dimensions)
    {
        if (dimensions < 2) return false;
        if (!name.EndsWith("weight", StringComparison.Ordinal)) return false;
        if (name.Contains("_norm.weight", StringComparison.Ordinal)) return false;
        if (name.Contains("ffn_gate_inp.weight", StringComparison.Ordinal)) return false;
        if (name.Contains("ffn_gate_tid2eid.weight", StringComparison.Ordinal)) return false;
        if (name is "position_embd.weight" or "token_types.weight") return false;
        return true;
    }

    /// <summary>Whether llama.cpp insists on an importance matrix for this tensor (Q2_K tensors of a Q2_K_S file).</summary>
    public bool RequiresImportance(string name, GgmlType target) =>
        target == GgmlType.Q2_K && _type.FileType == 21 && name is not ("token_embd.weight" or "output.weight");

    /// <summary>The type tensor <paramref name="name"/> gets; call once per tensor, in file order.</summary>
    /// <param name="rowLength">ne[0], the elements of one row.</param>
    /// <param name="current">The tensor's type in the input (kept for tensors that are not quantized).</param>
    public GgmlType Choose(string name, long[] shape, GgmlType current)
    {
        if (!AllowsQuantization(name, shape.Length)) return current;
        var type = _type.DefaultType;
        if (_type.IsFloat) return type;
        type = MixedType(name, shape[0], type, Categorize(name));
        return Fallback(name, shape[0], type);
    }

    private static Category Categorize(string name)
    {
        if (name == "output.weight") return Category.Output;
        if (name is "token_embd.weight" or "per_layer_token_embd.weight") return Category.TokenEmbd;
        if (name.Contains("attn_qkv.weight", StringComparison.Ordinal)) return Category.AttentionQkv;
        if (name.Contains("attn_kv_b.weight", StringComparison.Ordinal)) return Category.AttentionKvB;
        if (name.Contains("attn_v.weight", StringComparison.Ordinal)) return Category.AttentionV;
        if (name.Contains("attn_k.weight", StringComparison.Ordinal)) return Category.AttentionK;
        if (name.Contains("attn_q.weight", StringComparison.Ordinal)) return Category.AttentionQ;
        if (name.Contains("attn_output.weight", StringComparison.Ordinal)) return Category.AttentionOutput;
        if (name.Contains("ffn_up", StringComparison.Ordinal)) return Category.FfnUp;
        if (name.Contains("ffn_gate", StringComparison.Ordinal)) return Category.FfnGate;
        if (name.Contains("ffn_down", StringComparison.Ordinal)) return Category.FfnDown;
        return Category.Other;
    }

    private static bool IsAttentionVLike(Category c) => c is Category.AttentionV or Category.AttentionQkv or Category.AttentionKvB;

    /// <summary>llama.cpp's use_more_bits: the first and last eighth of the layers and every third one between.</summary>
    public static bool UseMoreBits(int layer, int layers) =>
        layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>The layer of an FFN tensor: its position among its kind for dense models, the name's blk.N for MoE.</summary>
    private int FfnLayer(string name, int counter)
    {
        if (_shape.Experts <= 1) return counter;
        int end = name.StartsWith("blk.", StringComparison.Ordinal) ? name.IndexOf('.', 4) : -1;
        if (end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int layer) && layer >= 0 && layer < _shape.Layers) return layer;
        throw new FitLMException($"cannot tell the layer of tensor '{name}' (expected blk.N. with N below {_shape.Layers})");
    }

    private GgmlType MixedType(string name, long rowLength, GgmlType type, Category category)
    {
        string f = _type.Name;
        int n = _shape.Layers;
        if (category == Category.Output || (_tiedEmbeddings && category == Category.TokenEmbd))
        {
            if (_shape.IsFalcon || rowLength % GgmlTypes.BlockSize(type) != 0) return GgmlType.Q8_0;
            return type != GgmlType.Q8_0 ? GgmlType.Q6_K : type;
        }
        if (category == Category.TokenEmbd) return type;
        if (IsAttentionVLike(category))
        {
            int gqa = _shape.GroupedQueryRatio;
            if (f == "Q2_K") type = gqa >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K;
            else if (f == "Q2_K_S" && gqa >= 4) type = GgmlType.Q4_K;
            else if (f == "Q3_K_M") type = _iAttentionV < 2 ? GgmlType.Q5_K : GgmlType.Q4_K;
            else if (f == "Q3_K_L") type = GgmlType.Q5_K;
            else if (f is "Q4_K_M" or "Q5_K_M" && UseMoreBits(_iAttentionV, _attentionV)) type = GgmlType.Q6_K;
            else if (f == "Q4_K_S" && _iAttentionV < 4) type = GgmlType.Q5_K;
            // llama.cpp: in 70B models 8 heads share attn_v, so it is 8x smaller than attn_q and cheap to widen.
            if (_shape.IsLlama70B && type is GgmlType.Q3_K or GgmlType.Q4_K) type = GgmlType.Q5_K;
            if (_shape.Experts == 8) type = GgmlType.Q8_0;
            _iAttentionV++;
            return type;
        }
        if (category == Category.AttentionK) return _shape.Experts == 8 ? GgmlType.Q8_0 : type;
        if (category == Category.FfnDown)
        {
            int i = FfnLayer(name, _iFfnDown);
            bool falcon = _shape.IsFalcon;
            if (f == "Q2_K") type = GgmlType.Q3_K;
            else if (f == "Q2_K_S") { if (i < n / 8) type = GgmlType.Q4_K; }
            else if (f == "Q3_K_M")
                type = i < n / 16 ? GgmlType.Q5_K : !falcon || UseMoreBits(i, n) ? GgmlType.Q4_K : GgmlType.Q3_K;
            else if (f == "Q3_K_L") type = falcon ? GgmlType.Q4_K : GgmlType.Q5_K;
            else if (f == "Q4_K_M")
            {
                if (falcon) type = i < n / 16 ? GgmlType.Q6_K : UseMoreBits(i, n) ? GgmlType.Q5_K : GgmlType.Q4_K;
                else if (UseMoreBits(i, n)) type = GgmlType.Q6_K;
            }
            else if (f == "Q5_K_M" && UseMoreBits(i, n)) type = GgmlType.Q6_K;
            else if (f == "Q4_K_S" && !falcon && i < n / 8) type = GgmlType.Q5_K;
            else if (f is "Q4_0" or "Q5_0" && _hasImportance && i < n / 8)
                // llama.cpp guards the first ffn_down layers, which go wrong even with an imatrix for Q4_0/Q5_0.
                type = f == "Q4_0" ? GgmlType.Q4_1 : GgmlType.Q5_1;
            _iFfnDown++;
            return type;
        }
        if (category == Category.AttentionOutput)
        {
            if (!_shape.IsFalcon)
            {
                if (_shape.Experts == 8)
                {
                    if (f is "Q2_K" or "Q3_K_S" or "Q3_K_M" or "Q4_K_S" or "Q4_K_M") type = GgmlType.Q5_K;
                }
                else if (f == "Q2_K") type = GgmlType.Q3_K;
                else if (f == "Q3_K_M") type = GgmlType.Q4_K;
                else if (f == "Q3_K_L") type = GgmlType.Q5_K;
            }
            else if (f == "Q3_K_L") type = GgmlType.Q4_K;
            return type;
        }
        if (category == Category.FfnGate) { FfnLayer(name, _iFfnGate++); return type; }
        if (category == Category.FfnUp) { FfnLayer(name, _iFfnUp++); return type; }
        return type;
    }

    /// <summary>llama.cpp's tensor_type_fallback: a type whose blocks fit rows that 256-element blocks do not.</summary>
    private GgmlType Fallback(string name, long rowLength, GgmlType type)
    {
        if (rowLength % GgmlTypes.BlockSize(type) == 0) return type;
        var fallback = type switch
        {
            GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            // llama.cpp stops here ("no tensor type fallback"); F16 keeps such a model convertible.
            _ => GgmlType.F16,
        };
        if (rowLength % GgmlTypes.BlockSize(fallback) != 0) fallback = GgmlType.F16;
        Fallbacks.Add((name, type, fallback));
        return fallback;
    }
}
