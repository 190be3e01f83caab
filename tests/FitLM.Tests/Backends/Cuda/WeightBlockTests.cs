using FitLM.Backends.Cuda;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>
/// The host side of the GPU's weights, which needs no GPU: how a layer's matrices are laid out in one block (what a
/// streamed layer's single copy moves), the bytes written for it, and how many layers a --gpu-memory budget keeps.
/// </summary>
public sealed class WeightBlockTests(ITestOutputHelper output)
{
    private static string[] Layer0 =>
        ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight",
         "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"];

    /// <summary>The block's bytes as the sink receives them.</summary>
    private static byte[] Written(IModelSource source, WeightBlock block)
    {
        var bytes = new byte[block.Bytes];
        block.Write(source, (offset, chunk) => chunk.CopyTo(bytes.AsSpan((int)offset)));
        return bytes;
    }

    [Fact]
    public void KernelTypes_AreCopiedAsStoredOrSplit_At256ByteOffsets()
    {
        using var source = ModelSource.Open(TestPaths.DemoModel); // Q4_K (copied as stored) and Q6_K (split): both have GPU kernels
        var block = new WeightBlock(Layer0.Select(source.Get));
        var bytes = Written(source, block);
        long end = 0;
        foreach (var m in block.Matrices)
        {
            Assert.Equal(0, m.Offset % 256);
            Assert.True(m.Offset >= end, $"{m.Tensor.Name} overlaps the matrix before it");
            Assert.Equal(m.Tensor.Type, m.Type);
            var stored = new byte[m.Tensor.ByteSize];
            source.Read(m.Tensor, 0, stored);
            var expected = SplitLayout.Applies(m.Type) ? SplitLayout.FromGguf(m.Type, m.Rows, m.Cols, stored) : stored;
            Assert.True(expected.AsSpan().SequenceEqual(bytes.AsSpan((int)m.Offset, stored.Length)), m.Tensor.Name);
            end = m.Offset + m.Bytes;
        }
        Assert.True(block.Bytes >= end && block.Bytes - end < 256);
    }

    [Theory]
    [InlineData("demo")]                        // Q4_K as stored, Q6_K split
    [InlineData("pycoder-29m-q4_0.gguf")]       // Q4_0 split
    [InlineData("pycoder-29m-q8_0.gguf")]       // Q8_0 split
    [InlineData("pycoder-29m-q3_k_m.gguf")]     // Q3_K dequantized to float32
    public void WriteTo_PutsTheSameBytesInPlace_AsWriteHandsTheSink(string file)
    {
        string path = file == "demo" ? TestPaths.DemoModel
            : TestPaths.Shared is { } shared ? Path.Combine(shared, "models", "pycoder-29m-gguf", file) : "";
        if (path == "") { output.WriteLine("skipped: ../shared is absent"); return; }
        using var source = ModelSource.Open(path);
        var block = new WeightBlock(Layer0.Select(source.Get));
        var expected = Written(source, block);
        var got = new byte[block.Bytes];
        var scratch = new WeightBlock.WriteScratch();
        block.WriteTo(source, got, scratch);
        block.WriteTo(source, got, scratch); // again through the same scratch, as a staging buffer is refilled
        Assert.True(expected.AsSpan().SequenceEqual(got));
        var parallel = new byte[block.Bytes];
        block.WriteTo(source, parallel, scratch, threads: 3); // the chunks shared out to three workers
        Assert.True(expected.AsSpan().SequenceEqual(parallel));
        Assert.Throws<ArgumentException>(() => block.WriteTo(source, new byte[block.Bytes - 1], scratch));
    }

    [Fact]
    public void WriteTo_AReadThatFails_ReachesTheCallerAsItself_WithSeveralWorkers()
    {
        using var source = ModelSource.Open(TestPaths.DemoModel);
        var block = new WeightBlock(Layer0.Select(source.Get));
        using var failing = new FailingReads(source);
        var e = Assert.Throws<FitLMException>(() => block.WriteTo(failing, new byte[block.Bytes], new WeightBlock.WriteScratch(), threads: 3));
        Assert.Equal("model.gguf: the file ends early", e.Message);
    }

    /// <summary>A model whose tensor reads fail, as a file cut short would.</summary>
    private sealed class FailingReads(IModelSource inner) : IModelSource
    {
        public string Path => inner.Path;
        public ModelConfig Config => inner.Config;
        public Tokenizer Tokenizer => inner.Tokenizer;
        public IReadOnlyList<TensorDesc> Tensors => inner.Tensors;
        public TensorDesc? Find(string name) => inner.Find(name);
        public void Read(TensorDesc tensor, long offset, Span<byte> dst) => throw new FitLMException("model.gguf: the file ends early");
        public TensorLocation Locate(TensorDesc tensor) => inner.Locate(tensor);
        public void Dispose() { }
    }

    [Fact]
    public void TypesWithoutAKernel_AreDequantizedToFloat32()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("skipped: ../shared is absent"); return; }
        using var source = ModelSource.Open(Path.Combine(shared, "models", "pycoder-29m-gguf", "pycoder-29m-q3_k_m.gguf"));
        var block = new WeightBlock(Layer0.Select(source.Get));
        var bytes = Written(source, block);
        var q = block["blk.0.attn_q.weight"];
        Assert.Equal(GgmlType.Q3_K, q.Tensor.Type);
        Assert.Equal(GgmlType.F32, q.Type);
        Assert.Equal(q.Cols * 4L, q.RowBytes);
        var expected = source.ReadFloats(q.Tensor);
        var got = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan((int)q.Offset, (int)q.Bytes));
        Assert.True(got.SequenceEqual(expected));
        Assert.Equal(GgmlType.Q4_K, block["blk.0.attn_output.weight"].Type); // a kernel type beside it stays as stored
        Assert.Equal((long)q.Rows * q.Cols * sizeof(float), q.Bytes); // four bytes a weight on the device
    }

    [Theory]
    [InlineData("pycoder-29m-q4_0.gguf", GgmlType.Q4_0, 18, 0)]
    [InlineData("pycoder-29m-q8_0.gguf", GgmlType.Q8_0, 34, 0)]
    [InlineData("demo", GgmlType.Q6_K, 210, 208)]
    public void SplitTypes_AreQuantsThenScales(string file, GgmlType type, int blockBytes, int scaleAt)
    {
        string path = file == "demo" ? TestPaths.DemoModel
            : TestPaths.Shared is { } shared ? Path.Combine(shared, "models", "pycoder-29m-gguf", file) : "";
        if (path == "") { output.WriteLine("skipped: ../shared is absent"); return; }
        using var source = ModelSource.Open(path);
        int quantBytes = blockBytes - 2, elements = type == GgmlType.Q6_K ? 256 : 32;
        var block = new WeightBlock(Layer0.Select(source.Get));
        var bytes = Written(source, block);
        int split = 0;
        foreach (var m in block.Matrices.Where(m => m.Tensor.Type == type))
        {
            Assert.Equal(type, m.Type);
            var stored = new byte[m.Tensor.ByteSize];
            source.Read(m.Tensor, 0, stored);
            Assert.Equal(stored.Length, m.Bytes);
            var got = bytes.AsSpan((int)m.Offset, (int)m.Bytes);
            long blocks = (long)m.Rows * (m.Cols / elements), scales = blocks * quantBytes;
            for (long b = 0; b < blocks; b++)
            {
                var gguf = stored.AsSpan((int)(b * blockBytes), blockBytes);
                var quants = scaleAt == 0 ? gguf[2..] : gguf[..scaleAt];
                Assert.True(quants.SequenceEqual(got.Slice((int)(b * quantBytes), quantBytes)), $"{m.Tensor.Name} block {b}: quants");
                Assert.True(gguf.Slice(scaleAt, 2).SequenceEqual(got.Slice((int)(scales + 2 * b), 2)), $"{m.Tensor.Name} block {b}: scale");
            }
            Assert.True(SplitLayout.FromGguf(type, m.Rows, m.Cols, stored).AsSpan().SequenceEqual(got));
            split++;
        }
        Assert.True(split > 0, $"no {type} matrix in layer 0 of {file}");
    }

    [Fact]
    public void SplitLayout_WritesRowChunksWhereTheWholeMatrixPutsThem()
    {
        const int rows = 5, cols = 96;
        var gguf = new byte[rows * GgmlTypes.RowBytes(GgmlType.Q4_0, cols)];
        new Random(7).NextBytes(gguf);
        var whole = SplitLayout.FromGguf(GgmlType.Q4_0, rows, cols, gguf);
        var chunked = new byte[gguf.Length];
        int rowBytes = (int)GgmlTypes.RowBytes(GgmlType.Q4_0, cols);
        for (int r0 = 0; r0 < rows; r0 += 2)
        {
            int n = Math.Min(2, rows - r0);
            SplitLayout.Write(GgmlType.Q4_0, rows, cols, r0, n, gguf.AsSpan(r0 * rowBytes, n * rowBytes), new byte[n * rowBytes],
                (offset, part) => part.CopyTo(chunked.AsSpan((int)offset)));
        }
        Assert.Equal(whole, chunked);
    }

    [Theory]
    [InlineData(100, 900, false, 4)]   // everything fits: every layer resident, no slots
    [InlineData(100, 899, false, 1)]   // 100 + 1 layer + two slots of 200 = 700; a second layer: 900 > 899
    [InlineData(100, 500, false, 0)]   // the fixed part and the slots only
    [InlineData(100, 499, false, -1)]  // not even that
    [InlineData(100, 700, true, 2)]    // naive: one slot; 100 + 2 layers + 200 = 700
    public void ResidentLayers_KeepsWholeLayersBesideTheSlots(long fixedBytes, long budget, bool naive, int expected)
    {
        long[] layers = [200, 200, 200, 200];
        Assert.Equal(expected, CudaBackend.ResidentLayers(fixedBytes, layers, budget, naive));
    }

    [Fact]
    public void PinnedLayers_AreTheFirstStreamedLayersTheHostBudgetHolds_TheRestReadFromTheFile()
    {
        using var source = ModelSource.Open(TestPaths.DemoModel);
        var blocks = Enumerable.Range(0, 4).Select(l => new WeightBlock(Layer0.Select(n => source.Get(n.Replace("blk.0.", $"blk.{l}.", StringComparison.Ordinal))))).ToArray();
        long all = blocks.Sum(b => b.Bytes), scratch = LayerStreamer.ReaderThreads * blocks.Max(b => b.ReadScratchBytes), staging = LayerStreamer.StagingBytes(blocks);
        Assert.Equal(2 * blocks.Max(b => b.Bytes) + scratch, staging); // a slot's worth of staging per slot, and a chunk to read in for each reader
        Assert.Equal(4, LayerStreamer.PinnedLayersFor(blocks, long.MaxValue)); // no --memory
        Assert.Equal(4, LayerStreamer.PinnedLayersFor(blocks, all + scratch)); // every copy pinned: no staging
        Assert.Equal(1, LayerStreamer.PinnedLayersFor(blocks, staging + blocks[0].Bytes));
        Assert.Equal(0, LayerStreamer.PinnedLayersFor(blocks, staging));
        Assert.Equal(-1, LayerStreamer.PinnedLayersFor(blocks, staging - 1));
        Assert.Contains("give a larger --memory or --gpu-memory", LayerStreamer.TooLittleHostMemory(blocks, staging - 1).Message, StringComparison.Ordinal);
    }
}
