using FitLM.Model;

namespace FitLM.Memory;

/// <summary>What the decoder allocates besides weights, for the planner's accounting.</summary>
public static class Footprint
{
    /// <summary>
    /// Activation buffers of a batch of <paramref name="maxBatch"/> tokens (x, xb, xb2, q, k, v, hb, hb2 as the
    /// Transformer allocates them), per-thread matmul tiles, and the RoPE tables. Attention's scores and tiles are
    /// the KV cache's scratch, counted with it (KvStoreFactory.PlanBytes).
    /// </summary>
    public static long ScratchBytes(ModelConfig c, int context, int maxBatch)
    {
        // hb, hb2 are as wide as the widest FFN a layer runs (an expert's, not a MoE config's unused intermediate_size);
        // a fused QKV product has its own rows; a MoE block keeps router logits, choices and gathered rows in and out.
        long perToken = 3L * c.Dim + Math.Max(c.Dim, c.QDim) + c.QDim + 2L * c.KvDim + 2L * c.ScratchFfnDim
            + (c.FusedQkv ? c.QDim + 2L * c.KvDim : 0) + (c.IsMoe ? c.ExpertCount + 2L * c.Dim + 4L * c.ExpertsUsed : 0);
        long batch = 4L * Math.Min(maxBatch, context) * perToken;
        int threads = Tensors.MatMul.Threads;
        long perThread = 4L * 16 * Math.Max(c.ScratchFfnDim, Math.Max(c.Dim, c.QDim)) + 64L * 1024;
        long rope = 2L * 4 * context * (c.RopeDims / 2);
        // A batch's matrix products pack its tokens once (floats, or int8 with a scale per 32) on the calling thread.
        long widest = Math.Max(c.ScratchFfnDim, Math.Max(c.Dim, c.QDim));
        long packed = maxBatch > 1 ? Math.Min(maxBatch, context) * widest * (4L + 2) : 0;
        return batch + threads * perThread + rope + packed;
    }

    /// <summary>
    /// A server's own memory beside the model (`fitlm serve`, KvBudget): ASP.NET Core's heap, the JIT of its endpoints,
    /// connection buffers and thread stacks. Measured on the demo model: a server after a thousand requests peaks at about
    /// 120 MiB, `fitlm run` at 70 MiB, of which the difference up to 28 MiB was KV pages: 20-50 MiB.
    /// </summary>
    public const long ServerOverheadBytes = 40L << 20;

    /// <summary>What each decode slot of a server holds besides its KV store: its row of logits, the sampler's two vocab-sized buffers, token history.</summary>
    public static long ServerSlotBytes(int vocab, int context) => 3L * vocab * sizeof(float) + 2L * context * sizeof(int) + 64 * 1024;

    /// <summary>What a server with <paramref name="slots"/> decode slots holds beside the model's plan (0 slots: not a server).</summary>
    public static long ServerBytes(ModelConfig c, int slots, int context) =>
        slots > 0 ? ServerOverheadBytes + slots * ServerSlotBytes(c.Vocab, context) : 0;

    /// <summary>
    /// Bytes of weights one decode step reads: every matrix once (the embedding only one row); of a prepared model's
    /// bundled FFNs only the <paramref name="ffnFraction"/> of neurons it computes; of routed experts only the ones a
    /// token runs (ExpertsUsed of ExpertCount).
    /// </summary>
    public static long WeightBytesPerToken(IModelSource source, double ffnFraction = 1)
    {
        var c = source.Config;
        long total = 0;
        foreach (var t in source.Tensors)
        {
            if (t.Name == "token_embd.weight")
                total += source.Find("output.weight") == null ? t.ByteSize : t.ByteSize / t.Rows;
            else if (t.Name.EndsWith(".ffn_bundle.weight", StringComparison.Ordinal))
                total += (long)(t.ByteSize * Math.Clamp(ffnFraction, 0, 1));
            else if (c.IsMoe && TensorNames.IsExpertStack(t.Name))
                total += t.ByteSize / c.ExpertCount * c.ExpertsUsed;
            else total += t.ByteSize;
        }
        return total;
    }

    /// <summary>
    /// A text of <paramref name="chars"/> characters held with its tokens (perplexity's input): 2 bytes a character for the
    /// string and at most one 4-byte token per 2 characters (measured: 3.6 characters a token for Python source).
    /// </summary>
    public static long TextBytes(long chars) => 2 * chars + 4 * (chars / 2 + 1);
}
