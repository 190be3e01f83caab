using FitLM.Runtime;
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
/// <para>
/// The parts: the model loaded once (<see cref="TransformerWeights"/>), the activations a pass works in
/// (<see cref="ForwardContext"/>) and its arithmetic, one <see cref="IForwardBackend"/> operation per step of the
/// graph (<see cref="ForwardBatch"/>; the CPU's kernels are <see cref="CpuForwardBackend"/>). The KV cache is each
/// sequence's store. A transformer made with a device (<see cref="IDeviceBackend"/>, a GPU) runs the same graph with
/// the device as its backend: the model and the KV cache in the device's memory, a sequence's store a slot of it.
/// </para>
/// </summary>
public sealed class Transformer
{
    public ModelConfig Config { get; }
    public int MaxContext { get; }
    public int MaxBatch { get; }
    /// <summary>The KV cache of the sequence this transformer runs (its type and eviction: <see cref="KvStores"/>.Options).
    /// Replaced by <see cref="ChangeKv"/>: read it again after one.</summary>
    public IKvStore Kv { get; private set; }
    /// <summary>Makes KV stores for this model over shared page pools: the server's sequences each get one.
    /// Replaced by <see cref="ChangeKv"/>.</summary>
    public KvStoreFactory KvStores { get; private set; }
    /// <summary>Positions the KV cache of the sequence holds now: <see cref="Kv"/>'s, or its slot's on the device when the passes run on one.</summary>
    public int CachedPositions => DeviceKv?.Length ?? Kv.Length;

    /// <summary>The accelerator this transformer's passes run on (weights and KV cache in its memory), or null on the CPU.</summary>
    public IModelDevice? Device { get; }

    /// <summary>
    /// How the CPU runs this transformer's passes; a pass without its own batch invariance takes this one's. By
    /// default the process's options with the worker pool's size (--threads): the pool is the process's, so
    /// <see cref="CpuOptions.Threads"/> here reports it and a pass does not resize it.
    /// </summary>
    public CpuOptions Options { get; }

    // The model, loaded once; the arithmetic of a pass; the activations it works in (in the backend's memory).
    private readonly TransformerWeights _weights;
    private readonly IForwardBackend _backend;
    private readonly ForwardContext _context;
    // On a device: which KV slots sequences hold (CreateSequenceKv).
    private readonly bool[] _slotBusy = [];
    /// <summary>On a device, the single-sequence passes' store: slot 0 (it frees nothing when disposed; the device owns the memory).</summary>
    private DeviceSequenceKv? DeviceKv { get; }

    public Transformer(ModelConfig config, IWeightProvider weights, int maxContext, int maxBatch = 256, KvCacheOptions? kv = null, CpuOptions? options = null)
    {
        Config = config;
        MaxContext = Math.Max(1, maxContext);
        MaxBatch = Math.Clamp(maxBatch, 1, MaxContext);
        Options = options ?? CpuOptions.Default with { Threads = MatMul.Threads };
        _weights = new TransformerWeights(config, weights, MaxContext);
        var cpu = new CpuForwardBackend(config);
        _backend = cpu;
        _context = new ForwardContext(config, MaxBatch, cpu);
        KvStores = new KvStoreFactory(KvModel(cpu), kv ?? new KvCacheOptions(), MaxContext, MaxBatch);
        Kv = KvStores.Create();
    }

