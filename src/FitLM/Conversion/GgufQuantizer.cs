using System.Diagnostics;
using FitLM.Formats;
using FitLM.Storage;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>
/// `fitlm quantize`: a GGUF file or Hugging Face folder → a GGUF of one of llama-quantize's file types,
/// as llama-quantize writes it: the input's metadata with general.file_type set, tensors in the same
/// order, each weight in the type llama.cpp's mix picks (<see cref="TensorTypeMix"/>), quantized by ggml's
/// reference quantizers (or their importance-matrix variants), 1-D tensors and norms unchanged.
/// Tensors already in their target type are copied; quantized inputs are dequantized first (llama-quantize
/// asks for --allow-requantize; FitLM warns). The output appears under its name only when complete.
/// </summary>
public static class GgufQuantizer
{
    /// <summary>Quantizes <paramref name="input"/> into <paramref name="output"/>; <paramref name="progress"/> gets each tensor as it is written.</summary>
    public static QuantizeResult Quantize(string input, string output, QuantizationType type, QuantizeOptions? options = null,
        IProgress<QuantizedTensor>? progress = null, CancellationToken ct = default)
    {
        options ??= new QuantizeOptions();
        if (string.IsNullOrWhiteSpace(output)) throw new FitLMException("no output file given");
        if (Directory.Exists(output)) throw new FitLMException($"{output}: is a folder; give the GGUF file to write");
        OutputFile.EnsureNotInput(output, input, options.ImportanceMatrix ?? "");
        if (options.Threads < 0 || options.Threads > 1024) throw new FitLMException($"--threads {options.Threads} is out of range (1..1024)");
        var imatrix = options.ImportanceMatrix is { } im ? ImportanceMatrix.Load(im) : null;
        using var src = QuantizerInput.Open(input);
        return Quantize(src, output, type, imatrix, options.Threads, options.Warning, progress, ct);
    }

    /// <summary>
    /// The type each tensor of <paramref name="input"/> would get (llama-quantize --dry-run), in file order,
    /// without quantizing anything.
    /// </summary>
    public static IReadOnlyList<(string Name, GgmlType Type)> PlanTypes(string input, QuantizationType type, bool withImportance = false)
    {
        using var src = QuantizerInput.Open(input);
        var mix = new TensorTypeMix(type, src.Shape, src.Tensors.Select(t => t.Name), withImportance);
        return src.Tensors.Select(t => (t.Name, mix.Choose(t.Name, t.Shape, t.Type))).ToList();
    }

    private sealed record Step(InputTensor Tensor, GgmlType Target, float[]? Importance);

    private static QuantizeResult Quantize(QuantizerInput src, string output, QuantizationType type, ImportanceMatrix? imatrix,
        int threads, Action<string>? onWarning, IProgress<QuantizedTensor>? progress, CancellationToken ct)
    {
        var sw = Stopwatch.StartNew();
        var warnings = new List<string>();
        void Warn(string message)
        {
            warnings.Add(message);
            onWarning?.Invoke(message);
        }
        using var w = new GgufWriter(output, src.Alignment, ct);
        src.AddMetadata(w, type.FileType);
        if (imatrix != null) AddImportanceMetadata(w, imatrix);

        var mix = new TensorTypeMix(type, src.Shape, src.Tensors.Select(t => t.Name), imatrix != null);
        var steps = new List<Step>();
        var requantized = new SortedSet<GgmlType>();
        foreach (var t in src.Tensors)
        {
            var target = mix.Choose(t.Name, t.Shape, t.Type);
            float[]? importance = null;
            if (target != t.Type && imatrix != null)
            {
                importance = imatrix.Find(t.Name);
                long expected = t.Shape[0] * (t.Shape.Length > 2 ? t.Shape[2] : 1);
                if (importance != null && importance.Length != expected)
                {
                    // llama-quantize: token_embd is never in an imatrix under its shape, so only warn there.
                    if (t.Name != "token_embd.weight")
                        throw new FitLMException($"{imatrix.Path}: the importance matrix of '{t.Name}' has {importance.Length} values, the tensor needs {expected}; was it computed on another model?");
                    importance = null;
                }
            }
            if (importance == null && target != t.Type && mix.RequiresImportance(t.Name, target))
                throw new FitLMException($"{type.Name} needs an importance matrix for '{t.Name}' ({target}); pass --imatrix FILE (llama-imatrix's output)");
            if (target != t.Type && GgmlTypes.BlockSize(t.Type) > 1) requantized.Add(t.Type);
            steps.Add(new Step(t, target, importance));
            w.AddTensor(t.Name, t.Shape, target);
        }
        foreach (var (name, wanted, got) in mix.Fallbacks)
            Warn($"{name}: rows of {src.Tensors.First(t => t.Name == name).Shape[0]} are not whole {wanted} blocks; using {got}");
        if (requantized.Count > 0)
            Warn($"the input is already quantized ({string.Join(", ", requantized)}): those tensors are dequantized and quantized again, " +
                "which loses more than quantizing the original weights (llama-quantize needs --allow-requantize for this)");
        if (imatrix != null && !steps.Any(s => s.Importance != null))
            Warn($"{imatrix.Path}: no tensor of this model has importance data (names differ?); quantizing without it");

        var buffers = new Buffers();
        long bytesIn = 0, bytesOut = 0;
        for (int i = 0; i < steps.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            var (t, target, importance) = steps[i];
            long outBytes = GgmlTypes.RowBytes(target, t.Elements);
            w.BeginTensor(t.Name);
            if (target == t.Type)
            {
                var bytes = ReusedArray.AtLeast(ref buffers.Bytes, outBytes).AsSpan(0, (int)outBytes);
                src.ReadBytes(t, bytes);
                w.WriteTensorData(bytes);
            }
            else
            {
                var f = ReusedArray.AtLeast(ref buffers.Floats, t.Elements);
                src.ReadFloats(t, f.AsSpan(0, (int)t.Elements), ct);
                var dst = ReusedArray.AtLeast(ref buffers.Bytes, outBytes);
                QuantizeRows(target, f, t, dst, importance, threads, ct);
                w.WriteTensorData(dst.AsSpan(0, (int)outBytes));
            }
            bytesIn += t.Bytes;
            bytesOut += outBytes;
            progress?.Report(new QuantizedTensor(i + 1, steps.Count, t.Name, t.Shape, t.Type, target, t.Bytes, outBytes, importance != null && Tensors.Quantize.UsesImportance(target)));
        }
        w.Complete();
        var types = steps.GroupBy(s => s.Target).ToDictionary(g => g.Key, g => g.Count());
        return new QuantizeResult(w.Path, type, steps.Count, bytesIn, bytesOut, sw.Elapsed.TotalSeconds, types, warnings);
    }

