using System.Numerics.Tensors;
using FitLM.KvCache;
using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// The forward pass's arithmetic on the CPU: the kernels of Tensors/ (matrix products, through each
/// <see cref="IMatrix"/>), KvCache/ (append and attention, through each <see cref="IKvStore"/>) and the feed-forward
/// blocks, over managed arrays (<see cref="HostBuffer"/>). All of it accumulates in float32; nothing is allocated
/// per call. The row-level helpers (embedding, RMSNorm, finishing keys) are also what the KV stores ask of the
/// model (<see cref="TransformerKvModel"/>).
/// </summary>
internal sealed class CpuForwardBackend(ModelConfig config) : IForwardBackend
{
    private static float[] Host(ActivationBuffer b) => ((HostBuffer)b).Data;

    public ActivationBuffer Allocate(int floats) => new HostBuffer(floats);

    public void BeginPass(ForwardContext context, int n, int segments, bool logits) { } // every operation runs as it is called

    public void Embed(IMatrix table, ReadOnlySpan<int> tokens, ActivationBuffer x)
    {
        var a = Host(x);
        int dim = config.Dim;
        for (int t = 0; t < tokens.Length; t++) EmbedRow(table, tokens[t], a.AsSpan(t * dim, dim));
    }

    /// <summary>A token's row of the residual stream entering layer 0: its embedding, scaled where the family scales it.</summary>
    public void EmbedRow(IMatrix table, int token, Span<float> x)
    {
        table.ReadRow(token, x);
        if (config.EmbeddingScale != 1f) TensorPrimitives.Multiply(x, config.EmbeddingScale, x);
    }

    public void RmsNorm(ActivationBuffer x, int xRow, float[] w, ActivationBuffer o, int oRow, int n)
    {
        int dim = config.Dim;
        var xs = Host(x).AsSpan(xRow * dim);
        var os = Host(o).AsSpan(oRow * dim);
        for (int t = 0; t < n; t++) RmsNorm(xs.Slice(t * dim, dim), w, os.Slice(t * dim, dim), config.RmsEps);
    }

    public void AddRmsNorm(ActivationBuffer x, ActivationBuffer? residual, float[] w, ActivationBuffer o, int n, IMatrix? reader)
    {
        if (residual != null) Add(x, residual, n);
        RmsNorm(x, 0, w, o, 0, n);
    }

    /// <summary>o = x / √(mean(x²) + ε) ⊙ w: the model's RMSNorm of one row.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, Span<float> o, float eps)
    {
        float ss = TensorPrimitives.SumOfSquares(x) / x.Length;
        float scale = 1f / MathF.Sqrt(ss + eps);
        TensorPrimitives.Multiply(x, scale, o);
        TensorPrimitives.Multiply(o, w, o);
    }

    public void Multiply(IMatrix w, ActivationBuffer x, ActivationBuffer y, int n) => w.Multiply(Host(x).AsSpan(0, n * w.Cols), Host(y), n);

    public void MultiplyTogether(ActivationBuffer x, int n, IMatrix wa, ActivationBuffer ya, IMatrix wb, ActivationBuffer yb, IMatrix? wc = null, ActivationBuffer? yc = null)
    {
        Multiply(wa, x, ya, n);
        Multiply(wb, x, yb, n);
        if (wc != null) Multiply(wc, x, yc!, n);
    }

    public void SplitQkv(ActivationBuffer qkv, ActivationBuffer q, ActivationBuffer k, ActivationBuffer v, int n) =>
        SplitQkv(Host(qkv), Host(q), Host(k), Host(v), n);

    /// <summary>Rows of a fused Q|K|V product into q, k and v; q may be empty (the KV stores want only K and V).</summary>
    private void SplitQkv(ReadOnlySpan<float> qkv, Span<float> q, Span<float> k, Span<float> v, int n)
    {
        var c = config;
        int width = c.QDim + 2 * c.KvDim;
        for (int t = 0; t < n; t++)
        {
            var row = qkv.Slice(t * width, width);
            if (!q.IsEmpty) row[..c.QDim].CopyTo(q.Slice(t * c.QDim, c.QDim));
            row.Slice(c.QDim, c.KvDim).CopyTo(k.Slice(t * c.KvDim, c.KvDim));
            row.Slice(c.QDim + c.KvDim, c.KvDim).CopyTo(v.Slice(t * c.KvDim, c.KvDim));
        }
    }

