using System.Numerics.Tensors;
using FitLM.KvCache;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// The Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3): embedding, then per layer RMSNorm →
/// grouped-query attention with RoPE and a KV cache → residual → RMSNorm → gated FFN → residual, then the
/// final norm and output head. Tokens are processed in batches (prefill) or one at a time (decode);
/// all arithmetic accumulates in float32. Weights come from an <see cref="IWeightProvider"/>.
/// </summary>
public sealed class Transformer
{
    private sealed class Layer
    {
        public required float[] AttnNorm, FfnNorm;
        public required IMatrix Wq, Wk, Wv, Wo;
        public required IFeedForward Ffn;
        public float[]? Bq, Bk, Bv, QNorm, KNorm;
    }

    public ModelConfig Config { get; }
    public int MaxContext { get; }
    public int MaxBatch { get; }
    public PlainKvCache Kv { get; }

    private readonly Layer[] _layers;
    private readonly IMatrix _tokenEmbedding, _output;
    private readonly float[] _outputNorm;
    private readonly Rope _rope;
    private readonly float _attnScale;
    private readonly AttentionJob _attention;

    // Activations for a batch of up to MaxBatch tokens, row-major [token × width], named as the math does.
    private readonly float[] _x, _xb, _xb2, _q, _k, _v, _hb, _hb2;

    public Transformer(ModelConfig config, IWeightProvider weights, int maxContext, int maxBatch = 256)
    {
        Config = config;
        var c = config;
        MaxContext = Math.Max(1, maxContext);
        MaxBatch = Math.Clamp(maxBatch, 1, MaxContext);
        _layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"blk.{l}.";
            _layers[l] = new Layer
            {
                AttnNorm = weights.Vector(p + "attn_norm.weight"),
                FfnNorm = weights.Vector(p + "ffn_norm.weight"),
                Wq = weights.Matrix(p + "attn_q.weight"),
                Wk = weights.Matrix(p + "attn_k.weight"),
                Wv = weights.Matrix(p + "attn_v.weight"),
                Wo = weights.Matrix(p + "attn_output.weight"),
                Ffn = weights.FeedForward(l, c),
                Bq = c.QkvBias ? weights.Vector(p + "attn_q.bias") : null,
                Bk = c.QkvBias ? weights.Vector(p + "attn_k.bias") : null,
                Bv = c.QkvBias ? weights.Vector(p + "attn_v.bias") : null,
                QNorm = c.QkNorm ? weights.Vector(p + "attn_q_norm.weight") : null,
                KNorm = c.QkNorm ? weights.Vector(p + "attn_k_norm.weight") : null,
            };
        }
        _tokenEmbedding = weights.Matrix("token_embd.weight");
        _output = weights.Has("output.weight") ? weights.Matrix("output.weight") : _tokenEmbedding;
        _outputNorm = weights.Vector("output_norm.weight");
        _rope = new Rope(c, MaxContext, weights.Has("rope_freqs.weight") ? weights.Vector("rope_freqs.weight") : null);
        _attnScale = 1f / MathF.Sqrt(c.HeadDim);
        Kv = new PlainKvCache(c.Layers, MaxContext, c.KvDim);
        _attention = new AttentionJob(this);

        int b = MaxBatch;
        _x = new float[b * c.Dim];
        _xb = new float[b * Math.Max(c.Dim, c.QDim)];
        _xb2 = new float[b * c.Dim];
        _q = new float[b * c.QDim];
        _k = new float[b * c.KvDim];
        _v = new float[b * c.KvDim];
        _hb = new float[b * c.FfnDim];
        _hb2 = new float[b * c.FfnDim];
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
        if (pos < 0 || pos + n > MaxContext)
            throw new FitLMException($"context overflow: positions {pos}..{pos + n - 1} do not fit a context of {MaxContext}");
        if (logitsFrom < 0 || logitsFrom > n) throw new ArgumentOutOfRangeException(nameof(logitsFrom));
        if (logits.Length < (long)(n - logitsFrom) * Config.Vocab) throw new ArgumentException("logits buffer too small");
        for (int i = 0; i < n; i++)
            if ((uint)tokens[i] >= (uint)Config.Vocab) throw new FitLMException($"token id {tokens[i]} is outside the vocabulary ({Config.Vocab})");

