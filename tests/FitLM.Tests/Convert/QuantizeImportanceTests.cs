using FitLM.Conversion;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Converters;

/// <summary>Reading llama.cpp's importance matrices (both formats) and what they change, without ../shared.</summary>
public sealed class QuantizeImportanceTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-imatrix-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static Dictionary<string, float[]> Values() => new()
    {
        ["blk.0.attn_q.weight"] = [0.5f, 2f, 8f, 0.125f],
        ["blk.0.ffn_down.weight"] = [1f, 3f],
    };

    [Fact]
    public void GgufAndLegacyFormatsReadTheSameMeans()
    {
        string gguf = Path.Combine(_dir, "m.gguf"), dat = Path.Combine(_dir, "m.dat");
        ImatrixFiles.WriteGguf(gguf, Values(), count: 1000, chunks: 10);
        ImatrixFiles.WriteDat(dat, Values(), ncall: 10);
        var a = ImportanceMatrix.Load(gguf);
        var b = ImportanceMatrix.Load(dat);
        foreach (var (name, v) in Values())
        {
            Assert.Equal(v, a.Find(name)!, (x, y) => Math.Abs(x - y) <= 1e-6f * Math.Abs(x));
            Assert.Equal(v, b.Find(name)!, (x, y) => Math.Abs(x - y) <= 1e-6f * Math.Abs(x));
        }
        Assert.Equal(10, a.ChunkCount);
        Assert.Equal(10, b.ChunkCount);
        Assert.Equal(["pycode-dev.txt"], a.Datasets);
        Assert.Equal(["pycode-dev.txt"], b.Datasets);
    }

    [Fact]
    public void AFileThatIsNeitherFormatIsOneLineError()
    {
        string junk = Path.Combine(_dir, "junk.dat");
        File.WriteAllBytes(junk, [1, 0, 0, 0, 200, 0, 0, 0, 1, 2]);
        var e = Assert.Throws<FitLMException>(() => ImportanceMatrix.Load(junk));
        Assert.Contains("not an importance matrix", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    public void ImportantColumnsAreReproducedMoreAccurately(GgmlType type)
    {
        // Weighting half of the columns 100x must lower their error compared with the unweighted quantizer.
        const int n = 512, rows = 64;
        var rng = new Random(3);
        var x = Enumerable.Range(0, n * rows).Select(_ => (float)(rng.NextDouble() * 2 - 1) * (rng.Next(10) == 0 ? 4 : 1)).ToArray();
        var importance = Enumerable.Range(0, n).Select(i => i % 2 == 0 ? 100f : 1f).ToArray();
        double plain = ImportantError(type, x, n, default, importance);
        double weighted = ImportantError(type, x, n, importance, importance);
        Assert.True(weighted < plain, $"{type}: weighted error {weighted:G4} is not below the plain {plain:G4}");
    }

    private static double ImportantError(GgmlType type, float[] x, int n, float[]? qw, float[] importance)
    {
        var q = new byte[GgmlTypes.RowBytes(type, x.Length)];
        Quantize.Rows(type, x, q, n, qw);
        var back = new float[x.Length];
        Dequantize.Row(type, q, back);
        double err = 0;
        for (int i = 0; i < x.Length; i++) err += importance[i % n] * (x[i] - back[i]) * (x[i] - back[i]);
        return err;
    }
}
