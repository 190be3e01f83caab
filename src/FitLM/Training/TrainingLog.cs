using System.Globalization;
using System.Text;
using System.Text.Json;
using FitLM.Storage;

namespace FitLM.Training;

/// <summary>One step of a run: its number (1-based), the loss before its update, and the evaluation loss if one ran after it (else NaN).</summary>
public readonly record struct TrainingLogEntry(long Step, double Loss, double EvalLoss)
{
    public double EvalPerplexity => Math.Exp(EvalLoss);
}

/// <summary>
/// OUT_DIR/train-log.jsonl: one JSON object a line, {"step":K,"loss":X} plus "eval_loss" and "eval_ppl" where an
/// evaluation ran, for plots and scripts. Rewritten whole (temp name, then rename) at every checkpoint and at the end.
/// </summary>
public static class TrainingLog
{
    public const string FileName = "train-log.jsonl";

    public static void Write(string path, IReadOnlyList<TrainingLogEntry> entries)
    {
        var sb = new StringBuilder();
        foreach (var e in entries) sb.Append(Line(e)).Append('\n');
        OutputFile.WriteAtomically(path, temp => File.WriteAllText(temp, sb.ToString(), new UTF8Encoding(false)));
    }

    /// <summary>The entries of a log file (as <see cref="Write"/> writes it).</summary>
    public static List<TrainingLogEntry> Read(string path)
    {
        var entries = new List<TrainingLogEntry>();
        foreach (var line in File.ReadLines(path))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            try
            {
                using var doc = JsonDocument.Parse(line);
                entries.Add(FromJson(doc.RootElement));
            }
            catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
            {
                throw new FitLMException($"{path}: not a training log line: {line}", e);
            }
        }
        return entries;
    }

    public static string Line(TrainingLogEntry e)
    {
        var sb = new StringBuilder();
        sb.Append("{\"step\":").Append(e.Step.ToString(CultureInfo.InvariantCulture));
        sb.Append(",\"loss\":").Append(Number(e.Loss));
        if (!double.IsNaN(e.EvalLoss))
            sb.Append(",\"eval_loss\":").Append(Number(e.EvalLoss)).Append(",\"eval_ppl\":").Append(Number(e.EvalPerplexity));
        return sb.Append('}').ToString();
    }

    /// <summary>An entry from its JSON object (NaN or infinite losses are written as null).</summary>
    public static TrainingLogEntry FromJson(JsonElement o) => new(
        o.GetProperty("step").GetInt64(),
        o.GetProperty("loss").ValueKind == JsonValueKind.Number ? o.GetProperty("loss").GetDouble() : double.NaN,
        o.TryGetProperty("eval_loss", out var ev) && ev.ValueKind == JsonValueKind.Number ? ev.GetDouble() : double.NaN);

    // "R" keeps every bit, so a log read back (a resumed run's history) is the log written.
    private static string Number(double v) => double.IsFinite(v) ? v.ToString("R", CultureInfo.InvariantCulture) : "null";
}
