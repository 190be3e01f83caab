using FitLM.Model;

namespace FitLM.Memory;

/// <summary>What the decoder allocates besides weights, for the planner's accounting.</summary>
public static class Footprint
{
    /// <summary>Plain float32 KV cache for <paramref name="context"/> positions.</summary>
    public static long KvBytes(ModelConfig c, int context) => 2L * c.Layers * context * c.KvDim * sizeof(float);

    /// <summary>
    /// Activation buffers of a batch of <paramref name="maxBatch"/> tokens (x, xb, xb2, q, k, v, hb, hb2 as the
    /// Transformer allocates them), per-thread attention scores and matmul tiles, and the RoPE tables.
    /// </summary>
    public static long ScratchBytes(ModelConfig c, int context, int maxBatch)
    {
        long perToken = 3L * c.Dim + Math.Max(c.Dim, c.QDim) + c.QDim + 2L * c.KvDim + 2L * c.FfnDim;
        long batch = 4L * Math.Min(maxBatch, context) * perToken;
        int threads = Tensors.MatMul.Threads;
        long perThread = 4L * context + 4L * 16 * Math.Max(c.FfnDim, Math.Max(c.Dim, c.QDim)) + 64L * 1024;
        long rope = 2L * 4 * context * (c.RopeDims / 2);
        return batch + threads * perThread + rope;
    }
}
