using FitLM.KvCache;
using FitLM.Model;
using Xunit;

namespace FitLM.Tests.Model;

/// <summary>
/// A transformer made with an <see cref="IDeviceForward"/> (the CUDA backend's seam) hands its passes to the device
/// after the same checks as on the CPU: one sequence in KV slot 0, or several in one batched pass, each in a slot of
/// its own; changing the KV type refuses with a line that names --device cpu. A recording fake stands in for the GPU (tests/gpu.sh runs the real one).
/// </summary>
public class DeviceForwardTests
{
    private sealed class RecordingDevice : IDeviceForward
    {
        public readonly List<(int[] Tokens, int Pos, int LogitsFrom)> Calls = [];
        public string Description => "fake device";
        public long DeviceBytes => 0;
        public double MemoryBandwidth() => 0;
        public long StreamedBytesPerToken => 0;
        public int Length { get; private set; }
        public double HostToDeviceBandwidth() => 0;
        public bool Disposed;

        public void Forward(ReadOnlySpan<int> tokens, int pos, Span<float> logits, int logitsFrom)
        {
            Calls.Add((tokens.ToArray(), pos, logitsFrom));
            Length = pos + tokens.Length;
            for (int i = 0; i < logits.Length; i++) logits[i] = pos + i; // recognizable: the device wrote them
        }

        public readonly List<(int Slot, int[] Tokens, int Pos, bool WantLogits)> Slices = [];
        public readonly List<(int Slot, int[] Tokens, int Pos)> Hidden = [];
        public int Sequences => 3;
        public long SequenceKvBytes => 1000;

        public void Forward(ReadOnlySpan<DeviceSlice> slices, Span<float> logits)
        {
            int k = 0;
            foreach (var s in slices)
            {
                Slices.Add((s.Slot, s.Tokens.ToArray(), s.Pos, s.WantLogits));
                if (s.WantLogits) logits[50 * k++] = 100 * s.Slot + s.Pos + s.Tokens.Length; // recognizable per slice
            }
        }

        public void ForwardHidden(int slot, ReadOnlySpan<int> tokens, int pos, Span<float> hidden)
        {
            Hidden.Add((slot, tokens.ToArray(), pos));
            hidden.Fill(slot);
        }

        public void Dispose() => Disposed = true;
    }

    private static ModelConfig Config() => new()
    {
        Architecture = "llama", Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, HeadDim = 16, FfnDim = 128, Vocab = 50, RopeDims = 16,
    };

    [Fact]
    public void Forward_GoesToTheDevice_WithTheCallersArguments()
    {
        var device = new RecordingDevice();
        var tf = new Transformer(Config(), device, maxContext: 32, maxBatch: 8);
        var logits = new float[2 * 50];
        tf.Forward([1, 2, 3], 5, logits, 1);
        var call = Assert.Single(device.Calls);
        Assert.Equal([1, 2, 3], call.Tokens);
        Assert.Equal(5, call.Pos);
        Assert.Equal(1, call.LogitsFrom);
        Assert.Equal(5f, logits[0]);
        Assert.Same(device, tf.Device);
        Assert.Equal(0, tf.Kv.Length); // the CPU store holds nothing
        Assert.Equal(8, tf.CachedPositions); // the device's: what a chat's next turn reuses
    }

    [Fact]
    public void LongInputs_ReachTheDeviceInBatches_WithTheirPositionsAndLogitRows()
    {
        var device = new RecordingDevice();
        var tf = new Transformer(Config(), device, maxContext: 32, maxBatch: 8);
        var logits = new float[10 * 50];
        tf.Forward(Enumerable.Range(1, 20).ToArray(), 5, logits, 10); // logits of rows 10..19
        Assert.Equal([(0, 5, 8), (8, 13, 2), (16, 21, 0)], device.Calls.Select(c => (c.Tokens[0] - 1, c.Pos, c.LogitsFrom)));
        Assert.Equal([8, 8, 4], device.Calls.Select(c => c.Tokens.Length));
        Assert.Equal(13f + 0, logits[0]);       // row 10 = the second batch's row 2: its span starts there
        Assert.Equal(21f + 0, logits[6 * 50]);  // row 16 = the third batch's row 0
        Assert.Equal(25, tf.CachedPositions);
    }

