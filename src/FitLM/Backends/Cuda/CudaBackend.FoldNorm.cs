using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The folded RMSNorm (FITLM_CUDA_FOLD_NORM=1, <see cref="CudaMatVec.FoldNorm"/>): in a one-token pass, the output and
/// down projections wait for the operation after them; when it is the residual add and norm over their output, the
/// product is launched folded with it and the norm's kernel is not, and the products that read the norm take its
/// q8_0 and 1/RMS (<see cref="TakeFolded"/>). Any other operation launches the waiting product first
/// (<see cref="Flush"/>), as it would have been. Only where every layer is resident (a streamed layer's slot is released
/// right after its down projection is queued), every product that reads a norm or feeds one is Q4_0 or Q8_0, and no
/// layer has post-norms.
/// </summary>
internal sealed partial class CudaBackend
{
    /// <summary>A one-token product not yet launched: the norm after it may fold it.</summary>
    private readonly record struct PendingProduct(ulong Block, DeviceMatrix Matrix, ulong X, ulong Y, bool SameInput, QuantizedX? Input);

    private PendingProduct? _pending;
    /// <summary>The activation whose q8_0 is a folded norm's, for the next product that reads it.</summary>
    private (ulong X, FoldedNorm Norm)? _folded;
    private bool _foldNorm;

    /// <summary>Whether this model's one-token passes fold their norms (see the class summary).</summary>
    private bool FoldsNorms()
    {
        if (!CudaMatVec.FoldNormEnabled || _streamer != null) return false;
        static bool Int8(IMatrix? m) => m is DeviceWeight d && d.Matrix is { Type: GgmlType.Q4_0 or GgmlType.Q8_0 };
        foreach (var w in Weights.Layers)
        {
            if (w.PostAttnNorm != null || w.PostFfnNorm != null || w.Wqkv != null || w.Ffn is not DeviceFeedForward f || f.GateUp != null) return false;
            if (!Int8(w.Wq) || !Int8(w.Wk) || !Int8(w.Wv) || !Int8(w.Wo) || !Int8(f.Gate) || !Int8(f.Up) || !Int8(f.Down)) return false;
            if (!_mv.CanFoldNorm(Handle(w.Wo).Matrix.Type, _c.Dim, Handle(w.Wq!).Matrix.Type)) return false;
        }
        return true;
    }

    /// <summary>Holds back a one-token product whose output a norm may read next; false: launch it now.</summary>
    private bool Defer(ulong block, DeviceMatrix m, ulong x, ulong y, int n, bool sameInput, QuantizedX? input = null)
    {
        if (!_foldNorm || n != 1 || m.Rows != _c.Dim) return false;
        _pending = new PendingProduct(block, m, x, y, sameInput, input);
        return true;
    }

    /// <summary>Launches the product held back, as it would have been launched.</summary>
    private void Flush()
    {
        if (_pending is not { } p) return;
        _pending = null;
        Multiply(p.Block, p.Matrix, p.X, p.Y, 1, p.SameInput, p.Input);
    }

    /// <summary>x += residual, o = RMSNorm(x) ⊙ w folded into the product held back, when that product wrote the residual.</summary>
    private bool TryFold(ulong x, ulong residual, float[] w, ulong o, int n, IMatrix? reader)
    {
        if (_pending is not { } p || p.Y != residual || n != 1 || reader is not DeviceWeight) return false;
        _pending = null;
        var m = p.Matrix;
        _folded = (o, _mv.FoldNorm(m.Type, p.Block + (ulong)m.Offset, m.RowBytes, m.Rows, m.Cols, p.X, p.SameInput, x, V(w), _c.RmsEps, p.Input));
        return true;
    }

    /// <summary>The folded norm whose output is <paramref name="x"/>, once, for the product right after it.</summary>
    private FoldedNorm? TakeFolded(ulong x)
    {
        var f = _folded;
        _folded = null;
        return f is { } v && v.X == x ? v.Norm : null;
    }

    /// <summary>Products of one folded norm's output: one launch where the types agree, else one each.</summary>
    private void MultiplyFolded(ulong block, FoldedNorm folded, DeviceMatrix a, ulong ya, DeviceMatrix b, ulong yb, DeviceMatrix? c, ulong yc)
    {
        if (a.Type == b.Type && (c == null || c.Type == a.Type))
        {
            _mv.MultiplyTogether(a.Type, a.Cols, folded, (block + (ulong)a.Offset, a.Rows, ya), (block + (ulong)b.Offset, b.Rows, yb),
                c == null ? default : (block + (ulong)c.Offset, c.Rows, yc));
            return;
        }
        foreach (var (m, y) in new[] { (a, ya), (b, yb), (c, yc) })
            if (m != null) _mv.MultiplyTogether(m.Type, m.Cols, folded, (block + (ulong)m.Offset, m.Rows, y), default, default);
    }
}
