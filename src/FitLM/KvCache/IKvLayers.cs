namespace FitLM.KvCache;

/// <summary>
/// A store whose finished keys and values can be read back tile by tile and written into another store of a
/// different type, one layer at a time (<see cref="KvStoreFactory.Convert"/>): the plain f32/f16 store and KIVI.
/// Writing a layer: <see cref="BeginLayer"/>, then <see cref="WriteTile"/> for each tile, in parallel, then
/// <see cref="EndLayer"/>.
/// </summary>
internal interface IKvLayers : IKvTiles
{
    /// <summary>Makes room for positions [0, length) of a layer that holds none (its pages are rented here, not in <see cref="WriteTile"/>).</summary>
    void BeginLayer(int layer, int length);

    /// <summary>
    /// Writes the rows of one tile of a begun layer from keys and values already finished (bias, k-norm and RoPE
    /// applied: what <see cref="IKvTiles"/> reads back), token-major [rows × KvDim], and encodes the tile as
    /// appending would have. Thread-safe for distinct tiles. scratch: <see cref="ScratchFloats"/> floats.
    /// </summary>
    void WriteTile(int layer, int tile, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, int rows, Span<float> scratch);

    /// <summary>Floats of scratch <see cref="WriteTile"/> needs.</summary>
    int ScratchFloats { get; }

    /// <summary>Ends a layer after its tiles are written (KIVI gives back the float pages of the tiles it quantized).</summary>
    void EndLayer(int layer);

    /// <summary>
    /// Returns every page of one layer to its pool and frees the slabs that empties. The store is being converted:
    /// after this it must only be disposed.
    /// </summary>
    void ReleaseLayer(int layer);
}
