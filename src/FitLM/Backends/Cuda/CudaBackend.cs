using FitLM.KvCache;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The forward pass's backend on a CUDA device: <see cref="Transformer"/>'s graph (read that first) runs its operations
/// here as kernels over device memory, with every weight and the KV cache in GPU memory or, past the budget, layers
/// streamed from pinned host memory (<see cref="LayerStreamer"/>). The dense families — Llama, Mistral, Qwen2/3,
/// Phi-3, Gemma 2/3 — with their biases, Q/K norms, post-norms, soft-capping and sliding windows. The model's weights
/// reach the graph as handles (<see cref="DeviceWeights"/>). This file places the model; the operations are in
/// CudaBackend.Operations.cs.
/// </summary>
internal sealed partial class CudaBackend : IDeviceBackend
{
    /// <summary>What the device keeps per layer beside the graph's weights: where its block is, its KV cache, its attention window.</summary>
    private sealed class Layer
    {
        public required WeightBlock Block;
        /// <summary>The block in GPU memory, or null when it streams.</summary>
        public DeviceBuffer? Resident;
        /// <summary>The layer's place among the streamed ones (<see cref="LayerStreamer"/>), or -1 when resident.</summary>
        public int StreamIndex;
        public required DeviceBuffer KCache, VCache;
        public int Window;
    }

    private sealed record RopeTables(DeviceBuffer Cos, DeviceBuffer Sin, int Half, bool Neox);

    private readonly CudaDevice _device;
    private readonly CudaMatVec _mv;
    private readonly ForwardKernels _kernels;
    private readonly ModelConfig _c;
    private readonly IModelSource _source;
    private readonly Layer[] _layers;
    private readonly DeviceBuffer _headBytes;
    private readonly LayerStreamer? _streamer;
    private readonly CudaGemm? _gemm;
    private readonly List<IDisposable> _owned = [];
    /// <summary>The arrays every resident block is read and converted in while loading, one set for all (not one per block).</summary>
    private readonly WeightBlock.WriteScratch _uploadScratch = new();
    /// <summary>The graph's norms and biases (host vectors, found by reference) and RoPE tables, uploaded once.</summary>
    private readonly Dictionary<float[], DeviceBuffer> _vectors = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<Rope, RopeTables> _ropes = new(ReferenceEqualityComparer.Instance);
    private readonly DeviceBuffer _logits, _pos;
    private readonly float[] _embedRows;
    private readonly DeviceKvLayout _kv;
    /// <summary>Positions each KV slot holds after the last pass (KIVI refuses a rewind into what it quantized).</summary>
    private readonly int[] _slotLength;
    private readonly int _batch;

    public TransformerWeights Weights { get; }
    public string Description { get; }
    public long DeviceBytes { get; }
    public int Sequences { get; }
    public long SequenceKvBytes => _kv.SequenceBytes(_c.Layers);
    public long StreamedBytesPerToken => _streamer?.BytesPerPass ?? 0;
    public long FileBytesPerToken => _streamer?.FileBytesPerPass ?? 0;

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
    /// for a context of <paramref name="maxContext"/> and batches of <paramref name="maxBatch"/>, the KV cache of the
    /// <paramref name="kv"/> type for <paramref name="sequences"/> slots, within <paramref name="gpuMemory"/> bytes of
    /// device memory (0: what the device has free, less a margin). The KV cache, activations, norms and output head
    /// always stay on the device; layers stay too, first to last, while they fit beside two streaming slots; the rest
    /// are streamed (<see cref="LayerStreamer"/>), or read from the file for every use when
    /// <paramref name="naiveStreaming"/>. Refuses, before allocating anything large, a budget that cannot hold even
    /// the fixed part and the slots. The pass's activations are allocated by the transformer (<see cref="Allocate"/>).
    /// Streamed layers keep pinned host copies within <paramref name="hostMemory"/> bytes (what --memory leaves them,
    /// <see cref="HostMemoryFor"/>); the others are read from the file every pass.
    /// </summary>
    public CudaBackend(IModelSource source, int maxContext, int maxBatch, KvCacheOptions kv, long gpuMemory = 0, bool naiveStreaming = false,
        int ordinal = 0, Action<string>? log = null, int sequences = 1, long hostMemory = long.MaxValue)
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

