using FitLM.Storage;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Conversion;

/// <summary>
/// `fitlm prepare`: re-lays out each layer's FFN for LLM-in-a-flash streaming ("row-column bundling").
/// Everything neuron i needs — gate row i, up row i and down column i — becomes rows 3i, 3i+1, 3i+2 of one
/// tensor blk.N.ffn_bundle.weight [dim, 3·ffn], so one contiguous read fetches a neuron. Down's column is
/// re-quantized into the gate's type (Q8_0 → Q8_0 loses almost nothing; F16/BF16 nothing). All other
/// tensors and metadata are copied unchanged; `fitlm.flash.bundled` marks the file.
/// </summary>
public static class FlashPrepare
{
    public sealed record Result(string Path, int Layers, long Bytes, double Seconds);

    public static Result Write(string modelPath, string outPath, Action<long, long>? progress = null, CancellationToken ct = default)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var src = ModelSource.Open(modelPath);
        if (src is not GgufSource gguf)
            throw new FitLMException($"{modelPath}: prepare reads a GGUF file; convert the folder first (fitlm convert -m FOLDER -o MODEL.gguf)");
        if (ModelValidation.IsBundled(src)) throw new FitLMException($"{modelPath}: already prepared (its FFN is bundled)");
        var c = src.Config;
        // Bundles are rows of a dense gate, up and down: a mixture of experts has none (its experts go to the expert
        // cache, sized by --memory), and Phi-3 keeps gate and up in one matrix.
        if (c.IsMoe) throw new FitLMException($"{modelPath}: {c.Architecture} is a mixture of experts; prepare bundles dense FFN neurons (run it with --memory: routed experts are cached and read on demand)");
        if (c.FusedGateUp) throw new FitLMException($"{modelPath}: {c.Architecture} keeps gate and up in one matrix; prepare does not bundle its FFN");
        using var w = new GgufWriter(outPath, (int)gguf.File.Alignment, ct);
        foreach (var key in gguf.File.MetadataKeys)
            if (key != "general.alignment") w.Add(key, gguf.File.Metadata[key]);
        w.AddBool("fitlm.flash.bundled", true);

        // Tensor order: as in the source, with each layer's bundle where its ffn_gate was.
        var order = new List<(string name, long[] shape, GgmlType type, int bundleLayer)>();
        foreach (var t in src.Tensors)
        {
            int layer = TensorNames.LayerOf(t.Name);
            if (t.Name.EndsWith(".ffn_gate.weight", StringComparison.Ordinal))
                order.Add(($"blk.{layer}.ffn_bundle.weight", [c.Dim, 3L * c.FfnDim], t.Type, layer));
            else if (!t.Name.EndsWith(".ffn_up.weight", StringComparison.Ordinal) && !t.Name.EndsWith(".ffn_down.weight", StringComparison.Ordinal))
                order.Add((t.Name, t.Shape, t.Type, -1));
        }
        foreach (var (name, shape, type, _) in order) w.AddTensor(name, shape, type);

        long total = order.Sum(x => GgmlTypes.RowBytes(x.type, x.shape[0]) * x.shape.Skip(1).Aggregate(1L, (a, b) => a * b)), done = 0;
        var buffer = new byte[4 << 20];
        foreach (var (name, shape, type, layer) in order)
        {
            ct.ThrowIfCancellationRequested();
            w.BeginTensor(name);
            if (layer < 0)
            {
                var t = src.Get(name);
                for (long off = 0; off < t.ByteSize; off += buffer.Length)
                {
                    int n = (int)Math.Min(buffer.Length, t.ByteSize - off);
                    src.Read(t, off, buffer.AsSpan(0, n));
                    w.WriteTensorData(buffer.AsSpan(0, n));
                }
                done += t.ByteSize;
            }
            else
            {
                done += WriteBundle(src, layer, type, w, ct);
            }
            progress?.Invoke(done, total);
        }
        w.Complete();
        return new Result(outPath, c.Layers, new FileInfo(outPath).Length, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Rows gate_i, up_i, downᵀ_i for every neuron i, in the gate's type.</summary>
    private static long WriteBundle(IModelSource src, int layer, GgmlType type, GgufWriter w, CancellationToken ct)
    {
        var c = src.Config;
        int dim = c.Dim, ffn = c.FfnDim;
        var gate = src.Get($"blk.{layer}.ffn_gate.weight");
        var up = src.Get($"blk.{layer}.ffn_up.weight");
        var down = src.Get($"blk.{layer}.ffn_down.weight");
        int rowBytes = (int)GgmlTypes.RowBytes(type, dim);
        // down is [dim rows × ffn columns]: read it as floats once to take columns.
        var downRows = new float[(long)dim * ffn];
        var raw = new byte[GgmlTypes.RowBytes(down.Type, ffn)];
        for (int r = 0; r < dim; r++)
        {
            src.Read(down, r * raw.LongLength, raw);
            Dequantize.Row(down.Type, raw, downRows.AsSpan(r * ffn, ffn));
        }
        var gateRow = new byte[rowBytes];
        var upRaw = new byte[GgmlTypes.RowBytes(up.Type, dim)];
        var upRow = new byte[rowBytes];
        var column = new float[dim];
        var downRow = new byte[rowBytes];
        var floats = new float[dim];
        for (int i = 0; i < ffn; i++)
        {
            if (i % 256 == 0) ct.ThrowIfCancellationRequested();
            src.Read(gate, (long)i * rowBytes, gateRow);
            src.Read(up, i * upRaw.LongLength, upRaw);
            if (up.Type == type) upRaw.CopyTo(upRow, 0);
            else
            {
                Dequantize.Row(up.Type, upRaw, floats);
                Quantize.Row(type, floats, upRow);
            }
            for (int r = 0; r < dim; r++) column[r] = downRows[(long)r * ffn + i];
            Quantize.Row(type, column, downRow);
            w.WriteTensorData(gateRow);
            w.WriteTensorData(upRow);
            w.WriteTensorData(downRow);
        }
        return 3L * ffn * rowBytes;
    }
}
