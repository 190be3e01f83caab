using System.Numerics.Tensors;
using FitLM.Adapters;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// The Llama-family decoder as training sees it: the same layers as <see cref="Transformer"/> (embedding,
/// RMSNorm → grouped-query attention with RoPE → residual → RMSNorm → gated FFN → residual, final norm, head)
/// over whole sequences, with a backward pass. Base weights are frozen and read from the weight provider in their
/// stored type; only LoRA pairs have gradients. The loss is Cut Cross-Entropy. Activation checkpointing
/// (Chen et al., 2016) keeps the inputs of segments of <see cref="SegmentLayers"/> layers and recomputes a
/// segment's activations when backward reaches it: one extra forward for memory ∝ L/k + k layers.
/// </summary>
public sealed class TrainingGraph
{
    private const int Q = 0, K = 1, V = 2, O = 3, Gate = 4, Up = 5, Down = 6;
    private static readonly string[] Names = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"];

    private sealed class Layer
    {
        public required float[] AttnNorm, FfnNorm;
        public required LoraProjection[] P;
        public float[]? Bq, Bk, Bv, QNorm, KNorm;
    }

    public ModelConfig Config { get; }
    public int MaxTokens { get; }
    /// <summary>Layers per checkpoint segment (all layers: no checkpointing).</summary>
    public int SegmentLayers { get; }
    public IReadOnlyList<TrainablePair> Trainable { get; }

    private readonly Layer[] _layers;
    private readonly IMatrix _embedding, _output;
    private readonly float[] _outputNorm;
    private readonly Rope _rope;
    private readonly CausalAttention _attention;
    private readonly CutCrossEntropy _loss;
    private readonly TrainingScratch _scratch = new();
    private readonly LayerActivations[] _acts;
    private readonly float[][] _segmentInputs;
    // Residual stream, the final norm's output, their gradients and the backward's per-block scratch.
    private readonly float[] _x, _h, _dx, _dh, _dA, _dq, _dk, _dv, _dHid, _dg, _du, _hid, _row;

    public TrainingGraph(ModelConfig config, IWeightProvider weights, LoraAdapter? adapter, int maxTokens, int segmentLayers = 0)
    {
        Config = config;
        var c = config;
        MaxTokens = maxTokens;
        SegmentLayers = segmentLayers <= 0 ? c.Layers : Math.Min(segmentLayers, c.Layers);
        var trainable = new List<TrainablePair>();
        _layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            var proj = new LoraProjection[Names.Length];
            for (int i = 0; i < Names.Length; i++)
            {
                var w = weights.Matrix(p + Names[i]);
                TrainablePair? pair = null;
                if (adapter?.Find(p + Names[i]) is { } lp)
                {
                    if (lp.In != w.Cols || lp.Out != w.Rows)
                        throw new FitLMException($"adapter tensor {lp.Name} is [{lp.Out} × {lp.In}] but the model's is [{w.Rows} × {w.Cols}]: the adapter was made for another model");
                    pair = new TrainablePair(lp);
                    trainable.Add(pair);
                }
                proj[i] = new LoraProjection(w, pair, adapter?.Scale ?? 0f);
            }
            _layers[l] = new Layer
            {
                AttnNorm = weights.Vector(p + "attn_norm.weight"),
                FfnNorm = weights.Vector(p + "ffn_norm.weight"),
                P = proj,
                Bq = c.QkvBias ? weights.Vector(p + "attn_q.bias") : null,
                Bk = c.QkvBias ? weights.Vector(p + "attn_k.bias") : null,
                Bv = c.QkvBias ? weights.Vector(p + "attn_v.bias") : null,
                QNorm = c.QkNorm ? weights.Vector(p + "attn_q_norm.weight") : null,
                KNorm = c.QkNorm ? weights.Vector(p + "attn_k_norm.weight") : null,
            };
        }
        Trainable = trainable;
        _embedding = weights.Matrix("token_embd.weight");
        _output = weights.Has("output.weight") ? weights.Matrix("output.weight") : _embedding;
        _outputNorm = weights.Vector("output_norm.weight");
        _rope = new Rope(c, maxTokens, weights.Has("rope_freqs.weight") ? weights.Vector("rope_freqs.weight") : null);
        _attention = new CausalAttention(c.Heads, c.KvHeads, c.HeadDim);
        _loss = new CutCrossEntropy(_output);