    [Fact]
    public void Forward_ChecksTokensAndContext_BeforeTheDevice()
    {
        var device = new RecordingDevice();
        var tf = new Transformer(Config(), device, maxContext: 32, maxBatch: 8);
        var logits = new float[50];
        Assert.Contains("outside the vocabulary", Assert.Throws<FitLMException>(() => tf.Forward([50], 0, logits, 0)).Message, StringComparison.Ordinal);
        Assert.Contains("context overflow", Assert.Throws<FitLMException>(() => tf.Forward([1, 2], 31, logits, 1)).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => tf.Forward([1, 2], 0, logits, 0)); // two rows of logits do not fit one
        Assert.Empty(device.Calls);
    }

    [Fact]
    public void BatchedPass_GivesEachSequenceItsOwnDeviceSlot()
    {
        var device = new RecordingDevice();
        var tf = new Transformer(Config(), device, maxContext: 32, maxBatch: 8);
        var a = tf.CreateSequenceKv();
        var b = tf.CreateSequenceKv();
        Assert.Equal(1000, a.Bytes);
        var logits = new float[2 * 50];
        tf.Forward([new SequenceSlice(a, new[] { 1, 2, 3 }, 0, true), new SequenceSlice(b, new[] { 4 }, 6, false), new SequenceSlice(tf.CreateSequenceKv(), new[] { 5 }, 2, true)], logits);
        Assert.Equal([(0, 0, 3, true), (1, 6, 1, false), (2, 2, 1, true)], device.Slices.Select(s => (s.Slot, s.Pos, s.Tokens.Length, s.WantLogits)));
        Assert.Equal(3f, logits[0]);          // slot 0's row of logits first
        Assert.Equal(203f, logits[50]);       // then slot 2's (slot 1 asked for none)
        Assert.Equal(3, a.Length);
        Assert.Equal(7, b.Length);
        // Three slots: a fourth sequence waits for one; disposing a store frees its slot.
        Assert.Contains("KV slots", Assert.Throws<FitLMException>(() => tf.CreateSequenceKv()).Message, StringComparison.Ordinal);
        b.Dispose();
        var c = tf.CreateSequenceKv();
        tf.Forward([new SequenceSlice(c, new[] { 7 }, 0, true)], logits);
        Assert.Equal(1, device.Slices[^1].Slot);
        // A CPU store is not a device slot; the single-sequence pass may not write slot 0 while a sequence holds it.
        Assert.Throws<ArgumentException>(() => tf.Forward([new SequenceSlice(tf.KvStores.Create(), new[] { 1 }, 0, true)], logits));
        Assert.Throws<InvalidOperationException>(() => tf.Forward([1], 0, logits, 0));
        a.Dispose();
        tf.Forward([1], 0, logits, 0);
        Assert.Single(device.Calls);
    }

    [Fact]
    public void KvOptions_NameTheDevicesCacheType()
    {
        // /metrics and /budget read KvStores.Options: on a device it is the type the device's cache holds, not f32.
        var tf = new Transformer(Config(), new RecordingDevice(), maxContext: 32, maxBatch: 8, new KvCacheOptions { Type = KvType.F16 });
        Assert.Equal(KvType.F16, tf.KvStores.Options.Type);
        Assert.Equal(KvType.F32, new Transformer(Config(), new RecordingDevice(), maxContext: 32, maxBatch: 8).KvStores.Options.Type);
    }

    [Fact]
    public void HiddenStates_ComeFromTheSequencesSlot_InBatches()
    {
        var device = new RecordingDevice();
        var tf = new Transformer(Config(), device, maxContext: 32, maxBatch: 8);
        _ = tf.CreateSequenceKv();
        var kv = tf.CreateSequenceKv();
        var hidden = new float[10 * 64];
        tf.ForwardHidden(kv, Enumerable.Range(1, 10).ToArray(), 0, hidden);
        Assert.Equal([(1, 0, 8), (1, 8, 2)], device.Hidden.Select(h => (h.Slot, h.Pos, h.Tokens.Length)));
        Assert.All(hidden, v => Assert.Equal(1f, v));
        Assert.Equal(10, kv.Length);
    }

    [Fact]
    public void ChangingTheKvType_RefusesNamingCpu()
    {
        var tf = new Transformer(Config(), new RecordingDevice(), maxContext: 32, maxBatch: 8);
        var change = Assert.Throws<FitLMException>(() => tf.ChangeKv(new KvCacheOptions { Type = KvType.F16 }));
        Assert.Contains("--device cpu", change.Message, StringComparison.Ordinal);
        Assert.Contains("fake device", change.Message, StringComparison.Ordinal);
    }
}
