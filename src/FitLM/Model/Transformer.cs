using FitLM.Runtime;
using System.Numerics.Tensors;
using FitLM.KvCache;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// The decoder of every family FitLM runs (Llama 2/3, Mistral, Qwen2/3, Phi-3, Gemma 2/3, and the mixtures of
/// experts Mixtral, Qwen2/3-MoE, OLMoE): embedding, then per layer RMSNorm → grouped-query attention with RoPE
/// over a KV store (KvCache/, docs/kv-cache.md) → residual → RMSNorm → FFN (gated, or a mixture of experts) →
/// residual, then the final norm and output head. Tokens are processed in batches (prefill) or one at a time
/// (decode); all arithmetic accumulates in float32. Weights come from an <see cref="IWeightProvider"/>. What
/// differs between families (Q/K/V biases or fused QKV, Q/K norms, post-norms, scaled embeddings, soft-capping,
/// sliding windows, the RoPE layout and bases, the FFN) arrives in the configuration, which the model source
/// fills from the family's <see cref="Architectures.ArchitectureFamily"/> description.
/// </summary>
public sealed class Transformer
{
    private sealed class Layer
    {
        public required float[] AttnNorm, FfnNorm;
        public required IMatrix Wo;
        /// <summary>Separate projections, or null where one fused matrix holds all three (Phi-3's <see cref="Wqkv"/>).</summary>
        public IMatrix? Wq, Wk, Wv, Wqkv;
        public required IFeedForward Ffn;
        public required Rope Rope;
        public float[]? Bq, Bk, Bv, QNorm, KNorm, PostAttnNorm, PostFfnNorm;
    }

    public ModelConfig Config { get; }
    public int MaxContext { get; }
    public int MaxBatch { get; }
    /// <summary>The KV cache of the sequence this transformer runs (its type and eviction: <see cref="KvStores"/>.Options).
    /// Replaced by <see cref="ChangeKv"/>: read it again after one.</summary>
    public IKvStore Kv { get; private set; }
    /// <summary>Makes KV stores for this model over shared page pools: the server's sequences each get one.
    /// Replaced by <see cref="ChangeKv"/>.</summary>
    public KvStoreFactory KvStores { get; private set; }
    /// <summary>Positions the KV cache of the sequence holds now: <see cref="Kv"/>'s, or the device's when the passes run on one.</summary>
    public int CachedPositions => Device?.Length ?? Kv.Length;

    /// <summary>The accelerator this transformer's passes run on (weights and KV cache in its memory), or null on the CPU.</summary>
    public IDeviceForward? Device { get; }

    private readonly Layer[] _layers;
    private readonly IMatrix _tokenEmbedding, _output;
    private readonly float[] _outputNorm;
    private readonly Rope _rope;
    /// <summary>The sliding-window layers' RoPE where their base differs (Gemma 3), else <see cref="_rope"/>.</summary>
    private readonly Rope _ropeSliding;

    // Activations for a batch of up to MaxBatch tokens, row-major [token × width], named as the math does.
    private readonly float[] _x, _xb, _xb2, _q, _k, _v, _hb, _hb2;
    /// <summary>The fused Q|K|V product of a Phi-3 layer [n × (QDim + 2·KvDim)], before it is split; empty otherwise.</summary>
    private readonly float[] _qkv;
    // The rows of one pass: their token ids, and which run of rows belongs to which sequence (its KV store and
    // first position). Preallocated so neither forward allocates per call.
    private readonly int[] _tokens;
    private readonly Segment[] _segments;
    // On a device: which KV slots sequences hold (CreateSequenceKv), and a pass's slices as the device takes them.
    private readonly bool[] _slotBusy = [];
    private readonly DeviceSlice[] _deviceSlices = [];

    private struct Segment
    {
        public IKvStore Kv;
        public int Pos, Row, Count;
    }

