using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Adapters;

/// <summary>
/// A weight matrix with LoRA updates applied on the fly: y = W x + Σ scale · B (A x), W left as it is stored
/// (quantized, streamed); each update costs rank·(In + Out) multiply-adds a token, about 2% of W's for rank 8 on
/// pycoder-29m's 512 × 1280 FFN. B is kept transposed ([Rank × Out]) so the update adds whole rows to y.
/// </summary>
public sealed class LoraMatrix : IMatrix
{
    /// <summary>One adapter's update of this matrix: A [Rank × In], Bᵀ [Rank × Out], and the scale it is applied at.</summary>
    public sealed class Term
    {
        public int Rank { get; }
        public float[] A { get; }
        public float[] BTransposed { get; }
        public float Scale { get; }

        private readonly LoraPair _pair;

        public Term(LoraPair pair, float scale)
        {
            _pair = pair;
            Rank = pair.Rank;
            A = pair.A;
            Scale = scale;
            BTransposed = new float[pair.B.Length];
            Refresh();
        }

        /// <summary>Copies B again after it changed in place (MeZO perturbs the adapter it evaluates); A is shared.</summary>
        public void Refresh()
        {
            for (int o = 0; o < _pair.Out; o++)
                for (int r = 0; r < _pair.Rank; r++)
                    BTransposed[(long)r * _pair.Out + o] = _pair.B[(long)o * _pair.Rank + r];
        }

        public long Bytes => (A.Length + BTransposed.Length) * (long)sizeof(float);
    }

    private readonly IMatrix _base;
    private readonly Term[] _terms;
    private readonly int _maxRank;

    public LoraMatrix(IMatrix baseMatrix, IReadOnlyList<Term> terms)
    {
        _base = baseMatrix;
        _terms = [.. terms];
        foreach (var t in _terms)
            if (t.A.Length != (long)t.Rank * Cols || t.BTransposed.Length != (long)t.Rank * Rows)
                throw new FitLMException($"{Name}: a LoRA update of [{t.BTransposed.Length / Math.Max(1, t.Rank)} x {t.A.Length / Math.Max(1, t.Rank)}] does not fit the matrix's [{Rows} x {Cols}]");
        _maxRank = _terms.Max(t => t.Rank);
    }

    public IMatrix Base => _base;
    public IReadOnlyList<Term> Terms => _terms;
    public string Name => _base.Name;
    public int Rows => _base.Rows;
    public int Cols => _base.Cols;
    public GgmlType Type => _base.Type;

    public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
    {
        _base.Multiply(x, y, n);
        int cols = Cols, rows = Rows;
        // Rank is small (8–64): the A·x of one token fits the stack; a huge rank falls back to one array a call.
        Span<float> h = _maxRank <= 512 ? stackalloc float[_maxRank] : new float[_maxRank];
        for (int t = 0; t < n; t++)
        {
            var xt = x.Slice(t * cols, cols);
            var yt = y.Slice(t * rows, rows);
            foreach (var term in _terms)
            {
                for (int r = 0; r < term.Rank; r++)
                    h[r] = term.Scale * TensorPrimitives.Dot(term.A.AsSpan(r * cols, cols), xt);
                for (int r = 0; r < term.Rank; r++)
                    TensorPrimitives.MultiplyAdd(term.BTransposed.AsSpan(r * rows, rows), h[r], yt, yt);
            }
        }
    }

    public void ReadRow(int row, Span<float> dst)
    {
        _base.ReadRow(row, dst);
        int cols = Cols, rows = Rows;
        foreach (var term in _terms)
            for (int r = 0; r < term.Rank; r++)
                TensorPrimitives.MultiplyAdd(term.A.AsSpan(r * cols, cols), term.Scale * term.BTransposed[r * rows + row], dst[..cols], dst[..cols]);
    }
}