    /// <summary>
    /// A transformer whose passes run on <paramref name="device"/>, which holds the weights and the KV cache (its
    /// <see cref="IDeviceBackend.Weights"/> are handles to them): the same graph, with the device as the backend. One
    /// sequence (<see cref="Forward(ReadOnlySpan{int}, int, Span{float}, int, CancellationToken)"/>, the device's KV slot 0),
    /// or several in one batched pass over stores of <see cref="CreateSequenceKv"/> (the device's slots);
    /// <see cref="ChangeKv"/> refuses with a line naming --device cpu.
    /// </summary>
    internal Transformer(IDeviceBackend device, int maxContext, int maxBatch = 256, KvCacheOptions? kv = null)
    {
        ArgumentNullException.ThrowIfNull(device);
        Config = device.Weights.Config;
        Device = device;
        MaxContext = Math.Max(1, maxContext);
        MaxBatch = Math.Clamp(maxBatch, 1, MaxContext);
        Options = CpuOptions.Default with { Threads = MatMul.Threads };
        _weights = device.Weights;
        _backend = device;
        _context = new ForwardContext(Config, MaxBatch, device);
        _slotBusy = new bool[Math.Max(1, device.Sequences)];
        DeviceKv = new DeviceSequenceKv(0, device.SequenceKvBytes, _ => { });
        // An empty CPU store keeps Kv meaningful for callers that truncate it; it never holds a position. Its options are
        // the device's KV type, so what reports KvStores.Options (/metrics, /budget) names the cache the device holds.
        KvStores = new KvStoreFactory(KvModel(null), kv ?? new KvCacheOptions(), MaxContext, MaxBatch);
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

    /// <summary>What this transformer's KV stores ask of the model (on a device: the shape only).</summary>
    private TransformerKvModel KvModel(CpuForwardBackend? cpu) => new(Config, MaxContext, _weights, cpu, _context, MaxBatch);

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
        var factory = new KvStoreFactory(KvModel((CpuForwardBackend)_backend), next, MaxContext, MaxBatch);
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
    public void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom, CancellationToken ct = default) =>
        Forward(tokens, pos, logits, logitsFrom, Options.BatchInvariant, ct);

