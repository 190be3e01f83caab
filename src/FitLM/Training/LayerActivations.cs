namespace FitLM.Training;

/// <summary>
/// What backward needs from one layer's forward, for n tokens: the layer input, the normalized inputs of both
/// blocks, Q/K (after RoPE) and V, the attention output and its per-row log-sum-exp, the residual between the
/// blocks, the FFN's gate and up products, and A x of every LoRA projection. With activation checkpointing
/// only a segment's worth of these exist at once.
/// </summary>
internal sealed class LayerActivations
{
    public readonly float[] XIn, H1, Q, K, V, A, Lse, XMid, H2, Gate, Up;
    /// <summary>Q and K before their per-head norms (Qwen3), for its backward; empty otherwise.</summary>
    public readonly float[] QPre, KPre;
    /// <summary>A x for q, k, v, o, gate, up, down (empty where the projection has no LoRA).</summary>
    public readonly float[][] Ax;

    public LayerActivations(Model.ModelConfig c, int n, int[] ranks)
    {
        XIn = new float[n * c.Dim];
        H1 = new float[n * c.Dim];
        Q = new float[n * c.QDim];
        K = new float[n * c.KvDim];
        V = new float[n * c.KvDim];
        A = new float[n * c.QDim];
        Lse = new float[n * c.Heads];
        XMid = new float[n * c.Dim];
        H2 = new float[n * c.Dim];
        Gate = new float[n * c.FfnDim];
        Up = new float[n * c.FfnDim];
        QPre = c.QkNorm ? new float[n * c.QDim] : [];
        KPre = c.QkNorm ? new float[n * c.KvDim] : [];
        Ax = ranks.Select(r => new float[n * r]).ToArray();
    }

    /// <summary>Bytes of one layer's activations for n tokens.</summary>
    public static long Bytes(Model.ModelConfig c, int n, int[] ranks)
    {
        long floats = (long)n * (4L * c.Dim + 2L * c.QDim + 2L * c.KvDim + c.Heads + 2L * c.FfnDim + ranks.Sum());
        if (c.QkNorm) floats += (long)n * (c.QDim + c.KvDim);
        return 4 * floats;
    }
}