    public Transformer(ModelConfig config, IWeightProvider weights, int maxContext, int maxBatch = 256, KvCacheOptions? kv = null)
    {
        Config = config;
        var c = config;
        MaxContext = Math.Max(1, maxContext);
        MaxBatch = Math.Clamp(maxBatch, 1, MaxContext);
        _rope = new Rope(c, MaxContext, weights.Has("rope_freqs.weight") ? weights.Vector("rope_freqs.weight") : null);
        _ropeSliding = c.RopeThetaSliding > 0 ? new Rope(c with { RopeTheta = c.RopeThetaSliding }, MaxContext) : _rope;
        // Norm weights as the math uses them: Gemma's Hugging Face files store w for (1 + w).
        float[] Norm(string name)
        {
            var w = weights.Vector(name);
            if (c.NormWeightOffset == 0) return w;
            var shifted = (float[])w.Clone();
            TensorPrimitives.Add(shifted, c.NormWeightOffset, shifted);
            return shifted;
        }
        _layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            _layers[l] = new Layer
            {
                AttnNorm = Norm(p + "attn_norm.weight"),
                FfnNorm = Norm(p + "ffn_norm.weight"),
                Wq = c.FusedQkv ? null : weights.Matrix(p + "attn_q.weight"),
                Wk = c.FusedQkv ? null : weights.Matrix(p + "attn_k.weight"),
                Wv = c.FusedQkv ? null : weights.Matrix(p + "attn_v.weight"),
                Wqkv = c.FusedQkv ? weights.Matrix(p + "attn_qkv.weight") : null,
                Wo = weights.Matrix(p + "attn_output.weight"),
                Ffn = weights.FeedForward(l, c),
                Rope = c.IsSliding(l) ? _ropeSliding : _rope,
                Bq = c.QkvBias ? weights.Vector(p + "attn_q.bias") : null,
                Bk = c.QkvBias ? weights.Vector(p + "attn_k.bias") : null,
                Bv = c.QkvBias ? weights.Vector(p + "attn_v.bias") : null,
                QNorm = c.QkNorm ? Norm(p + "attn_q_norm.weight") : null,
                KNorm = c.QkNorm ? Norm(p + "attn_k_norm.weight") : null,
                PostAttnNorm = c.PostNorms ? Norm(p + "post_attention_norm.weight") : null,
                PostFfnNorm = c.PostNorms ? Norm(p + "post_ffw_norm.weight") : null,
            };
        }
        _tokenEmbedding = weights.Matrix("token_embd.weight");
        _output = weights.Has("output.weight") ? weights.Matrix("output.weight") : _tokenEmbedding;
        _outputNorm = Norm("output_norm.weight");
        KvStores = new KvStoreFactory(new KvModel(this), kv ?? new KvCacheOptions(), MaxContext, MaxBatch);
        Kv = KvStores.Create();

