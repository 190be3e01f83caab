namespace FitLM.Backends.Cuda;

/// <summary>
/// Launches of Kernels/forward.cu on the device's stream: RMSNorm, biases, residual adds, soft-capping, the gated
/// activation, RoPE, the KV cache's writes and attention. Arguments are device addresses the caller sized; positions
/// come from the int at <c>pos0</c> in device memory (so a decode step can be replayed as a CUDA graph).
/// </summary>
internal sealed unsafe class ForwardKernels : IDisposable
{
    private const uint Threads = 256;
    /// <summary>Threads of an attention block: ATTN_WARPS warps in forward.cu.</summary>
    private const uint AttentionThreads = 128;
    /// <summary>The widest head attend_* handles: MAX_HEAD_DIM in forward.cu.</summary>
    public const int MaxHeadDim = 256;
    /// <summary>Head widths whose attention over an f16 cache reads a key or value row a load (VEC_ENTRY in forward.cu).</summary>
    public static readonly int[] RowHeadDims = [64, 128, 256];
    /// <summary>Head widths whose batch attention over a dense cache is tiled (TILE_ENTRY in forward.cu).</summary>
    public static readonly int[] TileHeadDims = [64, 128];
    /// <summary>Queries a tiled attention block takes (TILE_Q in forward.cu); batches of fewer rows take attend_batch_*.</summary>
    public const int TileQueries = 32;
    /// <summary>The most blocks one query of one head is split over (<see cref="Attend"/>).</summary>
    public const int MaxSplits = 32;
    /// <summary>The widest row add_rmsnorm_lane takes: a thread per 32 elements, 256 threads.</summary>
    public const int LaneNormMaxDim = 32 * 256;

    /// <summary>One split's partial softmax in the attention scratch: its m, l and acc (STRIDE floats in forward.cu's attend).</summary>
    private const int SplitBytes = (MaxHeadDim + 2) * sizeof(float);

    /// <summary>Device bytes of one token's split attention for <paramref name="heads"/> heads, at most: each split's (m, l, acc) and a count per head.</summary>
    public static long AttentionScratchBytes(int heads) => (long)heads * (MaxSplits * SplitBytes + sizeof(int));

    private readonly CudaDevice _device;
    private readonly DeviceBuffer _part, _count;
    private readonly int _splits;
    private readonly nint _addRmsNorm, _addRmsNormLane, _addBias, _add, _softcap, _gateAct, _ropeQk, _copyColumns;
    private readonly nint _kvStoreF32, _kvStoreF16, _attendF32, _attendF16, _kvStoreKivi, _kiviQuantize, _attendKivi;
    private readonly nint _attendBatchF32, _attendBatchF16, _attendBatchKivi;
    // Attention over an f16 cache with heads of 64, 128 or 256 dimensions, a row a load (attend_f16_h128,
    // attend_batch_f16_h128, ...), by (one token, head width); FITLM_CUDA_ATTN_ROWS=0 takes the element-wise kernels
    // instead, to compare.
    private readonly Dictionary<(bool One, int HeadDim), nint> _attendF16Rows = [];
    // A batch's attention over a dense cache, tiled (attend_tile_f16_h128, ...), by (f16, head width);
    // FITLM_CUDA_ATTN_TILES=0 takes attend_batch_* instead, to compare.
    private readonly Dictionary<(bool Half, int HeadDim), nint> _attendTiles = [];
    // RoPE, the KV store and one token's attention over a dense cache in one launch (attend_rope_f32, attend_rope_f16,
    // attend_rope_f16_h128, ...), by (f16, head width or 0 for the element-wise ones); FITLM_CUDA_FUSED_ATTN=1, a probe.
    private readonly Dictionary<(bool Half, int HeadDim), nint> _attendRope = [];
    // A batch's attention over KIVI's cache, tiled (attend_tile_kivi_h64, _h128), by head width; FITLM_CUDA_KIVI_TILES=1.
    private readonly Dictionary<int, nint> _attendTilesKivi = [];

