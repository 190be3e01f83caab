using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Backends.Cuda;

/// <summary>
/// The graph's operations as kernels (<see cref="IForwardBackend"/>; Transformer.ForwardBatch calls them in order). A
/// decode step is about ten launches a layer: the residual add, the next norm and the 8-bit quantization of its output
/// for the next product are one kernel (<see cref="ForwardKernels.AddRmsNorm"/>), as are the gated activation and
/// attention with theirs; Q, K and V (and gate and up) are one launch; RoPE of queries and keys is one, in
/// <see cref="AppendAndAttend"/>. A one-token pass of KV slot 0 that ends in logits is recorded once as a CUDA graph
/// (from the embedding's upload to the head) and replayed after: its operations then queue nothing, and what changes
/// between tokens (the position, the embedding) is uploaded before the replay.
/// </summary>
internal sealed partial class CudaBackend
{
    /// <summary>How the operations of the pass under way reach the GPU.</summary>
    private enum PassMode
    {
        /// <summary>Each operation launches its kernels.</summary>
        Direct,
        /// <summary>The stream is capturing: the operations' kernels become the decode graph, run at the head.</summary>
        Record,
        /// <summary>The decode graph holds the pass: the operations queue nothing, the head launches the graph.</summary>
        Replay,
    }

    /// <summary>One sequence's rows in a pass: its KV slot, its first row in the batch, how many rows.</summary>
    private record struct Segment(int Slot, int Row, int Count);

    /// <summary>The pass's runs of rows, one per sequence; _positions holds each one's first position (uploaded to _pos).</summary>
    private readonly Segment[] _segments;
    private readonly int[] _positions;
    private int _segmentCount, _rows;
    private PassMode _mode;
    private CudaGraph? _decodeGraph;
    private bool _graphs = Environment.GetEnvironmentVariable("FITLM_CUDA_GRAPHS") != "0";
    /// <summary>The activation whose q8_0 form for the next product is in the products' scratch (written with it), or 0.</summary>
    private ulong _quantized;
    /// <summary>The streamed layer whose slot the pass's products read now (begun at its first product), or -1.</summary>
    private int _streaming = -1;
    private ulong _streamingSlot;

    private bool Replaying => _mode == PassMode.Replay;

    public ActivationBuffer Allocate(int floats) => new DeviceActivation(floats == 0 ? null : Floats(floats), floats);

    private static ulong P(ActivationBuffer b) => ((DeviceActivation)b).Pointer;
    private static ulong At(ActivationBuffer b, long floats) => P(b) + (ulong)(floats * sizeof(float));
    private ulong V(float[] w) => _vectors[w].Pointer;
    private static DeviceWeight Handle(IMatrix w) => w as DeviceWeight ?? throw new ArgumentException($"'{w.Name}' is not a matrix in GPU memory");

    public void BeginPass(ForwardContext context, int n, int segments, bool logits)
    {
        if (n > _batch || segments > _batch) throw new ArgumentException($"{n} tokens do not fit a batch of {_batch}");
        _device.MakeCurrent();
        if (_mode == PassMode.Record) StopRecording(); // a pass that failed while recording left the stream capturing
        _mode = PassMode.Direct;
        // Every check before anything changes: slots, and KIVI's refusal to rewind into the tiles it has quantized.
        for (int s = 0; s < segments; s++)
        {
            var seg = context.Segments[s];
            int slot = seg.Kv is DeviceSequenceKv d ? d.Slot : throw new ArgumentException("a sequence on the GPU needs a KV slot of the device");
            if ((uint)slot >= (uint)Sequences) throw new ArgumentException($"KV slot {slot} is not one of the device's {Sequences}");
            if (_kv.RewindRefusal(seg.Pos, _slotLength[slot]) is { } why) throw new FitLMException(why);
        }
        for (int s = 0; s < segments; s++)
        {
            var seg = context.Segments[s];
            var store = (DeviceSequenceKv)seg.Kv;
            _segments[s] = new Segment(store.Slot, seg.Row, seg.Count);
            _positions[s] = seg.Pos;
            // Positions from Pos on are overwritten (a rewind, or a new sequence at 0).
            _slotLength[store.Slot] = store.Length = seg.Pos + seg.Count;
        }
        _segmentCount = segments;
        _rows = n;
        _quantized = 0;
        _pending = null;
        _folded = null;
        UploadPositions(_positions.AsSpan(0, segments));
        if (_graphs && n == 1 && segments == 1 && _segments[0].Slot == 0 && logits)
            _mode = _decodeGraph != null ? PassMode.Replay : PassMode.Record;
    }