        int b = MaxBatch;
        _x = new float[b * c.Dim];
        _xb = new float[b * Math.Max(c.Dim, c.QDim)];
        _xb2 = new float[b * c.Dim];
        _q = new float[b * c.QDim];
        _k = new float[b * c.KvDim];
        _v = new float[b * c.KvDim];
        _hb = new float[b * c.ScratchFfnDim];
        _hb2 = new float[b * c.ScratchFfnDim];
        _qkv = c.FusedQkv ? new float[b * (c.QDim + 2 * c.KvDim)] : [];
        _tokens = new int[b];
        _segments = new Segment[b];
    }

    /// <summary>
    /// A transformer whose passes run on <paramref name="device"/>, which holds the weights and the KV cache: nothing of
    /// the model is loaded here. One sequence (<see cref="Forward(ReadOnlySpan{int}, int, Span{float}, int, CancellationToken)"/>,
    /// the device's KV slot 0), or several in one batched pass over stores of <see cref="CreateSequenceKv"/> (the device's
    /// slots); <see cref="ChangeKv"/> refuses with a line naming --device cpu.
    /// </summary>
    public Transformer(ModelConfig config, IDeviceForward device, int maxContext, int maxBatch = 256)
    {
        ArgumentNullException.ThrowIfNull(device);
        Config = config;
        Device = device;
        MaxContext = Math.Max(1, maxContext);
        MaxBatch = Math.Clamp(maxBatch, 1, MaxContext);
        _layers = [];
        _tokenEmbedding = _output = null!; // never read: every pass goes to the device
        _rope = _ropeSliding = null!;
        _outputNorm = _x = _xb = _xb2 = _q = _k = _v = _hb = _hb2 = _qkv = [];
        _tokens = [];
        _segments = [];
        _slotBusy = new bool[Math.Max(1, device.Sequences)];
        _deviceSlices = new DeviceSlice[MaxBatch];
        // An empty CPU store keeps Kv meaningful for callers that truncate it; it never holds a position.
        KvStores = new KvStoreFactory(new KvModel(this), new KvCacheOptions(), MaxContext, MaxBatch);
        Kv = KvStores.Create();
    }

    /// <summary>
    /// A new sequence's KV store for the batched <see cref="Forward(ReadOnlySpan{SequenceSlice}, Span{float}, CancellationToken)"/>
    /// and <see cref="ForwardHidden"/> (the server's requests): one of <see cref="KvStores"/> on the CPU; on a device, a free
    /// slot of the device's KV cache (disposing the store frees it), or a FitLMException when every slot is taken.
    /// </summary>
    public IKvStore CreateSequenceKv()
    {
        if (Device == null) return KvStores.Create();
        lock (_slotBusy)
        {
            int slot = Array.IndexOf(_slotBusy, false);
            if (slot < 0) throw new FitLMException($"every one of the GPU's {_slotBusy.Length} KV slots holds a sequence (the device was loaded for {_slotBusy.Length})");
            _slotBusy[slot] = true;
            return new DeviceSequenceKv(slot, Device.SequenceKvBytes, s => { lock (_slotBusy) _slotBusy[s] = false; });
        }
    }

    /// <summary>A store of this transformer's device, or an ArgumentException.</summary>
    private DeviceSequenceKv DeviceStore(IKvStore kv) =>
        kv as DeviceSequenceKv is { } d && d.Slot < _slotBusy.Length && _slotBusy[d.Slot] ? d
            : throw new ArgumentException("on a device, a sequence's KV store must come from this transformer's CreateSequenceKv");

    private FitLMException NotOnDevice(string what) => new($"{what} does not run on the GPU yet ({Device!.Description}); use --device cpu");

    /// <summary>
    /// Moves the KV cache to another type between forward passes (never during one), keeping every position: a new
    /// <see cref="KvStores"/> of <paramref name="next"/>, <see cref="Kv"/> converted into it, then each of
    /// <paramref name="others"/> (stores of the current factory the caller holds, the server's sequences), returned
    /// converted in the same order; the old stores and factory are disposed, their memory freed as each layer moves.
    /// f32, f16, kivi4 and kivi2 either way (<see cref="KvLadder"/>); anything else throws a FitLMException before
    /// anything changes. Same context and batch: positions, <see cref="MaxContext"/> and the model's rows are as before.
    /// </summary>
    public IKvStore[] ChangeKv(KvCacheOptions next, IReadOnlyList<IKvStore>? others = null)
    {
        ArgumentNullException.ThrowIfNull(next);
        if (Device != null) throw NotOnDevice("changing the KV cache's type");
        others ??= [];
        next.Validate();
        foreach (var store in others.Prepend(Kv))
            if (KvStoreFactory.ConversionProblem(store, next, MaxContext) is { } problem) throw new FitLMException(problem);
        var factory = new KvStoreFactory(new KvModel(this), next, MaxContext, MaxBatch);
        var old = KvStores;
        Kv = factory.Convert(Kv);
        var converted = new IKvStore[others.Count];
        for (int i = 0; i < converted.Length; i++) converted[i] = factory.Convert(others[i]);
        KvStores = factory;
        old.Dispose();
        return converted;
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> at positions [pos, pos + n) and writes logits of tokens
    /// [logitsFrom, n) to <paramref name="logits"/> ([(n - logitsFrom) × Vocab]). Long inputs are split into
    /// batches of MaxBatch. The KV cache keeps the new positions.
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom, CancellationToken ct = default)
    {
        int n = tokens.Length;
        if (n == 0) return;
        CheckTokens(tokens, pos);
        if (logitsFrom < 0 || logitsFrom > n) throw new ArgumentOutOfRangeException(nameof(logitsFrom));
        if (logits.Length < (long)(n - logitsFrom) * Config.Vocab) throw new ArgumentException("logits buffer too small");
        if (Device == null && pos != Kv.Length) Kv.Truncate(pos); // a new sequence (pos 0) or a rewind
        if (Device != null && _slotBusy[0]) throw new InvalidOperationException("the device's KV slot 0 holds a sequence of CreateSequenceKv: use the batched Forward");

        for (int start = 0; start < n;)
        {
            ct.ThrowIfCancellationRequested();
            int count = Math.Min(MaxBatch, n - start);
            // Logits for the rows of this batch that were asked for.
            int from = Math.Max(logitsFrom, start) - start;
            var rows = from < count ? logits.Slice((start + from - logitsFrom) * Config.Vocab, (count - from) * Config.Vocab) : Span<float>.Empty;
            if (Device != null) Device.Forward(tokens.Slice(start, count), pos + start, rows, Math.Min(from, count));
            else
            {
                RunBatch(Kv, tokens, pos, start);
                if (from < count) ComputeLogits(from, count, rows);
            }
            start += count;
        }
    }

    /// <summary>
    /// Runs one sequence's <paramref name="tokens"/> at positions [pos, pos + n) into <paramref name="kv"/> and writes
    /// each position's final hidden state, after the output norm, to <paramref name="hidden"/> ([n × Dim]):
    /// embeddings (the server pools them). Same layers and batches as <see cref="Forward(ReadOnlySpan{int}, int, Span{float}, int, CancellationToken)"/>.
    /// </summary>
    public void ForwardHidden(IKvStore kv, ReadOnlySpan<int> tokens, int pos, Span<float> hidden, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(kv);
        int n = tokens.Length, dim = Config.Dim;
        CheckTokens(tokens, pos);
        if (hidden.Length < (long)n * dim) throw new ArgumentException("hidden buffer too small");
        if (pos != kv.Length) kv.Truncate(pos);
        if (Device != null)
        {
            var store = DeviceStore(kv);
            for (int start = 0; start < n; start += MaxBatch)
            {
                ct.ThrowIfCancellationRequested();
                int count = Math.Min(MaxBatch, n - start);
                Device.ForwardHidden(store.Slot, tokens.Slice(start, count), pos + start, hidden.Slice(start * dim, count * dim));
                store.Length = pos + start + count;
            }
            return;
        }
        for (int start = 0; start < n;)
        {
            ct.ThrowIfCancellationRequested();
            int count = RunBatch(kv, tokens, pos, start);
            RmsNormRows(_x, _outputNorm, hidden.Slice(start * dim, count * dim), count, dim);
            start += count;
        }
    }

    /// <summary>Refuses positions past the context and token ids outside the vocabulary.</summary>
    private void CheckTokens(ReadOnlySpan<int> tokens, int pos)
    {
        int n = tokens.Length;
        if (pos < 0 || pos + n > MaxContext)
            throw new FitLMException($"context overflow: positions {pos}..{pos + n - 1} do not fit a context of {MaxContext}");
        for (int i = 0; i < n; i++)
            if ((uint)tokens[i] >= (uint)Config.Vocab) throw new FitLMException($"token id {tokens[i]} is outside the vocabulary ({Config.Vocab})");
    }

    /// <summary>Runs the next batch of one sequence, tokens[start..] up to MaxBatch of them, into <paramref name="kv"/>; returns how many ran.</summary>
    private int RunBatch(IKvStore kv, ReadOnlySpan<int> tokens, int pos, int start)
    {
        int count = Math.Min(MaxBatch, tokens.Length - start);
        tokens.Slice(start, count).CopyTo(_tokens);
        _segments[0] = new Segment { Kv = kv, Pos = pos + start, Row = 0, Count = count };
        ForwardBatch(count, 1);
        return count;
    }

    /// <summary>
    /// One pass over several sequences at once (continuous batching): each slice is the next tokens of one
    /// sequence, appended to its own KV store from position Pos. Projections and the FFN run as one
    /// matrix-matrix product over the rows of all slices (the weights are read once for the whole batch);
    /// attention runs per sequence over its own store. For each slice with WantLogits, the logits of its last
    /// row are written to <paramref name="logits"/>, one row of Vocab per such slice, in slice order.
    /// The slices' tokens together must fit one batch (<see cref="MaxBatch"/>); stores must be distinct.
    /// </summary>
    public void Forward(ReadOnlySpan<SequenceSlice> slices, Span<float> logits, CancellationToken ct = default)
    {
        if (slices.Length == 0) return;
        int rows = 0, wanted = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            var sl = slices[s];
            ArgumentNullException.ThrowIfNull(sl.Kv);
            int n = sl.Tokens.Length;
            if (n == 0) throw new ArgumentException($"slice {s} has no tokens");
            if (sl.Pos < 0 || sl.Pos + n > MaxContext)
                throw new FitLMException($"context overflow: positions {sl.Pos}..{sl.Pos + n - 1} do not fit a context of {MaxContext}");
            for (int p = 0; p < s; p++)
                if (ReferenceEquals(slices[p].Kv, sl.Kv)) throw new ArgumentException($"slices {p} and {s} share a KV store");
            rows += n;
            if (rows > MaxBatch) throw new ArgumentException($"the slices hold more than {MaxBatch} tokens (the batch size)");
            if (sl.WantLogits) wanted++;
        }
        if (logits.Length < (long)wanted * Config.Vocab) throw new ArgumentException("logits buffer too small");
        ct.ThrowIfCancellationRequested();
        if (Device != null)
        {
            ForwardOnDevice(slices, logits);
            return;
        }

        int row = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            var sl = slices[s];
            var t = sl.Tokens.Span;
            for (int i = 0; i < t.Length; i++)
                if ((uint)t[i] >= (uint)Config.Vocab) throw new FitLMException($"token id {t[i]} is outside the vocabulary ({Config.Vocab})");
            t.CopyTo(_tokens.AsSpan(row));
            if (sl.Pos != sl.Kv.Length) sl.Kv.Truncate(sl.Pos); // a new sequence (pos 0) or a rewind
            _segments[s] = new Segment { Kv = sl.Kv, Pos = sl.Pos, Row = row, Count = t.Length };
            row += t.Length;
        }
        ForwardBatch(rows, slices.Length);

        // Logits of the last row of each slice that asks: normalize those rows side by side, then one product.
        int dim = Config.Dim, k = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            if (!slices[s].WantLogits) continue;
            int last = _segments[s].Row + _segments[s].Count - 1;
            RmsNorm(_x.AsSpan(last * dim, dim), _outputNorm, _xb.AsSpan(k * dim, dim));
            k++;
        }
        if (k > 0)
        {
            _output.Multiply(_xb.AsSpan(0, k * dim), logits, k);
            CapLogits(logits[..(k * Config.Vocab)]);
        }
    }

    /// <summary>The batched pass on the device: each slice's store names its KV slot; the stores count the new positions.</summary>
    private void ForwardOnDevice(ReadOnlySpan<SequenceSlice> slices, Span<float> logits)
    {
        for (int s = 0; s < slices.Length; s++)
        {
            var sl = slices[s];
            var t = sl.Tokens.Span;
            for (int i = 0; i < t.Length; i++)
                if ((uint)t[i] >= (uint)Config.Vocab) throw new FitLMException($"token id {t[i]} is outside the vocabulary ({Config.Vocab})");
            _deviceSlices[s] = new DeviceSlice(DeviceStore(sl.Kv).Slot, sl.Tokens, sl.Pos, sl.WantLogits);
        }
        Device!.Forward(_deviceSlices.AsSpan(0, slices.Length), logits);
        for (int s = 0; s < slices.Length; s++)
        {
            ((DeviceSequenceKv)slices[s].Kv).Length = slices[s].Pos + slices[s].Tokens.Length;
            _deviceSlices[s] = default;
        }
    }

    /// <summary>
    /// The layers over rows [0, n) of <see cref="_tokens"/>, which belong to segments [0, segments): row r of
    /// segment s is position Pos + (r - Row) of that segment's sequence.
    /// </summary>
    private void ForwardBatch(int n, int segments)
    {
        var c = Config;
        int dim = c.Dim;
        long ts = PhaseTimes.Start();
        for (int t = 0; t < n; t++) Embed(_tokens[t], _x.AsSpan(t * dim, dim));
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Embed, ts);

        for (int l = 0; l < c.Layers; l++)
        {
            var L = _layers[l];
            // Attention block.
            RmsNormRows(_x, L.AttnNorm, _xb, n, dim);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Norm, ts);
            ProjectQkv(L, _xb.AsSpan(0, n * dim), _q, _k, _v, n);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Qkv, ts);
            for (int s = 0; s < segments; s++)
            {
                var seg = _segments[s];
                for (int t = seg.Row; t < seg.Row + seg.Count; t++)
                {
                    var q = _q.AsSpan(t * c.QDim, c.QDim);
                    if (L.Bq != null) TensorPrimitives.Add(q, L.Bq, q);
                    if (L.QNorm != null) QkNorm(q, L.QNorm, c.Heads);
                    L.Rope.Apply(q, c.Heads, c.HeadDim, seg.Pos + t - seg.Row);
                }
            }
            // Each sequence's KV store keeps this layer's new keys and values in its own form (it finishes the
            // raw products k, v with FinishKey/FinishValue below), then attends over everything it holds.
            // The attention output of a segment overwrites its rows of _xb ([n × QDim] over [n × Dim]); the
            // order keeps it off the X rows of segments not yet appended: forwards when QDim ≤ Dim (outputs
            // land at or before their own X), backwards when QDim > Dim (at or after).
            bool backwards = c.QDim > dim;
            for (int i = 0; i < segments; i++)
            {
                var seg = _segments[backwards ? segments - 1 - i : i];
                int r = seg.Row, m = seg.Count;
                seg.Kv.Append(l, seg.Pos, new KvRows(_tokens.AsSpan(r, m), _x.AsSpan(r * dim, m * dim), _xb.AsSpan(r * dim, m * dim),
                    _k.AsSpan(r * c.KvDim, m * c.KvDim), _v.AsSpan(r * c.KvDim, m * c.KvDim)));
                seg.Kv.Attend(l, seg.Pos, m, _q.AsSpan(r * c.QDim, m * c.QDim), _xb.AsSpan(r * c.QDim, m * c.QDim));
            }
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Attention, ts);
            L.Wo.Multiply(_xb.AsSpan(0, n * c.QDim), _xb2, n);
            if (L.PostAttnNorm != null) RmsNormRows(_xb2, L.PostAttnNorm, _xb2, n, dim);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Wo, ts);
            TensorPrimitives.Add(_x.AsSpan(0, n * dim), _xb2.AsSpan(0, n * dim), _x.AsSpan(0, n * dim));

            // Feed-forward block: down(act(gate(x)) * up(x)), or the experts the router picks.
            RmsNormRows(_x, L.FfnNorm, _xb, n, dim);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Norm, ts);
            L.Ffn.Forward(_xb.AsSpan(0, n * dim), _xb2, n, _hb, _hb2);
            if (L.PostFfnNorm != null) RmsNormRows(_xb2, L.PostFfnNorm, _xb2, n, dim);
            TensorPrimitives.Add(_x.AsSpan(0, n * dim), _xb2.AsSpan(0, n * dim), _x.AsSpan(0, n * dim));
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Ffn, ts);
        }
    }

    /// <summary>A token's row of the residual stream entering layer 0: its embedding, scaled where the family scales it (Gemma: √Dim).</summary>
    private void Embed(int token, Span<float> x)
    {
        _tokenEmbedding.ReadRow(token, x);
        if (Config.EmbeddingScale != 1f) TensorPrimitives.Multiply(x, Config.EmbeddingScale, x);
    }

    /// <summary>q, k, v = the layer's projections of n rows of x; a fused Q|K|V matrix (Phi-3) is split row by row.</summary>
    private void ProjectQkv(Layer L, ReadOnlySpan<float> x, Span<float> q, Span<float> k, Span<float> v, int n)
    {
        var c = Config;
        if (L.Wqkv == null)
        {
            L.Wq!.Multiply(x, q, n);
            L.Wk!.Multiply(x, k, n);
            L.Wv!.Multiply(x, v, n);
            return;
        }
        int width = c.QDim + 2 * c.KvDim;
        L.Wqkv.Multiply(x, _qkv, n);
        for (int t = 0; t < n; t++)
        {
            var row = _qkv.AsSpan(t * width, width);
            if (!q.IsEmpty) row[..c.QDim].CopyTo(q.Slice(t * c.QDim, c.QDim));
            row.Slice(c.QDim, c.KvDim).CopyTo(k.Slice(t * c.KvDim, c.KvDim));
            row.Slice(c.QDim + c.KvDim, c.KvDim).CopyTo(v.Slice(t * c.KvDim, c.KvDim));
        }
    }

    /// <summary>A Q or K row's norm in place: per head (Qwen3, Gemma 3), or over the whole row (OLMoE).</summary>
    private void QkNorm(Span<float> row, float[] w, int heads)
    {
        if (Config.QkNormWholeRow)
        {
            RmsNorm(row, w, row);
            return;
        }
        int hd = Config.HeadDim;
        for (int h = 0; h < heads; h++) RmsNorm(row.Slice(h * hd, hd), w, row.Slice(h * hd, hd));
    }

    /// <summary>Output logits soft-capped in place where the family caps them (Gemma 2: c·tanh(z/c)).</summary>
    private void CapLogits(Span<float> logits) => KvShape.CapInPlace(logits, Config.FinalSoftcap);

    /// <summary>Keys and values from the raw projections: what a KV store asks of the model (see <see cref="IKvModel"/>).</summary>
    private sealed class KvModel(Transformer m) : IKvModel
    {
        public KvShape Config => m.Config;
        public int MaxPositions => m.MaxContext;

        public void Project(int layer, ReadOnlySpan<float> x, Span<float> kRaw, Span<float> vRaw, int n)
        {
            var L = m._layers[layer];
            if (L.Wqkv == null)
            {
                L.Wk!.Multiply(x.Slice(0, n * m.Config.Dim), kRaw, n);
                L.Wv!.Multiply(x.Slice(0, n * m.Config.Dim), vRaw, n);
                return;
            }
            // Fused: the whole product, in rows the batch scratch holds (n ≤ MaxBatch per call from the stores).
            for (int t0 = 0; t0 < n; t0 += m.MaxBatch)
            {
                int cnt = Math.Min(m.MaxBatch, n - t0);
                m.ProjectQkv(L, x.Slice(t0 * m.Config.Dim, cnt * m.Config.Dim), Span<float>.Empty,
                    kRaw.Slice(t0 * m.Config.KvDim, cnt * m.Config.KvDim), vRaw.Slice(t0 * m.Config.KvDim, cnt * m.Config.KvDim), cnt);
            }
        }

        public void FinishKey(int layer, Span<float> k, int pos)
        {
            var c = m.Config;
            var L = m._layers[layer];
            if (L.Bk != null) TensorPrimitives.Add(k, L.Bk, k);
            if (L.KNorm != null) m.QkNorm(k, L.KNorm, c.KvHeads);
            L.Rope.Apply(k, c.KvHeads, c.HeadDim, pos);
        }

        public void FinishValue(int layer, Span<float> v)
        {
            if (m._layers[layer].Bv is { } b) TensorPrimitives.Add(v, b, v);
        }

        public void Normalize(int layer, ReadOnlySpan<float> residual, Span<float> x) => m.RmsNorm(residual, m._layers[layer].AttnNorm, x);
        public void Embed(int token, Span<float> x) => m.Embed(token, x);
        public IMatrix KeyWeights(int layer) => m._layers[layer].Wk ?? throw Fused();
        public IMatrix ValueWeights(int layer) => m._layers[layer].Wv ?? throw Fused();
        private FitLMException Fused() => new($"{m.Config.Architecture} fuses Q, K and V into one matrix; --kv xquant needs K and V apart (use f16, q8_0, kivi4 or h2o)");
    }

    private void ComputeLogits(int from, int count, Span<float> logits)
    {
        int dim = Config.Dim, rows = count - from;
        long ts = PhaseTimes.Start();
        RmsNormRows(_x.AsSpan(from * dim), _outputNorm, _xb, rows, dim);
        _output.Multiply(_xb.AsSpan(0, rows * dim), logits, rows);
        CapLogits(logits[..(rows * Config.Vocab)]);
        PhaseTimes.Stop(PhaseTimes.Phase.Logits, ts);
    }

    private void RmsNormRows(ReadOnlySpan<float> x, float[] w, Span<float> o, int n, int dim)
    {
        for (int t = 0; t < n; t++) RmsNorm(x.Slice(t * dim, dim), w, o.Slice(t * dim, dim));
    }

    private void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> o) => RmsNorm(x, w, o, Config.RmsEps);

    /// <summary>o = x / √(mean(x²) + ε) ⊙ w: the model's RMSNorm of one row (the training graph uses it too).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> o, float eps)
    {
        float ss = TensorPrimitives.SumOfSquares(x) / x.Length;
        float scale = 1f / MathF.Sqrt(ss + eps);
        TensorPrimitives.Multiply(x, scale, o);
        TensorPrimitives.Multiply(o, w, o);
    }
}

/// <summary>
/// The next tokens of one sequence in a batched <see cref="Transformer.Forward(ReadOnlySpan{SequenceSlice}, Span{float}, CancellationToken)"/>:
/// its KV store (from <see cref="Transformer.KvStores"/>), the tokens, the position of the first, and whether
/// the caller wants the logits of the last token (decode and the end of a prefill do; a prefill chunk does not).
/// </summary>
public readonly record struct SequenceSlice(IKvStore Kv, ReadOnlyMemory<int> Tokens, int Pos, bool WantLogits);
