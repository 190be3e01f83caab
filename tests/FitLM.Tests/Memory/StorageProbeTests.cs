using FitLM.Storage;
using Xunit;

namespace FitLM.Tests.Memory;

/// <summary>
/// The storage probe on a small file: every point is measured (random sizes × depths, sequential depths), with and
/// without a region and the streamer's unit size, and a region outside the file is clamped rather than read past.
/// </summary>
[Collection(SequentialCollection.Name)]
public class StorageProbeTests
{
    [Fact]
    public void MeasuresEveryPoint_WholeFileAndRegion()
    {
        string path = Path.Combine(Path.GetTempPath(), $"fitlm-probe-{Guid.NewGuid():N}.bin");
        try
        {
            var bytes = new byte[24 << 20];
            new Random(1).NextBytes(bytes);
            File.WriteAllBytes(path, bytes);
            foreach (var (region, unit) in new (ValueTuple<long, long>?, long)[] { (null, 0), ((8L << 20, 12L << 20), 6L << 20), ((20L << 20, 1L << 30), 64L << 20) })
            {
                var p = StorageProbe.Measure(path, secondsPerPoint: 0.01, region: region, unitBytes: unit);
                Assert.Equal(StorageProbe.Sizes.Length * StorageProbe.Depths.Length + StorageProbe.SequentialDepths.Length, p.Points.Count);
                Assert.All(p.Points, x => Assert.True(x.BytesPerSecond > 0 && double.IsFinite(x.BytesPerSecond), $"{x}"));
                Assert.Equal(StorageProbe.SequentialDepths.Length, p.Points.Count(x => x.Sequential));
                Assert.True(p.BytesPerSecond(16 << 10, 32) > 0);
            }
        }
        finally { File.Delete(path); }
    }
}
