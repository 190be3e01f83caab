using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// Grouped-query causal self-attention over whole training sequences, forward and backward. Forward keeps only
/// the output and each row's log-sum-exp; backward recomputes the probabilities from them (as FlashAttention
/// does), so no [T × T] matrix outlives one row. Work items are (sequence, KV head): the heads that share a KV
/// head write the same dK/dV rows, so they run in one item and no two items write the same memory.
/// </summary>
internal sealed class CausalAttention : IParallelJob
{
    private readonly int _heads, _kvHeads, _headDim, _qDim, _kvDim;
    private readonly float _scale;
    private (int Start, int Length)[] _sequences = [];
    private float[] _q = [], _k = [], _v = [], _o = [], _lse = [], _dO = [], _dq = [], _dk = [], _dv = [];
    private bool _backward;

    public CausalAttention(int heads, int kvHeads, int headDim)
    {
        _heads = heads;
        _kvHeads = kvHeads;
        _headDim = headDim;
        _qDim = heads * headDim;
        _kvDim = kvHeads * headDim;
        _scale = 1f / MathF.Sqrt(headDim);
    }

    /// <summary>o [n × QDim] from q [n × QDim], k, v [n × KvDim] (RoPE applied); lse [n × Heads].</summary>
    public void Forward((int Start, int Length)[] sequences, float[] q, float[] k, float[] v, float[] o, float[] lse)
    {
        (_sequences, _q, _k, _v, _o, _lse, _backward) = (sequences, q, k, v, o, lse, false);
        WorkerPool.Shared.Run(this, sequences.Length * _kvHeads);
    }

    /// <summary>dq [n × QDim], dk, dv [n × KvDim] (overwritten) from dO and the forward's q, k, v, o, lse.</summary>
    public void Backward((int Start, int Length)[] sequences, float[] q, float[] k, float[] v, float[] o, float[] lse,
        float[] dO, float[] dq, float[] dk, float[] dv)
    {
        (_sequences, _q, _k, _v, _o, _lse, _dO, _dq, _dk, _dv, _backward) = (sequences, q, k, v, o, lse, dO, dq, dk, dv, true);
        WorkerPool.Shared.Run(this, sequences.Length * _kvHeads);
    }

    public void Execute(int item)
    {
        var (start, length) = _sequences[item / _kvHeads];
        int g = item % _kvHeads;
        float[]? rented = null;
        Span<float> row = length <= 2048 ? stackalloc float[2 * length] : (rented = System.Buffers.ArrayPool<float>.Shared.Rent(2 * length));
        try
        {
            if (_backward) BackwardGroup(start, length, g, row);
            else ForwardGroup(start, length, g, row);
        }
        finally
        {
            if (rented != null) System.Buffers.ArrayPool<float>.Shared.Return(rented);
        }
    }

    private void ForwardGroup(int start, int length, int g, Span<float> row)
    {
        int hd = _headDim, rep = _heads / _kvHeads;
        var sc = row[..length];
        for (int h = g * rep; h < (g + 1) * rep; h++)
            for (int i = 0; i < length; i++)
            {
                var qi = _q.AsSpan((start + i) * _qDim + h * hd, hd);
                for (int j = 0; j <= i; j++) sc[j] = TensorPrimitives.Dot(qi, _k.AsSpan((start + j) * _kvDim + g * hd, hd)) * _scale;
                var s = sc[..(i + 1)];
                float m = TensorPrimitives.Max(s);
                TensorPrimitives.Subtract(s, m, s);
                TensorPrimitives.Exp(s, s);
                float sum = TensorPrimitives.Sum(s);
                _lse[(start + i) * _heads + h] = m + MathF.Log(sum);
                var oi = _o.AsSpan((start + i) * _qDim + h * hd, hd);
                oi.Clear();
                float inv = 1f / sum;
                for (int j = 0; j <= i; j++) TensorPrimitives.MultiplyAdd(_v.AsSpan((start + j) * _kvDim + g * hd, hd), s[j] * inv, oi, oi);
            }
    }

    private void BackwardGroup(int start, int length, int g, Span<float> row)
    {
        int hd = _headDim, rep = _heads / _kvHeads;
        var p = row[..length];
        var ds = row.Slice(length, length);
        for (int j = 0; j < length; j++)
        {
            _dk.AsSpan((start + j) * _kvDim + g * hd, hd).Clear();
            _dv.AsSpan((start + j) * _kvDim + g * hd, hd).Clear();
        }
        for (int h = g * rep; h < (g + 1) * rep; h++)
            for (int i = 0; i < length; i++)
            {
                int qOff = (start + i) * _qDim + h * hd;
                var qi = _q.AsSpan(qOff, hd);
                var doi = _dO.AsSpan(qOff, hd);
                float lse = _lse[(start + i) * _heads + h];
                float di = TensorPrimitives.Dot(doi, _o.AsSpan(qOff, hd));
                for (int j = 0; j <= i; j++)
                {
                    int kOff = (start + j) * _kvDim + g * hd;
                    p[j] = MathF.Exp(TensorPrimitives.Dot(qi, _k.AsSpan(kOff, hd)) * _scale - lse);
                    float dp = TensorPrimitives.Dot(doi, _v.AsSpan(kOff, hd));
                    ds[j] = p[j] * (dp - di) * _scale;
                }
                var dqi = _dq.AsSpan(qOff, hd);
                dqi.Clear();
                for (int j = 0; j <= i; j++)
                {
                    int kOff = (start + j) * _kvDim + g * hd;
                    TensorPrimitives.MultiplyAdd(_k.AsSpan(kOff, hd), ds[j], dqi, dqi);
                    var dkj = _dk.AsSpan(kOff, hd);
                    TensorPrimitives.MultiplyAdd(qi, ds[j], dkj, dkj);
                    var dvj = _dv.AsSpan(kOff, hd);
                    TensorPrimitives.MultiplyAdd(doi, p[j], dvj, dvj);
                }
            }
    }
}
