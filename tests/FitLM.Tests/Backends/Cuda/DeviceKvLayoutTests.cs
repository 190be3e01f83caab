using FitLM.Backends.Cuda;
using FitLM.KvCache;
using FitLM.Model;
using Xunit;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>
/// The GPU's KV cache sizes and KIVI's ring (DeviceKvLayout): what the planner counts is what the device allocates,
/// the ring holds every tile a pass still reads as floats, and a rewind is refused exactly where the CPU's KIVI store
/// refuses it. The kernels themselves run in tests/gpu.sh (fitlm devices --check: KIVI against the CPU's store).
/// </summary>
public class DeviceKvLayoutTests
{
    private static readonly ModelConfig Llama7b = new() { Architecture = "llama", Dim = 4096, Heads = 32, KvHeads = 32, HeadDim = 128, Layers = 32, FfnDim = 11008, Vocab = 32000 };

    [Fact]
    public void FloatTypes_HoldTheWholeContext()
    {
        var f16 = DeviceKvLayout.For(Llama7b, 4096, 512, new KvCacheOptions { Type = KvType.F16 });
        Assert.Equal(4096L * 4096 * 2, f16.KeyBytes);
        Assert.Equal(f16.KeyBytes, f16.ValueBytes);
        Assert.Equal(2L * 32 * 4096 * 4096 * 2, f16.SequenceBytes(32)); // 2 GiB: llama-7b at 4096 in f16
        var f32 = DeviceKvLayout.For(Llama7b, 100, 8, new KvCacheOptions());
        Assert.Equal(100L * 4096 * 4, f32.KeyBytes);
        Assert.Equal(0, f32.RingTiles);
    }

    [Theory]
    [InlineData(4, 128, 512)]
    [InlineData(2, 32, 64)]
    [InlineData(4, 0, 1)]
    public void Kivi_QuantizedTilesAndARingWideEnoughForAPass(int bits, int residual, int batch)
    {
        var o = new KvCacheOptions { Type = bits == 4 ? KvType.Kivi4 : KvType.Kivi2, Residual = residual };
        var kv = DeviceKvLayout.For(Llama7b, 4096, batch, o);
        int block = 4 * bits + 4;
        Assert.Equal(128, kv.Tiles);
        Assert.Equal(4096L * 128 * block, kv.KeyQuantizedBytes);                 // a block per channel per tile
        Assert.Equal(128L * 32 * 32 * 4 * block, kv.ValueQuantizedBytes);        // per position, head and 32 channels
        Assert.Equal(kv.KeyRingOffset + (long)kv.RingTiles * 32 * 4096 * 2, kv.KeyBytes);
        Assert.Equal(0, kv.KeyRingOffset % 256);
        // A pass of `batch` rows from any position: the tiles its queries read as floats, and those it quantizes, span
        // fewer tiles than the ring, so no row still needed is overwritten by the pass's own writes.
        for (int pos = 0; pos + batch <= 4096; pos += 37)
        {
            int oldest = KiviKvStore.QuantizedTiles(pos, residual), newest = (pos + batch - 1) / 32;
            Assert.True(newest - oldest < kv.RingTiles, $"pos {pos}: tiles {oldest}..{newest} do not fit a ring of {kv.RingTiles}");
        }
        // KIVI 4 with R = 128 and passes of 512: the codes are 5/16 of f16's bytes, the ring 23 tiles; at 4096 positions
        // that is 49% of f16, at 32768 33%.
        if (bits == 4 && residual == 128)
        {
            Assert.Equal(23, kv.RingTiles);
            Assert.InRange(kv.SequenceBytes(32) / (double)(2L * 32 * 4096 * 4096 * 2), 0.48, 0.5);
            var longer = DeviceKvLayout.For(Llama7b, 32768, batch, o);
            Assert.InRange(longer.SequenceBytes(32) / (double)(2L * 32 * 32768 * 4096 * 2), 0.32, 0.34);
        }
    }

    [Fact]
    public void Kivi_RefusesARewindWhereTheCpuStoreDoes()
    {
        var kv = DeviceKvLayout.For(Llama7b, 512, 64, new KvCacheOptions { Type = KvType.Kivi4, Residual = 32 });
        Assert.Null(kv.RewindRefusal(0, 300));   // a new sequence
        Assert.Null(kv.RewindRefusal(300, 300)); // appending
        Assert.Null(kv.RewindRefusal(70, 80));   // tiles quantized at 70 and at 80: the same two
        Assert.Contains("KIVI cannot rewind to position 60", kv.RewindRefusal(60, 80), StringComparison.Ordinal);
        Assert.Null(DeviceKvLayout.For(Llama7b, 512, 64, new KvCacheOptions { Type = KvType.F16 }).RewindRefusal(10, 300));
    }

    [Fact]
    public void UnsupportedTypes_AreNamed()
    {
        Assert.Equal("--kv xquant4", DeviceKvLayout.Unsupported(new KvCacheOptions { Type = KvType.XQuant4 }));
        Assert.StartsWith("H2O", DeviceKvLayout.Unsupported(new KvCacheOptions { Evict = KvEviction.H2O, Keep = 64 }), StringComparison.Ordinal);
        Assert.Null(DeviceKvLayout.Unsupported(KvCacheOptions.Parse("kivi2:r64")));
        var e = Assert.Throws<FitLMException>(() => DeviceKvLayout.For(Llama7b, 64, 8, new KvCacheOptions { Type = KvType.XQuantCl }));
        Assert.Contains("use --kv f32, f16, kivi2 or kivi4 with --device cuda", e.Message, StringComparison.Ordinal);
    }
}
