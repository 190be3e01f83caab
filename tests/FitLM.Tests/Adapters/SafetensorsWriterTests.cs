using FitLM.Formats;
using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Adapters;

public sealed class SafetensorsWriterTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-st-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void WrittenTensorsReadBackWithSafetensorsFile(GgmlType type)
    {
        var rng = new Random(1);
        var a = new SafetensorsTensor("b.weight", [3, 5], Enumerable.Range(0, 15).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray());
        var b = new SafetensorsTensor("a.weight", [7], Enumerable.Range(0, 7).Select(i => i * 0.25f).ToArray());
        string path = Path.Combine(_dir, "x.safetensors");
        SafetensorsWriter.Write(path, [a, b], new Dictionary<string, string> { ["format"] = "pt" }, type);

        using var f = SafetensorsFile.Open(path);
        Assert.Equal(0, f.DataOffset % 8);
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.Equal(2, f.Tensors.Count);
        foreach (var t in new[] { a, b })
        {
            var info = f.Tensors[t.Name];
            Assert.Equal(t.Shape, info.Shape);
            Assert.Equal(type, info.Type);
            var bytes = new byte[info.ByteSize];
            f.ReadTensorBytes(info, 0, bytes);
            var back = new float[t.Data.Length];
            Dequantize.Row(info.Type, bytes, back);
            float tolerance = type == GgmlType.F32 ? 0 : type == GgmlType.F16 ? 1e-3f : 1e-2f;
            for (int i = 0; i < back.Length; i++) Assert.True(Math.Abs(back[i] - t.Data[i]) <= tolerance, $"{t.Name}[{i}]: {back[i]} vs {t.Data[i]}");
        }
        Assert.Single(Directory.GetFiles(_dir)); // no temp file left beside it
    }
}
