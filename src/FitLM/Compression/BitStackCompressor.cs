using System.Diagnostics;
using System.Runtime.InteropServices;
using FitLM.Evaluation;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Conversion;
using FitLM.Weights;

namespace FitLM.Compression;

/// <summary>Settings of `fitlm compress --method bitstack`.</summary>
public sealed record BitStackOptions
{
    /// <summary>Blocks per matrix (each about one bit per weight).</summary>
    public int Blocks { get; init; } = 16;
    /// <summary>Rank of each block's magnitude approximation (two thin fp16 factors).</summary>
    public int Rank { get; init; } = 4;
    /// <summary>Tokens per calibration window (the first is BOS, as in perplexity).</summary>
    public int CalibContext { get; init; } = 512;
    /// <summary>Windows the activation statistics are measured on.</summary>
    public int CalibWindows { get; init; } = 32;
    /// <summary>Tokens per scoring window and windows per candidate when ordering the blocks.</summary>
    public int ScoreContext { get; init; } = 256;
    public int ScoreWindows { get; init; } = 4;
    /// <summary>
    /// Levels whose blocks are ordered by measured calibration loss; the blocks of higher levels (sizes past
    /// ~5 bits per weight on small models) are ordered by an estimate: the loss each matrix's block removed at
    /// the last measured level, scaled by how much residual energy the new block removes relative to that one.
    /// </summary>
    public int ScoreLevels { get; init; } = 6;
    /// <summary>
    /// Types of the conventional embeddings and head. Every size of the ladder includes them, so they trade
    /// quality at the top of the ladder for room at the bottom; docs/bitstack.md has the measurements behind
    /// the defaults (on pycoder-29m: q3_k embeddings cost +0.7% perplexity, a q5_k head +0.2%).
    /// </summary>
    public GgmlType EmbeddingType { get; init; } = GgmlType.Q3_K;
    public GgmlType HeadType { get; init; } = GgmlType.Q5_K;
    /// <summary>Activation-aware scaling of the weights before decomposition (BitStack's default).</summary>
    public bool ActivationScaling { get; init; } = true;
    /// <summary>Exponent α of the scale s_j^α (BitStack: 1).</summary>
    public double ScalingPower { get; init; } = 1.0;
    /// <summary>What the calibration text is (stored in the file).</summary>
    public string CalibrationNote { get; init; } = "";
    public ulong Seed { get; init; } = 1;
    /// <summary>Matrix cache type used while scoring (the default inference path).</summary>
    public GgmlType ScoreCache { get; init; } = StackedWeights.DefaultCache;
    /// <summary>What a candidate block is scored by (KL from the uncompressed model by default; BitStack uses perplexity).</summary>
    public ScoreMetric Metric { get; init; } = ScoreMetric.Kl;
}

public sealed record BitStackResult(string Path, int Matrices, int Blocks, long FileBytes, long FixedBytes, long MinimumBytes,
    double Seconds, IReadOnlyList<double> LevelLoss);

/// <summary>
/// BitStack compression (Wang et al., 2024): activation statistics on calibration text, activation-aware
/// scaling folded into the preceding norms / projections, iterative sign × low-rank decomposition of every
/// linear weight of the transformer blocks, level-by-level ordering of all blocks into one stack by the
/// calibration loss each removes, and a GGUF with FitLM's stack metadata (docs/bitstack.md).
/// </summary>
public static class BitStackCompressor
{
    /// <summary>Progress: a phase description and the overall fraction done (0..1).</summary>
    public delegate void ProgressReport(string phase, double fraction);

