using FitLM.Formats;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;

namespace FitLM.Adapters;

/// <summary>
/// `fitlm export`: a GGUF model with LoRA adapters merged into its weights. Every adapted matrix is dequantized
/// row by row, gets Σ factor · B·A added and is quantized again (the engine's quantizers) to its own type, or to the
/// type asked for (<see cref="MergedTensorType"/>); all metadata (general.file_type included) and every other tensor
/// are copied byte for byte, in the file's order and alignment.
/// </summary>
public static class LoraMerge
{
    /// <summary>Rows merged per read: enough work to spread over the threads, little memory (a 4096-wide F32 row is 16 KiB).</summary>
    private const int RowsPerChunk = 256;

    /// <param name="mergedType">The type merged matrices are written in; null keeps each matrix's own type.</param>
    public static string Export(string modelPath, IReadOnlyList<LoraRequest> adapters, string outputPath,
        GgmlType? mergedType = null, IProgress<string>? progress = null, CancellationToken ct = default)
    {
        if (adapters.Count == 0) throw new FitLMException("no adapter given (--lora PATH: a PEFT adapter folder or a GGUF LoRA file)");
        if (string.IsNullOrWhiteSpace(outputPath)) throw new FitLMException("no output file given (-o MERGED.gguf)");
        if (Directory.Exists(modelPath))
            throw new FitLMException($"{modelPath}: export merges into a GGUF file; convert the folder first (fitlm convert -m {modelPath} -o MODEL.gguf)");
        if (Directory.Exists(outputPath)) throw new FitLMException($"{outputPath}: is a folder; give the GGUF file to write");
        OutputFile.EnsureNotInput(outputPath, [modelPath, .. adapters.Select(a => a.Path)]);
        using var source = ModelSource.Open(modelPath);
        if (source is not GgufSource gguf) throw new FitLMException($"{modelPath}: export merges into a GGUF file");
        if (GgufSource.IsStacked(gguf.File)) throw new FitLMException($"{modelPath}: a stacked (BitStack) model cannot take merged adapters; merge into the original model, then compress");
        if (ModelValidation.IsBundled(source)) throw new FitLMException($"{modelPath}: a prepared (bundled FFN) model cannot take merged adapters; merge into the original model, then prepare");
        var loaded = LoraRequest.LoadAll(adapters, source, ct);
        var updates = new Dictionary<string, List<(LoraPair Pair, float Factor)>>(StringComparer.Ordinal);
        foreach (var a in loaded)
            foreach (var p in a.Adapter.Pairs)
                (updates.TryGetValue(p.Name, out var list) ? list : updates[p.Name] = []).Add((p, a.Factor));

        var file = gguf.File;
        using var w = new GgufWriter(outputPath, (int)file.Alignment, ct);
        foreach (var key in file.MetadataKeys) w.Add(key, file.Metadata[key]);
        foreach (var t in file.Tensors)
            w.AddTensor(t.Name, t.Shape, updates.ContainsKey(t.Name) ? MergedTensorType.For(t, mergedType) : t.Type);
        var bytes = Array.Empty<byte>();
        int merged = 0;
        foreach (var t in file.Tensors)
        {
            ct.ThrowIfCancellationRequested();
            w.BeginTensor(t.Name);
            if (updates.TryGetValue(t.Name, out var terms))
            {
                var outType = MergedTensorType.For(t, mergedType);
                MergeRows(file, t, outType, terms, w, ct);
                string types = outType == t.Type ? $"{t.Type}" : $"{t.Type} -> {outType}";
                progress?.Report($"[{++merged}/{updates.Count}] merged {t.Name} ({types}, {terms.Count} adapter{(terms.Count > 1 ? "s" : "")})");
                continue;
            }
            // Copied as stored, a megabyte at a time.
            const int chunk = 1 << 20;
            if (bytes.Length < chunk) bytes = new byte[chunk];
            for (long off = 0; off < t.ByteSize; off += chunk)
            {
                int n = (int)Math.Min(chunk, t.ByteSize - off);
                file.ReadTensorBytes(t, off, bytes.AsSpan(0, n));
                w.WriteTensorData(bytes.AsSpan(0, n));
            }
        }
        w.Complete();
        return w.Path;
    }

    private static void MergeRows(GgufFile file, GgufTensorInfo t, GgmlType outType, List<(LoraPair Pair, float Factor)> terms, GgufWriter w, CancellationToken ct)
    {
        int cols = (int)t.RowLength;
        long rows = t.Rows;
        long rowBytes = GgmlTypes.RowBytes(t.Type, cols), outRowBytes = GgmlTypes.RowBytes(outType, cols);
        var chunk = new byte[RowsPerChunk * rowBytes];
        // Requantized in place when the type stays; another type needs its own buffer (F16 from Q8_0: 1.9x the bytes).
        var outChunk = outType == t.Type ? chunk : new byte[RowsPerChunk * outRowBytes];
        for (long r0 = 0; r0 < rows; r0 += RowsPerChunk)
        {
            ct.ThrowIfCancellationRequested();
            int n = (int)Math.Min(RowsPerChunk, rows - r0);
            var span = chunk.AsMemory(0, (int)(n * rowBytes));
            var outSpan = outChunk.AsMemory(0, (int)(n * outRowBytes));
            file.ReadTensorBytes(t, r0 * rowBytes, span.Span);
            long first = r0;
            Parallel.For(0, n, new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = MatMul.Threads },
                () => new float[cols],
                (i, _, row) =>
                {
                    var b = span.Span.Slice((int)(i * rowBytes), (int)rowBytes);
                    Dequantize.Row(t.Type, b, row);
                    long o = first + i;
                    foreach (var (p, factor) in terms)
                        for (int r = 0; r < p.Rank; r++)
                            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(p.A.AsSpan(r * cols, cols), factor * p.B[o * p.Rank + r], row, row);
                    Quantize.Row(outType, row, outSpan.Span.Slice((int)(i * outRowBytes), (int)outRowBytes));
                    return row;
                },
                _ => { });
            w.WriteTensorData(outSpan.Span);
        }
    }
}