    /// <summary>
    /// k, v = the layer's key and value projections of n rows of x (host rows: what a KV store rematerializes); a
    /// fused matrix multiplies into <paramref name="qkv"/>, the context's scratch for at most <paramref name="maxRows"/> rows, chunk by chunk.
    /// </summary>
    public void ProjectKv(TransformerLayer layer, ReadOnlySpan<float> x, Span<float> k, Span<float> v, int n, ActivationBuffer qkv, int maxRows)
    {
        var c = config;
        if (layer.Wqkv == null)
        {
            layer.Wk!.Multiply(x.Slice(0, n * c.Dim), k, n);
            layer.Wv!.Multiply(x.Slice(0, n * c.Dim), v, n);
            return;
        }
        var scratch = Host(qkv);
        for (int t0 = 0; t0 < n; t0 += maxRows)
        {
            int cnt = Math.Min(maxRows, n - t0);
            layer.Wqkv.Multiply(x.Slice(t0 * c.Dim, cnt * c.Dim), scratch, cnt);
            SplitQkv(scratch, Span<float>.Empty, k.Slice(t0 * c.KvDim, cnt * c.KvDim), v.Slice(t0 * c.KvDim, cnt * c.KvDim), cnt);
        }
    }

    public void FinishQueries(TransformerLayer layer, ActivationBuffer q, int row, int n, int pos)
    {
        var c = config;
        var a = Host(q);
        for (int t = 0; t < n; t++)
        {
            var r = a.AsSpan((row + t) * c.QDim, c.QDim);
            if (layer.Bq != null) TensorPrimitives.Add(r, layer.Bq, r);
            if (layer.QNorm != null) QkNorm(r, layer.QNorm, c.Heads);
            layer.Rope.Apply(r, c.Heads, c.HeadDim, pos + t);
        }
    }

    /// <summary>A raw key row finished for the cache at <paramref name="pos"/>: bias, K norm, RoPE.</summary>
    public void FinishKey(TransformerLayer layer, Span<float> k, int pos)
    {
        var c = config;
        if (layer.Bk != null) TensorPrimitives.Add(k, layer.Bk, k);
        if (layer.KNorm != null) QkNorm(k, layer.KNorm, c.KvHeads);
        layer.Rope.Apply(k, c.KvHeads, c.HeadDim, pos);
    }

    /// <summary>A Q or K row's norm in place: per head (Qwen3, Gemma 3), or over the whole row (OLMoE).</summary>
    private void QkNorm(Span<float> row, float[] w, int heads)
    {
        if (config.QkNormWholeRow)
        {
            RmsNorm(row, w, row, config.RmsEps);
            return;
        }
        int hd = config.HeadDim;
        for (int h = 0; h < heads; h++) RmsNorm(row.Slice(h * hd, hd), w, row.Slice(h * hd, hd), config.RmsEps);
    }

    public void AppendAndAttend(int layer, ForwardContext context, in PassSegment segment)
    {
        var c = config;
        int r = segment.Row, m = segment.Count, dim = c.Dim;
        var xb = Host(context.Xb);
        segment.Kv.Append(layer, segment.Pos, new KvRows(context.Tokens.AsSpan(r, m), Host(context.X).AsSpan(r * dim, m * dim), xb.AsSpan(r * dim, m * dim),
            Host(context.K).AsSpan(r * c.KvDim, m * c.KvDim), Host(context.V).AsSpan(r * c.KvDim, m * c.KvDim)));
        segment.Kv.Attend(layer, segment.Pos, m, Host(context.Q).AsSpan(r * c.QDim, m * c.QDim), xb.AsSpan(r * c.QDim, m * c.QDim));
    }

    public void Add(ActivationBuffer x, ActivationBuffer y, int n)
    {
        var xs = Host(x).AsSpan(0, n * config.Dim);
        TensorPrimitives.Add(xs, Host(y).AsSpan(0, n * config.Dim), xs);
    }

    public void FeedForward(IFeedForward ffn, ActivationBuffer x, ActivationBuffer y, int n, ActivationBuffer hb, ActivationBuffer hb2) =>
        ffn.Forward(Host(x).AsSpan(0, n * config.Dim), Host(y), n, Host(hb), Host(hb2));

    public void Logits(IMatrix output, ActivationBuffer x, int n, Span<float> logits)
    {
        output.Multiply(Host(x).AsSpan(0, n * config.Dim), logits, n);
        KvShape.CapInPlace(logits[..(n * config.Vocab)], config.FinalSoftcap);
    }

    public void Read(ActivationBuffer x, int n, Span<float> destination) => Host(x).AsSpan(0, n * config.Dim).CopyTo(destination);
}