    /// <summary>The rows' embeddings (scaled where the family scales them), read and dequantized on the host, uploaded to x; a recording starts after it.</summary>
    public void Embed(IMatrix table, ReadOnlySpan<int> tokens, ActivationBuffer x)
    {
        int dim = _c.Dim;
        var rows = EmbeddingRows(tokens.Length);
        for (int t = 0; t < tokens.Length; t++)
        {
            var row = rows.Slice(t * dim, dim);
            table.ReadRow(tokens[t], row);
            if (_c.EmbeddingScale != 1f) System.Numerics.Tensors.TensorPrimitives.Multiply(row, _c.EmbeddingScale, row);
        }
        UploadEmbeddings(P(x), tokens.Length);
        if (_mode != PassMode.Record) return;
        try { _device.BeginCapture(); }
        catch (FitLMException e)
        {
            // A driver that cannot capture still runs the same launches one by one.
            Console.Error.WriteLine($"warning: CUDA graph capture failed ({e.Message}); decoding without graphs");
            _graphs = false;
            _mode = PassMode.Direct;
        }
    }

    public void RmsNorm(ActivationBuffer x, int xRow, float[] w, ActivationBuffer o, int oRow, int n)
    {
        if (Replaying) return;
        Flush();
        int dim = _c.Dim;
        _quantized = 0;
        _kernels.RmsNorm(At(x, (long)xRow * dim), V(w), At(o, (long)oRow * dim), n, dim, _c.RmsEps);
    }

    public void AddRmsNorm(ActivationBuffer x, ActivationBuffer? residual, float[] w, ActivationBuffer o, int n, IMatrix? reader)
    {
        if (Replaying) return;
        if (residual != null && TryFold(P(x), P(residual), w, P(o), n, reader))
        {
            _quantized = 0;
            return;
        }
        Flush();
        var quantized = reader is DeviceWeight r ? QuantizedFor(r.Matrix, P(o), _c.Dim, n) : null;
        _kernels.AddRmsNorm(P(x), residual == null ? 0 : P(residual), V(w), P(o), n, _c.Dim, _c.RmsEps, quantized);
        _quantized = quantized != null ? P(o) : 0;
    }

    public void Multiply(IMatrix w, ActivationBuffer x, ActivationBuffer y, int n)
    {
        if (Replaying) return;
        Flush();
        var h = Handle(w);
        bool quantized = TakeQuantized(x);
        // The output projection's output is the residual a norm adds next: it may fold that norm (CudaBackend.FoldNorm.cs).
        bool output = h.Layer >= 0 && h.Layer < _c.Layers && ReferenceEquals(w, Weights.Layers[h.Layer].Wo);
        if (output && Defer(BlockOf(h.Layer), h.Matrix, P(x), P(y), n, quantized)) return;
        Multiply(BlockOf(h.Layer), h.Matrix, P(x), P(y), n, quantized);
    }

    public void MultiplyTogether(ActivationBuffer x, int n, IMatrix wa, ActivationBuffer ya, IMatrix wb, ActivationBuffer yb, IMatrix? wc = null, ActivationBuffer? yc = null)
    {
        if (Replaying) return;
        Flush();
        var a = Handle(wa);
        if (TakeFolded(P(x)) is { } folded)
        {
            _quantized = 0;
            MultiplyFolded(BlockOf(a.Layer), folded, a.Matrix, P(ya), Handle(wb).Matrix, P(yb), wc == null ? null : Handle(wc).Matrix, yc == null ? 0 : P(yc));
            return;
        }
        MultiplyTogether(BlockOf(a.Layer), P(x), n, TakeQuantized(x), a.Matrix, P(ya), Handle(wb).Matrix, P(yb),
            wc == null ? null : Handle(wc).Matrix, yc == null ? 0 : P(yc));
    }

