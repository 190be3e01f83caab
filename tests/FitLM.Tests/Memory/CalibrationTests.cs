using FitLM.Model;
using FitLM.Storage;
using MathNet.Numerics.LinearAlgebra;
using Xunit;
using FitLM.Conversion;
using FitLM.Weights;
using FitLM.Memory;

namespace FitLM.Tests.Memory;

/// <summary>`fitlm calibrate`: the low-rank fit, and predictor files as the loader sees them.</summary>
public sealed class CalibrationTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("fitlm-calib-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>
    /// The fit takes the eigenvectors of MᵀM (M = W·C^½) instead of the SVD of M; both must give the same
    /// rank-r approximation B·A = U_r·Σ_r·V_rᵀ·C^-½ of W.
    /// </summary>
    [Fact]
    public void LowRankFitEqualsTheTruncatedSvd()
    {
        const int ffn = 48, dim = 16, n = 300, rank = 5;
        var rng = new Random(3);
        var w = new float[ffn * dim];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1);
        // Inputs with very unequal variances per direction, so the metric C matters.
        var x = new float[n * dim];
        for (int t = 0; t < n; t++) for (int j = 0; j < dim; j++) x[t * dim + j] = (float)((rng.NextDouble() * 2 - 1) * (1 + 3 * j % 7));
        var sqrtC = Calibration.WhiteningRoot(x, n, dim, out var invSqrtC);
        var (a, b) = Calibration.LowRank(w, ffn, dim, sqrtC, invSqrtC, rank);

        var W = Matrix<double>.Build.Dense(ffn, dim, (i, j) => w[i * dim + j]);
        var svd = (W * sqrtC).Svd(true);
        var ur = svd.U.SubMatrix(0, ffn, 0, rank);
        var sr = Matrix<double>.Build.DiagonalOfDiagonalArray(svd.S.SubVector(0, rank).ToArray());
        var vr = svd.VT.SubMatrix(0, rank, 0, dim);
        var expected = ur * sr * vr * invSqrtC;
        var A = Matrix<double>.Build.Dense(rank, dim, (i, j) => a[i * dim + j]);
        var B = Matrix<double>.Build.Dense(ffn, rank, (i, j) => b[i * rank + j]);
        var diff = (B * A - expected).FrobeniusNorm() / expected.FrobeniusNorm();
        Assert.True(diff < 1e-5, $"eigen-decomposition fit differs from the truncated SVD by {diff:E2} (relative)");
        // And it is a real approximation, not W itself: rank 5 of 16 leaves a visible residual.
        Assert.True((B * A - W).FrobeniusNorm() > 0.1 * W.FrobeniusNorm());
    }

    [Fact]
    public void CalibratedPredictorLoadsAndATruncatedOneGivesAClearError()
    {
        string original = Path.Combine(_dir, "tiny.gguf"), prepared = Path.Combine(_dir, "tiny.flash.gguf");
        SyntheticModel.Write(original, SyntheticShape.Parse("tiny"), "f16", TestPaths.DemoModel, seed: 11);
        FlashPrepare.Write(original, prepared);
        string text = string.Concat(Enumerable.Range(0, 60).Select(i => $"def f{i}(x):\n    return x * {i} + 1\n"));
        var report = Calibration.Fit(prepared, text, new Calibration.Options(Rank: 8, MaxSamples: 128, Fraction: 0.5));
        string path = Path.Combine(_dir, "tiny.pred.gguf");
        report.Predictor.Save(path);

        using (var lm = LanguageModel.Load(prepared, new LoadOptions { ContextLength = 32, FfnFraction = 0.5, PredictorPath = path }))
        {
            var flash = Assert.IsType<FlashWeights>(lm.Weights);
            Assert.IsType<PredictedNeurons>(flash.Selector);
        }
        var bytes = File.ReadAllBytes(path);
        string cut = Path.Combine(_dir, "cut.pred.gguf");
        File.WriteAllBytes(cut, bytes[..(bytes.Length - 100)]);
        var e = Assert.Throws<FitLMException>(() => LanguageModel.Load(prepared, new LoadOptions { ContextLength = 32, FfnFraction = 0.5, PredictorPath = cut }));
        Assert.Contains("cut.pred.gguf", e.Message);
        var missing = Assert.Throws<FitLMException>(() => LanguageModel.Load(prepared, new LoadOptions { ContextLength = 32, FfnFraction = 0.5, PredictorPath = path + ".none" }));
        Assert.Contains("not found", missing.Message);
    }
}