    /// <summary>llama-quantize's quantize.imatrix.* keys (after general.file_type, in its order).</summary>
    private static void AddImportanceMetadata(GgufWriter w, ImportanceMatrix m)
    {
        // llama.cpp copies the strings into 128-byte fields (127 characters and a NUL).
        static string Cap(string s) => s.Length > 127 ? s[..127] : s;
        w.AddString("quantize.imatrix.file", Cap(m.Path));
        if (m.Datasets.Count > 0) w.AddString("quantize.imatrix.dataset", Cap(m.Datasets[0]));
        w.AddUInt32("quantize.imatrix.entries_count", (uint)m.Entries.Count);
        if (m.ChunkCount > 0) w.AddUInt32("quantize.imatrix.chunks_count", (uint)m.ChunkCount);
    }

    private sealed class Buffers
    {
        public float[] Floats = [];
        public byte[] Bytes = [];
    }

    /// <summary>Quantizes a tensor's rows, split over threads; with importance data each expert matrix gets its own slice.</summary>
    private static void QuantizeRows(GgmlType type, float[] f, InputTensor t, byte[] dst, float[]? importance, int threads, CancellationToken ct)
    {
        int rowLength = (int)t.Shape[0];
        long rows = t.Elements / rowLength;
        long rowsPerMatrix = t.Shape.Length > 1 ? t.Shape[1] : 1;
        long rowBytes = GgmlTypes.RowBytes(type, rowLength);
        // About 16K elements per piece, as llama-quantize's chunks: small enough to balance, large enough to be cheap.
        long rowsPerPiece = Math.Max(1, (1 << 14) / rowLength);
        long pieces = (rows + rowsPerPiece - 1) / rowsPerPiece;
        int workers = threads > 0 ? threads : Environment.ProcessorCount;
        Parallel.For(0L, pieces, new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = workers }, piece =>
        {
            long r0 = piece * rowsPerPiece, r1 = Math.Min(rows, r0 + rowsPerPiece);
            while (r0 < r1)
            {
                // Rows of one expert matrix share its importance slice.
                long matrix = r0 / rowsPerMatrix;
                long end = Math.Min(r1, (matrix + 1) * rowsPerMatrix);
                var qw = importance == null ? default : importance.AsSpan((int)(matrix * rowLength), rowLength);
                Tensors.Quantize.Rows(type, f.AsSpan((int)(r0 * rowLength), (int)((end - r0) * rowLength)),
                    dst.AsSpan((int)(r0 * rowBytes), (int)((end - r0) * rowBytes)), rowLength, qw);
                r0 = end;
            }
        });
    }
}