    public void SplitQkv(ActivationBuffer qkv, ActivationBuffer q, ActivationBuffer k, ActivationBuffer v, int n)
    {
        if (Replaying) return;
        Flush();
        var c = _c;
        int width = c.QDim + 2 * c.KvDim;
        _quantized = 0;
        _kernels.CopyColumns(P(qkv), width, 0, P(q), c.QDim, n);
        _kernels.CopyColumns(P(qkv), width, c.QDim, P(k), c.KvDim, n);
        _kernels.CopyColumns(P(qkv), width, c.QDim + c.KvDim, P(v), c.KvDim, n);
    }

    /// <summary>Bias and Q norm of the rows; RoPE comes with the keys' in <see cref="AppendAndAttend"/> (one launch for both).</summary>
    public void FinishQueries(TransformerLayer layer, ActivationBuffer q, int row, int n, int pos)
    {
        if (Replaying) return;
        Flush();
        _quantized = 0;
        ulong rows = At(q, (long)row * _c.QDim);
        if (layer.Bq != null) _kernels.AddBias(rows, V(layer.Bq), _c.QDim, n * _c.QDim);
        if (layer.QNorm != null) QkNorm(rows, V(layer.QNorm), _c.Heads, n);
    }

    /// <summary>
    /// The segment's keys finished (bias, K norm), RoPE of its queries and keys at its positions, its rows into its KV
    /// slot, attention over that slot; the output is quantized as it is written when the output projection takes q8_0.
    /// </summary>
    public void AppendAndAttend(int layer, ForwardContext context, in PassSegment segment)
    {
        if (Replaying) return;
        Flush();
        var c = _c;
        var w = Weights.Layers[layer];
        var d = _layers[layer];
        int s = SegmentAt(segment.Row);
        var (slot, row, m) = _segments[s];
        ulong q = At(context.Q, (long)row * c.QDim), k = At(context.K, (long)row * c.KvDim), v = At(context.V, (long)row * c.KvDim);
        if (w.Bk != null) _kernels.AddBias(k, V(w.Bk), c.KvDim, m * c.KvDim);
        if (w.Bv != null) _kernels.AddBias(v, V(w.Bv), c.KvDim, m * c.KvDim);
        if (w.KNorm != null) QkNorm(k, V(w.KNorm), c.KvHeads, m);
        ulong kc = d.KCache.Pointer + (ulong)(slot * _kv.KeyBytes), vc = d.VCache.Pointer + (ulong)(slot * _kv.ValueBytes);
        ulong pos = _pos.Pointer + (ulong)(sizeof(int) * s);
        var r = _ropes[w.Rope];
        var attended = c.HeadDim % 32 == 0 ? QuantizedFor(Handle(w.Wo).Matrix, P(context.Xb), c.QDim, _rows) : null;
        ulong output = At(context.Xb, (long)row * c.QDim);
        if (m == 1 && _kernels.AttendRope(_kv, q, k, v, kc, vc, output, c.Heads, c.KvShape.Scale, c.AttentionSoftcap, d.Window, pos,
                r.Cos.Pointer, r.Sin.Pointer, r.Half, r.Neox, attended?.At(row, c.QDim)))
        {
            _quantized = attended != null ? P(context.Xb) : 0;
            return;
        }
        _kernels.RopeQk(q, k, r.Cos.Pointer, r.Sin.Pointer, m, c.Heads, c.KvHeads, c.HeadDim, r.Half, r.Neox, pos);
        _kernels.KvStore(_kv, k, v, kc, vc, m, pos);
        _kernels.Attend(_kv, q, kc, vc, output, m, c.Heads, c.KvShape.Scale, c.AttentionSoftcap, d.Window, pos,
            attended?.At(row, c.QDim));
        _quantized = attended != null ? P(context.Xb) : 0; // every segment writes its rows' q8_0: the next product is Wo over all of them
    }

