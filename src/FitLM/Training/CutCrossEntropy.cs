using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// Cut Cross-Entropy (Wijmans et al., 2024): the next-token loss and its gradient with respect to the final
/// hidden states, computed over blocks of the vocabulary with an online log-sum-exp, so the [tokens × vocab]
/// logits never exist — only one [tokens × block] tile (2 MiB for 512 tokens and the 1024-row block). The output
/// matrix is read a block of rows at a time in its stored type, twice per step (loss, then gradient).
/// </summary>
internal sealed class CutCrossEntropy(IMatrix output, int vocabBlock = 1024)
{
    private readonly int _block = Math.Min(vocabBlock, output.Rows);
    private float[] _w = [], _wT = [], _logits = [], _product = [];
    private double[] _max = [], _sum = [];
    private float[] _lse = [], _target = [];

    public static long ScratchBytes(int vocab, int dim, int n, int vocabBlock = 1024)
    {
        long b = Math.Min(vocabBlock, vocab);
        return 4 * (2 * b * dim + n * b + (long)n * dim) + 24L * n;
    }

    /// <summary>
    /// The summed cross-entropy of rows with a target (targets[t] ≥ 0; −1 skips the row) of hidden states
    /// <paramref name="h"/> [n × Dim] (after the final norm). With a non-empty <paramref name="dh"/> it also writes
    /// dLoss/dh scaled by <paramref name="gradScale"/> (1/count for a mean) into dh [n × Dim] (overwritten).
    /// </summary>
    public double Loss(ReadOnlySpan<float> h, int n, ReadOnlySpan<int> targets, Span<float> dh, float gradScale)
    {
        int vocab = output.Rows, dim = output.Cols;
        FrozenMatrixGradient.Ensure(ref _w, (long)_block * dim);
        FrozenMatrixGradient.Ensure(ref _wT, (long)_block * dim);
        FrozenMatrixGradient.Ensure(ref _logits, (long)n * _block);
        FrozenMatrixGradient.Ensure(ref _lse, n);
        FrozenMatrixGradient.Ensure(ref _target, n);
        if (_max.Length < n) { _max = new double[n]; _sum = new double[n]; }
        for (int t = 0; t < n; t++) { _max[t] = double.NegativeInfinity; _sum[t] = 0; }

        // Pass 1: running max and sum of exp per row, and the target's logit.
        for (int v0 = 0; v0 < vocab; v0 += _block)
        {
            int b = Block(v0, vocab, dim, h, n);
            for (int t = 0; t < n; t++)
            {
                var l = _logits.AsSpan(t * b, b);
                int target = targets[t];
                if (target >= v0 && target < v0 + b) _target[t] = l[target - v0];
                float m = TensorPrimitives.Max(l);
                if (m > _max[t])
                {
                    _sum[t] *= Math.Exp(_max[t] - m);
                    _max[t] = m;
                }
                // exp in place (the block's logits are recomputed for the gradient pass anyway)
                TensorPrimitives.Subtract(l, (float)_max[t], l);
                TensorPrimitives.Exp(l, l);
                _sum[t] += TensorPrimitives.Sum(l);
            }
        }
        double loss = 0;
        for (int t = 0; t < n; t++)
        {
            _lse[t] = (float)(_max[t] + Math.Log(_sum[t]));
            if (targets[t] >= 0) loss += _lse[t] - _target[t];
        }
        if (dh.IsEmpty) return loss;

        // Pass 2: dh = Σ_blocks (softmax − onehot) · W_block, recomputing each block's logits.
        FrozenMatrixGradient.Ensure(ref _product, (long)n * dim);
        dh[..(n * dim)].Clear();
        for (int v0 = 0; v0 < vocab; v0 += _block)
        {
            int b = Block(v0, vocab, dim, h, n);
            for (int t = 0; t < n; t++)
            {
                var l = _logits.AsSpan(t * b, b);
                int target = targets[t];
                if (target < 0) { l.Clear(); continue; }
                TensorPrimitives.Subtract(l, _lse[t], l);
                TensorPrimitives.Exp(l, l);
                TensorPrimitives.Multiply(l, gradScale, l);
                if (target >= v0 && target < v0 + b) l[target - v0] -= gradScale;
            }
            DenseMath.Transpose(_w, b, dim, _wT);
            DenseMath.MultiplyTransposed(_logits, n, b, _wT, dim, _product);
            DenseMath.AddScaled(_product.AsSpan(0, n * dim), 1f, dh[..(n * dim)]);
        }
        return loss;
    }

    /// <summary>Reads rows [v0, v0 + b) of the output matrix and writes their logits for all n rows; returns b.</summary>
    private int Block(int v0, int vocab, int dim, ReadOnlySpan<float> h, int n)
    {
        int b = Math.Min(_block, vocab - v0);
        output.ReadRows(v0, b, _w.AsSpan(0, b * dim));
        DenseMath.MultiplyTransposed(h, n, dim, _w, b, _logits);
        return b;
    }
}
