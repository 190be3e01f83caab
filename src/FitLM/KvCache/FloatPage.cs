using System.Numerics.Tensors;

namespace FitLM.KvCache;

/// <summary>
/// The float page layout shared by the plain stores, KIVI's full-precision window, H2O and XQuant's
/// rematerialized layer: 32 rows of one layer, K then V, each [KvHeads × 32 × HeadDim], float32 or float16.
/// One KV head's rows of a page are contiguous, so a tile reads as one span.
/// </summary>
internal static unsafe class FloatPage
{
    private const int Rows = KvCacheOptions.Group;

    public static int Bytes(KvShape c, bool half) => 2 * Rows * c.KvDim * (half ? 2 : 4);

    /// <summary>Element offset of (K or V, head, row) in a page.</summary>
    private static long Offset(KvShape c, int which, int kvHead, int row) =>
        which * (long)Rows * c.KvDim + ((long)kvHead * Rows + row) * c.HeadDim;

    /// <summary>Writes a whole key (which 0) or value (which 1) row [KvDim] at row r of the page.</summary>
    public static void WriteRow(byte* page, bool half, KvShape c, int which, int r, ReadOnlySpan<float> row)
    {
        for (int h = 0; h < c.KvHeads; h++) WriteHeadRow(page, half, c, which, h, r, row.Slice(h * c.HeadDim, c.HeadDim));
    }

    /// <summary>Rows [0, rows) of a page from finished keys and values, each [rows × KvDim] (a converted cache's tile).</summary>
    public static void WriteRows(byte* page, bool half, KvShape c, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int rows)
    {
        int kvDim = c.KvDim;
        for (int j = 0; j < rows; j++)
        {
            WriteRow(page, half, c, 0, j, keys.Slice(j * kvDim, kvDim));
            WriteRow(page, half, c, 1, j, values.Slice(j * kvDim, kvDim));
        }
    }

    public static void WriteHeadRow(byte* page, bool half, KvShape c, int which, int kvHead, int r, ReadOnlySpan<float> row)
    {
        long at = Offset(c, which, kvHead, r);
        if (half) TensorPrimitives.ConvertToHalf(row, new Span<Half>((Half*)page + at, c.HeadDim));
        else row.CopyTo(new Span<float>((float*)page + at, c.HeadDim));
    }

    /// <summary>Rows [0, count) of one KV head [count × HeadDim]: a view for float32, converted into scratch for float16.</summary>
    public static ReadOnlySpan<float> Read(byte* page, bool half, KvShape c, int which, int kvHead, int r, int count, Span<float> scratch)
    {
        long at = Offset(c, which, kvHead, r);
        int n = count * c.HeadDim;
        if (!half) return new ReadOnlySpan<float>((float*)page + at, n);
        TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>((Half*)page + at, n), scratch.Slice(0, n));
        return scratch.Slice(0, n);
    }
}