    /// <summary>The pass's segment whose rows start at <paramref name="row"/>.</summary>
    private int SegmentAt(int row)
    {
        for (int s = 0; s < _segmentCount; s++)
            if (_segments[s].Row == row) return s;
        throw new ArgumentException($"no segment of the pass starts at row {row}");
    }

    public void Add(ActivationBuffer x, ActivationBuffer y, int n)
    {
        if (Replaying) return;
        Flush();
        _quantized = 0;
        _kernels.Add(P(x), P(y), n * _c.Dim);
    }

    /// <summary>down(act(gate(x)) ⊙ up(x)): gate and up in one launch (or Phi-3's fused product), the activation writing its output in q8_0 for down where down takes it.</summary>
    public void FeedForward(IFeedForward ffn, ActivationBuffer x, ActivationBuffer y, int n, ActivationBuffer hb, ActivationBuffer hb2)
    {
        if (Replaying) return;
        Flush();
        var f = ffn as DeviceFeedForward ?? throw new ArgumentException("the feed-forward block is not one in GPU memory");
        ulong block = BlockOf(f.Layer);
        var folded = TakeFolded(P(x));
        bool quantized = TakeQuantized(x);
        var down = f.Down.Matrix;
        int act = (int)_c.Activation;
        if (f.GateUp is { } gu)
        {
            int width = gu.Rows / 2;
            Multiply(block, gu.Matrix, P(x), P(hb), n, quantized);
            var activated = QuantizedFor(down, P(hb2), width, n);
            _kernels.GateAct(P(hb), 2 * width, At(hb, width), 2 * width, P(hb2), width, width, n, act, activated);
            Multiply(block, down, P(hb2), P(y), n, activated != null);
        }
        else
        {
            int width = f.Gate!.Rows;
            var (gate, up) = (f.Gate.Matrix, f.Up!.Matrix);
            if (n == 1 && gate.Type == up.Type && _mv.CanFuseAct(gate.Type, width, gate.Cols, down.Type))
            {
                // Gate, up and the activation in one launch (FITLM_CUDA_FUSED_ACT=1, CudaMatVec.Act.cs); down reads its q8_0.
                var activatedQ8 = _mv.GateUpAct(gate.Type, gate.Cols, P(x), quantized, folded, block + (ulong)gate.Offset, block + (ulong)up.Offset, width, act, P(hb));
                if (!Defer(block, down, P(hb), P(y), n, sameInput: false, activatedQ8)) Multiply(block, down, P(hb), P(y), n, input: activatedQ8);
                EndFeedForward(f.Layer);
                return;
            }
            if (folded is { } norm) MultiplyFolded(block, norm, f.Gate.Matrix, P(hb), f.Up!.Matrix, P(hb2), null, 0);
            else MultiplyTogether(block, P(x), n, quantized, f.Gate.Matrix, P(hb), f.Up!.Matrix, P(hb2));
            var activated = QuantizedFor(down, P(hb), width, n);
            _kernels.GateAct(P(hb), width, P(hb2), width, P(hb), width, width, n, act, activated);
            // Its output is the residual the next layer's norm adds: it may fold that norm (CudaBackend.FoldNorm.cs).
            if (!Defer(block, down, P(hb), P(y), n, activated != null)) Multiply(block, down, P(hb), P(y), n, activated != null);
        }
        EndFeedForward(f.Layer);
    }

    /// <summary>The layer's last product is queued: a streamed layer's slot is free once it has run.</summary>
    private void EndFeedForward(int layer)
    {
        if (_layers[layer].StreamIndex is >= 0 and var j)
        {
            _streamer!.End(j);
            _streaming = -1;
        }
    }

