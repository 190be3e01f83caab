using FitLM.Tensors;

namespace FitLM.Model;

/// <summary>
/// The arithmetic of a forward pass, one operation per step of the graph: <see cref="Transformer"/>'s layer loop
/// reads as a sequence of these calls (as llama2.c's transformer() reads as its kernels). Activations live in
/// buffers the backend allocates (<see cref="ActivationBuffer"/>) and are addressed by rows of the model's widths
/// (Dim for the residual stream and its norms, QDim for queries, KvDim for keys and values); weights are the
/// model's (<see cref="IMatrix"/>, norm vectors, the layer's RoPE), which a device backend maps to its own copies.
/// Host memory appears only where data enters or leaves a pass: token ids, logits, hidden states.
/// The CPU's is <see cref="CpuForwardBackend"/>; the GPU's is Backends/Cuda's CudaBackend, which runs the same
/// sequence of operations as kernels and may record a decode step once and replay it (<see cref="BeginPass"/>).
/// </summary>
internal interface IForwardBackend
{
    /// <summary>A buffer of <paramref name="floats"/> activations (zero: an empty one, for a form the model does not use).</summary>
    ActivationBuffer Allocate(int floats);

    /// <summary>
    /// A pass over rows [0, n) of the context, which belong to its segments [0, <paramref name="segments"/>), begins;
    /// <paramref name="logits"/>: it ends in <see cref="Logits"/>. A device uploads what its kernels read (the
    /// segments' positions) and may replay a pass of the same shape it recorded before: its operations up to
    /// <see cref="Logits"/> then queue nothing. The CPU needs nothing here.
    /// </summary>
    void BeginPass(ForwardContext context, int n, int segments, bool logits);

    /// <summary>Rows [0, n) of x = the embeddings of <paramref name="tokens"/>, scaled where the family scales them (Gemma: √Dim).</summary>
    void Embed(IMatrix table, ReadOnlySpan<int> tokens, ActivationBuffer x);

    /// <summary>Rows [oRow, oRow + n) of o = RMSNorm of rows [xRow, xRow + n) of x, times w (rows of Dim; o may be x).</summary>
    void RmsNorm(ActivationBuffer x, int xRow, float[] w, ActivationBuffer o, int oRow, int n);

    /// <summary>
    /// Rows [0, n): x += <paramref name="residual"/> where one is pending (the block before's output), then o =
    /// RMSNorm(x) ⊙ w. <paramref name="reader"/> is the product that reads o next, where known: a device writes o in
    /// the form that product takes as well (its 8-bit activations), so the product need not convert it.
    /// </summary>
    void AddRmsNorm(ActivationBuffer x, ActivationBuffer? residual, float[] w, ActivationBuffer o, int n, IMatrix? reader);

    /// <summary>Y[t] = W · X[t] for rows [0, n): X rows of W's columns, Y rows of W's rows.</summary>
    void Multiply(IMatrix w, ActivationBuffer x, ActivationBuffer y, int n);

    /// <summary>Products of one input, rows [0, n): Ya = Wa·X, Yb = Wb·X and, where given, Yc = Wc·X (Q, K and V; a device launches them as one).</summary>
    void MultiplyTogether(ActivationBuffer x, int n, IMatrix wa, ActivationBuffer ya, IMatrix wb, ActivationBuffer yb, IMatrix? wc = null, ActivationBuffer? yc = null);

    /// <summary>Rows [0, n) of a fused Q|K|V product (Phi-3) split into q, k and v.</summary>
    void SplitQkv(ActivationBuffer qkv, ActivationBuffer q, ActivationBuffer k, ActivationBuffer v, int n);

    /// <summary>
    /// Rows [row, row + n) of q finished for attention at positions [pos, pos + n): bias, Q norm, RoPE, each row in that
    /// order (a device may rotate them in <see cref="AppendAndAttend"/>, with the keys, before any use).
    /// </summary>
    void FinishQueries(TransformerLayer layer, ActivationBuffer q, int row, int n, int pos);

    /// <summary>
    /// One segment's new keys and values of <paramref name="layer"/> appended to its KV store (rows of the context's
    /// K, V, X, Xb and tokens), then its queries (Q) attending over everything the store holds: the output
    /// overwrites the segment's rows of Xb, [Count × QDim] from Row · QDim.
    /// </summary>
    void AppendAndAttend(int layer, ForwardContext context, in PassSegment segment);

    /// <summary>Rows [0, n) of x += y (the residual stream; rows of Dim).</summary>
    void Add(ActivationBuffer x, ActivationBuffer y, int n);

    /// <summary>Rows [0, n) of y = the feed-forward block of rows of x (dense, fused, a mixture of experts: the block's own); hb, hb2 scratch.</summary>
    void FeedForward(IFeedForward ffn, ActivationBuffer x, ActivationBuffer y, int n, ActivationBuffer hb, ActivationBuffer hb2);

    /// <summary>
    /// Logits of rows [0, n) of x (already output-normed) through the head, soft-capped where the family caps them, into
    /// the host's [n × Vocab]. A device that was recording the pass and could not finish the recording throws
    /// <see cref="PassAbandonedException"/>: nothing of the pass ran, and running it again runs it directly.
    /// </summary>
    void Logits(IMatrix output, ActivationBuffer x, int n, Span<float> logits);

    /// <summary>Rows [0, n) of x (rows of Dim) copied to the host.</summary>
    void Read(ActivationBuffer x, int n, Span<float> destination);
}

/// <summary>
/// A device recorded a pass to replay it and could not finish the recording (<see cref="IForwardBackend.Logits"/>): none of
/// its operations ran, the device has stopped recording, and the caller runs the pass again.
/// </summary>
internal sealed class PassAbandonedException(string message) : Exception(message);
