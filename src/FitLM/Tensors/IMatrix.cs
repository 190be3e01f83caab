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
}