    /// <summary>
    /// The head's product (and soft-cap) over the normed rows, into the host's logits. A recording pass ends here: the
    /// graph is made and launched, as a replayed pass's is.
    /// </summary>
    public void Logits(IMatrix output, ActivationBuffer x, int n, Span<float> logits)
    {
        if (!Replaying)
        {
            Flush();
            _quantized = 0;
            var head = Handle(output);
            Multiply(BlockOf(head.Layer), head.Matrix, P(x), _logits.Pointer, n);
            if (_c.FinalSoftcap > 0) _kernels.Softcap(_logits.Pointer, _c.FinalSoftcap, n * _c.Vocab);
        }
        if (_mode == PassMode.Record)
        {
            try { _decodeGraph = _device.EndCapture(); }
            catch (FitLMException e)
            {
                Console.Error.WriteLine($"warning: CUDA graph capture failed ({e.Message}); decoding without graphs");
                _graphs = false;
                _mode = PassMode.Direct;
                throw new PassAbandonedException(e.Message);
            }
        }
        if (_mode != PassMode.Direct) _decodeGraph!.Launch();
        _mode = PassMode.Direct;
        DownloadLogits(logits[..(n * _c.Vocab)]);
    }

    public void Read(ActivationBuffer x, int n, Span<float> destination)
    {
        Flush();
        CudaDevice.DownloadFrom(P(x), destination[..(n * _c.Dim)]);
    }

    /// <summary>Ends a capture that a failed pass left open, keeping nothing of it.</summary>
    private void StopRecording()
    {
        _mode = PassMode.Direct;
        _device.CancelCapture();
    }

    /// <summary>True once, for the product right after the operation that wrote <paramref name="x"/> with its q8_0 form.</summary>
    private bool TakeQuantized(ActivationBuffer x)
    {
        bool ready = _quantized != 0 && _quantized == P(x);
        _quantized = 0;
        return ready;
    }

    /// <summary>The device address of layer <paramref name="layer"/>'s block: resident, the head's, or its streaming slot (begun at the layer's first product).</summary>
    private ulong BlockOf(int layer)
    {
        if (layer == DeviceWeight.HeadLayer) return _headBytes.Pointer;
        var d = _layers[layer];
        if (d.StreamIndex < 0) return d.Resident!.Pointer;
        if (_streaming != layer)
        {
            _streamingSlot = _streamer!.Begin(d.StreamIndex);
            _streaming = layer;
        }
        return _streamingSlot;
    }

    /// <summary>Y = W·X for n rows, W at its offset in the block at <paramref name="block"/> (resident, or a slot).</summary>
    /// <remarks><paramref name="sameInput"/>: x's quantized form is already in the scratch (the previous product's input,
    /// or written there by the kernel that wrote x: <see cref="CudaMatVec.FusedTarget"/>).</remarks>
    /// <param name="input">x's q8_0 where the kernel that wrote x put it (<see cref="CudaMatVec.GateUpAct"/>), else null.</param>
    private void Multiply(ulong block, DeviceMatrix w, ulong x, ulong y, int n, bool sameInput = false, QuantizedX? input = null)
    {
        if (UsesGemm(w, n))
            _gemm!.Multiply(w.Type, w.Tensor.Type, block + (ulong)w.Offset, w.RowBytes, w.Rows, w.Cols, x, y, n);
        else _mv.Multiply(w.Type, block + (ulong)w.Offset, w.RowBytes, w.Rows, w.Cols, x, y, n, sameInput, input);
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

    /// <summary>Per-head norm of n rows of q or k (Qwen3, Gemma 3), or over each whole row (OLMoE).</summary>
    private void QkNorm(ulong rows, ulong w, int heads, int n)
    {
        if (_c.QkNormWholeRow) _kernels.RmsNorm(rows, w, rows, n, heads * _c.HeadDim, _c.RmsEps);
        else _kernels.RmsNorm(rows, w, rows, n * heads, _c.HeadDim, _c.RmsEps);
    }
}

/// <summary>A pass's activations in GPU memory (<see cref="CudaBackend.Allocate"/>); an empty one has no memory.</summary>
internal sealed class DeviceActivation(DeviceBuffer? buffer, int floats) : ActivationBuffer
{
    public ulong Pointer => buffer?.Pointer ?? 0;
    public override int Length => floats;
}