            // The budget: fixed part, then whole layers in order while they fit beside the slots (Plan, as `fitlm plan` shows it).
            long free = _device.FreeMemory() - Headroom;
            long budget = gpuMemory > 0 ? gpuMemory : free;
            if (budget > free)
                throw new FitLMException($"--gpu-memory {ProcessMemory.Format(gpuMemory)} is more than {_device.Name} has free ({ProcessMemory.Format(free)} beside a {ProcessMemory.Format(Headroom)} margin)");
            var placement = Plan(source, maxContext, maxBatch, kv, budget, naiveStreaming, Sequences, hostMemory);
            var blocks = placement.Blocks;
            int resident = placement.Resident;
            var streamed = blocks[resident..];
            DeviceBytes = placement.DeviceBytes;

            // The graph's weights: handles to the blocks, host norms and biases, RoPE tables for the context.
            Weights = new TransformerWeights(c, new DeviceWeights(source, blocks, placement.Head), maxContext);
            _layers = new Layer[c.Layers];
            for (int l = 0; l < c.Layers; l++)
            {
                _layers[l] = new Layer
                {
                    Block = blocks[l],
                    Resident = l < resident ? UploadBlock(blocks[l]) : null,
                    StreamIndex = l < resident ? -1 : l - resident,
                    KCache = Own(_device.Allocate(Sequences * _kv.KeyBytes)),
                    VCache = Own(_device.Allocate(Sequences * _kv.ValueBytes)),
                    Window = c.WindowOf(l),
                };
                var w = Weights.Layers[l];
                foreach (var v in new[] { w.AttnNorm, w.FfnNorm, w.Bq, w.Bk, w.Bv, w.QNorm, w.KNorm, w.PostAttnNorm, w.PostFfnNorm })
                    if (v != null && !_vectors.ContainsKey(v)) _vectors[v] = Upload(v);
                if (!_ropes.ContainsKey(w.Rope)) _ropes[w.Rope] = Tables(w.Rope);
            }
            _vectors[Weights.OutputNorm] = Upload(Weights.OutputNorm);
            _headBytes = UploadBlock(placement.Head);
            if (_batch >= CudaGemm.MinTokens) _gemm = CudaGemm.TryCreate(_device, _mv.Module, _batch, widest, log);
            if (streamed.Length > 0)
            {
                _streamer = Own(new LayerStreamer(_device, source, streamed, naiveStreaming, hostMemory));
                _graphs = false; // a step that waits on copies between layers is not one fixed graph
            }
            // Kernels start while the one before them finishes, the products fetching their first weights meanwhile, where
            // no copy rewrites weights during a step (FITLM_CUDA_PDL=0: off, to measure what it gains).
            _device.Programmatic = _streamer == null && Environment.GetEnvironmentVariable("FITLM_CUDA_PDL") != "0";
            _foldNorm = FoldsNorms();

            _logits = Floats((long)_batch * c.Vocab);
            _pos = Own(_device.Allocate((long)_batch * sizeof(int)));
            _positions = new int[_batch];
            _segments = new Segment[_batch];
            _embedRows = new float[_batch * c.Dim];
            if (Environment.GetEnvironmentVariable("FITLM_CUDA_PINNED_IO") == "1") _io = new PinnedIo(_batch, c.Dim, c.Vocab);
            string where = _streamer == null ? "every layer"
                : (resident > 0 ? $"layers 0-{resident - 1} resident, {resident}-{c.Layers - 1}" : $"layers 0-{c.Layers - 1}") + " streamed " +
                  (naiveStreaming ? "from the model file through one slot (--stream naive)" : $"from pinned host memory ({ProcessMemory.Format(_streamer.PinnedBytes)}) through two slots") +
                  $" of {ProcessMemory.Format(_streamer.SlotBytes)}" +
                  (!naiveStreaming && _streamer.PinnedLayers < streamed.Length
                      ? $", layers {resident + _streamer.PinnedLayers}-{c.Layers - 1} read from the model file each pass (--memory holds pinned copies of {_streamer.PinnedLayers})"
                      : "");
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

