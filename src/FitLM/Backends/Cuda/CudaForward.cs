using FitLM.KvCache;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The decoder's forward pass on a CUDA device, every weight and the KV cache in its memory: the same layers as
/// <see cref="Transformer"/> (read that first; this is its ForwardBatch with device addresses), for the dense families
/// — Llama, Mistral, Qwen2/3, Phi-3, Gemma 2/3 — with their biases, Q/K norms, post-norms, soft-capping and sliding
/// windows. Tokens run in batches of up to MaxBatch; the matrix products take them eight at a time
/// (<see cref="CudaMatVec"/>). A decode step (one token) is captured once as a CUDA graph and replayed: the step's
/// ~16 launches per layer then cost one launch, and what changes between tokens (the position, the embedding) is
/// uploaded before it. The embedding row is looked up on the host (one row read from the file per token).
/// </summary>
internal sealed class CudaForward : IDeviceForward
{
    private sealed class Layer
    {
        public required DeviceBuffer AttnNorm, FfnNorm, KCache, VCache;
        /// <summary>The layer's matrices; where their bytes are now: <see cref="Resident"/>, else a streaming slot.</summary>
        public required WeightBlock Block;
        public DeviceBuffer? Resident;
        /// <summary>The layer's place among the streamed ones (<see cref="LayerStreamer"/>), or -1 when resident.</summary>
        public int StreamIndex;
        public required DeviceMatrix Wo, Down;
        public DeviceMatrix? Wq, Wk, Wv, Wqkv, Gate, Up, GateUp;
        public DeviceBuffer? Bq, Bk, Bv, QNorm, KNorm, PostAttnNorm, PostFfnNorm;
        public required RopeTables Rope;
        public int Window;
    }

    private sealed record RopeTables(DeviceBuffer Cos, DeviceBuffer Sin, int Half, bool Neox);

    /// <summary>One sequence's rows in a pass: its KV slot, its first row in the batch, how many rows.</summary>
    private record struct Segment(int Slot, int Row, int Count);

    private readonly CudaDevice _device;
    private readonly CudaMatVec _mv;
    private readonly ForwardKernels _kernels;
    private readonly ModelConfig _c;
    private readonly IModelSource _source;
    private readonly TensorDesc _embedding;
    private readonly Layer[] _layers;
    private readonly WeightBlock _head;
    private readonly DeviceBuffer _headBytes;
    private readonly DeviceMatrix _headMatrix;
    private readonly DeviceBuffer _outputNorm;
    private readonly LayerStreamer? _streamer;
    private readonly CudaGemm? _gemm;
    private readonly List<IDisposable> _owned = [];
    // Activations for a batch [token × width], as Transformer names them; _pos holds each segment's first position.
    private readonly DeviceBuffer _x, _xb, _xb2, _q, _k, _v, _hb, _hb2, _logits, _pos;
    /// <summary>The pass's runs of rows, one per sequence: its KV slot, first row and row count (a single sequence: slot 0, all rows).</summary>
    private readonly Segment[] _segments;
    private int _segmentCount;
    private readonly int[] _positions, _tokenRows;
    private readonly DeviceBuffer? _qkv;
    private readonly float[] _embedRows;
    private readonly byte[] _embedBytes;
    private readonly DeviceKvLayout _kv;
    /// <summary>Positions each KV slot holds after the last pass (KIVI refuses a rewind into what it quantized).</summary>
    private readonly int[] _slotLength;
    private readonly int _batch;
    private CudaGraph? _decodeGraph;
    private bool _graphs = Environment.GetEnvironmentVariable("FITLM_CUDA_GRAPHS") != "0";

    public string Description { get; }
    public long DeviceBytes { get; }
    public int Length { get; private set; }
    public int Sequences { get; }
    public long SequenceKvBytes => _kv.SequenceBytes(_c.Layers);
    public long StreamedBytesPerToken => _streamer?.BytesPerPass ?? 0;

    /// <summary>
    /// Why <paramref name="c"/> cannot run on the GPU, or null when it can: mixtures of experts and heads wider than
    /// the attention kernel are not built yet.
    /// </summary>
    public static string? Unsupported(ModelConfig c)
    {
        if (c.IsMoe) return $"{c.Architecture} is a mixture of experts, which the CUDA backend does not run yet";
        if (c.HeadDim > ForwardKernels.MaxHeadDim) return $"heads of {c.HeadDim} dimensions are wider than the CUDA attention kernel's {ForwardKernels.MaxHeadDim}";
        return null;
    }

