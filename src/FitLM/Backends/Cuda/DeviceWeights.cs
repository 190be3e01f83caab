using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The weights of a model on the GPU as the graph addresses them (<see cref="TransformerWeights"/> loads them from
/// here): matrices are handles to where <see cref="CudaBackend"/> placed them (a layer's <see cref="WeightBlock"/>,
/// resident or streamed, or the output head's), norms and biases are read from the file as floats (the backend uploads
/// them once), a layer's feed-forward block is a handle to its matrices. The host holds no weights.
/// </summary>
internal sealed class DeviceWeights(IModelSource source, WeightBlock[] layers, WeightBlock head) : IWeightProvider
{
    public IMatrix Matrix(string name)
    {
        var tensor = source.Get(name);
        if (head.Find(name) is { } m) return new DeviceWeight(tensor, m, DeviceWeight.HeadLayer, source);
        if (name == "token_embd.weight") return new DeviceWeight(tensor, null, DeviceWeight.NotOnDevice, source); // read a row at a time on the host
        int layer = LayerOf(name);
        return new DeviceWeight(tensor, layers[layer].Find(name) ?? throw new FitLMException($"tensor '{name}' has no place on the GPU"), layer, source);
    }

    /// <summary>l of a tensor named blk.l.*.</summary>
    private int LayerOf(string name)
    {
        const string prefix = "blk.";
        int dot = name.IndexOf('.', prefix.Length);
        if (name.StartsWith(prefix, StringComparison.Ordinal) && dot > 0 &&
            int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), out int l) && (uint)l < (uint)layers.Length)
            return l;
        throw new FitLMException($"tensor '{name}' has no place on the GPU");
    }

    public float[] Vector(string name) => source.ReadFloats(source.Get(name));
    public bool Has(string name) => source.Find(name) != null;
    public long ResidentBytes => 0;

    public IFeedForward FeedForward(int layer, ModelConfig config)
    {
        string p = $"blk.{layer}.";
        return config.FusedGateUp
            ? new DeviceFeedForward(layer, null, null, (DeviceWeight)Matrix(p + "ffn_up.weight"), (DeviceWeight)Matrix(p + "ffn_down.weight"))
            : new DeviceFeedForward(layer, (DeviceWeight)Matrix(p + "ffn_gate.weight"), (DeviceWeight)Matrix(p + "ffn_up.weight"), null,
                (DeviceWeight)Matrix(p + "ffn_down.weight"));
    }

    public void Dispose() { }
}

/// <summary>
/// A weight matrix on the GPU, for the graph to name in <see cref="IForwardBackend"/> operations: where it sits
/// (<see cref="Matrix"/> in layer <see cref="Layer"/>'s block, or the head's) and its shape. The host cannot multiply
/// by it; a row can be read from the file (the embedding).
/// </summary>
internal sealed class DeviceWeight(TensorDesc tensor, DeviceMatrix? matrix, int layer, IModelSource source) : IMatrix
{
    public const int HeadLayer = -1, NotOnDevice = -2;

    private byte[] _row = [];

    /// <summary>The matrix in its block; null for the token embedding, which stays in the file.</summary>
    public DeviceMatrix Matrix => matrix ?? throw new InvalidOperationException($"tensor '{Name}' is not in GPU memory");
    /// <summary>The layer whose block holds it, or <see cref="HeadLayer"/>.</summary>
    public int Layer => layer;
    public string Name => tensor.Name;
    public int Rows => tensor.Rows;
    public int Cols => tensor.RowLength;
    public GgmlType Type => tensor.Type;

    public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n) =>
        throw new InvalidOperationException($"tensor '{Name}' is in GPU memory: the device multiplies by it");

    /// <summary>Row <paramref name="row"/> read from the file and dequantized (a token's embedding: a few KiB).</summary>
    public void ReadRow(int row, Span<float> dst)
    {
        long bytes = GgmlTypes.RowBytes(tensor.Type, tensor.RowLength);
        if (_row.Length != bytes) _row = new byte[bytes];
        source.Read(tensor, row * bytes, _row);
        Dequantize.Row(tensor.Type, _row, dst[..Cols]);
    }
}

/// <summary>A layer's feed-forward block on the GPU: its matrices, which the device multiplies by (gate and up, or Phi-3's fused gate/up, then down).</summary>
internal sealed class DeviceFeedForward(int layer, DeviceWeight? gate, DeviceWeight? up, DeviceWeight? gateUp, DeviceWeight down) : IFeedForward
{
    public int Layer => layer;
    public DeviceWeight? Gate => gate;
    public DeviceWeight? Up => up;
    public DeviceWeight? GateUp => gateUp;
    public DeviceWeight Down => down;
    public IMatrix? Input => gateUp ?? gate;

    public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2) =>
        throw new InvalidOperationException($"layer {layer}'s feed-forward block is in GPU memory: the device runs it");
}
