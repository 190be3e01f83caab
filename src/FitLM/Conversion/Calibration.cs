using FitLM.Model;
using MathNet.Numerics.LinearAlgebra;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Conversion;

/// <summary>
/// `fitlm calibrate`: fits the per-layer neuron predictors of LLM in a flash on calibration text. The model runs
/// over the text with a provider decorator that records each layer's FFN input; then, per layer, the gate and
/// up matrices are approximated at rank r in the metric of those inputs (SVD of W·C^½ with C the inputs'
/// second moment, so the approximation is best exactly where the layer's inputs lie), and a threshold is set
/// for the target recall of active neurons.
/// </summary>
public static class Calibration
{
    public sealed record Options(int Rank = 64, int MaxSamples = 4096, double TargetRecall = 0.99, double Fraction = 0.5);

    public sealed record Report(NeuronPredictor Predictor, int Samples, double[] Recall, double[] ActiveFraction, double[] SelectedFraction);

    public static Report Fit(string modelPath, string calibrationText, Options o, Action<string>? log = null, CancellationToken ct = default)
    {
        using var src = ModelSource.Open(modelPath);
        var c = src.Config;
        if (o.Rank < 1 || o.Rank > c.Dim) throw new FitLMException($"--rank {o.Rank} is out of range (1..{c.Dim})");
        var tokens = src.Tokenizer.Encode(calibrationText);
        if (tokens.Length < 64) throw new FitLMException($"the calibration text has only {tokens.Length} tokens (64 or more needed)");

        // 1. Record FFN inputs of every layer.
        IWeightProvider inner = ModelValidation.IsBundled(src) ? new FlashWeights(new ResidentWeights(src), src, new AllNeurons(), 1) : new ResidentWeights(src);
        using var recorder = new RecordingWeights(inner, c.Layers, o.MaxSamples, c.Dim);
        var tf = new Transformer(c, recorder, 512, 512);
        var logits = new float[c.Vocab];
        for (int start = 0; start + 2 <= tokens.Length && recorder.Samples < o.MaxSamples; start += 512)
        {
            ct.ThrowIfCancellationRequested();
            int n = Math.Min(512, tokens.Length - start);
            tf.Forward(tokens.AsSpan(start, n), 0, logits, n, ct);
        }
        int samples = recorder.Samples;
        log?.Invoke($"recorded {samples} FFN inputs per layer from {tokens.Length} calibration tokens");

        // 2. Fit each layer.
        var layers = new NeuronPredictor.Layer[c.Layers];
        var recall = new double[c.Layers];
        var active = new double[c.Layers];
        var selected = new double[c.Layers];
        var perTokenCounts = new List<int>();
        for (int l = 0; l < c.Layers; l++)
        {
            ct.ThrowIfCancellationRequested();
            var x = recorder.Inputs(l);
            var (gate, up) = ReadGateUp(src, l);
            var sqrtC = WhiteningRoot(x, samples, c.Dim, out var invSqrtC);
            var (ag, bg) = LowRank(gate, c.FfnDim, c.Dim, sqrtC, invSqrtC, o.Rank);
            // ReLU gates decide activity alone; the up predictor only matters for magnitude-ranked activations.
            var (au, bu) = c.Activation == FfnActivation.Relu
                ? ([], [])
                : LowRank(up, c.FfnDim, c.Dim, sqrtC, invSqrtC, o.Rank);
            var layer = new NeuronPredictor.Layer { Ag = ag, Bg = bg, Au = au, Bu = bu, Threshold = 0, Recall = 0 };
            (layer.Threshold, recall[l], active[l], selected[l]) = Evaluate(layer, x, samples, gate, up, c, o, perTokenCounts);
            layer.Recall = (float)recall[l];
            layers[l] = layer;
            log?.Invoke($"layer {l}: recall {recall[l]:P1}, truly active {active[l]:P1}, selected {selected[l]:P1}");
        }
        perTokenCounts.Sort();
        int max = perTokenCounts.Count > 0 ? (int)Math.Ceiling(perTokenCounts[(int)(0.999 * (perTokenCounts.Count - 1))] * 1.1) : c.FfnDim;
        var predictor = new NeuronPredictor(o.Rank, c.Dim, c.FfnDim, c.Activation, layers, c.Activation == FfnActivation.Relu ? max : c.FfnDim);
        return new Report(predictor, samples, recall, active, selected);
    }