    /// <summary>Names of layer <paramref name="l"/>'s matrices for <paramref name="c"/>, in block order.</summary>
    private static string[] LayerMatrices(ModelConfig c, int l)
    {
        string p = $"blk.{l}.";
        string[] attention = c.FusedQkv ? [p + "attn_qkv.weight"] : [p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"];
        string[] ffn = c.FusedGateUp ? [p + "ffn_up.weight"] : [p + "ffn_gate.weight", p + "ffn_up.weight"];
        return [.. attention, p + "attn_output.weight", .. ffn, p + "ffn_down.weight"];
    }

    /// <summary>
    /// Opens CUDA device <paramref name="ordinal"/>, compiles (or loads from the cache) the kernels and places the model
    /// for a context of <paramref name="maxContext"/> and batches of <paramref name="maxBatch"/>, the KV cache in float32
    /// or float16, within <paramref name="gpuMemory"/> bytes of device memory (0: what the device has free, less a
    /// margin). The KV cache, activations, norms and output head always stay on the device; layers stay too, first to
    /// last, while they fit beside two streaming slots; the rest are streamed (<see cref="LayerStreamer"/>), or read from
    /// the file for every use when <paramref name="naiveStreaming"/>. Refuses, before allocating anything large, a
    /// budget that cannot hold even the fixed part and the slots.
    /// </summary>
    public CudaForward(IModelSource source, int maxContext, int maxBatch, KvCacheOptions kv, long gpuMemory = 0, bool naiveStreaming = false,
        int ordinal = 0, Action<string>? log = null, int sequences = 1)
    {
        Sequences = Math.Max(1, sequences);
        _c = source.Config;
        if (Unsupported(_c) is { } why) throw new FitLMException($"{source.Path}: {why}; use --device cpu");
        _source = source;
        _batch = Math.Clamp(maxBatch, 1, maxContext);
        _kv = DeviceKvLayout.For(_c, maxContext, _batch, kv);
        _slotLength = new int[Sequences];
        _device = CudaDevice.Open(ordinal);
        try
        {
            var c = _c;
            int widest = Math.Max(Math.Max(c.Dim, c.QDim), c.ScratchFfnDim);
            _mv = new CudaMatVec(_device, log, widest);
            _kernels = Own(new ForwardKernels(_device, c.Heads, log));
            _embedding = source.Get("token_embd.weight");

            // The budget: fixed part, then whole layers in order while they fit beside the slots (Plan, as `fitlm plan` shows it).
            long free = _device.FreeMemory() - Headroom;
            long budget = gpuMemory > 0 ? gpuMemory : free;
            if (budget > free)
                throw new FitLMException($"--gpu-memory {ProcessMemory.Format(gpuMemory)} is more than {_device.Name} has free ({ProcessMemory.Format(free)} beside a {ProcessMemory.Format(Headroom)} margin)");
            var placement = Plan(source, maxContext, maxBatch, kv, budget, naiveStreaming, Sequences);
            var blocks = placement.Blocks;
            _head = placement.Head;
            _headMatrix = _head.Matrices.Single();
            int resident = placement.Resident;
            var streamed = blocks[resident..];
            DeviceBytes = placement.DeviceBytes;

            float[]? freqFactors = source.Find("rope_freqs.weight") is { } rf ? source.ReadFloats(rf) : null;
            var rope = Tables(new Rope(c, maxContext, freqFactors));
            var ropeSliding = c.RopeThetaSliding > 0 ? Tables(new Rope(c with { RopeTheta = c.RopeThetaSliding }, maxContext)) : rope;
            _layers = new Layer[c.Layers];
            for (int l = 0; l < c.Layers; l++)
            {
                string p = $"blk.{l}.";
                var b = blocks[l];
                DeviceMatrix? M(bool present, string name) => present ? b[p + name] : null;
                _layers[l] = new Layer
                {
                    Block = b,
                    Resident = l < resident ? UploadBlock(b) : null,
                    StreamIndex = l < resident ? -1 : l - resident,
                    AttnNorm = Norm(p + "attn_norm.weight"),
                    FfnNorm = Norm(p + "ffn_norm.weight"),
                    Wq = M(!c.FusedQkv, "attn_q.weight"),
                    Wk = M(!c.FusedQkv, "attn_k.weight"),
                    Wv = M(!c.FusedQkv, "attn_v.weight"),
                    Wqkv = M(c.FusedQkv, "attn_qkv.weight"),
                    Wo = b[p + "attn_output.weight"],
                    Gate = M(!c.FusedGateUp, "ffn_gate.weight"),
                    Up = M(!c.FusedGateUp, "ffn_up.weight"),
                    GateUp = M(c.FusedGateUp, "ffn_up.weight"),
                    Down = b[p + "ffn_down.weight"],
                    Bq = c.QkvBias ? Vector(p + "attn_q.bias") : null,
                    Bk = c.QkvBias ? Vector(p + "attn_k.bias") : null,
                    Bv = c.QkvBias ? Vector(p + "attn_v.bias") : null,
                    QNorm = c.QkNorm ? Norm(p + "attn_q_norm.weight") : null,
                    KNorm = c.QkNorm ? Norm(p + "attn_k_norm.weight") : null,
                    PostAttnNorm = c.PostNorms ? Norm(p + "post_attention_norm.weight") : null,
                    PostFfnNorm = c.PostNorms ? Norm(p + "post_ffw_norm.weight") : null,
                    KCache = Own(_device.Allocate(Sequences * _kv.KeyBytes)),
                    VCache = Own(_device.Allocate(Sequences * _kv.ValueBytes)),
                    Rope = c.IsSliding(l) ? ropeSliding : rope,
                    Window = c.WindowOf(l),
                };
            }
            _headBytes = UploadBlock(_head);
            if (_batch >= CudaGemm.MinTokens) _gemm = CudaGemm.TryCreate(_device, _mv.Module, _batch, widest, log);
            _outputNorm = Norm("output_norm.weight");
            if (streamed.Length > 0)
            {
                _streamer = Own(new LayerStreamer(_device, source, streamed, naiveStreaming));
                _graphs = false; // a step that waits on copies between layers is not one fixed graph
            }
            // Kernels start while the one before them finishes, the products fetching their first weights meanwhile, where
            // no copy rewrites weights during a step (FITLM_CUDA_PDL=0: off, to measure what it gains).
            _device.Programmatic = _streamer == null && Environment.GetEnvironmentVariable("FITLM_CUDA_PDL") != "0";

            int bt = _batch;
            _x = Floats((long)bt * c.Dim);
            _xb = Floats((long)bt * Math.Max(c.Dim, c.QDim));
            _xb2 = Floats((long)bt * c.Dim);
            _q = Floats((long)bt * c.QDim);
            _k = Floats((long)bt * c.KvDim);
            _v = Floats((long)bt * c.KvDim);
            _hb = Floats((long)bt * c.ScratchFfnDim);
            _hb2 = Floats((long)bt * c.ScratchFfnDim);
            _qkv = c.FusedQkv ? Floats((long)bt * (c.QDim + 2 * c.KvDim)) : null;
            _logits = Floats((long)bt * c.Vocab);
            _pos = Own(_device.Allocate((long)bt * sizeof(int)));
            _positions = new int[bt];
            _segments = new Segment[bt];
            _tokenRows = new int[bt];
            _embedRows = new float[bt * c.Dim];
            _embedBytes = new byte[GgmlTypes.RowBytes(_embedding.Type, _embedding.RowLength)];
            string where = _streamer == null ? "every layer"
                : (resident > 0 ? $"layers 0-{resident - 1} resident, {resident}-{c.Layers - 1}" : $"layers 0-{c.Layers - 1}") + " streamed " +
                  (naiveStreaming ? "from the model file through one slot (--stream naive)" : $"from pinned host memory ({ProcessMemory.Format(_streamer.PinnedBytes)}) through two slots") +
                  $" of {ProcessMemory.Format(_streamer.SlotBytes)}";
            Description = $"cuda:{ordinal} {_device.Name}: {ProcessMemory.Format(DeviceBytes)} in GPU memory ({where}; " +
                $"KV cache {_kv} {ProcessMemory.Format(SequenceKvBytes)}{(Sequences > 1 ? $" for each of {Sequences} sequences" : "")}; prefill {(_gemm != null ? "through cuBLAS" : "with FitLM's kernels")})";
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>
    /// How many layers, first to last, stay resident in <paramref name="budget"/> bytes beside <paramref name="fixedBytes"/>:
    /// all of them when everything fits; otherwise as many as fit beside the streaming slots of the rest (two of the
    /// largest streamed layer, one when naive); -1 when not even the fixed part and the slots fit.
    /// </summary>
    internal static int ResidentLayers(long fixedBytes, long[] layerBytes, long budget, bool naive)
    {
        if (fixedBytes + layerBytes.Sum() <= budget) return layerBytes.Length;
        long Slots(int from) => (naive ? 1 : 2) * layerBytes.Skip(from).DefaultIfEmpty(0).Max();
        if (fixedBytes + Slots(0) > budget) return -1;
        int resident = 0;
        long used = fixedBytes;
        while (resident < layerBytes.Length && used + layerBytes[resident] + Slots(resident + 1) <= budget)
            used += layerBytes[resident++];
        return resident;
    }

    /// <summary>What <see cref="CudaForward"/> places where (its constructor uploads these blocks), computed without a GPU too (`fitlm plan --device cuda`).</summary>
    internal sealed record Placement(WeightBlock[] Blocks, WeightBlock Head, int Resident, long DeviceBytes, long StreamedBytes, long SlotBytes, long KvBytes)
    {
        public int Layers => Blocks.Length;
    }

    /// <summary>
    /// The placement the constructor makes for these arguments and a budget of <paramref name="budget"/> bytes (the same
    /// blocks, fixed part and <see cref="ResidentLayers"/>), or a FitLMException with the minimum when nothing fits.
    /// </summary>
    internal static Placement Plan(IModelSource source, int maxContext, int maxBatch, KvCacheOptions kv, long budget, bool naive, int sequences = 1)
    {
        var c = source.Config;
        if (Unsupported(c) is { } why) throw new FitLMException($"{source.Path}: {why}");
        int batch = Math.Clamp(maxBatch, 1, maxContext);
        int widest = Math.Max(Math.Max(c.Dim, c.QDim), c.ScratchFfnDim);
        long gemm = batch >= CudaGemm.MinTokens ? CudaGemm.WeightScratchBytes + CudaGemm.ActivationScratchBytes(batch, widest) : 0;
        var blocks = Enumerable.Range(0, c.Layers).Select(l => new WeightBlock(LayerMatrices(c, l).Select(source.Get))).ToArray();
        var head = new WeightBlock([source.Find("output.weight") ?? source.Get("token_embd.weight")]);
        long kvBytes = sequences * DeviceKvLayout.For(c, maxContext, batch, kv).SequenceBytes(c.Layers);
        long fixedBytes = FixedBytes(source, maxContext, batch, kvBytes) + head.Bytes + gemm;
        int resident = ResidentLayers(fixedBytes, blocks.Select(b => b.Bytes).ToArray(), budget, naive);
        if (resident < 0)
            throw new FitLMException($"the model needs at least {ProcessMemory.Format(fixedBytes + LayerStreamer.SlotMemory(blocks, naive))} of GPU memory " +
                $"at context {maxContext} (KV cache, activations, output head and {(naive ? "one slot" : "two slots")} for streamed layers) " +
                $"and the budget is {ProcessMemory.Format(budget)}: lower -c, or use --device cpu");
        var streamed = blocks[resident..];
        long slots = streamed.Length > 0 ? LayerStreamer.SlotMemory(streamed, naive) : 0;
        return new Placement(blocks, head, resident, fixedBytes + blocks[..resident].Sum(b => b.Bytes) + slots, streamed.Sum(b => b.Bytes),
            slots, kvBytes);
    }

    /// <summary>Device memory kept free beside the model: the CUDA context's own allocations and the kernels' modules.</summary>
    internal const long Headroom = 256L << 20;

    /// <summary>What stays on the device whatever the budget: the KV cache at full context (<paramref name="kvBytes"/>, every slot), activations and logits for a batch, RoPE tables, norms and biases.</summary>
    internal static long FixedBytes(IModelSource source, int maxContext, int batch, long kvBytes)
    {
        var c = source.Config;
        long activations = 4L * batch * (3L * c.Dim + Math.Max(c.Dim, c.QDim) + c.QDim + 2L * c.KvDim + 2L * c.ScratchFfnDim
            + (c.FusedQkv ? c.QDim + 2L * c.KvDim : 0) + c.Vocab);
        long rope = 2L * 4 * maxContext * (c.RopeDims / 2) * (c.RopeThetaSliding > 0 ? 2 : 1);
        long vectors = source.Tensors.Where(t => t.Shape.Length == 1).Sum(t => t.Elements * 4);
        long quantizedX = CudaMatVec.ScratchBytes(Math.Max(Math.Max(c.Dim, c.QDim), c.ScratchFfnDim));
        return kvBytes + activations + rope + vectors + quantizedX + ForwardKernels.AttentionScratchBytes(c.Heads);
    }

    private T Own<T>(T d) where T : IDisposable
    {
        _owned.Add(d);
        return d;
    }

    private DeviceBuffer Floats(long count) => Own(_device.Allocate(count * sizeof(float)));

    private DeviceBuffer UploadBlock(WeightBlock block)
    {
        var d = Own(_device.Allocate(block.Bytes));
        block.Write(_source, (offset, bytes) => CudaDevice.UploadTo(d.Pointer + (ulong)offset, bytes));
        return d;
    }

    private DeviceBuffer Upload(float[] values)
    {
        var d = Floats(values.Length);
        CudaDevice.UploadTo<float>(d.Pointer, values);
        return d;
    }

    private DeviceBuffer Vector(string name) => Upload(_source.ReadFloats(_source.Get(name)));

    /// <summary>A norm's weights as the math uses them: Gemma's Hugging Face files store w for (1 + w) (Transformer does the same).</summary>
    private DeviceBuffer Norm(string name)
    {
        var w = _source.ReadFloats(_source.Get(name));
        if (_c.NormWeightOffset != 0)
            for (int i = 0; i < w.Length; i++) w[i] += _c.NormWeightOffset;
        return Upload(w);
    }

    private RopeTables Tables(Rope rope) =>
        new(Upload(rope.CosTable.ToArray()), Upload(rope.SinTable.ToArray()), rope.Dims / 2, rope.Style == RopeStyle.Neox);

    public void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom)
    {
        int count = tokens.Length;
        BeginSequence(0, tokens, pos);
        if (count == 1 && _graphs) DecodeStep(); // captured with this one segment: slot 0, row 0
        else
        {
            Layers(count);
            if (logitsFrom < count) Logits(logitsFrom, count);
        }
        if (logitsFrom < count) CudaDevice.DownloadFrom(_logits.Pointer, logits[..((count - logitsFrom) * _c.Vocab)]);
        Length = pos + count; // positions from pos on were overwritten (a rewind, or a new sequence at 0)
    }

    public void Forward(ReadOnlySpan<DeviceSlice> slices, Span<float> logits)
    {
        int rows = 0, wanted = 0;
        foreach (var sl in slices)
        {
            if ((uint)sl.Slot >= (uint)Sequences) throw new ArgumentException($"KV slot {sl.Slot} is not one of the device's {Sequences}");
            CheckRewind(sl.Slot, sl.Pos);
            rows += sl.Tokens.Length;
            if (sl.WantLogits) wanted++;
        }
        if (rows > _batch || slices.Length > _batch) throw new ArgumentException($"{rows} tokens do not fit a batch of {_batch}");
        _device.MakeCurrent();
        int row = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            var sl = slices[s];
            sl.Tokens.Span.CopyTo(_tokenRows.AsSpan(row));
            _segments[s] = new Segment(sl.Slot, row, sl.Tokens.Length);
            _positions[s] = sl.Pos;
            _slotLength[sl.Slot] = sl.Pos + sl.Tokens.Length;
            row += sl.Tokens.Length;
        }
        _segmentCount = slices.Length;
        Embed(_tokenRows.AsSpan(0, rows));
        CudaDevice.UploadTo<int>(_pos.Pointer, _positions.AsSpan(0, slices.Length));
        Layers(rows);
        // The last row of each slice that asks, normalized side by side, then one product with the head.
        int dim = _c.Dim, k = 0;
        for (int s = 0; s < slices.Length; s++)
        {
            if (!slices[s].WantLogits) continue;
            var seg = _segments[s];
            _kernels.RmsNorm(At(_x, (long)(seg.Row + seg.Count - 1) * dim), _outputNorm.Pointer, At(_xb, (long)k * dim), 1, dim, _c.RmsEps);
            k++;
        }
        if (wanted == 0) return;
        Multiply(_headBytes.Pointer, _headMatrix, _xb.Pointer, _logits.Pointer, wanted);
        if (_c.FinalSoftcap > 0) _kernels.Softcap(_logits.Pointer, _c.FinalSoftcap, wanted * _c.Vocab);
        CudaDevice.DownloadFrom(_logits.Pointer, logits[..(wanted * _c.Vocab)]);
    }

    /// <summary>A pass of one sequence (KV slot <paramref name="slot"/>): its rows embedded, its first position uploaded, one segment.</summary>
    private void BeginSequence(int slot, ReadOnlySpan<int> tokens, int pos)
    {
        if (tokens.Length > _batch) throw new ArgumentException($"{tokens.Length} tokens do not fit a batch of {_batch}");
        CheckRewind(slot, pos);
        _slotLength[slot] = pos + tokens.Length;
        _device.MakeCurrent();
        Embed(tokens);
        CudaDevice.UploadTo(_pos.Pointer, new ReadOnlySpan<int>(in pos));
        _segments[0] = new Segment(slot, 0, tokens.Length);
        _segmentCount = 1;
    }

    /// <summary>KIVI cannot rewind a slot into the tiles it has quantized (the CPU's store refuses the same): checked before a pass writes anything.</summary>
    private void CheckRewind(int slot, int pos)
    {
        if (_kv.RewindRefusal(pos, _slotLength[slot]) is { } why) throw new FitLMException(why);
    }

    public void ForwardHidden(int slot, ReadOnlySpan<int> tokens, int pos, Span<float> hidden)
    {
        int count = tokens.Length, dim = _c.Dim;
        if ((uint)slot >= (uint)Sequences) throw new ArgumentException($"KV slot {slot} is not one of the device's {Sequences}");
        BeginSequence(slot, tokens, pos);
        Layers(count);
        _kernels.RmsNorm(_x.Pointer, _outputNorm.Pointer, _xb.Pointer, count, dim, _c.RmsEps);
        CudaDevice.DownloadFrom(_xb.Pointer, hidden[..(count * dim)]);
    }

    /// <summary>One token through every layer and the output head, as the graph captured at the first decode step.</summary>
    private void DecodeStep()
    {
        if (_decodeGraph == null)
        {
            try { _decodeGraph = _device.Capture(() => { Layers(1); Logits(0, 1); }); }
            catch (FitLMException e)
            {
                // A driver that cannot capture still runs the same launches one by one.
                Console.Error.WriteLine($"warning: CUDA graph capture failed ({e.Message}); decoding without graphs");
                _graphs = false;
                Layers(1);
                Logits(0, 1);
                return;
            }
        }
        _decodeGraph.Launch();
    }

    /// <summary>The rows' embeddings (scaled where the family scales them), read and dequantized on the host, uploaded to x.</summary>
    private void Embed(ReadOnlySpan<int> tokens)
    {
        int dim = _c.Dim;
        for (int t = 0; t < tokens.Length; t++)
        {
            _source.Read(_embedding, tokens[t] * (long)_embedBytes.Length, _embedBytes);
            var row = _embedRows.AsSpan(t * dim, dim);
            Dequantize.Row(_embedding.Type, _embedBytes, row);
            if (_c.EmbeddingScale != 1f) System.Numerics.Tensors.TensorPrimitives.Multiply(row, _c.EmbeddingScale, row);
        }
        CudaDevice.UploadTo<float>(_x.Pointer, _embedRows.AsSpan(0, tokens.Length * dim));
    }

    /// <summary>Y = W·X for n rows, W at its offset in the block at <paramref name="block"/> (resident, or a slot).</summary>
    /// <remarks><paramref name="sameInput"/>: x's quantized form is already in the scratch (the previous product's input,
    /// or written there by the kernel that wrote x: <see cref="CudaMatVec.FusedTarget"/>).</remarks>
    private void Multiply(ulong block, DeviceMatrix w, ulong x, ulong y, int n, bool sameInput = false)
    {
        if (UsesGemm(w, n))
            _gemm!.Multiply(w.Type, w.Tensor.Type, block + (ulong)w.Offset, w.RowBytes, w.Rows, w.Cols, x, y, n);
        else _mv.Multiply(w.Type, block + (ulong)w.Offset, w.RowBytes, w.Rows, w.Cols, x, y, n, sameInput);
    }

    private bool UsesGemm(DeviceMatrix w, int n) => _gemm != null && n >= CudaGemm.MinTokens && CudaGemm.Supports(w.Type, w.Tensor.Type);

    /// <summary>Where the kernel writing X [n × cols] at <paramref name="x"/> also writes it in q8_0 for <paramref name="reader"/>'s product, or null (cuBLAS reads X, or the product quantizes it itself).</summary>
    private QuantizedX? QuantizedFor(DeviceMatrix reader, ulong x, int cols, int n) => UsesGemm(reader, n) ? null : _mv.FusedTarget(reader.Type, x, cols, n);

    /// <summary>
    /// Two or three products of one input X (Q, K and V; gate and up): one launch where they share a type with
    /// integer kernels and the batch is not cuBLAS's, else one product each (the later ones reuse the first one's
    /// quantized X).
    /// </summary>
    private void MultiplyTogether(ulong block, ulong x, int n, bool sameInput, DeviceMatrix a, ulong ya, DeviceMatrix b, ulong yb, DeviceMatrix? c = null, ulong yc = 0)
    {
        bool gemm = _gemm != null && n >= CudaGemm.MinTokens;
        if (!gemm && a.Type == b.Type && (c == null || c.Type == a.Type) &&
            _mv.MultiplyTogether(a.Type, a.Cols, x, n, (block + (ulong)a.Offset, a.Rows, ya), (block + (ulong)b.Offset, b.Rows, yb),
                c == null ? default : (block + (ulong)c.Offset, c.Rows, yc), sameInput))
            return;
        Multiply(block, a, x, ya, n, sameInput);
        Multiply(block, b, x, yb, n, sameInput: true);
        if (c != null) Multiply(block, c, x, yc, n, sameInput: true);
    }

    private static ulong At(DeviceBuffer b, long floats) => b.Pointer + (ulong)(floats * sizeof(float));

    /// <summary>
    /// o = RMSNorm(x) ⊙ w over n rows of Dim, after x += <paramref name="residual"/> when one is pending (0: none), and o
    /// in q8_0 for <paramref name="reader"/>'s product when it takes that (then true: the product gets sameInput).
    /// </summary>
    private bool Norm(ulong x, ulong residual, DeviceBuffer w, ulong o, int n, DeviceMatrix reader)
    {
        var quantized = QuantizedFor(reader, o, _c.Dim, n);
        _kernels.AddRmsNorm(x, residual, w.Pointer, o, n, _c.Dim, _c.RmsEps, quantized);
        return quantized != null;
    }

    /// <summary>
    /// The layers over the batch's n rows of x (Transformer.ForwardBatch). A decode step is about ten launches a layer:
    /// the residual add, the next norm and the quantization of its output for the next product are one kernel
    /// (<see cref="ForwardKernels.AddRmsNorm"/>), as are the gated activation and attention with theirs, and RoPE of
    /// queries and keys; a layer's last residual add is done by the next layer's first norm.
    /// </summary>
    private void Layers(int n)
    {
        var c = _c;
        var k = _kernels;
        int dim = c.Dim;
        ulong x = _x.Pointer, xb = _xb.Pointer, xb2 = _xb2.Pointer, q = _q.Pointer, kk = _k.Pointer, v = _v.Pointer, pos = _pos.Pointer;
        float scale = c.KvShape.Scale;
        ulong residual = 0; // xb2 when the previous block's output still has to be added to x
        for (int l = 0; l < c.Layers; l++)
        {
            var L = _layers[l];
            ulong wb = L.StreamIndex < 0 ? L.Resident!.Pointer : _streamer!.Begin(L.StreamIndex);
            // Attention block.
            if (L.Wqkv != null)
            {
                int width = c.QDim + 2 * c.KvDim;
                bool quantized = Norm(x, residual, L.AttnNorm, xb, n, L.Wqkv);
                Multiply(wb, L.Wqkv, xb, _qkv!.Pointer, n, quantized);
                k.CopyColumns(_qkv.Pointer, width, 0, q, c.QDim, n);
                k.CopyColumns(_qkv.Pointer, width, c.QDim, kk, c.KvDim, n);
                k.CopyColumns(_qkv.Pointer, width, c.QDim + c.KvDim, v, c.KvDim, n);
            }
            else
            {
                bool quantized = Norm(x, residual, L.AttnNorm, xb, n, L.Wq!);
                MultiplyTogether(wb, xb, n, quantized, L.Wq!, q, L.Wk!, kk, L.Wv!, v);
            }
            residual = 0;
            if (L.Bq != null) k.AddBias(q, L.Bq.Pointer, c.QDim, n * c.QDim);
            if (L.Bk != null) k.AddBias(kk, L.Bk.Pointer, c.KvDim, n * c.KvDim);
            if (L.Bv != null) k.AddBias(v, L.Bv.Pointer, c.KvDim, n * c.KvDim);
            if (L.QNorm != null) QkNorm(q, L.QNorm, c.Heads, n);
            if (L.KNorm != null) QkNorm(kk, L.KNorm, c.KvHeads, n);
            // Per sequence: RoPE at its positions, its rows into its KV slot, attention over that slot; the output is
            // quantized as it is written when the output projection takes q8_0.
            var r = L.Rope;
            var attended = c.HeadDim % 32 == 0 ? QuantizedFor(L.Wo, xb, c.QDim, n) : null;
            for (int s = 0; s < _segmentCount; s++)
            {
                var (slot, row, m) = _segments[s];
                ulong sq = q + (ulong)(4L * row * c.QDim), sk = kk + (ulong)(4L * row * c.KvDim), sv = v + (ulong)(4L * row * c.KvDim);
                ulong kc = L.KCache.Pointer + (ulong)(slot * _kv.KeyBytes), vc = L.VCache.Pointer + (ulong)(slot * _kv.ValueBytes);
                ulong sp = pos + (ulong)(4L * s);
                k.RopeQk(sq, sk, r.Cos.Pointer, r.Sin.Pointer, m, c.Heads, c.KvHeads, c.HeadDim, r.Half, r.Neox, sp);
                k.KvStore(_kv, sk, sv, kc, vc, m, sp);
                k.Attend(_kv, sq, kc, vc, xb + (ulong)(4L * row * c.QDim), m, c.Heads, scale, c.AttentionSoftcap, L.Window, sp, attended?.At(row, c.QDim));
            }
            Multiply(wb, L.Wo, xb, xb2, n, attended != null);
            if (L.PostAttnNorm != null) k.RmsNorm(xb2, L.PostAttnNorm.Pointer, xb2, n, dim, c.RmsEps);

            // Feed-forward block: down(act(gate(x)) * up(x)), after x += the attention block's output.
            if (L.GateUp != null)
            {
                int ffn = L.GateUp.Rows / 2;
                bool quantized = Norm(x, xb2, L.FfnNorm, xb, n, L.GateUp);
                Multiply(wb, L.GateUp, xb, _hb.Pointer, n, quantized);
                var activated = QuantizedFor(L.Down, _hb2.Pointer, ffn, n);
                k.GateAct(_hb.Pointer, 2 * ffn, At(_hb, ffn), 2 * ffn, _hb2.Pointer, ffn, ffn, n, (int)c.Activation, activated);
                Multiply(wb, L.Down, _hb2.Pointer, xb2, n, activated != null);
            }
            else
            {
                int ffn = L.Gate!.Rows;
                bool quantized = Norm(x, xb2, L.FfnNorm, xb, n, L.Gate);
                MultiplyTogether(wb, xb, n, quantized, L.Gate, _hb.Pointer, L.Up!, _hb2.Pointer);
                var activated = QuantizedFor(L.Down, _hb.Pointer, ffn, n);
                k.GateAct(_hb.Pointer, ffn, _hb2.Pointer, ffn, _hb.Pointer, ffn, ffn, n, (int)c.Activation, activated);
                Multiply(wb, L.Down, _hb.Pointer, xb2, n, activated != null);
            }
            if (L.PostFfnNorm != null) k.RmsNorm(xb2, L.PostFfnNorm.Pointer, xb2, n, dim, c.RmsEps);
            residual = xb2; // added by the next layer's first norm
            if (L.StreamIndex >= 0) _streamer!.End(L.StreamIndex);
        }
        if (residual != 0) k.Add(x, residual, n * dim);
    }

    /// <summary>Per-head norm of n rows of q or k (Qwen3, Gemma 3), or over each whole row (OLMoE).</summary>
    private void QkNorm(ulong rows, DeviceBuffer w, int heads, int n)
    {
        if (_c.QkNormWholeRow) _kernels.RmsNorm(rows, w.Pointer, rows, n, heads * _c.HeadDim, _c.RmsEps);
        else _kernels.RmsNorm(rows, w.Pointer, rows, n * heads, _c.HeadDim, _c.RmsEps);
    }

    /// <summary>Logits of rows [from, count) of the batch into the first rows of the logits buffer.</summary>
    private void Logits(int from, int count)
    {
        int rows = count - from, dim = _c.Dim;
        _kernels.RmsNorm(At(_x, (long)from * dim), _outputNorm.Pointer, _xb.Pointer, rows, dim, _c.RmsEps);
        Multiply(_headBytes.Pointer, _headMatrix, _xb.Pointer, _logits.Pointer, rows);
        if (_c.FinalSoftcap > 0) _kernels.Softcap(_logits.Pointer, _c.FinalSoftcap, rows * _c.Vocab);
    }

    public double HostToDeviceBandwidth()
    {
        _device.MakeCurrent();
        try { return _device.HostToDeviceBandwidth(); }
        catch (FitLMException) { return 0; }
    }

    public double MemoryBandwidth()
    {
        _device.MakeCurrent();
        try { return _device.CopyBandwidth(512L << 20); } // 512 MiB: past any L2 (H100: 50 MiB), and room beside most models
        catch (FitLMException) { return 0; } // no room for the two buffers beside the model
    }

    public void Dispose()
    {
        _gemm?.Dispose();
        _mv?.Dispose();
        _decodeGraph?.Dispose();
        _decodeGraph = null;
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
        _device?.Dispose();
    }
}