        for (int start = 0; start < n; start += MaxBatch)
        {
            ct.ThrowIfCancellationRequested();
            int count = Math.Min(MaxBatch, n - start);
            ForwardBatch(tokens.Slice(start, count), pos + start);
            // Logits for the rows of this batch that were asked for.
            int from = Math.Max(logitsFrom, start) - start;
            if (from < count)
            {
                long outOffset = (long)(start + from - logitsFrom) * Config.Vocab;
                ComputeLogits(from, count, logits.Slice((int)outOffset, (count - from) * Config.Vocab));
            }
        }
    }

    private void ForwardBatch(ReadOnlySpan<int> tokens, int pos)
    {
        var c = Config;
        int n = tokens.Length, dim = c.Dim;
        for (int t = 0; t < n; t++) _tokenEmbedding.ReadRow(tokens[t], _x.AsSpan(t * dim, dim));

        for (int l = 0; l < c.Layers; l++)
        {
            var L = _layers[l];
            // Attention block.
            RmsNormRows(_x, L.AttnNorm, _xb, n, dim);
            L.Wq.Multiply(_xb.AsSpan(0, n * dim), _q, n);
            L.Wk.Multiply(_xb.AsSpan(0, n * dim), _k, n);
            L.Wv.Multiply(_xb.AsSpan(0, n * dim), _v, n);
            for (int t = 0; t < n; t++)
            {
                var q = _q.AsSpan(t * c.QDim, c.QDim);
                var k = _k.AsSpan(t * c.KvDim, c.KvDim);
                var v = _v.AsSpan(t * c.KvDim, c.KvDim);
                if (L.Bq != null) { TensorPrimitives.Add(q, L.Bq, q); TensorPrimitives.Add(k, L.Bk!, k); TensorPrimitives.Add(v, L.Bv!, v); }
                if (L.QNorm != null)
                {
                    for (int h = 0; h < c.Heads; h++) RmsNorm(q.Slice(h * c.HeadDim, c.HeadDim), L.QNorm, q.Slice(h * c.HeadDim, c.HeadDim));
                    for (int h = 0; h < c.KvHeads; h++) RmsNorm(k.Slice(h * c.HeadDim, c.HeadDim), L.KNorm!, k.Slice(h * c.HeadDim, c.HeadDim));
                }
                _rope.Apply(q, c.Heads, c.HeadDim, pos + t);
                _rope.Apply(k, c.KvHeads, c.HeadDim, pos + t);
                k.CopyTo(Kv.Key(l, pos + t));
                v.CopyTo(Kv.Value(l, pos + t));
            }
            Attention(l, pos, n);                    // _q → _xb (per-head outputs, [n × QDim])
            L.Wo.Multiply(_xb.AsSpan(0, n * c.QDim), _xb2, n);
            TensorPrimitives.Add(_x.AsSpan(0, n * dim), _xb2.AsSpan(0, n * dim), _x.AsSpan(0, n * dim));

            // Feed-forward block: down(act(gate(x)) * up(x)).
            RmsNormRows(_x, L.FfnNorm, _xb, n, dim);
            L.Ffn.Forward(_xb.AsSpan(0, n * dim), _xb2, n, _hb, _hb2);
            TensorPrimitives.Add(_x.AsSpan(0, n * dim), _xb2.AsSpan(0, n * dim), _x.AsSpan(0, n * dim));
        }
    }

    /// <summary>Causal grouped-query attention of the batch's queries over the cache, into _xb.</summary>
    private void Attention(int layer, int pos, int n)
    {
        _attention.Layer = layer;
        _attention.Pos = pos;
        WorkerPool.Shared.Run(_attention, n * Config.Heads);
    }

    /// <summary>One (token, head) pair per item: scores over the cache, softmax, weighted sum of values.</summary>
    private sealed class AttentionJob(Transformer m) : IParallelJob
    {
        public int Layer, Pos;

        public void Execute(int i)
        {
            var c = m.Config;
            int heads = c.Heads, group = c.Heads / c.KvHeads, hd = c.HeadDim, kvDim = c.KvDim;
            int t = i / heads, h = i % heads, kvh = h / group;
            int len = Pos + t + 1;
            var att = AttScratch(m.MaxContext).AsSpan(0, len);
            var q = new ReadOnlySpan<float>(m._q, t * c.QDim + h * hd, hd);
            var keys = m.Kv.Keys(Layer, len);
            for (int j = 0; j < len; j++)
                att[j] = TensorPrimitives.Dot(q, keys.Slice(j * kvDim + kvh * hd, hd)) * m._attnScale;
            TensorPrimitives.SoftMax(att, att);
            var o = new Span<float>(m._xb, t * c.QDim + h * hd, hd);
            o.Clear();
            var values = m.Kv.Values(Layer, len);
            for (int j = 0; j < len; j++)
                TensorPrimitives.MultiplyAdd(values.Slice(j * kvDim + kvh * hd, hd), att[j], o, o);
        }
    }

    [ThreadStatic] private static float[]? t_att;
    private static float[] AttScratch(int n) => t_att is { } a && a.Length >= n ? a : t_att = new float[n];

    private void ComputeLogits(int from, int count, Span<float> logits)
    {
        int dim = Config.Dim, rows = count - from;
        RmsNormRows(_x.AsSpan(from * dim), _outputNorm, _xb, rows, dim);
        _output.Multiply(_xb.AsSpan(0, rows * dim), logits, rows);
    }

    private void RmsNormRows(ReadOnlySpan<float> x, float[] w, Span<float> o, int n, int dim)
    {
        for (int t = 0; t < n; t++) RmsNorm(x.Slice(t * dim, dim), w, o.Slice(t * dim, dim));
    }

    private void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> o)
    {
        float ss = TensorPrimitives.SumOfSquares(x) / x.Length;
        float scale = 1f / MathF.Sqrt(ss + Config.RmsEps);
        TensorPrimitives.Multiply(x, scale, o);
        TensorPrimitives.Multiply(o, w, o);
    }
}
