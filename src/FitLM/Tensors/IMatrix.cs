namespace FitLM.Tensors;

/// <summary>
/// A weight matrix W [Rows × Cols] as the model graph uses it. Where its bytes live (resident, streamed,
/// stacked) is the provider's business; the graph only multiplies with it.
/// </summary>
public interface IMatrix
{
    string Name { get; }
    int Rows { get; }
    int Cols { get; }
    GgmlType Type { get; }
    /// <summary>Y[t] = W · X[t] for n tokens: X is [n × Cols], Y is [n × Rows].</summary>
    void Multiply(ReadOnlySpan<float> x, Span<float> y, int n);
    /// <summary>One row of W as floats (embedding look-up).</summary>
    void ReadRow(int row, Span<float> dst);

    /// <summary>
    /// Rows [first, first + count) of W as floats, [count × Cols] (the backward pass reads tiles of frozen
    /// weights this way). A streamed matrix serves them from its stream slot instead of one read per row.
    /// </summary>
    void ReadRows(int first, int count, Span<float> dst)
    {
        for (int i = 0; i < count; i++) ReadRow(first + i, dst.Slice(i * Cols, Cols));
    }

    /// <summary>
    /// Rows [first, first + count) as a matrix of their own, sharing these bytes: one expert of a stacked
    /// [experts × rows] tensor. Only matrices whose bytes are in memory can be cut this way.
    /// </summary>
    IMatrix RowSlice(int first, int count) =>
        throw new FitLMException($"tensor '{Name}': this weight provider cannot split it into experts (load the model resident or with an expert cache)");
}
