using FitLM.Model;

namespace FitLM.Compression;

/// <summary>How the compressor measures the damage a candidate stack does on the scoring windows.</summary>
public enum ScoreMetric
{
    /// <summary>Mean KL divergence from the uncompressed model's next-token distributions (low variance: the whole distribution counts).</summary>
    Kl,
    /// <summary>Mean negative log-likelihood of the calibration text (what BitStack's scoring uses: perplexity).</summary>
    Nll,
}

/// <summary>
/// The calibration loss of a model over fixed windows: each window is run from position 0 and the positions
/// from a quarter of the window on are scored (they see some context). With <see cref="ScoreMetric.Kl"/> the
/// reference distributions are taken once from the uncompressed model.
/// </summary>
public sealed class CalibrationLoss
{
    private readonly List<int[]> _windows;
    private readonly ScoreMetric _metric;
    private readonly int _vocab;
    private readonly List<float[]>? _refLogProbs;
    private float[] _logits = [];

    public int Context { get; }
    public ScoreMetric Metric => _metric;

    private CalibrationLoss(List<int[]> windows, ScoreMetric metric, int vocab, List<float[]>? refLogProbs)
    {
        _windows = windows;
        _metric = metric;
        _vocab = vocab;
        _refLogProbs = refLogProbs;
        Context = windows.Max(w => w.Length);
    }

    private static int First(int len) => Math.Min(len / 4, len - 1);

    /// <summary>Prepares the loss; for KL runs <paramref name="reference"/> (the uncompressed model) once over the windows.</summary>
    public static CalibrationLoss Create(List<int[]> windows, ScoreMetric metric, Transformer? reference, int vocab, CancellationToken ct)
    {
        List<float[]>? refs = null;
        if (metric == ScoreMetric.Kl)
        {
            ArgumentNullException.ThrowIfNull(reference);
            refs = new List<float[]>();
            var loss = new CalibrationLoss(windows, metric, vocab, null);
            foreach (var w in windows)
            {
                var lp = loss.Logits(reference, w, ct);
                int rows = lp.Length / vocab;
                for (int r = 0; r < rows; r++) LogSoftmax(lp.AsSpan(r * vocab, vocab));
                refs.Add(lp);
            }
        }
        return new CalibrationLoss(windows, metric, vocab, refs);
    }

    /// <summary>Bytes the reference distributions take (KL keeps one float per vocabulary entry and scored token).</summary>
    public static long ReferenceBytes(List<int[]> windows, int vocab) =>
        windows.Sum(w => (long)(w.Length - 1 - First(w.Length - 1)) * vocab * 4);

    private float[] Logits(Transformer model, int[] w, CancellationToken ct)
    {
        int len = w.Length - 1, from = First(len);
        var logits = new float[(long)(len - from) * _vocab];
        model.Forward(w.AsSpan(0, len), 0, logits, from, ct);
        return logits;
    }

    /// <summary>The mean loss per scored token of <paramref name="model"/>.</summary>
    public double Evaluate(Transformer model, CancellationToken ct)
    {
        double total = 0;
        long count = 0;
        for (int wi = 0; wi < _windows.Count; wi++)
        {
            var w = _windows[wi];
            int len = w.Length - 1, from = First(len);
            long need = (long)(len - from) * _vocab;
            if (_logits.Length < need) _logits = new float[need];
            model.Forward(w.AsSpan(0, len), 0, _logits, from, ct);
            for (int i = from; i < len; i++)
            {
                var row = _logits.AsSpan((i - from) * _vocab, _vocab);
                if (_metric == ScoreMetric.Nll) total -= Evaluation.Perplexity.LogSoftmaxAt(row, w[i + 1]);
                else
                {
                    LogSoftmax(row);
                    var p = _refLogProbs![wi].AsSpan((i - from) * _vocab, _vocab);
                    double kl = 0;
                    for (int v = 0; v < _vocab; v++)
                    {
                        float lp = p[v];
                        if (lp > -30) kl += Math.Exp(lp) * (lp - row[v]);
                    }
                    total += kl;
                }
                count++;
            }
        }
        return total / Math.Max(1, count);
    }

    private static void LogSoftmax(Span<float> row)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(row);
        double sum = 0;
        foreach (var x in row) sum += Math.Exp(x - max);
        float lse = max + (float)Math.Log(sum);
        System.Numerics.Tensors.TensorPrimitives.Subtract(row, lse, row);
    }
}