    /// <summary>
    /// <see cref="Forward(ReadOnlySpan{int}, int, Span{float}, int, CancellationToken)"/> with this pass's batch
    /// invariance: with <paramref name="batchInvariant"/> each row's logits are exactly those of a one-row pass
    /// (<see cref="CpuOptions.BatchInvariant"/>; speculative verification asks for it).
    /// </summary>
    public void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom, bool batchInvariant, CancellationToken ct = default)
    {
        int n = tokens.Length;
        if (n == 0) return;
        CheckTokens(tokens, pos);
        if (logitsFrom < 0 || logitsFrom > n) throw new ArgumentOutOfRangeException(nameof(logitsFrom));
        if (logits.Length < (long)(n - logitsFrom) * Config.Vocab) throw new ArgumentException("logits buffer too small");
        if (Device != null && _slotBusy[0]) throw new InvalidOperationException("the device's KV slot 0 holds a sequence of CreateSequenceKv: use the batched Forward");
        // A new sequence (pos 0) or a rewind; a device slot's positions are set by the pass itself, after the device's own
        // checks (KIVI refuses a rewind into what it has quantized, and the slot then keeps what it holds).
        if (Device == null && pos != Kv.Length) Kv.Truncate(pos);
        var kv = DeviceKv ?? Kv;

        using var rowWise = MatMul.RowWiseScope(batchInvariant);
        for (int start = 0; start < n;)
        {
            ct.ThrowIfCancellationRequested();
            int count = Math.Min(MaxBatch, n - start);
            // Logits for the rows of this batch that were asked for.
            int from = Math.Max(logitsFrom, start) - start;
            var rows = from < count ? logits.Slice((start + from - logitsFrom) * Config.Vocab, (count - from) * Config.Vocab) : Span<float>.Empty;
            for (int attempt = 0; ; attempt++)
            {
                try
                {
                    RunBatch(kv, tokens, pos, start, from < count);
                    if (from < count) ComputeLogits(from, count, rows);
                    break;
                }
                catch (PassAbandonedException) when (attempt == 0) { } // the device stopped recording the pass: run it directly
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
        if (Device != null) DeviceStore(kv);
        else if (pos != kv.Length) kv.Truncate(pos);
        using var rowWise = MatMul.RowWiseScope(Options.BatchInvariant);
        for (int start = 0; start < n;)
        {
            ct.ThrowIfCancellationRequested();
            int count = RunBatch(kv, tokens, pos, start, logits: false);
            _backend.RmsNorm(_context.X, 0, _weights.OutputNorm, _context.Xb, 0, count);
            _backend.Read(_context.Xb, count, hidden.Slice(start * dim, count * dim));
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

    /// <summary>
    /// Runs the next batch of one sequence, tokens[start..] up to MaxBatch of them, into <paramref name="kv"/>; returns
    /// how many ran. <paramref name="logits"/>: the pass goes on to <see cref="ComputeLogits"/>.
    /// </summary>
    private int RunBatch(IKvStore kv, ReadOnlySpan<int> tokens, int pos, int start, bool logits)
    {
        int count = Math.Min(MaxBatch, tokens.Length - start);
        tokens.Slice(start, count).CopyTo(_context.Tokens);
        _context.Segments[0] = new PassSegment { Kv = kv, Pos = pos + start, Row = 0, Count = count };
        ForwardBatch(count, 1, logits);
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
    public void Forward(ReadOnlySpan<SequenceSlice> slices, Span<float> logits, CancellationToken ct = default) =>
        Forward(slices, logits, Options.BatchInvariant, ct);

    /// <summary>
    /// <see cref="Forward(ReadOnlySpan{SequenceSlice}, Span{float}, CancellationToken)"/> with this pass's batch
    /// invariance: with <paramref name="batchInvariant"/> each sequence gets exactly the logits it gets alone,
    /// whatever else is in the batch (<see cref="CpuOptions.BatchInvariant"/>; the server's decode asks for it).
    /// </summary>
    public void Forward(ReadOnlySpan<SequenceSlice> slices, Span<float> logits, bool batchInvariant, CancellationToken ct = default)
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
            var t = sl.Tokens.Span;
            for (int i = 0; i < n; i++)
                if ((uint)t[i] >= (uint)Config.Vocab) throw new FitLMException($"token id {t[i]} is outside the vocabulary ({Config.Vocab})");
            rows += n;
            if (rows > MaxBatch) throw new ArgumentException($"the slices hold more than {MaxBatch} tokens (the batch size)");
            if (sl.WantLogits) wanted++;
        }
        if (logits.Length < (long)wanted * Config.Vocab) throw new ArgumentException("logits buffer too small");
        if (Device != null)
            foreach (var sl in slices) DeviceStore(sl.Kv);
        ct.ThrowIfCancellationRequested();

        using var rowWise = MatMul.RowWiseScope(batchInvariant);
        var tokens = _context.Tokens;
        var segments = _context.Segments;
        int row = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            var sl = slices[s];
            var t = sl.Tokens.Span;
            t.CopyTo(tokens.AsSpan(row));
            if (Device == null && sl.Pos != sl.Kv.Length) sl.Kv.Truncate(sl.Pos); // a new sequence (pos 0) or a rewind (a device slot: the pass sets it)
            segments[s] = new PassSegment { Kv = sl.Kv, Pos = sl.Pos, Row = row, Count = t.Length };
            row += t.Length;
        }
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                ForwardBatch(rows, slices.Length, wanted > 0);
                // Logits of the last row of each slice that asks: normalize those rows side by side, then one product.
                int k = 0;
                for (int s = 0; s < slices.Length; s++)
                {
                    if (!slices[s].WantLogits) continue;
                    _backend.RmsNorm(_context.X, segments[s].Row + segments[s].Count - 1, _weights.OutputNorm, _context.Xb, k, 1);
                    k++;
                }
                if (k > 0) _backend.Logits(_weights.Output, _context.Xb, k, logits);
                break;
            }
            catch (PassAbandonedException) when (attempt == 0) { } // the device stopped recording the pass: run it directly
        }
    }

    /// <summary>
    /// The layers over rows [0, n) of the context's tokens, which belong to segments [0, segments): row r of
    /// segment s is position Pos + (r - Row) of that segment's sequence. Each step is one operation of the backend.
    /// <paramref name="logits"/>: the caller goes on to the output head (a device may then replay a recorded pass).
    /// </summary>
    private void ForwardBatch(int n, int segments, bool logits)
    {
        var c = Config;
        var b = _backend;
        var ctx = _context;
        b.BeginPass(ctx, n, segments, logits);
        long ts = PhaseTimes.Start();
        b.Embed(_weights.TokenEmbedding, ctx.Tokens.AsSpan(0, n), ctx.X);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Embed, ts);

        ActivationBuffer? residual = null; // the last block's output, added to x by the norm after it
        for (int l = 0; l < c.Layers; l++)
        {
            var L = _weights.Layers[l];
            // Attention block, after x += the last feed-forward block's output.
            b.AddRmsNorm(ctx.X, residual, L.AttnNorm, ctx.Xb, n, L.Wq ?? L.Wqkv);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Norm, ts);
            if (L.Wqkv == null) b.MultiplyTogether(ctx.Xb, n, L.Wq!, ctx.Q, L.Wk!, ctx.K, L.Wv!, ctx.V);
            else
            {
                b.Multiply(L.Wqkv, ctx.Xb, ctx.Qkv, n);
                b.SplitQkv(ctx.Qkv, ctx.Q, ctx.K, ctx.V, n);
            }
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Qkv, ts);
            for (int s = 0; s < segments; s++)
            {
                var seg = ctx.Segments[s];
                b.FinishQueries(L, ctx.Q, seg.Row, seg.Count, seg.Pos);
            }
            // Each sequence's KV store keeps this layer's new keys and values in its own form (it finishes the
            // raw products k, v itself), then attends over everything it holds.
            // The attention output of a segment overwrites its rows of Xb ([n × QDim] over [n × Dim]); the
            // order keeps it off the X rows of segments not yet appended: forwards when QDim ≤ Dim (outputs
            // land at or before their own X), backwards when QDim > Dim (at or after).
            bool backwards = c.QDim > c.Dim;
            for (int i = 0; i < segments; i++)
                b.AppendAndAttend(l, ctx, in ctx.Segments[backwards ? segments - 1 - i : i]);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Attention, ts);
            b.Multiply(L.Wo, ctx.Xb, ctx.Xb2, n);
            if (L.PostAttnNorm != null) b.RmsNorm(ctx.Xb2, 0, L.PostAttnNorm, ctx.Xb2, 0, n);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Wo, ts);

            // Feed-forward block, after x += the attention block's output: down(act(gate(x)) * up(x)), or the experts the router picks.
            b.AddRmsNorm(ctx.X, ctx.Xb2, L.FfnNorm, ctx.Xb, n, L.Ffn.Input);
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Norm, ts);
            b.FeedForward(L.Ffn, ctx.Xb, ctx.Xb2, n, ctx.Hb, ctx.Hb2);
            if (L.PostFfnNorm != null) b.RmsNorm(ctx.Xb2, 0, L.PostFfnNorm, ctx.Xb2, 0, n);
            residual = ctx.Xb2;
            ts = PhaseTimes.Stop(PhaseTimes.Phase.Ffn, ts);
        }
        if (residual != null) b.Add(ctx.X, residual, n); // the last layer's output
    }

    /// <summary>Logits of rows [from, count) of the last batch: the output norm, the head, soft-capping.</summary>
    private void ComputeLogits(int from, int count, Span<float> logits)
    {
        int rows = count - from;
        long ts = PhaseTimes.Start();
        _backend.RmsNorm(_context.X, from, _weights.OutputNorm, _context.Xb, 0, rows);
        _backend.Logits(_weights.Output, _context.Xb, rows, logits);
        PhaseTimes.Stop(PhaseTimes.Phase.Logits, ts);
    }

    /// <summary>o = x / √(mean(x²) + ε) ⊙ w: the model's RMSNorm of one row (the training graph uses it too).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> o, float eps) => CpuForwardBackend.RmsNorm(x, w, o, eps);
}

/// <summary>
/// The next tokens of one sequence in a batched <see cref="Transformer.Forward(ReadOnlySpan{SequenceSlice}, Span{float}, CancellationToken)"/>:
/// its KV store (from <see cref="Transformer.KvStores"/>), the tokens, the position of the first, and whether
/// the caller wants the logits of the last token (decode and the end of a prefill do; a prefill chunk does not).
/// </summary>
public readonly record struct SequenceSlice(IKvStore Kv, ReadOnlyMemory<int> Tokens, int Pos, bool WantLogits);