    public static BitStackResult Compress(string modelPath, string calibrationText, string output, BitStackOptions o,
        ProgressReport? progress = null, CancellationToken ct = default)
    {
        Validate(o);
        var sw = Stopwatch.StartNew();
        using var source = ModelSource.Open(modelPath);
        if (StackLayout.IsStacked(source)) throw new FitLMException($"{modelPath}: is already a stacked model");
        var c = source.Config;
        // The stack holds the seven projections of a plain decoder, and activation scaling folds into the norms as stored.
        if (c.IsMoe || c.FusedQkv || c.FusedGateUp)
            throw new FitLMException($"{modelPath}: {c.Architecture} has {(c.IsMoe ? "a mixture of experts" : "fused projections")}; BitStack compresses the separate q, k, v, o, gate, up and down of dense models");
        if (c.NormWeightOffset != 0)
            throw new FitLMException($"{modelPath}: {c.Architecture}'s norms are stored as w for (1 + w) here; convert the folder to GGUF first (fitlm convert)");
        var report = progress ?? ((_, _) => { });

        // Tokens: calibration windows (statistics) and scoring windows (ordering).
        var tokens = source.Tokenizer.Encode(calibrationText, addSpecial: true);
        int available = tokens.Length / o.CalibContext;
        if (available < 1)
            throw new FitLMException($"the calibration text has {tokens.Length} tokens; windows of {o.CalibContext} need at least {o.CalibContext}");
        var calib = Windows(tokens, o.CalibContext, Math.Min(o.CalibWindows, available), source.Tokenizer);
        int scoreAvailable = tokens.Length / o.ScoreContext;
        var score = Windows(tokens, o.ScoreContext, Math.Min(o.ScoreWindows, Math.Max(1, scoreAvailable)), source.Tokenizer);

        // 1. Activation statistics: s_j per input of each linear weight, from a forward pass over the calibration windows.
        var names = new List<string>();
        for (int l = 0; l < c.Layers; l++)
            foreach (var kind in StackLayout.LinearNames) names.Add($"blk.{l}.{kind}.weight");
        foreach (var n in names)
        {
            var t = source.Get(n);
            if (t.Shape.Length != 2 || t.RowLength % 16 != 0) throw new FitLMException($"{source.Path}: '{n}' cannot be stacked (columns must be a multiple of 16)");
        }
        var scales = new Dictionary<string, float[]>(StringComparer.Ordinal);
        if (o.ActivationScaling)
        {
            var recorded = names.Where(n => n.EndsWith(".attn_q.weight") || n.EndsWith(".attn_output.weight") ||
                n.EndsWith(".ffn_gate.weight") || n.EndsWith(".ffn_down.weight")).ToList();
            using var recorder = new ActivationRecorder(new ResidentWeights(source), recorded);
            var calibModel = new Transformer(c, recorder, o.CalibContext, o.CalibContext);
            var last = new float[c.Vocab];
            for (int i = 0; i < calib.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                calibModel.Forward(calib[i], 0, last, calib[i].Length - 1, ct);
                recorder.EndSample();
                report($"calibrating [{i + 1}/{calib.Count} windows]", 0.1 * (i + 1) / calib.Count);
            }
            foreach (var n in recorded)
                scales[n] = Normalize((recorder.Scale(n) ?? throw new FitLMException($"'{n}' was never multiplied during calibration")).Select(x => Math.Pow(x, o.ScalingPower)).ToArray());
        }

        // The scoring loss: KL needs the uncompressed model's distributions on the scoring windows (if they fit in 512 MiB).
        var metric = o.Metric == ScoreMetric.Kl && CalibrationLoss.ReferenceBytes(score, c.Vocab) > 512L << 20 ? ScoreMetric.Nll : o.Metric;
        CalibrationLoss loss;
        using (var full = new ResidentWeights(source))
        {
            int sctx = score.Max(w => w.Length);
            loss = CalibrationLoss.Create(score, metric, metric == ScoreMetric.Kl ? new Transformer(c, full, sctx, sctx) : null, c.Vocab, ct);
        }

        // 2. Scaled weights and their decomposition; norms (and up-proj rows) absorb 1/s.
        var vectors = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var t in source.Tensors.Where(t => t.Shape.Length == 1)) vectors[t.Name] = source.ReadFloats(t);
        bool foldOutput = c.KvHeads == c.Heads; // o_proj's input is v_proj's output only without grouped-query sharing
        var matrices = new List<(string Name, int Rows, int Cols, int Rank)>();
        var blocks = new List<IReadOnlyList<StackBlock>>();
        var energy = new List<double[]>();
        try
        {
            for (int mi = 0; mi < names.Count; mi++)
            {
                ct.ThrowIfCancellationRequested();
                string name = names[mi];
                var t = source.Get(name);
                int rows = t.Rows, cols = t.RowLength;
                var w = source.ReadFloats(t);
                int layer = TensorNames.LayerOf(name);
                string p = $"blk.{layer}.";
                if (o.ActivationScaling)
                {
                    float[]? sCols = null, sRows = null;
                    if (name.EndsWith(".attn_q.weight") || name.EndsWith(".attn_k.weight") || name.EndsWith(".attn_v.weight")) sCols = scales[p + "attn_q.weight"];
                    else if (name.EndsWith(".attn_output.weight") && foldOutput) sCols = scales[p + "attn_output.weight"];
                    else if (name.EndsWith(".ffn_gate.weight") || name.EndsWith(".ffn_up.weight")) sCols = scales[p + "ffn_gate.weight"];
                    else if (name.EndsWith(".ffn_down.weight")) sCols = scales[p + "ffn_down.weight"];
                    if (name.EndsWith(".ffn_up.weight")) sRows = scales[p + "ffn_down.weight"];
                    if (name.EndsWith(".attn_v.weight") && foldOutput) sRows = scales[p + "attn_output.weight"];
                    if (sCols != null)
                        for (int r = 0; r < rows; r++)
                            for (int j = 0; j < cols; j++) w[(long)r * cols + j] *= sCols[j];
                    if (sRows != null)
                        for (int r = 0; r < rows; r++)
                            for (int j = 0; j < cols; j++) w[(long)r * cols + j] /= sRows[r];
                }
                int rank = Math.Min(o.Rank, Math.Min(rows, cols));
                var norms = new double[o.Blocks + 1];
                int done = mi;
                var list = SignLowRank.Decompose(w, rows, cols, o.Blocks, rank,
                    new SignLowRank.Options { Seed = o.Seed * 1000003UL + (ulong)mi, Threads = MatMul.Threads }, norms,
                    b => report($"decomposing {name} [block {b}/{o.Blocks}]", 0.1 + 0.3 * (done + b / (double)o.Blocks) / names.Count), ct);
                matrices.Add((name, rows, cols, rank));
                blocks.Add(list);
                energy.Add(norms.Select(x => x * x).ToArray());
            }
            if (o.ActivationScaling)
                for (int l = 0; l < c.Layers; l++)
                {
                    string p = $"blk.{l}.";
                    Divide(vectors[p + "attn_norm.weight"], scales[p + "attn_q.weight"]);
                    Divide(vectors[p + "ffn_norm.weight"], scales[p + "ffn_gate.weight"]);
                    if (foldOutput && vectors.TryGetValue(p + "attn_v.bias", out var bv)) Divide(bv, scales[p + "attn_output.weight"]);
                }

            // 3. Conventional 2-D tensors in the types they will have in the file.
            var conventional = new List<(TensorDesc Desc, GgmlType Type, byte[] Data)>();
            foreach (var t in source.Tensors.Where(t => t.Shape.Length >= 2 && !names.Contains(t.Name)))
            {
                var type = t.Name switch
                {
                    "token_embd.weight" => o.EmbeddingType,
                    "output.weight" => o.HeadType,
                    _ => GgmlTypes.BlockSize(t.Type) > 1 ? t.Type : GgmlType.F16,
                };
                if (t.RowLength % GgmlTypes.BlockSize(type) != 0) type = t.RowLength % 32 == 0 ? GgmlType.Q8_0 : GgmlType.F16;
                var data = new byte[GgmlTypes.RowBytes(type, t.RowLength) * t.Rows];
                if (type == t.Type) source.Read(t, 0, data);
                else QuantizeRows(type, source.ReadFloats(t), t.RowLength, data);
                conventional.Add((t, type, data));
            }

            // 4. The order of the stack.
            using var memory = new MemoryWeights();
            foreach (var (d, type, data) in conventional) memory.AddMatrix(d.Name, type, d.Rows, d.RowLength, data);
            foreach (var (n, v) in vectors) memory.AddVector(n, v);
            var (order, scores, levelLoss) = Order(c, memory, matrices, blocks, energy, loss, o, report, ct);

            // 5. The file.
            report("writing", 0.97);
            var result = Write(source, output, o, matrices, blocks, order, scores, conventional, vectors, ct);
            report("done", 1.0);
            long fileBytes = new FileInfo(result).Length;
            long fixedBytes = conventional.Sum(x => (long)x.Data.Length) + vectors.Values.Sum(v => 4L * v.Length);
            long minimum = fixedBytes + matrices.Sum(m => StackBlock.BytesOf(m.Rows, m.Cols, m.Rank));
            return new BitStackResult(result, matrices.Count, o.Blocks, fileBytes, fixedBytes, minimum, sw.Elapsed.TotalSeconds, levelLoss);
        }
        finally
        {
            foreach (var list in blocks) foreach (var b in list) b.Dispose();
        }
    }

    private static void Validate(BitStackOptions o)
    {
        if (o.Blocks is < 1 or > 64) throw new FitLMException($"--blocks {o.Blocks} is out of range (1..64)");
        if (o.Rank is < 1 or > 256) throw new FitLMException($"--rank {o.Rank} is out of range (1..256)");
        if (o.CalibContext is < 8 or > 1 << 16) throw new FitLMException($"calibration context {o.CalibContext} is out of range (8..65536)");
        if (o.ScoreContext is < 8 or > 1 << 16) throw new FitLMException($"scoring context {o.ScoreContext} is out of range (8..65536)");
        if (o.CalibWindows < 1 || o.ScoreWindows < 1) throw new FitLMException("calibration and scoring need at least one window each");
        foreach (var t in new[] { o.EmbeddingType, o.HeadType, o.ScoreCache })
            if (!GgmlTypes.IsSupported(t)) throw new FitLMException($"type {t} is not supported");
    }

    /// <summary>Windows of n tokens from the start of the text, evenly spread when there are more than needed; BOS first.</summary>
    private static List<int[]> Windows(int[] tokens, int n, int count, Tokenization.Tokenizer tok)
    {
        int available = tokens.Length / n;
        var list = new List<int[]>();
        if (available < 1)
        {
            if (tokens.Length < 8) throw new FitLMException($"the calibration text has only {tokens.Length} tokens");
            n = tokens.Length;
            available = 1;
        }
        for (int i = 0; i < count; i++)
        {
            long w = (long)i * available / count;
            var win = tokens.AsSpan((int)(w * n), n).ToArray();
            if (tok.AddBos && tok.BosId >= 0) win[0] = tok.BosId;
            list.Add(win);
        }
        return list;
    }

    /// <summary>s / mean(s), floored at 1% of the mean (a channel that never fires must not blow its column up).</summary>
    private static float[] Normalize(double[] s)
    {
        double mean = s.Average();
        if (!(mean > 0) || !double.IsFinite(mean)) return Enumerable.Repeat(1f, s.Length).ToArray();
        return s.Select(x => (float)Math.Max(0.01, (x + 1e-3 * mean) / mean)).ToArray();
    }

    private static void Divide(float[] v, float[] s)
    {
        for (int i = 0; i < v.Length; i++) v[i] /= s[i];
    }

    private static void QuantizeRows(GgmlType type, float[] f, int rowLength, byte[] dst)
    {
        int rows = f.Length / rowLength;
        long rowBytes = GgmlTypes.RowBytes(type, rowLength);
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = MatMul.Threads }, r =>
            Quantize.Row(type, f.AsSpan(r * rowLength, rowLength), dst.AsSpan((int)(r * rowBytes), (int)rowBytes)));
    }

    /// <summary>
    /// BitStack's level-by-level order. Level 1 (one block for every matrix) is the smallest whole model; then
    /// for each level b, with every matrix at b blocks, each matrix's block b+1 is scored by the calibration loss
    /// with just that block added, and the level's blocks join the stack best (lowest loss) first. At any prefix no
    /// two matrices differ by more than one block.
    /// </summary>
    private static (int[] Order, float[] Scores, List<double> LevelLoss) Order(ModelConfig c, MemoryWeights memory,
        List<(string Name, int Rows, int Cols, int Rank)> matrices, List<IReadOnlyList<StackBlock>> blocks, List<double[]> energy,
        CalibrationLoss loss, BitStackOptions o, ProgressReport report, CancellationToken ct)
    {
        int m = matrices.Count, n = o.Blocks;
        var order = new List<int>(m * n);
        var scores = new List<float>(m * n);
        var levelLoss = new List<double>();
        for (int i = 0; i < m; i++) { order.Add(i); scores.Add(float.NaN); }
        if (n == 1) return (order.ToArray(), scores.ToArray(), levelLoss);

        // The stack borrows the blocks; the conventional weights stay owned by the caller.
        var stacked = StackedWeights.InMemory(new NonOwning(memory), matrices, blocks, o.ScoreCache);
        int ctx = loss.Context;
        var model = new Transformer(c, stacked, ctx, ctx);
        double Loss() => loss.Evaluate(model, ct);

        int scored = Math.Min(o.ScoreLevels, n - 1);
        long totalEvals = (long)scored * (m + 1);
        long evals = 0;
        var lastDelta = new double[m];
        int lastLevel = 0;
        for (int level = 1; level < n; level++)
        {
            ct.ThrowIfCancellationRequested();
            var delta = new double[m];
            if (level <= scored)
            {
                stacked.SetCounts(Enumerable.Repeat(level, m).ToArray());
                double baseLoss = Loss();
                levelLoss.Add(baseLoss);
                evals++;
                for (int i = 0; i < m; i++)
                {
                    stacked.SetCount(i, level + 1);
                    delta[i] = baseLoss - Loss();
                    stacked.SetCount(i, level);
                    evals++;
                    report($"ordering level {level + 1}/{n}: {matrices[i].Name}", 0.4 + 0.57 * evals / Math.Max(1, totalEvals));
                }
                lastDelta = delta;
                lastLevel = level;
            }
            else
            {
                // Estimate: loss removed per unit of residual energy removed, as at the last measured level.
                for (int i = 0; i < m; i++)
                {
                    var e = energy[i];
                    double measured = e[lastLevel] - e[lastLevel + 1];
                    double now = e[level] - e[level + 1];
                    double sensitivity = measured > 0 ? Math.Max(lastDelta[i], 1e-9) / measured : 0;
                    delta[i] = sensitivity * now;
                }
            }
            // Best first by loss removed per byte: blocks of different matrices cost different bytes, and the
            // best model of a size is the one whose bytes removed the most loss.
            foreach (int i in Enumerable.Range(0, m).OrderByDescending(i => delta[i] / blocks[i][0].Bytes).ThenBy(i => i))
            {
                order.Add(i);
                scores.Add((float)delta[i]);
            }
        }
        if (scored < n - 1 || scored > 0)
        {
            stacked.SetCounts(Enumerable.Repeat(Math.Min(scored + 1, n), m).ToArray());
            levelLoss.Add(Loss());
        }
        stacked.Dispose();
        return (order.ToArray(), scores.ToArray(), levelLoss);
    }

    /// <summary>Shares a provider without disposing it.</summary>
    private sealed class NonOwning(IWeightProvider inner) : IWeightProvider
    {
        public IMatrix Matrix(string name) => inner.Matrix(name);
        public float[] Vector(string name) => inner.Vector(name);
        public bool Has(string name) => inner.Has(name);
        public long ResidentBytes => inner.ResidentBytes;
        public void Dispose() { }
    }

    private static string Write(IModelSource source, string output, BitStackOptions o,
        List<(string Name, int Rows, int Cols, int Rank)> matrices, List<IReadOnlyList<StackBlock>> blocks, int[] order, float[] scores,
        List<(TensorDesc Desc, GgmlType Type, byte[] Data)> conventional, Dictionary<string, float[]> vectors, CancellationToken ct)
    {
        var c = source.Config;
        // A Hugging Face llama keeps q/k in rotate-half order; GGUF (and the GGUF config) interleaves the pairs.
        bool permute = source is HuggingFaceSource && c.Family.ConverterPermutesQk;
        using var w = new GgufWriter(output, GgufWriter.DefaultAlignment, ct);
        if (source is GgufSource g)
        {
            foreach (var key in g.File.MetadataKeys)
                if (key is not ("general.alignment" or "general.file_type") && !key.StartsWith("fitlm.stack.", StringComparison.Ordinal))
                    w.Add(key, g.File.Metadata[key]);
        }
        else if (source is HuggingFaceSource hf) HfToGgufConverter.AddMetadata(w, hf, GgmlType.F16);
        else throw new FitLMException($"{source.Path}: cannot write metadata for this kind of model");
        w.AddString(StackLayout.MethodKey, StackLayout.Method);
        w.AddUInt32(StackLayout.VersionKey, StackLayout.Version);
        w.AddArray(StackLayout.MatricesKey, matrices.Select(m => m.Name).ToArray());
        w.AddArray(StackLayout.RanksKey, matrices.Select(m => m.Rank).ToArray());
        w.AddUInt32(StackLayout.BlocksKey, (uint)o.Blocks);
        w.AddArray(StackLayout.OrderKey, order);
        w.AddArray(StackLayout.ScoresKey, scores);
        w.AddString(StackLayout.CalibrationKey, o.CalibrationNote);

        // Conventional tensors in the source's order, then the stack in its order (a prefix is a prefix of the data).
        var plannedVectors = source.Tensors.Where(t => t.Shape.Length == 1).ToList();
        var convByName = conventional.ToDictionary(x => x.Desc.Name);
        foreach (var t in source.Tensors)
        {
            if (convByName.TryGetValue(t.Name, out var cv)) w.AddTensor(t.Name, t.Shape, cv.Type);
            else if (t.Shape.Length == 1) w.AddTensor(t.Name, t.Shape, GgmlType.F32);
        }
        var next = new int[matrices.Count];
        var entries = new List<(int M, int B)>();
        foreach (int mi in order)
        {
            int b = next[mi]++;
            var (name, rows, cols, rank) = matrices[mi];
            w.AddTensor(StackLayout.SignName(name, b), [cols / 16, rows], GgmlType.F16);
            w.AddTensor(StackLayout.UName(name, b), [rank, rows], GgmlType.F16);
            w.AddTensor(StackLayout.VName(name, b), [rank, cols], GgmlType.F16);
            entries.Add((mi, b));
        }
        foreach (var t in source.Tensors)
        {
            ct.ThrowIfCancellationRequested();
            if (convByName.TryGetValue(t.Name, out var cv)) w.WriteTensor(t.Name, cv.Data);
            else if (t.Shape.Length == 1)
            {
                var v = vectors[t.Name];
                if (permute && (t.Name.EndsWith(".attn_q.bias") || t.Name.EndsWith(".attn_k.bias")))
                {
                    var pv = new float[v.Length];
                    PermuteRows<float>(v, pv, 1, v.Length / (t.Name.EndsWith(".attn_q.bias") ? c.Heads : c.KvHeads));
                    v = pv;
                }
                w.WriteTensor(t.Name, MemoryMarshal.AsBytes(v.AsSpan()));
            }
        }
        foreach (var (mi, b) in entries)
        {
            ct.ThrowIfCancellationRequested();
            var (name, rows, cols, rank) = matrices[mi];
            var block = blocks[mi][b];
            int heads = !permute ? 0 : name.EndsWith(".attn_q.weight") ? c.Heads : name.EndsWith(".attn_k.weight") ? c.KvHeads : 0;
            if (heads == 0)
            {
                w.WriteTensor(StackLayout.SignName(name, b), block.Signs);
                w.WriteTensor(StackLayout.UName(name, b), MemoryMarshal.AsBytes(block.U));
            }
            else
            {
                // Row r of the block is row r of W: permuting W's rows permutes the sign rows and U's rows alike.
                var s = new byte[block.Signs.Length];
                PermuteRows(block.Signs, s, cols / 8, rows / heads);
                var u = new Half[block.U.Length];
                PermuteRows(block.U, u, rank, rows / heads);
                w.WriteTensor(StackLayout.SignName(name, b), s);
                w.WriteTensor(StackLayout.UName(name, b), MemoryMarshal.AsBytes(u.AsSpan()));
            }
            w.WriteTensor(StackLayout.VName(name, b), MemoryMarshal.AsBytes(block.V));
        }
        w.Complete();
        return w.Path;
    }

    /// <summary>convert_hf_to_gguf's q/k permutation on rows of <paramref name="rowLength"/> elements: within each head of <paramref name="headRows"/> rows, row half·(headRows/2)+i moves to 2i+half.</summary>
    internal static void PermuteRows<T>(ReadOnlySpan<T> src, Span<T> dst, int rowLength, int headRows)
    {
        int half = headRows / 2;
        long headElems = (long)headRows * rowLength;
        for (long h0 = 0; h0 < src.Length; h0 += headElems)
            for (int part = 0; part < 2; part++)
                for (int i = 0; i < half; i++)
                    src.Slice((int)(h0 + (long)(part * half + i) * rowLength), rowLength)
                        .CopyTo(dst.Slice((int)(h0 + (long)(2 * i + part) * rowLength), rowLength));
    }
}