        int n = maxTokens;
        var ranks = Ranks(_layers);
        _acts = new LayerActivations[SegmentLayers];
        for (int i = 0; i < _acts.Length; i++) _acts[i] = new LayerActivations(c, n, ranks);
        _segmentInputs = new float[(c.Layers + SegmentLayers - 1) / SegmentLayers][];
        for (int s = 0; s < _segmentInputs.Length; s++) _segmentInputs[s] = new float[n * c.Dim];
        int wide = Math.Max(c.Dim, c.QDim);
        _x = new float[n * c.Dim];
        _h = new float[n * c.Dim];
        _dx = new float[n * c.Dim];
        _dh = new float[n * wide];
        _dA = new float[n * c.QDim];
        _dq = new float[n * c.QDim];
        _dk = new float[n * c.KvDim];
        _dv = new float[n * c.KvDim];
        _dHid = new float[n * c.FfnDim];
        _dg = new float[n * c.FfnDim];
        _du = new float[n * c.FfnDim];
        _hid = new float[n * Math.Max(c.FfnDim, c.QDim)];
        _row = new float[Math.Max(wide, c.FfnDim)];
    }

    /// <summary>
    /// The LoRA rank of each projection, the largest over all layers: activations are shared between layers, and an
    /// adapter need not adapt the same projections in every layer (PEFT's layers_to_transform).
    /// </summary>
    private static int[] Ranks(Layer[] layers) => Enumerable.Range(0, Names.Length).Select(i => layers.Max(l => l.P[i].Rank)).ToArray();

    /// <summary>
    /// Activation and scratch bytes of a graph for <paramref name="maxTokens"/> tokens with checkpoint segments of
    /// <paramref name="segmentLayers"/> layers and LoRA of <paramref name="rank"/> on <paramref name="targets"/>.
    /// </summary>
    public static long ActivationBytes(ModelConfig c, int maxTokens, int segmentLayers, int rank, IReadOnlyCollection<string> targets)
    {
        int seg = segmentLayers <= 0 ? c.Layers : Math.Min(segmentLayers, c.Layers);
        var ranks = LoraAdapter.AllTargets.Select(t => targets.Contains(t) ? rank : 0).ToArray();
        long n = maxTokens, wide = Math.Max(c.Dim, c.QDim);
        long acts = seg * LayerActivations.Bytes(c, maxTokens, ranks);
        long segInputs = (c.Layers + seg - 1) / seg * 4 * n * c.Dim;
        long buffers = 4 * n * (3L * c.Dim + wide + 2L * c.QDim + 2L * c.KvDim + 3L * c.FfnDim + Math.Max(c.FfnDim, c.QDim));
        int widest = Math.Max(Math.Max(c.Dim, c.QDim), c.FfnDim);
        long frozen = FrozenMatrixGradient.ScratchBytes(Math.Max(c.FfnDim, c.QDim), widest, maxTokens);
        long lora = ranks.Max() == 0 ? 0 : 4 * n * (2L * widest + 2 * rank) + 4 * n * widest;
        return acts + segInputs + buffers + frozen + lora + CutCrossEntropy.ScratchBytes(c.Vocab, c.Dim, maxTokens);
    }

    /// <summary>The summed next-token loss of <paramref name="batch"/>, forward only (evaluation, MeZO): one layer of activations.</summary>
    public double Loss(TrainingBatch batch, CancellationToken ct = default)
    {
        int n = Check(batch);
        Embed(batch, _x);
        for (int l = 0; l < Config.Layers; l++)
        {
            ct.ThrowIfCancellationRequested();
            LayerForward(l, batch, _x, _acts[0]);
        }
        long ts = PhaseTimes.Start();
        RmsNormGradient.Forward(_x, _outputNorm, _h, n, Config.RmsEps);
        double loss = _loss.Loss(_h, n, batch.Targets, [], 0f);
        PhaseTimes.Stop(PhaseTimes.Phase.Loss, ts);
        return loss;
    }

    /// <summary>
    /// Forward and backward over <paramref name="batch"/>: returns the summed loss and adds
    /// <paramref name="gradScale"/> · ∂loss/∂θ to every trainable pair's gradients (1/targets for a mean).
    /// </summary>
    public double LossAndGradients(TrainingBatch batch, float gradScale, CancellationToken ct = default)
    {
        var c = Config;
        int n = Check(batch), dim = c.Dim, seg = SegmentLayers;
        Embed(batch, _x);
        // Forward: keep each segment's input; the last segment's activations stay in the pool.
        for (int l = 0; l < c.Layers; l++)
        {
            ct.ThrowIfCancellationRequested();
            if (l % seg == 0) _x.AsSpan(0, n * dim).CopyTo(_segmentInputs[l / seg]);
            LayerForward(l, batch, _x, _acts[l % seg]);
        }
        long ts = PhaseTimes.Start();
        RmsNormGradient.Forward(_x, _outputNorm, _h, n, c.RmsEps);
        double loss = _loss.Loss(_h, n, batch.Targets, _dh, gradScale);
        PhaseTimes.Stop(PhaseTimes.Phase.Loss, ts);
        _dx.AsSpan(0, n * dim).Clear();
        RmsNormGradient.Backward(_x, _outputNorm, _dh, _dx, n, c.RmsEps, _row);

        int last = (c.Layers - 1) / seg;
        for (int s = last; s >= 0; s--)
        {
            int l0 = s * seg, l1 = Math.Min(c.Layers, l0 + seg);
            if (s != last)
            {
                // Recompute this segment's activations from its stored input.
                _segmentInputs[s].AsSpan(0, n * dim).CopyTo(_x);
                for (int l = l0; l < l1; l++)
                {
                    ct.ThrowIfCancellationRequested();
                    LayerForward(l, batch, _x, _acts[l - l0]);
                }
            }
            for (int l = l1 - 1; l >= l0; l--)
            {
                ct.ThrowIfCancellationRequested();
                LayerBackward(l, batch, _acts[l - l0]);
            }
        }
        return loss;
    }

    private int Check(TrainingBatch batch)
    {
        int n = batch.Count;
        if (n > MaxTokens) throw new FitLMException($"a batch of {n} tokens is larger than this graph's {MaxTokens}");
        foreach (var (_, len) in batch.Sequences)
            if (len > MaxTokens) throw new FitLMException($"a sequence of {len} tokens is longer than the context {MaxTokens}");
        foreach (int t in batch.Tokens)
            if ((uint)t >= (uint)Config.Vocab) throw new FitLMException($"token id {t} is outside the vocabulary ({Config.Vocab})");
        return n;
    }

    private void Embed(TrainingBatch batch, float[] x)
    {
        int dim = Config.Dim;
        for (int t = 0; t < batch.Count; t++) _embedding.ReadRow(batch.Tokens[t], x.AsSpan(t * dim, dim));
    }

    /// <summary>One layer over the batch: x is updated in place; <paramref name="a"/> receives what backward needs.</summary>
    private void LayerForward(int l, TrainingBatch batch, float[] x, LayerActivations a)
    {
        var c = Config;
        var L = _layers[l];
        int n = batch.Count, dim = c.Dim;
        long ts = PhaseTimes.Start();
        x.AsSpan(0, n * dim).CopyTo(a.XIn);

        RmsNormGradient.Forward(x, L.AttnNorm, a.H1, n, c.RmsEps);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Norm, ts);
        L.P[Q].Forward(a.H1, a.Q, n, a.Ax[Q], _scratch);
        L.P[K].Forward(a.H1, a.K, n, a.Ax[K], _scratch);
        L.P[V].Forward(a.H1, a.V, n, a.Ax[V], _scratch);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Qkv, ts);
        for (int t = 0; t < n; t++)
        {
            var q = a.Q.AsSpan(t * c.QDim, c.QDim);
            var k = a.K.AsSpan(t * c.KvDim, c.KvDim);
            if (L.Bq != null) TensorPrimitives.Add(q, L.Bq, q);
            if (L.Bk != null) TensorPrimitives.Add(k, L.Bk, k);
            if (L.Bv != null) TensorPrimitives.Add(a.V.AsSpan(t * c.KvDim, c.KvDim), L.Bv, a.V.AsSpan(t * c.KvDim, c.KvDim));
            if (L.QNorm != null)
            {
                q.CopyTo(a.QPre.AsSpan(t * c.QDim));
                RmsNormGradient.Forward(q, L.QNorm, q, c.Heads, c.RmsEps);
            }
            if (L.KNorm != null)
            {
                k.CopyTo(a.KPre.AsSpan(t * c.KvDim));
                RmsNormGradient.Forward(k, L.KNorm, k, c.KvHeads, c.RmsEps);
            }
        }
        foreach (var (start, len) in batch.Sequences)
            for (int i = 0; i < len; i++)
            {
                _rope.Apply(a.Q.AsSpan((start + i) * c.QDim, c.QDim), c.Heads, c.HeadDim, i);
                _rope.Apply(a.K.AsSpan((start + i) * c.KvDim, c.KvDim), c.KvHeads, c.HeadDim, i);
            }
        _attention.Forward(batch.Sequences, a.Q, a.K, a.V, a.A, a.Lse);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Attention, ts);
        var o = _h; // [n × Dim] scratch
        L.P[O].Forward(a.A, o, n, a.Ax[O], _scratch);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.Wo, ts);
        TensorPrimitives.Add(x.AsSpan(0, n * dim), o.AsSpan(0, n * dim), x.AsSpan(0, n * dim));
        x.AsSpan(0, n * dim).CopyTo(a.XMid);

        RmsNormGradient.Forward(x, L.FfnNorm, a.H2, n, c.RmsEps);
        L.P[Gate].Forward(a.H2, a.Gate, n, a.Ax[Gate], _scratch);
        L.P[Up].Forward(a.H2, a.Up, n, a.Ax[Up], _scratch);
        int f = n * c.FfnDim;
        GateGradient.Forward(a.Gate.AsSpan(0, f), a.Up.AsSpan(0, f), _hid.AsSpan(0, f), c.Activation);
        L.P[Down].Forward(_hid, o, n, a.Ax[Down], _scratch);
        TensorPrimitives.Add(x.AsSpan(0, n * dim), o.AsSpan(0, n * dim), x.AsSpan(0, n * dim));
        PhaseTimes.Stop(PhaseTimes.Phase.Ffn, ts);
    }

    /// <summary>Given _dx = ∂loss/∂(layer output), sums the layer's LoRA gradients and leaves ∂loss/∂(layer input) in _dx.</summary>
    private void LayerBackward(int l, TrainingBatch batch, LayerActivations a)
    {
        var c = Config;
        var L = _layers[l];
        int n = batch.Count, dim = c.Dim, f = n * c.FfnDim;

        // FFN block: x_out = x_mid + down(act(gate) ⊙ up).
        long ts = PhaseTimes.Start();
        GateGradient.Forward(a.Gate.AsSpan(0, f), a.Up.AsSpan(0, f), _hid.AsSpan(0, f), c.Activation);
        _dHid.AsSpan(0, f).Clear();
        ts = PhaseTimes.Stop(PhaseTimes.Phase.OtherBackward, ts);
        L.P[Down].Backward(_hid, a.Ax[Down], _dx, _dHid, n, _scratch);
        ts = PhaseTimes.Start();
        GateGradient.Backward(a.Gate.AsSpan(0, f), a.Up.AsSpan(0, f), _dHid.AsSpan(0, f), _dg, _du, c.Activation);
        _dh.AsSpan(0, n * dim).Clear();
        ts = PhaseTimes.Stop(PhaseTimes.Phase.OtherBackward, ts);
        L.P[Gate].Backward(a.H2, a.Ax[Gate], _dg, _dh, n, _scratch);
        L.P[Up].Backward(a.H2, a.Ax[Up], _du, _dh, n, _scratch);
        ts = PhaseTimes.Start();
        RmsNormGradient.Backward(a.XMid, L.FfnNorm, _dh, _dx, n, c.RmsEps, _row);
        ts = PhaseTimes.Stop(PhaseTimes.Phase.OtherBackward, ts);

        // Attention block: x_mid = x_in + o(attention(q, k, v)).
        _dA.AsSpan(0, n * c.QDim).Clear();
        L.P[O].Backward(a.A, a.Ax[O], _dx, _dA, n, _scratch);
        ts = PhaseTimes.Start();
        _attention.Backward(batch.Sequences, a.Q, a.K, a.V, a.A, a.Lse, _dA, _dq, _dk, _dv);
        foreach (var (start, len) in batch.Sequences)
            for (int i = 0; i < len; i++)
            {
                _rope.ApplyTransposed(_dq.AsSpan((start + i) * c.QDim, c.QDim), c.Heads, c.HeadDim, i);
                _rope.ApplyTransposed(_dk.AsSpan((start + i) * c.KvDim, c.KvDim), c.KvHeads, c.HeadDim, i);
            }
        if (L.QNorm != null) HeadNormBackward(a.QPre, L.QNorm, _dq, n * c.Heads);
        if (L.KNorm != null) HeadNormBackward(a.KPre, L.KNorm, _dk, n * c.KvHeads);
        _dh.AsSpan(0, n * dim).Clear();
        PhaseTimes.Stop(PhaseTimes.Phase.AttentionBackward, ts);
        L.P[Q].Backward(a.H1, a.Ax[Q], _dq, _dh, n, _scratch);
        L.P[K].Backward(a.H1, a.Ax[K], _dk, _dh, n, _scratch);
        L.P[V].Backward(a.H1, a.Ax[V], _dv, _dh, n, _scratch);
        ts = PhaseTimes.Start();
        RmsNormGradient.Backward(a.XIn, L.AttnNorm, _dh, _dx, n, c.RmsEps, _row);
        PhaseTimes.Stop(PhaseTimes.Phase.OtherBackward, ts);
    }

    /// <summary>Replaces the gradient after per-head norms with the gradient before them (rows of HeadDim).</summary>
    private void HeadNormBackward(float[] pre, float[] w, float[] d, int rows)
    {
        int hd = Config.HeadDim;
        var dIn = _hid.AsSpan(0, rows * hd);
        dIn.Clear();
        RmsNormGradient.Backward(pre, w, d, dIn, rows, Config.RmsEps, _row);
        dIn.CopyTo(d);
    }
}
