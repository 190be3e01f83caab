using FitLM.KvCache;
using FitLM.Model;
using Xunit;

namespace FitLM.Tests.Model;

/// <summary>
/// A transformer made with an <see cref="IDeviceForward"/> (the CUDA backend's seam) hands its single-sequence passes
/// to the device after the same checks as on the CPU, and refuses the passes the device does not run with a line that
/// names --device cpu. A recording fake stands in for the GPU (tests/gpu.sh runs the real one).
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
    public void PassesTheDeviceDoesNotRun_RefuseNamingCpu()
    {
        var tf = new Transformer(Config(), new RecordingDevice(), maxContext: 32, maxBatch: 8);
        var kv = tf.KvStores.Create();
        var slices = new[] { new SequenceSlice(kv, new[] { 1 }, 0, true) };
        var batched = Assert.Throws<FitLMException>(() => tf.Forward(slices, new float[50]));
        Assert.Contains("--device cpu", batched.Message, StringComparison.Ordinal);
        Assert.Contains("fake device", batched.Message, StringComparison.Ordinal);
        var hidden = Assert.Throws<FitLMException>(() => tf.ForwardHidden(kv, [1], 0, new float[64]));
        Assert.Contains("--device cpu", hidden.Message, StringComparison.Ordinal);
        var change = Assert.Throws<FitLMException>(() => tf.ChangeKv(new KvCacheOptions { Type = KvType.F16 }));
        Assert.Contains("--device cpu", change.Message, StringComparison.Ordinal);
    }
}
