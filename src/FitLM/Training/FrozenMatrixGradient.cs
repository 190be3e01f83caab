using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// The input gradient of a frozen product y = W x: dX += dY · W, with W read in its stored type (Q4_K, Q8_0,
/// BF16 …) a tile of rows at a time — the QLoRA rule that base weights are never expanded in memory. Each tile is
/// dequantized, transposed and multiplied by the float kernels; the tile scratch is what this costs.
/// </summary>
internal sealed class FrozenMatrixGradient
{
    /// <summary>
    /// Floats of one dequantized tile (4 MiB): each tile's product is added into dX, so few large tiles beat many
    /// small ones (64 Ki-float tiles spent 40% of the backward in those additions on pycoder-29m).
    /// </summary>
    private const int TileFloats = 1024 * 1024;

    private float[] _tile = [], _tileT = [], _dyTile = [], _product = [];

    /// <summary>Rows of W per tile for rows of <paramref name="cols"/> floats (a multiple of 16, at least 16).</summary>
    public static int TileRows(int rows, int cols) => Math.Min(rows, Math.Max(16, TileFloats / cols / 16 * 16));

    /// <summary>Bytes of scratch for matrices up to [rows × cols] and n tokens.</summary>
    public static long ScratchBytes(int rows, int cols, int n)
    {
        long r = TileRows(rows, cols);
        return 4 * (2 * r * cols + (long)n * r + (long)n * cols);
    }

    /// <summary>dX [n × Cols] += dY [n × Rows] · W.</summary>
    public void Accumulate(IMatrix w, ReadOnlySpan<float> dy, int n, Span<float> dx)
    {
        int rows = w.Rows, cols = w.Cols;
        int tileRows = TileRows(rows, cols);
        Ensure(ref _tile, tileRows * cols);
        Ensure(ref _tileT, tileRows * cols);
        Ensure(ref _product, n * cols);
        for (int r0 = 0; r0 < rows; r0 += tileRows)
        {
            int r = Math.Min(tileRows, rows - r0);
            w.ReadRows(r0, r, _tile.AsSpan(0, r * cols));
            DenseMath.Transpose(_tile, r, cols, _tileT);
            var dyTile = dy;
            if (r < rows)
            {
                Ensure(ref _dyTile, n * tileRows);
                for (int t = 0; t < n; t++) dy.Slice(t * rows + r0, r).CopyTo(_dyTile.AsSpan(t * r, r));
                dyTile = _dyTile;
            }
            DenseMath.MultiplyTransposed(dyTile, n, r, _tileT, cols, _product);
            DenseMath.AddScaled(_product.AsSpan(0, n * cols), 1f, dx[..(n * cols)]);
        }
    }

    internal static void Ensure(ref float[] a, long length)
    {
        if (a.Length < length) a = new float[length];
    }
}