    /// <param name="heads">The model's query heads: a one-token attention is split over about three blocks per
    /// multiprocessor in all (flash-decoding), its scratch allocated here.</param>
    public ForwardKernels(CudaDevice device, int heads, Action<string>? log = null)
    {
        _device = device;
        var m = new KernelModule(device, "forward.cu", log);
        _addRmsNorm = m.Function("add_rmsnorm_q8");
        _addRmsNormLane = m.Function("add_rmsnorm_lane");
        _addBias = m.Function("add_bias");
        _add = m.Function("add");
        _softcap = m.Function("softcap");
        _gateAct = m.Function("gate_act");
        _ropeQk = m.Function("rope_qk");
        _copyColumns = m.Function("copy_columns");
        _kvStoreF32 = m.Function("kv_store_f32");
        _kvStoreF16 = m.Function("kv_store_f16");
        _attendF32 = m.Function("attend_f32");
        _attendF16 = m.Function("attend_f16");
        _kvStoreKivi = m.Function("kv_store_kivi");
        _kiviQuantize = m.Function("kivi_quantize");
        // FITLM_CUDA_KIVI_TILES=1 takes attend_kivi_tiles, which reads each quantized tile once, and a batch's tiled kernels
        // (attend_tile_kivi_h64, _h128): opt-in until a GPU run has checked them against the CPU (docs/cuda.md, "Not done").
        bool kiviTiles = Environment.GetEnvironmentVariable("FITLM_CUDA_KIVI_TILES") == "1";
        _attendKivi = m.Function(kiviTiles ? "attend_kivi_tiles" : "attend_kivi");
        if (kiviTiles)
            foreach (int width in TileHeadDims) _attendTilesKivi[width] = m.Function($"attend_tile_kivi_h{width}");
        _attendBatchF32 = m.Function("attend_batch_f32");
        _attendBatchF16 = m.Function("attend_batch_f16");
        _attendBatchKivi = m.Function("attend_batch_kivi");
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_ATTN_ROWS") != "0")
            foreach (int width in RowHeadDims)
            {
                _attendF16Rows[(true, width)] = m.Function($"attend_f16_h{width}");
                _attendF16Rows[(false, width)] = m.Function($"attend_batch_f16_h{width}");
            }
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_FUSED_ATTN") == "1")
        {
            _attendRope[(false, 0)] = m.Function("attend_rope_f32");
            _attendRope[(true, 0)] = m.Function("attend_rope_f16");
            if (_attendF16Rows.Count > 0)
                foreach (int width in RowHeadDims) _attendRope[(true, width)] = m.Function($"attend_rope_f16_h{width}");
        }
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_ATTN_TILES") != "0")
            foreach (int width in TileHeadDims)
            {
                _attendTiles[(false, width)] = m.Function($"attend_tile_f32_h{width}");
                _attendTiles[(true, width)] = m.Function($"attend_tile_f16_h{width}");
            }
        // Last, so a function the module lacks throws before anything is allocated.
        _splits = Math.Clamp((3 * device.Multiprocessors + heads - 1) / Math.Max(1, heads), 1, MaxSplits);
        _part = device.Allocate((long)heads * _splits * SplitBytes);
        _count = device.Allocate((long)heads * sizeof(int));
        CudaDevice.UploadTo<int>(_count.Pointer, new int[heads]); // the last split of each launch zeroes its count again
    }

    private static uint Blocks(long total) => (uint)((total + Threads - 1) / Threads);

    /// <summary>o = RMSNorm(x) ⊙ w over <paramref name="rows"/> rows of <paramref name="dim"/> (o may be x).</summary>
    public void RmsNorm(ulong x, ulong w, ulong o, int rows, int dim, float eps) => AddRmsNorm(x, 0, w, o, rows, dim, eps, null);

    /// <summary>
    /// x += y (rows of dim; none when <paramref name="y"/> is 0), then o = RMSNorm(x) ⊙ w, and o in q8_0 at
    /// <paramref name="quantized"/> when given: a decode step's residual add, next norm and activation quantization in
    /// one launch, with the separate kernels' arithmetic.
    /// </summary>
    public void AddRmsNorm(ulong x, ulong y, ulong w, ulong o, int rows, int dim, float eps, QuantizedX? quantized)
    {
        var (q, d, s) = quantized ?? default;
        void** args = stackalloc void*[] { &x, &y, &w, &o, &dim, &eps, &q, &d, &s };
        if (dim % 32 == 0 && dim <= LaneNormMaxDim) _device.Launch(_addRmsNormLane, (uint)rows, (uint)((dim / 32 + 31) / 32 * 32), 0, args);
        else _device.Launch(_addRmsNorm, (uint)rows, NormThreads(dim), 0, args);
    }

    /// <summary>Threads of add_rmsnorm_q8's block: a quarter of the row in whole warps, 32 to 1024.</summary>
    private static uint NormThreads(int dim) => (uint)Math.Clamp(((dim + 3) / 4 + 31) / 32 * 32, 32, 1024);

    /// <summary>x[i] += b[i mod cols] over <paramref name="total"/> elements.</summary>
    public void AddBias(ulong x, ulong b, int cols, int total)
    {
        void** args = stackalloc void*[] { &x, &b, &cols, &total };
        _device.Launch(_addBias, Blocks(total), Threads, 0, args);
    }

