using FitLM.Adapters;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Adapters;

/// <summary>LoRA applied at inference: the on-the-fly product equals the dense (W + s·B·A) x, and the same adapter moves an HF folder's and a GGUF file's logits alike.</summary>
public sealed class LoraMatrixTests(ITestOutputHelper output)
{
    /// <summary>A float32 matrix held as an array, the base a LoRA update is checked against.</summary>
    private sealed class DenseMatrix(int rows, int cols, float[] w) : IMatrix
    {
        public string Name => "blk.0.attn_q.weight";
        public int Rows => rows;
        public int Cols => cols;
        public GgmlType Type => GgmlType.F32;
        public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
        {
            for (int t = 0; t < n; t++)
                for (int r = 0; r < rows; r++)
                {
                    double s = 0;
                    for (int c = 0; c < cols; c++) s += (double)w[r * cols + c] * x[t * cols + c];
                    y[t * rows + r] = (float)s;
                }
        }
        public void ReadRow(int row, Span<float> dst) => w.AsSpan(row * cols, cols).CopyTo(dst);
    }

    private static float[] RandomArray(Random rng, int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();

    [Fact]
    public void MultiplyEqualsTheDenseMergedMatrix()
    {
        const int rows = 24, cols = 40, n = 5;
        var rng = new Random(3);
        var w = RandomArray(rng, rows * cols);
        var p1 = new LoraPair("blk.0.attn_q.weight", 4, cols, rows);
        var p2 = new LoraPair("blk.0.attn_q.weight", 2, cols, rows);
        foreach (var p in new[] { p1, p2 })
        {
            RandomArray(rng, p.A.Length).CopyTo(p.A, 0);
            RandomArray(rng, p.B.Length).CopyTo(p.B, 0);
        }
        var m = new LoraMatrix(new DenseMatrix(rows, cols, w), [new LoraMatrix.Term(p1, 0.75f), new LoraMatrix.Term(p2, -2f)]);
        // W' = W + 0.75·B1·A1 − 2·B2·A2, by hand in double.
        var merged = new double[rows * cols];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
            {
                double s = w[r * cols + c];
                for (int k = 0; k < 4; k++) s += 0.75 * p1.B[r * 4 + k] * p1.A[k * cols + c];
                for (int k = 0; k < 2; k++) s += -2.0 * p2.B[r * 2 + k] * p2.A[k * cols + c];
                merged[r * cols + c] = s;
            }
        var x = RandomArray(rng, n * cols);
        var y = new float[n * rows];
        m.Multiply(x, y, n);
        for (int t = 0; t < n; t++)
            for (int r = 0; r < rows; r++)
            {
                double e = 0;
                for (int c = 0; c < cols; c++) e += merged[r * cols + c] * x[t * cols + c];
                Assert.True(Math.Abs(e - y[t * rows + r]) < 1e-4, $"token {t} row {r}: {y[t * rows + r]} vs {e}");
            }
        var row = new float[cols];
        m.ReadRow(5, row);
        for (int c = 0; c < cols; c++) Assert.True(Math.Abs(merged[5 * cols + c] - row[c]) < 1e-5);
    }

    [Fact]
    public void ZeroBGivesTheBaseOutputExactly()
    {
        const int rows = 16, cols = 32, n = 3;
        var rng = new Random(5);
        var baseMatrix = new DenseMatrix(rows, cols, RandomArray(rng, rows * cols));
        var p = new LoraPair("blk.0.attn_q.weight", 8, cols, rows);
        RandomArray(rng, p.A.Length).CopyTo(p.A, 0);
        var x = RandomArray(rng, n * cols);
        var expected = new float[n * rows];
        var actual = new float[n * rows];
        baseMatrix.Multiply(x, expected, n);
        new LoraMatrix(baseMatrix, [new LoraMatrix.Term(p, 2f)]).Multiply(x, actual, n);
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void AdapterMovesHfAndGgufLogitsAlike()
    {
        if (AdapterTestData.ReferenceAdapter is not { } reference) { output.WriteLine("skipped: ../shared is absent"); return; }
        // The HF folder converted to an F32 GGUF: the same weights with q/k rows permuted, and float kernels on both
        // sides, so the base logits agree to float rounding and the adapter's change can be compared tightly. (Against
        // the q8_0 file, quantized weights and activations move the logits as much as the adapter does.)
        string dir = Directory.CreateTempSubdirectory("fitlm-lora-logits-").FullName;
        try
        {
            string f32 = Path.Combine(dir, "pycoder-29m-f32.gguf");
            var convert = Cli.CliRunner.Run("convert", "-m", AdapterTestData.HfFolder!, "-o", f32, "--type", "f32");
            Assert.True(convert.ExitCode == 0, convert.StdErr);
            int[] tokens;
            using (var probe = LanguageModel.Load(f32, 64))
                tokens = probe.Tokenizer.Encode("def fibonacci(n):\n    if n < 2:\n        return n\n").ToArray();
            float[] Logits(string model, IReadOnlyList<LoraRequest> adapters)
            {
                using var lm = LanguageModel.Load(model, new LoadOptions { ContextLength = 64, Adapters = adapters });
                var logits = new float[tokens.Length * lm.Config.Vocab];
                lm.Transformer.Forward(tokens, 0, logits, 0);
                return logits;
            }
            static double Distance(float[] a, float[] b) => Math.Sqrt(a.Zip(b, (x, y) => (double)(x - y) * (x - y)).Sum());
            var hfBase = Logits(AdapterTestData.HfFolder!, []);
            var ggufBase = Logits(f32, []);
            var hfDelta = Logits(AdapterTestData.HfFolder!, [new LoraRequest(reference)]).Zip(hfBase, (a, b) => a - b).ToArray();
            var ggufDelta = Logits(f32, [new LoraRequest(reference)]).Zip(ggufBase, (a, b) => a - b).ToArray();
            double size = Math.Sqrt(hfDelta.Sum(a => (double)a * a));
            double baseDiff = Distance(hfBase, ggufBase), diff = Distance(hfDelta, ggufDelta);
            output.WriteLine($"base logits HF vs F32 GGUF: {baseDiff:F5}; change by the adapter |HF| = {size:F3}, |HF - GGUF| = {diff:F5} ({diff / size:P3})");
            Assert.True(size > 1, "the adapter should move the logits");
            // Unpermuted q/k rows on the GGUF side would give a change unrelated in q and k (tens of percent).
            Assert.True(diff / size < 1e-3, $"the adapter's change differs by {diff / size:P2} between the HF folder and the GGUF file");

            // The q8_0 file, for the record: its quantization noise is of the adapter's size.
            var q8Base = Logits(AdapterTestData.Q8Gguf!, []);
            var q8Delta = Logits(AdapterTestData.Q8Gguf!, [new LoraRequest(reference)]).Zip(q8Base, (a, b) => a - b).ToArray();
            output.WriteLine($"q8_0: base vs HF {Distance(hfBase, q8Base):F3}, change vs HF's {Distance(hfDelta, q8Delta):F3}");
        }
        finally { Directory.Delete(dir, true); }
    }
}