    /// <summary>
    /// What <see cref="CudaBackend"/> places where (its constructor uploads these blocks), computed without a GPU too
    /// (`fitlm plan --device cuda`). <see cref="PinnedLayers"/>: how many streamed layers keep a pinned host copy (the
    /// others are read from the file every pass).
    /// </summary>
    internal sealed record Placement(WeightBlock[] Blocks, WeightBlock Head, int Resident, long DeviceBytes, long StreamedBytes, long SlotBytes, long KvBytes,
        int PinnedLayers)
    {
        public int Layers => Blocks.Length;
        /// <summary>Weight bytes read from the model file per pass: the streamed layers without a pinned copy.</summary>
        public long FileBytesPerPass => Blocks[(Resident + PinnedLayers)..].Sum(b => b.Bytes);
    }

    /// <summary>
    /// Host memory the CUDA path takes beside the runtime's own and the pinned copies: the driver's context, cuBLAS,
    /// NVRTC and what loading leaves in the managed heap. Measured by /usr/bin/time -v (run 33, H100): llama-7b Q4_0
    /// streamed within --memory peaked 478-526 MiB above its pinned bytes, with 45 MiB of runtime estimate and 32 MiB of
    /// write scratch beside them; with 384 MiB here, --memory 2560MiB and 1024MiB peaked 12 and 21 MiB over. `perplexity`
    /// on pycoder-29m: 398 MiB on the GPU against 73-78 MiB on the CPU (run 30).
    /// </summary>
    internal const long HostOverheadBytes = 512L << 20;

    /// <summary>
    /// Host bytes a host budget of <paramref name="memoryBudget"/> (--memory; 0: none given) leaves the streamed layers'
    /// pinned copies, beside <paramref name="runtimeBytes"/> of the process's own and <see cref="HostOverheadBytes"/>.
    /// </summary>
    internal static long HostMemoryFor(long memoryBudget, long runtimeBytes) =>
        memoryBudget > 0 ? memoryBudget - runtimeBytes - HostOverheadBytes : long.MaxValue;

    /// <summary>
    /// The placement the constructor makes for these arguments and a budget of <paramref name="budget"/> bytes (the same
    /// blocks, fixed part and <see cref="ResidentLayers"/>), or a FitLMException with the minimum when nothing fits.
    /// </summary>
    internal static Placement Plan(IModelSource source, int maxContext, int maxBatch, KvCacheOptions kv, long budget, bool naive, int sequences = 1,
        long hostMemory = long.MaxValue)
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
        int pinned = streamed.Length == 0 || naive ? 0 : LayerStreamer.PinnedLayersFor(streamed, hostMemory);
        if (pinned < 0) throw LayerStreamer.TooLittleHostMemory(streamed, hostMemory);
        return new Placement(blocks, head, resident, fixedBytes + blocks[..resident].Sum(b => b.Bytes) + slots, streamed.Sum(b => b.Bytes),
            slots, kvBytes, pinned);
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
        block.Write(_source, (offset, bytes) => CudaDevice.UploadTo(d.Pointer + (ulong)offset, bytes), _uploadScratch);
        return d;
    }

    private DeviceBuffer Upload(float[] values)
    {
        var d = Floats(values.Length);
        CudaDevice.UploadTo<float>(d.Pointer, values);
        return d;
    }

    private RopeTables Tables(Rope rope) =>
        new(Upload(rope.CosTable.ToArray()), Upload(rope.SinTable.ToArray()), rope.Dims / 2, rope.Style == RopeStyle.Neox);

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
        _io?.Dispose();
        _decodeGraph?.Dispose();
        _decodeGraph = null;
        foreach (var d in _owned) d.Dispose();
        _owned.Clear();
        _device?.Dispose();
    }
}
