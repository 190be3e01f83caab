using FitLM.KvCache;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Model;

/// <summary>
/// A transformer made with a device (<see cref="IDeviceBackend"/>, the CUDA backend's seam) runs the same graph as on
/// the CPU with the device as its backend, after the same checks: one sequence in KV slot 0, or several in one batched
/// pass, each in a slot of its own; changing the KV type refuses with a line that names --device cpu. A recording fake
/// stands in for the GPU (tests/gpu.sh runs the real one): it writes each logits row as the slot and position of the
/// row it was computed from, so the tests see which rows reached the head.
/// </summary>
public class DeviceBackendTests
{
    private static ModelConfig Config() => new()
    {
        Architecture = "llama", Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16, FfnDim = 128, Vocab = 50, RopeDims = 16,
    };

    /// <summary>Weights as the device hands them to the graph: matrices that only name themselves, vectors the fake can name.</summary>
    private sealed class NamedWeights(ModelConfig c) : IWeightProvider
    {
        public readonly Dictionary<float[], string> VectorNames = new(ReferenceEqualityComparer.Instance);

        public IMatrix Matrix(string name) => new NamedMatrix(name);
        public float[] Vector(string name)
        {
            var v = new float[name.Contains("attn_k", StringComparison.Ordinal) || name.Contains("attn_v", StringComparison.Ordinal) ? c.KvDim : c.Dim];
            VectorNames[v] = name;
            return v;
        }
        public bool Has(string name) => name != "rope_freqs.weight";
        public long ResidentBytes => 0;
        public IFeedForward FeedForward(int layer, ModelConfig config) => new NamedFeedForward(layer);
        public void Dispose() { }
    }