    /// <summary>x += y over <paramref name="total"/> elements.</summary>
    public void Add(ulong x, ulong y, int total)
    {
        void** args = stackalloc void*[] { &x, &y, &total };
        _device.Launch(_add, Blocks(total), Threads, 0, args);
    }

    /// <summary>x = c·tanh(x/c) over <paramref name="total"/> elements.</summary>
    public void Softcap(ulong x, float c, int total)
    {
        void** args = stackalloc void*[] { &x, &c, &total };
        _device.Launch(_softcap, Blocks(total), Threads, 0, args);
    }

    /// <summary>o[t] = act(g[t]) ⊙ u[t] for n rows of cols, each operand with its own row stride (in floats); also in q8_0 at <paramref name="quantized"/> when given ([n × cols]).</summary>
    public void GateAct(ulong g, long gStride, ulong u, long uStride, ulong o, long oStride, int cols, int n, int activation, QuantizedX? quantized = null)
    {
        var (q, d, s) = quantized ?? default;
        void** args = stackalloc void*[] { &g, &gStride, &u, &uStride, &o, &oStride, &cols, &n, &activation, &q, &d, &s };
        _device.Launch(_gateAct, Blocks((long)cols * n), Threads, 0, args);
    }

    /// <summary>RoPE of n rows of queries (<paramref name="heads"/> heads) and of keys (<paramref name="kvHeads"/>) in one launch.</summary>
    public void RopeQk(ulong q, ulong k, ulong cos, ulong sin, int n, int heads, int kvHeads, int headDim, int half, bool neox, ulong pos0)
    {
        int nx = neox ? 1 : 0;
        void** args = stackalloc void*[] { &q, &k, &cos, &sin, &n, &heads, &kvHeads, &headDim, &half, &nx, &pos0 };
        _device.Launch(_ropeQk, Blocks((long)n * (heads + kvHeads) * half), Threads, 0, args);
    }

    /// <summary>
    /// One token's RoPE (<see cref="RopeQk"/>), KV store (<see cref="KvStore"/>) and attention (<see cref="Attend"/>) in
    /// one launch, over a dense cache (FITLM_CUDA_FUSED_ATTN=1); false, with nothing queued, where that kernel is not
    /// loaded or the cache is KIVI's. q, k and v are the raw rows (after bias and norm), not rotated in place.
    /// </summary>
    public bool AttendRope(DeviceKvLayout kv, ulong q, ulong k, ulong v, ulong kCache, ulong vCache, ulong output, int heads, float scale,
        float cap, int window, ulong pos0, ulong cos, ulong sin, int half, bool neox, QuantizedX? quantized)
    {
        if (kv.IsKivi || _attendRope.Count == 0) return false;
        int headDim = kv.HeadDim, kvHeads = kv.KvHeads, splits = _splits, nx = neox ? 1 : 0;
        if (!(kv.Half && _attendRope.TryGetValue((true, headDim), out var f))) f = _attendRope[(kv.Half, 0)];
        var (q8, q8d, q8s) = quantized ?? default;
        ulong part = _part.Pointer, count = _count.Pointer;
        void** args = stackalloc void*[] { &q, &k, &v, &kCache, &vCache, &output, &heads, &kvHeads, &headDim, &scale, &cap, &window, &pos0,
            &q8, &q8d, &q8s, &splits, &part, &count, &cos, &sin, &half, &nx };
        _device.Launch(f, (uint)(heads * splits), 1, AttentionThreads, 0, args);
        return true;
    }

    /// <summary>dst[t][0..width) = src[t][offset..offset + width) for n rows (src rows srcWidth apart): Phi-3's fused Q|K|V split.</summary>
    public void CopyColumns(ulong src, int srcWidth, int offset, ulong dst, int width, int n)
    {
        void** args = stackalloc void*[] { &src, &srcWidth, &offset, &dst, &width, &n };
        _device.Launch(_copyColumns, Blocks((long)width * n), Threads, 0, args);
    }

