using FitLM.Tensors;

namespace FitLM.Model;

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

/// <summary>Where the model graph gets its weights. The planner picks the implementation from the budget.</summary>
public interface IWeightProvider : IDisposable
{
    IMatrix Matrix(string name);
    /// <summary>A small tensor (norm weight, bias) as floats.</summary>
    float[] Vector(string name);
    bool Has(string name);
    /// <summary>Bytes of weights this provider holds in memory.</summary>
    long ResidentBytes { get; }

    /// <summary>Layer <paramref name="layer"/>'s feed-forward block: dense unless the provider bundles neurons.</summary>
    IFeedForward FeedForward(int layer, ModelConfig config) => new DenseFeedForward(
        Matrix($"blk.{layer}.ffn_gate.weight"), Matrix($"blk.{layer}.ffn_up.weight"), Matrix($"blk.{layer}.ffn_down.weight"), config.Activation);
}
