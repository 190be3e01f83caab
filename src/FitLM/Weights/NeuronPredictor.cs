using FitLM.Model;
using System.Numerics.Tensors;
using FitLM.Formats;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// Per-layer low-rank predictors of FFN neuron activity (LLM in a flash / Deja Vu): from the layer's normalized
/// input x, ĝ = B_g·(A_g·x) approximates the gate pre-activations and û = B_u·(A_u·x) the up projections,
/// each a rank-r factorization fitted to the layer's real inputs by `fitlm calibrate`. A neuron's predicted
/// importance is |act(ĝ_i)·û_i|; ReLU-gated models keep the neurons with ĝ_i above a threshold chosen for a
/// target recall, SwiGLU models keep a fixed fraction with the largest predicted importance.
/// Stored beside the prepared model as MODEL.predictor.gguf.
/// </summary>
public sealed class NeuronPredictor
{
    public sealed class Layer
    {
        public required float[] Ag, Bg, Au, Bu;   // A: [rank × dim], B: [ffn × rank], row-major; ReLU models: Au, Bu empty
        public required float Threshold;           // ReLU: keep ĝ_i > Threshold
        public required float Recall;              // measured on calibration tokens at Threshold (ReLU) or at the calibration fraction
    }

    public int Rank { get; }
    public int Dim { get; }
    public int Ffn { get; }
    public FfnActivation Activation { get; }
    public Layer[] Layers { get; }
    /// <summary>ReLU models: the most neurons a token is given (the 99.9th percentile of the calibration counts, with room).</summary>
    public int MaxPerToken { get; }

    public NeuronPredictor(int rank, int dim, int ffn, FfnActivation activation, Layer[] layers, int maxPerToken)
    {
        Rank = rank; Dim = dim; Ffn = ffn; Activation = activation; Layers = layers; MaxPerToken = Math.Clamp(maxPerToken, 1, ffn);
    }

    public static string SidecarPath(string modelPath) =>
        Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath))!, Path.GetFileNameWithoutExtension(modelPath) + ".predictor.gguf");

    /// <summary>Predicted importance of every neuron for one token; <paramref name="low"/> is rank-sized scratch.</summary>
    public void Scores(int layer, ReadOnlySpan<float> x, Span<float> gate, Span<float> up, Span<float> low)
    {
        var L = Layers[layer];
        Project(L.Ag, L.Bg, x, gate, low);
        if (Activation != FfnActivation.Relu) Project(L.Au, L.Bu, x, up, low);
    }

    private void Project(float[] a, float[] b, ReadOnlySpan<float> x, Span<float> y, Span<float> low)
    {
        for (int r = 0; r < Rank; r++) low[r] = TensorPrimitives.Dot(a.AsSpan(r * Dim, Dim), x);
        var l = low[..Rank];
        for (int i = 0; i < Ffn; i++) y[i] = TensorPrimitives.Dot(b.AsSpan(i * Rank, Rank), l);
    }

    public void Save(string path)
    {
        using var w = new GgufWriter(path);
        w.AddString("general.architecture", "fitlm-predictor");
        w.AddUInt32("fitlm.predictor.rank", (uint)Rank);
        w.AddUInt32("fitlm.predictor.dim", (uint)Dim);
        w.AddUInt32("fitlm.predictor.ffn", (uint)Ffn);
        w.AddString("fitlm.predictor.activation", Activation.ToString().ToLowerInvariant());
        w.AddUInt32("fitlm.predictor.max_per_token", (uint)MaxPerToken);
        w.AddArray("fitlm.predictor.thresholds", Layers.Select(l => l.Threshold).ToArray());
        w.AddArray("fitlm.predictor.recall", Layers.Select(l => l.Recall).ToArray());
        // ReLU gates alone decide which neurons are active, so those predictors have no up factors.
        bool up = Activation != FfnActivation.Relu;
        for (int l = 0; l < Layers.Length; l++)
        {
            w.AddTensor($"blk.{l}.pred_gate_a.weight", [Dim, Rank], GgmlType.F32);
            w.AddTensor($"blk.{l}.pred_gate_b.weight", [Rank, Ffn], GgmlType.F32);
            if (!up) continue;
            w.AddTensor($"blk.{l}.pred_up_a.weight", [Dim, Rank], GgmlType.F32);
            w.AddTensor($"blk.{l}.pred_up_b.weight", [Rank, Ffn], GgmlType.F32);
        }
        for (int l = 0; l < Layers.Length; l++)
        {
            var L = Layers[l];
            w.WriteTensor($"blk.{l}.pred_gate_a.weight", System.Runtime.InteropServices.MemoryMarshal.AsBytes(L.Ag.AsSpan()));
            w.WriteTensor($"blk.{l}.pred_gate_b.weight", System.Runtime.InteropServices.MemoryMarshal.AsBytes(L.Bg.AsSpan()));
            if (!up) continue;
            w.WriteTensor($"blk.{l}.pred_up_a.weight", System.Runtime.InteropServices.MemoryMarshal.AsBytes(L.Au.AsSpan()));
            w.WriteTensor($"blk.{l}.pred_up_b.weight", System.Runtime.InteropServices.MemoryMarshal.AsBytes(L.Bu.AsSpan()));
        }
        w.Complete();
    }

    public static NeuronPredictor Load(string path, ModelConfig c)
    {
        using var g = GgufFile.Open(path);
        if (g.Find("general.architecture")?.AsString() != "fitlm-predictor") throw new FitLMException($"{path}: not a FitLM predictor file");
        int rank = (int)g.GetInt("fitlm.predictor.rank"), dim = (int)g.GetInt("fitlm.predictor.dim"), ffn = (int)g.GetInt("fitlm.predictor.ffn");
        if (dim != c.Dim || ffn != c.FfnDim || rank < 1 || rank > dim)
            throw new FitLMException($"{path}: predictor shapes (dim {dim}, ffn {ffn}, rank {rank}) do not match the model (dim {c.Dim}, ffn {c.FfnDim})");
        var thresholds = g.Find("fitlm.predictor.thresholds")?.AsFloatArray() ?? throw new FitLMException($"{path}: thresholds are missing");
        var recall = g.Find("fitlm.predictor.recall")?.AsFloatArray() ?? new float[thresholds.Length];
        if (thresholds.Length != c.Layers) throw new FitLMException($"{path}: predictor has {thresholds.Length} layers, the model {c.Layers}");
        float[] Read(string name, long elements)
        {
            var t = g.GetTensor(name);
            if (t.Type != GgmlType.F32 || t.Elements != elements) throw new FitLMException($"{path}: tensor '{name}' has the wrong type or shape");
            var bytes = new byte[t.ByteSize];
            g.ReadTensorBytes(t, 0, bytes);
            return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();
        }
        var act = HuggingFaceSource.ParseActivation(g.Find("fitlm.predictor.activation")?.AsString() ?? "silu", path);
        bool up = act != FfnActivation.Relu;
        var layers = new Layer[c.Layers];
        for (int l = 0; l < c.Layers; l++)
            layers[l] = new Layer
            {
                Ag = Read($"blk.{l}.pred_gate_a.weight", (long)rank * dim),
                Bg = Read($"blk.{l}.pred_gate_b.weight", (long)ffn * rank),
                Au = up ? Read($"blk.{l}.pred_up_a.weight", (long)rank * dim) : [],
                Bu = up ? Read($"blk.{l}.pred_up_b.weight", (long)ffn * rank) : [],
                Threshold = thresholds[l],
                Recall = recall[l],
            };
        return new NeuronPredictor(rank, dim, ffn, act, layers, (int)g.GetInt("fitlm.predictor.max_per_token", ffn));
    }
}