    /// <summary>
    /// Writes n rows of keys and values into one layer's cache of one slot (keys at <paramref name="kCache"/>, values at
    /// <paramref name="vCache"/>, laid out as <paramref name="kv"/> says) at positions *pos0 + t; for KIVI, then quantizes
    /// the tiles the pass leaves wholly outside the window.
    /// </summary>
    public void KvStore(DeviceKvLayout kv, ulong k, ulong v, ulong kCache, ulong vCache, int n, ulong pos0)
    {
        int kvDim = kv.KvDim;
        if (!kv.IsKivi)
        {
            void** args = stackalloc void*[] { &k, &v, &kCache, &vCache, &n, &kvDim, &pos0 };
            _device.Launch(kv.Half ? _kvStoreF16 : _kvStoreF32, Blocks((long)n * kvDim), Threads, 0, args);
            return;
        }
        var (kr, vr) = kv.Rings(kCache, vCache);
        int ring = kv.RingTiles, residual = kv.Residual, bits = kv.Bits, kvHeads = kv.KvHeads, headDim = kv.HeadDim;
        void** store = stackalloc void*[] { &k, &v, &kr, &vr, &n, &kvDim, &ring, &pos0 };
        _device.Launch(_kvStoreKivi, Blocks((long)n * kvDim), Threads, 0, store);
        // At most n / 32 + 1 tiles leave the window in a pass of n rows; blocks past the pass's last return at once.
        void** quantize = stackalloc void*[] { &kr, &vr, &kCache, &vCache, &n, &kvDim, &kvHeads, &headDim, &ring, &residual, &bits, &pos0 };
        _device.Launch(_kiviQuantize, (uint)(n / DeviceKvLayout.Group + 2), (uint)kvHeads, 32, 0, quantize);
    }

    /// <summary>
    /// Attention of n query rows (positions *pos0 + t) over one layer's cache of one slot into out [n × heads·headDim],
    /// and in q8_0 at <paramref name="quantized"/> when given (headDim a multiple of 32). One token's attention is split
    /// over up to <see cref="MaxSplits"/> blocks a head (their partial softmaxes merged by the last); a batch's of at
    /// least <see cref="TileQueries"/> rows over a dense cache with heads of 64 or 128 dimensions is one block per head
    /// and <see cref="TileQueries"/> rows (attend_tile_*), else one per head and row (attend_batch_*).
    /// </summary>
    public void Attend(DeviceKvLayout kv, ulong q, ulong kCache, ulong vCache, ulong output, int n, int heads,
        float scale, float cap, int window, ulong pos0, QuantizedX? quantized = null)
    {
        int kvHeads = kv.KvHeads, headDim = kv.HeadDim;
        var (q8, q8d, q8s) = quantized ?? default;
        int splits = _splits;
        ulong part = _part.Pointer, count = _count.Pointer;
        bool one = n == 1; // attend_batch_* take the same arguments but the last three, which the launch then ignores
        uint grid = (uint)(one ? heads * splits : heads);
        if (!kv.IsKivi && n >= TileQueries && _attendTiles.TryGetValue((kv.Half, headDim), out var tiled))
        {
            void** args = stackalloc void*[] { &q, &kCache, &vCache, &output, &n, &heads, &kvHeads, &scale, &cap, &window, &pos0, &q8, &q8d, &q8s };
            _device.Launch(tiled, (uint)heads, (uint)((n + TileQueries - 1) / TileQueries), AttentionThreads, 0, args);
            return;
        }
        if (!kv.IsKivi)
        {
            var f = kv.Half && _attendF16Rows.TryGetValue((one, headDim), out var rows) ? rows
                : one ? (kv.Half ? _attendF16 : _attendF32) : (kv.Half ? _attendBatchF16 : _attendBatchF32);
            void** args = stackalloc void*[] { &q, &kCache, &vCache, &output, &heads, &kvHeads, &headDim, &scale, &cap, &window, &pos0, &q8, &q8d, &q8s, &splits, &part, &count };
            _device.Launch(f, grid, (uint)n, AttentionThreads, 0, args);
            return;
        }
        var (kr, vr) = kv.Rings(kCache, vCache);
        int ring = kv.RingTiles, residual = kv.Residual, bits = kv.Bits;
        if (n >= TileQueries && _attendTilesKivi.TryGetValue(headDim, out var kiviTiled))
        {
            void** args = stackalloc void*[] { &q, &kCache, &vCache, &kr, &vr, &output, &n, &heads, &kvHeads, &scale, &cap, &window, &ring, &residual, &bits,
                &pos0, &q8, &q8d, &q8s };
            _device.Launch(kiviTiled, (uint)heads, (uint)((n + TileQueries - 1) / TileQueries), AttentionThreads, 0, args);
            return;
        }
        void** kivi = stackalloc void*[] { &q, &kCache, &vCache, &kr, &vr, &output, &heads, &kvHeads, &headDim, &scale, &cap, &window, &ring, &residual, &bits, &pos0, &q8, &q8d, &q8s, &splits, &part, &count };
        _device.Launch(one ? _attendKivi : _attendBatchKivi, grid, (uint)n, AttentionThreads, 0, kivi);
    }

    public void Dispose()
    {
        _part.Dispose();
        _count.Dispose();
    }
}
