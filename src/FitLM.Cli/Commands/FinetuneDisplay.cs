using System.Globalization;
using FitLM.Evaluation;
using FitLM.Runtime;
using FitLM.Training;
using Spectre.Console;

namespace FitLM.Cli.Commands;

/// <summary>
/// What `fitlm finetune` shows while it trains: one line `step K loss X` per step (and `eval K loss X ppl Y` after an
/// evaluation) on stdout, so a run compares line by line with PyTorch's; and, when stderr is a terminal, a live
/// progress line there (step, loss, eval perplexity, tokens/s, peak memory, time left). When stdout is the same
/// terminal the step lines go through the live display's console, which prints them above the progress line.
/// </summary>
internal sealed class FinetuneDisplay : IProgress<FinetuneProgress>
{
    private readonly Action<string> _writeLine;
    private readonly ProgressTask? _task;

    private FinetuneDisplay(Action<string> writeLine, ProgressTask? task)
    {
        _writeLine = writeLine;
        _task = task;
    }

    /// <summary>Runs <paramref name="work"/> with a display for a run of <paramref name="totalSteps"/> steps.</summary>
    public static T Run<T>(long totalSteps, long firstStep, Func<FinetuneDisplay, T> work)
    {
        if (!Progress.Interactive) return work(new FinetuneDisplay(line => { Console.Out.WriteLine(line); Console.Out.Flush(); }, null));
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        Action<string> writeLine = Console.IsOutputRedirected
            ? line => { Console.Out.WriteLine(line); Console.Out.Flush(); }
            : line => console.WriteLine(line);
        T result = default!;
        console.Progress()
            .AutoClear(true)
            .Columns(new ProgressBarColumn { Width = 10 }, new TaskDescriptionColumn { Alignment = Justify.Left })
            .Start(ctx =>
            {
                var task = ctx.AddTask("finetune", maxValue: Math.Max(1, totalSteps));
                task.Value = firstStep;
                result = work(new FinetuneDisplay(writeLine, task));
            });
        return result;
    }

    public void Report(FinetuneProgress p)
    {
        _writeLine(string.Create(CultureInfo.InvariantCulture, $"step {p.Step} loss {p.Loss:F6}"));
        if (p.Evaluated) _writeLine(string.Create(CultureInfo.InvariantCulture, $"eval {p.Step} loss {p.EvalLoss:F6} ppl {p.EvalPerplexity:F4}"));
        if (_task == null) return;
        _task.Value = p.Step;
        // One short line (about 70 columns): a wrapped live line repeats itself on every refresh.
        string eval = double.IsNaN(p.EvalLoss) ? "" : $" eval ppl {p.EvalPerplexity:F2}";
        _task.Description = Markup.Escape(string.Create(CultureInfo.InvariantCulture,
            $"step {p.Step}/{p.TotalSteps} loss {p.Loss:F4}{eval} {p.TokensPerSecond:F0} tok/s peak {ProcessMemory.Format(p.PeakMemoryBytes)} ETA {Eta(p.Remaining)}"));
    }

    private static string Eta(TimeSpan t) => t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : t.TotalMinutes >= 1 ? $"{t.Minutes}m{t.Seconds:D2}s" : $"{t.Seconds}s";

    /// <summary>Train loss (every step) and eval loss (where evaluated) against step, as an SVG.</summary>
    public static void WritePlot(string path, IReadOnlyList<TrainingLogEntry> history)
    {
        var plot = new SvgPlot { Title = "fine-tuning loss", XLabel = "step", YLabel = "loss (nats per token)" };
        var train = plot.AddSeries("train loss", lines: true, markers: history.Count <= 50);
        var eval = plot.AddSeries("eval loss", lines: true);
        foreach (var e in history)
        {
            if (double.IsFinite(e.Loss)) train.Add(e.Step, e.Loss);
            if (double.IsFinite(e.EvalLoss)) eval.Add(e.Step, e.EvalLoss);
        }
        if (eval.Points.Count == 0) plot.AllSeries.Remove(eval);
        plot.Write(path);
    }
}
