using FitLM.KvCache;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Tests.KvCache;

/// <summary>A dense float32 matrix: the weights of <see cref="TestKvModel"/>.</summary>
internal sealed class DenseMatrix(string name, int rows, int cols, float[] w) : IMatrix
{
    public string Name => name;
    public int Rows => rows;
    public int Cols => cols;
    public GgmlType Type => GgmlType.F32;
    public float[] W => w;

    public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
    {
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
                y[t * rows + r] = System.Numerics.Tensors.TensorPrimitives.Dot(w.AsSpan(r * cols, cols), x.Slice(t * cols, cols));
    }

    public void ReadRow(int row, Span<float> dst) => w.AsSpan(row * cols, cols).CopyTo(dst);
}

/// <summary>
/// A small random attention layer stack that KV stores can rematerialize from: Wk, Wv with biases, RoPE (NEOX),
/// attention norms and an embedding table. <see cref="MakeRows"/> produces consistent KvRows for a token
/// sequence: residual stream drifting from the embedding layer by layer, X its norm, K and V the raw products.
/// </summary>
internal sealed class TestKvModel : IKvModel
{
    public ModelConfig Config { get; }
    KvShape IKvModel.Config => Config;
    public int MaxPositions { get; }
    public readonly DenseMatrix[] Wk, Wv;
    public readonly float[][] Bk, Bv, Norm;
    public readonly float[] Embedding;
    public readonly Rope Rope;

    public TestKvModel(int seed = 1, int maxPositions = 512, int dim = 192, int layers = 2, int heads = 4, int kvHeads = 2, int headDim = 32, int vocab = 64)
    {
        Config = new ModelConfig
        {
            Architecture = "llama", Dim = dim, Layers = layers, Heads = heads, KvHeads = kvHeads, HeadDim = headDim,
            FfnDim = 4 * dim, Vocab = vocab, RopeDims = headDim, RopeStyle = RopeStyle.Neox, RopeTheta = 10000,
        };
        MaxPositions = maxPositions;
        var rng = new Random(seed);
        int kvDim = kvHeads * headDim;
        float Gauss(double sd) => (float)(sd * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        float[] Vec(int n, double sd, double mean = 0) => Enumerable.Range(0, n).Select(_ => (float)mean + Gauss(sd)).ToArray();
        Wk = new DenseMatrix[layers];
        Wv = new DenseMatrix[layers];
        Bk = new float[layers][];
        Bv = new float[layers][];
        Norm = new float[layers][];
        for (int l = 0; l < layers; l++)
        {
            Wk[l] = new DenseMatrix($"k{l}", kvDim, dim, Vec(kvDim * dim, 1 / Math.Sqrt(dim)));
            Wv[l] = new DenseMatrix($"v{l}", kvDim, dim, Vec(kvDim * dim, 1 / Math.Sqrt(dim)));
            Bk[l] = Vec(kvDim, 0.1);
            Bv[l] = Vec(kvDim, 0.1);
            Norm[l] = Vec(dim, 0.2, 1);
            // A few outlier channels, as trained models have.
            for (int i = 0; i < 4; i++) Norm[l][rng.Next(dim)] *= 4;
        }
        Embedding = Vec(vocab * dim, 1);
        Rope = new Rope(Config, maxPositions);
    }

    public void Project(int layer, ReadOnlySpan<float> x, Span<float> kRaw, Span<float> vRaw, int n)
    {
        Wk[layer].Multiply(x, kRaw, n);
        Wv[layer].Multiply(x, vRaw, n);
    }

    public void FinishKey(int layer, Span<float> k, int pos)
    {
        System.Numerics.Tensors.TensorPrimitives.Add(k, Bk[layer], k);
        Rope.Apply(k, Config.KvHeads, Config.HeadDim, pos);
    }

    public void FinishValue(int layer, Span<float> v) => System.Numerics.Tensors.TensorPrimitives.Add(v, Bv[layer], v);

    public void Normalize(int layer, ReadOnlySpan<float> residual, Span<float> x)
    {
        float ss = System.Numerics.Tensors.TensorPrimitives.SumOfSquares(residual) / residual.Length;
        float scale = 1f / MathF.Sqrt(ss + Config.RmsEps);
        System.Numerics.Tensors.TensorPrimitives.Multiply(residual, scale, x);
        System.Numerics.Tensors.TensorPrimitives.Multiply(x, Norm[layer], x);
    }

    public void Embed(int token, Span<float> x) => Embedding.AsSpan(token * Config.Dim, Config.Dim).CopyTo(x);
    public IMatrix KeyWeights(int layer) => Wk[layer];
    public IMatrix ValueWeights(int layer) => Wv[layer];

    /// <summary>Rows of every layer for a token sequence: [layer] → residual, X, raw K, raw V (each [n × width]).</summary>
    public (float[] Residual, float[] X, float[] K, float[] V)[] MakeRows(int[] tokens, int seed)
    {
        var c = Config;
        int n = tokens.Length, dim = c.Dim, kvDim = c.KvDim;
        var rng = new Random(seed);
        var result = new (float[], float[], float[], float[])[c.Layers];
        var residual = new float[n * dim];
        for (int t = 0; t < n; t++) Embed(tokens[t], residual.AsSpan(t * dim, dim));
        for (int l = 0; l < c.Layers; l++)
        {
            if (l > 0)
                for (int i = 0; i < residual.Length; i++) residual[i] += (float)(0.4 * (rng.NextDouble() * 2 - 1));
            var x = new float[n * dim];
            for (int t = 0; t < n; t++) Normalize(l, residual.AsSpan(t * dim, dim), x.AsSpan(t * dim, dim));
            var k = new float[n * kvDim];
            var v = new float[n * kvDim];
            Project(l, x, k, v, n);
            result[l] = ((float[])residual.Clone(), x, k, v);
        }
        return result;
    }
}