/// <summary>Chooses neurons with a <see cref="NeuronPredictor"/>: ReLU by threshold (capped), others the top fraction.</summary>
public sealed class PredictedNeurons : INeuronSelector
{
    private readonly NeuronPredictor _p;
    private readonly double _fraction;
    private readonly float[] _gate, _up, _low, _keys;

    /// <param name="fraction">SwiGLU/GELU models: neurons kept per token (top by predicted |act(ĝ)·û|). Ignored for ReLU.</param>
    public PredictedNeurons(NeuronPredictor predictor, double fraction)
    {
        _p = predictor;
        _fraction = fraction;
        _gate = new float[predictor.Ffn];
        _up = new float[predictor.Ffn];
        _low = new float[predictor.Rank];
        _keys = new float[predictor.Ffn];
    }

    public int MaxPerToken(int ffn) => _p.Activation == FfnActivation.Relu ? _p.MaxPerToken : Math.Max(1, (int)Math.Round(_fraction * ffn));

    public int Select(int layer, ReadOnlySpan<float> x, Span<int> selected)
    {
        _p.Scores(layer, x, _gate, _up, _low);
        int ffn = _p.Ffn, max = MaxPerToken(ffn), n = 0;
        if (_p.Activation == FfnActivation.Relu)
        {
            float t = _p.Layers[layer].Threshold;
            for (int i = 0; i < ffn; i++) if (_gate[i] > t) selected[n++] = i;
            if (n <= max) return n;
            // Too many for the window: keep the most confident, in index order.
            for (int i = 0; i < ffn; i++) _keys[i] = -_gate[i];
        }
        else
        {
            for (int i = 0; i < ffn; i++) _keys[i] = -MathF.Abs(Activations.Apply(_gate[i], _p.Activation) * _up[i]);
        }
        for (int i = 0; i < ffn; i++) selected[i] = i;
        _keys.AsSpan(0, ffn).Sort(selected[..ffn]);
        selected[..max].Sort();
        return max;
    }
}