    private sealed class NamedMatrix(string name) : IMatrix
    {
        public string Name => name;
        public int Rows => 0;
        public int Cols => 0;
        public GgmlType Type => GgmlType.F32;
        public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n) => throw new InvalidOperationException("on the device");
        public void ReadRow(int row, Span<float> dst) => throw new InvalidOperationException("on the device");
    }

    private sealed class NamedFeedForward(int layer) : IFeedForward
    {
        public int Layer => layer;
        public IMatrix? Input => new NamedMatrix($"blk.{layer}.ffn_gate.weight");
        public void Forward(ReadOnlySpan<float> x, Span<float> y, int n, Span<float> hb, Span<float> hb2) => throw new InvalidOperationException("on the device");
    }

    private sealed class Named(string name) : ActivationBuffer
    {
        public string Name => name;
        public override int Length => 0;
    }

    private sealed class RecordingBackend : IDeviceBackend
    {
        private static readonly string[] BufferNames = ["X", "Xb", "Xb2", "Q", "K", "V", "Hb", "Hb2", "Qkv"];
        private readonly NamedWeights _names;
        private readonly List<(int Slot, int Pos, int Row, int Count)> _segments = [];
        /// <summary>Per row of Xb: the (slot, position) of the X row the output norm read into it.</summary>
        private readonly Dictionary<int, (int Slot, int Pos)> _normed = [];
        private int _allocated;

        public readonly List<string> Ops = [];
        public readonly List<(int N, (int Slot, int Pos, int Count)[] Segments, bool Logits)> Passes = [];
        public bool AbandonNextRecording;
        /// <summary>Like KIVI's: a pass starting below this position is refused before anything changes.</summary>
        public int RefuseRewindBelow;

        public RecordingBackend(ModelConfig c)
        {
            _names = new NamedWeights(c);
            Weights = new TransformerWeights(c, _names, 32);
        }

        public TransformerWeights Weights { get; }
        public string Description => "fake device";
        public long DeviceBytes => 0;
        public long StreamedBytesPerToken => 0;
        public long FileBytesPerToken => 0;
        public double HostToDeviceBandwidth() => 0;
        public double MemoryBandwidth() => 0;
        public int Sequences => 3;
        public long SequenceKvBytes => 1000;
        public bool Disposed;
        public void Dispose() => Disposed = true;

        private static string N(ActivationBuffer? b) => b is Named n ? n.Name : "-";
        private string V(float[] w) => _names.VectorNames[w];

        public ActivationBuffer Allocate(int floats) => new Named(BufferNames[_allocated++]);

        public void BeginPass(ForwardContext context, int n, int segments, bool logits)
        {
            if (context.Segments[0].Pos < RefuseRewindBelow) throw new FitLMException("a rewind into quantized tiles");
            _segments.Clear();
            _normed.Clear();
            for (int s = 0; s < segments; s++)
            {
                var seg = context.Segments[s];
                var store = (DeviceSequenceKv)seg.Kv;
                _segments.Add((store.Slot, seg.Pos, seg.Row, seg.Count));
                store.Length = seg.Pos + seg.Count;
            }
            Passes.Add((n, [.. _segments.Select(s => (s.Slot, s.Pos, s.Count))], logits));
            Ops.Add("BeginPass");
        }

        public void Embed(IMatrix table, ReadOnlySpan<int> tokens, ActivationBuffer x) => Ops.Add($"Embed {table.Name} {string.Join(',', tokens.ToArray())}");

        public void RmsNorm(ActivationBuffer x, int xRow, float[] w, ActivationBuffer o, int oRow, int n)
        {
            Ops.Add($"RmsNorm {N(x)} {V(w)} {N(o)}");
            if (V(w) != "output_norm.weight") return;
            for (int t = 0; t < n; t++)
            {
                int r = xRow + t;
                var seg = _segments.Single(s => r >= s.Row && r < s.Row + s.Count);
                _normed[oRow + t] = (seg.Slot, seg.Pos + r - seg.Row);
            }
        }

        public void AddRmsNorm(ActivationBuffer x, ActivationBuffer? residual, float[] w, ActivationBuffer o, int n, IMatrix? reader) =>
            Ops.Add($"AddRmsNorm {N(x)}+{N(residual)} {V(w)} {N(o)} for {reader?.Name}");
        public void Multiply(IMatrix w, ActivationBuffer x, ActivationBuffer y, int n) => Ops.Add($"Multiply {w.Name} {N(x)} {N(y)}");
        public void MultiplyTogether(ActivationBuffer x, int n, IMatrix wa, ActivationBuffer ya, IMatrix wb, ActivationBuffer yb, IMatrix? wc = null, ActivationBuffer? yc = null) =>
            Ops.Add($"MultiplyTogether {N(x)} {wa.Name} {N(ya)} {wb.Name} {N(yb)} {wc?.Name} {N(yc)}");
        public void SplitQkv(ActivationBuffer qkv, ActivationBuffer q, ActivationBuffer k, ActivationBuffer v, int n) => Ops.Add("SplitQkv");
        public void FinishQueries(TransformerLayer layer, ActivationBuffer q, int row, int n, int pos) => Ops.Add($"FinishQueries {row} {n} {pos}");
        public void AppendAndAttend(int layer, ForwardContext context, in PassSegment segment) => Ops.Add($"AppendAndAttend {layer} {segment.Row}");
        public void Add(ActivationBuffer x, ActivationBuffer y, int n) => Ops.Add($"Add {N(x)} {N(y)}");
        public void FeedForward(IFeedForward ffn, ActivationBuffer x, ActivationBuffer y, int n, ActivationBuffer hb, ActivationBuffer hb2) =>
            Ops.Add($"FeedForward {((NamedFeedForward)ffn).Layer} {N(x)} {N(y)}");

        public void Logits(IMatrix output, ActivationBuffer x, int n, Span<float> logits)
        {
            Ops.Add($"Logits {output.Name} {n}");
            if (AbandonNextRecording)
            {
                AbandonNextRecording = false;
                throw new PassAbandonedException("recording failed");
            }
            for (int k = 0; k < n; k++) logits[k * 50] = 100 * _normed[k].Slot + _normed[k].Pos; // the row the head read: slot and position
        }

        public void Read(ActivationBuffer x, int n, Span<float> destination)
        {
            for (int t = 0; t < n; t++) destination.Slice(t * 64, 64).Fill(100 * _normed[t].Slot + _normed[t].Pos);
        }
    }

    /// <summary>A transformer on a recording device: 2 layers, a context of 32, batches of 8.</summary>
    private static (RecordingBackend Device, Transformer Tf) OnDevice(KvCacheOptions? kv = null)
    {
        var device = new RecordingBackend(Config());
        return (device, new Transformer(device, maxContext: 32, maxBatch: 8, kv));
    }

    /// <summary>A pass as BeginPass saw it: rows, then each segment's slot, first position and rows.</summary>
    private static string Describe((int N, (int Slot, int Pos, int Count)[] Segments, bool Logits) pass) =>
        $"{pass.N} rows: {string.Join(", ", pass.Segments.Select(s => $"slot {s.Slot} at {s.Pos} ×{s.Count}"))}{(pass.Logits ? ", logits" : "")}";

    [Fact]
    public void ADecodeStep_IsTheGraphsOperationsInOrder_WithTheNextProductNamedAtEachNorm()
    {
        var (device, tf) = OnDevice();
        var logits = new float[50];
        tf.Forward([7], 5, logits, 0);
        string[] layer(int l, string residual) =>
        [
            $"AddRmsNorm X+{residual} blk.{l}.attn_norm.weight Xb for blk.{l}.attn_q.weight",
            $"MultiplyTogether Xb blk.{l}.attn_q.weight Q blk.{l}.attn_k.weight K blk.{l}.attn_v.weight V",
            "FinishQueries 0 1 5",
            $"AppendAndAttend {l} 0",
            $"Multiply blk.{l}.attn_output.weight Xb Xb2",
            $"AddRmsNorm X+Xb2 blk.{l}.ffn_norm.weight Xb for blk.{l}.ffn_gate.weight",
            $"FeedForward {l} Xb Xb2",
        ];
        Assert.Equal(["BeginPass", "Embed token_embd.weight 7", .. layer(0, "-"), .. layer(1, "Xb2"), "Add X Xb2", "RmsNorm X output_norm.weight Xb",
            "Logits output.weight 1"], device.Ops);
        Assert.Equal("1 rows: slot 0 at 5 ×1, logits", Describe(device.Passes[0]));
        Assert.Equal(5f, logits[0]);
    }

    [Fact]
    public void Forward_RunsOnTheDevice_InSlotZero()
    {
        var (device, tf) = OnDevice();
        var logits = new float[2 * 50];
        tf.Forward([1, 2, 3], 5, logits, 1);
        var pass = Assert.Single(device.Passes);
        Assert.Equal("3 rows: slot 0 at 5 ×3, logits", Describe(pass));
        Assert.Contains("Embed token_embd.weight 1,2,3", device.Ops);
        Assert.Equal([6f, 7f], [logits[0], logits[50]]); // rows 1 and 2: positions 6 and 7
        Assert.Same(device, tf.Device);
        Assert.Equal(0, tf.Kv.Length); // the CPU store holds nothing
        Assert.Equal(8, tf.CachedPositions); // slot 0's: what a chat's next turn reuses
    }

    [Fact]
    public void LongInputs_ReachTheDeviceInBatches_WithTheirPositionsAndLogitRows()
    {
        var (device, tf) = OnDevice();
        var logits = new float[10 * 50];
        tf.Forward(Enumerable.Range(1, 20).ToArray(), 5, logits, 10); // logits of rows 10..19
        Assert.Equal([(8, 5, false), (8, 13, true), (4, 21, true)], device.Passes.Select(p => (p.N, p.Segments.Single().Pos, p.Logits)));
        Assert.Equal(15f, logits[0]);       // row 10 = position 15
        Assert.Equal(21f, logits[6 * 50]);  // row 16 = position 21
        Assert.Equal(25, tf.CachedPositions);
    }

    [Fact]
    public void Forward_ChecksTokensAndContext_BeforeTheDevice()
    {
        var (device, tf) = OnDevice();
        var logits = new float[50];
        Assert.Contains("outside the vocabulary", Assert.Throws<FitLMException>(() => tf.Forward([50], 0, logits, 0)).Message, StringComparison.Ordinal);
        Assert.Contains("context overflow", Assert.Throws<FitLMException>(() => tf.Forward([1, 2], 31, logits, 1)).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => tf.Forward([1, 2], 0, logits, 0)); // two rows of logits do not fit one
        Assert.Empty(device.Ops);
    }

    [Fact]
    public void BatchedPass_GivesEachSequenceItsOwnDeviceSlot()
    {
        var (device, tf) = OnDevice();
        var a = tf.CreateSequenceKv();
        var b = tf.CreateSequenceKv();
        Assert.Equal(1000, a.Bytes);
        var logits = new float[2 * 50];
        tf.Forward([new SequenceSlice(a, new[] { 1, 2, 3 }, 0, true), new SequenceSlice(b, new[] { 4 }, 6, false), new SequenceSlice(tf.CreateSequenceKv(), new[] { 5 }, 2, true)], logits);
        var pass = Assert.Single(device.Passes);
        Assert.Equal("5 rows: slot 0 at 0 ×3, slot 1 at 6 ×1, slot 2 at 2 ×1, logits", Describe(pass));
        Assert.Equal(2f, logits[0]);          // slot 0's last row (position 2) first
        Assert.Equal(202f, logits[50]);       // then slot 2's (slot 1 asked for none)
        Assert.Equal(3, a.Length);
        Assert.Equal(7, b.Length);
        // Three slots: a fourth sequence waits for one; disposing a store frees its slot.
        Assert.Contains("KV slots", Assert.Throws<FitLMException>(() => tf.CreateSequenceKv()).Message, StringComparison.Ordinal);
        b.Dispose();
        var c = tf.CreateSequenceKv();
        tf.Forward([new SequenceSlice(c, new[] { 7 }, 0, true)], logits);
        Assert.Equal(1, device.Passes[^1].Segments.Single().Slot);
        // A CPU store is not a device slot; the single-sequence pass may not write slot 0 while a sequence holds it.
        int passes = device.Passes.Count;
        Assert.Throws<ArgumentException>(() => tf.Forward([new SequenceSlice(tf.KvStores.Create(), new[] { 1 }, 0, true)], logits));
        Assert.Throws<InvalidOperationException>(() => tf.Forward([1], 0, logits, 0));
        Assert.Equal(passes, device.Passes.Count);
        a.Dispose();
        tf.Forward([1], 0, logits, 0);
        Assert.Equal(0, device.Passes[^1].Segments.Single().Slot);
    }

    [Fact]
    public void KvOptions_NameTheDevicesCacheType()
    {
        // /metrics and /budget read KvStores.Options: on a device it is the type the device's cache holds, not f32.
        var (_, tf) = OnDevice(new KvCacheOptions { Type = KvType.F16 });
        Assert.Equal(KvType.F16, tf.KvStores.Options.Type);
        Assert.Equal(KvType.F32, OnDevice().Tf.KvStores.Options.Type);
    }

    [Fact]
    public void HiddenStates_ComeFromTheSequencesSlot_InBatches()
    {
        var (device, tf) = OnDevice();
        _ = tf.CreateSequenceKv();
        var kv = tf.CreateSequenceKv();
        var hidden = new float[10 * 64];
        tf.ForwardHidden(kv, Enumerable.Range(1, 10).ToArray(), 0, hidden);
        Assert.Equal([(1, 0, 8, false), (1, 8, 2, false)], device.Passes.Select(p => (p.Segments.Single().Slot, p.Segments.Single().Pos, p.N, p.Logits)));
        Assert.Equal(100f, hidden[0]);            // slot 1, position 0
        Assert.Equal(109f, hidden[9 * 64 + 63]);  // slot 1, position 9
        Assert.Equal(10, kv.Length);
    }

    [Fact]
    public void APassTheDeviceAbandons_RunsAgainOnce()
    {
        var (device, tf) = OnDevice();
        device.AbandonNextRecording = true;
        var logits = new float[50];
        tf.Forward([7], 3, logits, 0);
        Assert.Equal(2, device.Passes.Count);
        Assert.Equal(3f, logits[0]);
        Assert.Equal(4, tf.CachedPositions);
    }

    [Fact]
    public void ARewindTheDeviceRefuses_LeavesTheSlotsPositions()
    {
        var (device, tf) = OnDevice();
        var logits = new float[50];
        tf.Forward([1, 2, 3, 4, 5, 6], 0, logits, 5);
        device.RefuseRewindBelow = 6;
        Assert.Throws<FitLMException>(() => tf.Forward([7], 2, logits, 0));
        Assert.Equal(6, tf.CachedPositions); // what the device still holds
        tf.Forward([7], 6, logits, 0);
        Assert.Equal(7, tf.CachedPositions);
    }

    [Fact]
    public void ChangingTheKvType_RefusesNamingCpu()
    {
        var (_, tf) = OnDevice();
        var change = Assert.Throws<FitLMException>(() => tf.ChangeKv(new KvCacheOptions { Type = KvType.F16 }));
        Assert.Contains("--device cpu", change.Message, StringComparison.Ordinal);
        Assert.Contains("fake device", change.Message, StringComparison.Ordinal);
    }
}
