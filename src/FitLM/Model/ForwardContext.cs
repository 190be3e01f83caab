using FitLM.KvCache;

namespace FitLM.Model;

/// <summary>
/// What one forward pass of up to MaxBatch rows works in: the activations, row-major [row × width] and named as
/// the math does, in buffers its backend allocated; the rows' token ids; and which run of rows belongs to which
/// sequence. Allocated once per <see cref="Transformer"/>, so no pass allocates.
/// </summary>
internal sealed class ForwardContext
{
    /// <summary>The residual stream [n × Dim].</summary>
    public ActivationBuffer X { get; }
    /// <summary>A normed row, then the attention output [n × max(Dim, QDim)].</summary>
    public ActivationBuffer Xb { get; }
    /// <summary>A block's output before the residual add [n × Dim].</summary>
    public ActivationBuffer Xb2 { get; }
    public ActivationBuffer Q { get; }
    public ActivationBuffer K { get; }
    public ActivationBuffer V { get; }
    /// <summary>The feed-forward block's scratch [n × FFN width].</summary>
    public ActivationBuffer Hb { get; }
    public ActivationBuffer Hb2 { get; }
    /// <summary>The fused Q|K|V product of a Phi-3 layer [n × (QDim + 2·KvDim)], before it is split; empty otherwise.</summary>
    public ActivationBuffer Qkv { get; }
    /// <summary>The token ids of the pass's rows.</summary>
    public int[] Tokens { get; }
    /// <summary>The sequences of the pass, in row order: segment s holds rows [Row, Row + Count).</summary>
    public PassSegment[] Segments { get; }

    public ForwardContext(ModelConfig c, int maxBatch, IForwardBackend backend)
    {
        int b = maxBatch;
        X = backend.Allocate(b * c.Dim);
        Xb = backend.Allocate(b * Math.Max(c.Dim, c.QDim));
        Xb2 = backend.Allocate(b * c.Dim);
        Q = backend.Allocate(b * c.QDim);
        K = backend.Allocate(b * c.KvDim);
        V = backend.Allocate(b * c.KvDim);
        Hb = backend.Allocate(b * c.ScratchFfnDim);
        Hb2 = backend.Allocate(b * c.ScratchFfnDim);
        Qkv = backend.Allocate(c.FusedQkv ? b * (c.QDim + 2 * c.KvDim) : 0);
        Tokens = new int[b];
        Segments = new PassSegment[b];
    }
}

/// <summary>One sequence's rows in a pass: rows [Row, Row + Count) are positions [Pos, Pos + Count) of the sequence whose KV store is Kv.</summary>
internal struct PassSegment
{
    public IKvStore Kv;
    public int Pos, Row, Count;
}