    /// <summary>Gate and up weights of a layer as [ffn × dim] floats, from a plain or a bundled file.</summary>
    private static (float[] gate, float[] up) ReadGateUp(IModelSource src, int l)
    {
        var c = src.Config;
        var gate = new float[(long)c.FfnDim * c.Dim];
        var up = new float[(long)c.FfnDim * c.Dim];
        var bundle = src.Find($"blk.{l}.ffn_bundle.weight");
        void Rows(TensorDesc t, int stride, int first, float[] dst)
        {
            int rowBytes = (int)GgmlTypes.RowBytes(t.Type, c.Dim);
            var raw = new byte[rowBytes];
            for (int i = 0; i < c.FfnDim; i++)
            {
                src.Read(t, ((long)i * stride + first) * rowBytes, raw);
                Dequantize.Row(t.Type, raw, dst.AsSpan(i * c.Dim, c.Dim));
            }
        }
        if (bundle != null) { Rows(bundle, 3, 0, gate); Rows(bundle, 3, 1, up); }
        else { Rows(src.Get($"blk.{l}.ffn_gate.weight"), 1, 0, gate); Rows(src.Get($"blk.{l}.ffn_up.weight"), 1, 0, up); }
        return (gate, up);
    }

    /// <summary>C^½ and C^-½ of the inputs' second moment C = XᵀX/n (regularized so rare directions stay finite).</summary>
    internal static Matrix<double> WhiteningRoot(float[] x, int n, int dim, out Matrix<double> inverse)
    {
        var X = Matrix<double>.Build.Dense(n, dim, (i, j) => x[(long)i * dim + j]);
        var C = X.TransposeThisAndMultiply(X) / n;
        double eps = 1e-6 * C.Diagonal().Average() + 1e-12;
        var evd = (C + Matrix<double>.Build.DenseIdentity(dim) * eps).Evd(MathNet.Numerics.LinearAlgebra.Symmetricity.Symmetric);
        var q = evd.EigenVectors;
        var lambda = evd.EigenValues.Select(v => Math.Max(v.Real, eps)).ToArray();
        var root = q * Matrix<double>.Build.DiagonalOfDiagonalArray(lambda.Select(Math.Sqrt).ToArray()) * q.Transpose();
        inverse = q * Matrix<double>.Build.DiagonalOfDiagonalArray(lambda.Select(v => 1 / Math.Sqrt(v)).ToArray()) * q.Transpose();
        return root;
    }

    /// <summary>Rank-r factors A [r × dim], B [ffn × r] minimizing E‖(W − BA)x‖² over the recorded inputs.</summary>
    internal static (float[] a, float[] b) LowRank(float[] w, int ffn, int dim, Matrix<double> sqrtC, Matrix<double> invSqrtC, int rank)
    {
        // M = W·C^½ = UΣVᵀ. The right singular vectors are the eigenvectors of MᵀM (dim × dim, much cheaper
        // than the SVD of the tall M), and UΣ restricted to rank r is M·V_r.
        var W = Matrix<double>.Build.Dense(ffn, dim, (i, j) => w[(long)i * dim + j]);
        var M = W * sqrtC;
        var evd = M.TransposeThisAndMultiply(M).Evd(MathNet.Numerics.LinearAlgebra.Symmetricity.Symmetric);
        var order = Enumerable.Range(0, dim).OrderByDescending(i => evd.EigenValues[i].Real).Take(rank).ToArray();
        var vr = Matrix<double>.Build.Dense(dim, rank, (i, j) => evd.EigenVectors[i, order[j]]);
        var A = vr.Transpose() * invSqrtC;   // r × dim
        var B = M * vr;                      // ffn × r
        var a = new float[rank * dim];
        var b = new float[ffn * rank];
        for (int i = 0; i < rank; i++) for (int j = 0; j < dim; j++) a[i * dim + j] = (float)A[i, j];
        for (int i = 0; i < ffn; i++) for (int j = 0; j < rank; j++) b[i * rank + j] = (float)B[i, j];
        return (a, b);
    }

    /// <summary>
    /// On the recorded inputs: ReLU — the threshold on ĝ catching the target share of truly active neurons
    /// (g &gt; 0), and the share selected; other activations — recall of the true top fraction by |act(g)·u| when the
    /// predicted top fraction is taken.
    /// </summary>
    private static (float threshold, double recall, double active, double selected) Evaluate(
        NeuronPredictor.Layer L, float[] x, int n, float[] gate, float[] up, ModelConfig c, Options o, List<int> counts)
    {
        int dim = c.Dim, ffn = c.FfnDim, rank = L.Ag.Length / dim;
        var p = new NeuronPredictor(rank, dim, ffn, c.Activation, [L], ffn);
        var g = new float[ffn]; var u = new float[ffn]; var low = new float[rank];
        var trueG = new float[ffn]; var trueU = new float[ffn];
        int evalN = Math.Min(n, 1024);
        if (c.Activation == FfnActivation.Relu)
        {
            var activeScores = new List<float>();
            var allScores = new float[evalN * ffn];
            long activeCount = 0;
            for (int t = 0; t < evalN; t++)
            {
                var xt = x.AsSpan(t * dim, dim);
                p.Scores(0, xt, g, u, low);
                for (int i = 0; i < ffn; i++)
                {
                    float gi = System.Numerics.Tensors.TensorPrimitives.Dot(gate.AsSpan(i * dim, dim), xt);
                    allScores[t * ffn + i] = g[i];
                    if (gi > 0) { activeScores.Add(g[i]); activeCount++; }
                }
            }
            activeScores.Sort();
            float threshold = activeScores.Count == 0 ? 0 : activeScores[(int)Math.Floor((1 - o.TargetRecall) * (activeScores.Count - 1))] - 1e-6f;
            long chosen = 0;
            for (int t = 0; t < evalN; t++)
            {
                int k = 0;
                for (int i = 0; i < ffn; i++) if (allScores[t * ffn + i] > threshold) k++;
                counts.Add(k);
                chosen += k;
            }
            double recall = activeScores.Count == 0 ? 1 : activeScores.Count(v => v > threshold) / (double)activeScores.Count;
            return (threshold, recall, activeCount / (double)(evalN * ffn), chosen / (double)(evalN * ffn));
        }
        else
        {
            int k = Math.Max(1, (int)Math.Round(o.Fraction * ffn));
            long hits = 0;
            var idxT = new int[ffn]; var idxP = new int[ffn]; var keyT = new float[ffn]; var keyP = new float[ffn];
            for (int t = 0; t < evalN; t++)
            {
                var xt = x.AsSpan(t * dim, dim);
                p.Scores(0, xt, g, u, low);
                for (int i = 0; i < ffn; i++)
                {
                    float gi = System.Numerics.Tensors.TensorPrimitives.Dot(gate.AsSpan(i * dim, dim), xt);
                    float ui = System.Numerics.Tensors.TensorPrimitives.Dot(up.AsSpan(i * dim, dim), xt);
                    keyT[i] = -MathF.Abs(Activations.Apply(gi, c.Activation) * ui);
                    keyP[i] = -MathF.Abs(Activations.Apply(g[i], c.Activation) * u[i]);
                    idxT[i] = idxP[i] = i;
                }
                keyT.AsSpan().Sort(idxT.AsSpan());
                keyP.AsSpan().Sort(idxP.AsSpan());
                var top = new HashSet<int>(idxT.Take(k));
                hits += idxP.Take(k).Count(top.Contains);
            }
            return (0, hits / (double)(evalN * k), o.Fraction, o.Fraction);
        }
    }

    /// <summary>Passes everything through, recording the FFN input rows of each layer.</summary>
    private sealed class RecordingWeights(IWeightProvider inner, int layers, int maxSamples, int dim) : IWeightProvider
    {
        private readonly float[][] _inputs = Enumerable.Range(0, layers).Select(_ => new float[(long)maxSamples * dim]).ToArray();
        private readonly int[] _counts = new int[layers];
        public int Samples => _counts.Min();
        public int MaxSamples => maxSamples;
        public int Dim => dim;
        public float[] Inputs(int layer) => _inputs[layer];
        public IMatrix Matrix(string name) => inner.Matrix(name);
        public float[] Vector(string name) => inner.Vector(name);
        public bool Has(string name) => inner.Has(name);
        public long ResidentBytes => inner.ResidentBytes;
        public void Dispose() => inner.Dispose();

        public IFeedForward FeedForward(int layer, ModelConfig config) => new Recorder(this, layer, inner.FeedForward(layer, config));

        private sealed class Recorder(RecordingWeights owner, int layer, IFeedForward ffn) : IFeedForward
        {
            public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2)
            {
                int take = Math.Min(n, owner.MaxSamples - owner._counts[layer]);
                if (take > 0)
                {
                    x[..(take * owner.Dim)].CopyTo(owner._inputs[layer].AsSpan(owner._counts[layer] * owner.Dim));
                    owner._counts[layer] += take;
                }
                ffn.Forward(x, y, n, hb, hb2);
            }
        }
    }
}
