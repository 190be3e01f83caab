using Spectre.Console;

namespace FitLM.Cli.Commands;

/// <summary>Progress bars on stderr (so stdout stays clean for results), only when stderr is a terminal.</summary>
internal static class Progress
{
    private static readonly Lazy<IAnsiConsole> s_err = new(() => AnsiConsole.Create(new AnsiConsoleSettings
    {
        Out = new AnsiConsoleOutput(Console.Error),
    }));

    public static bool Interactive => !Console.IsErrorRedirected;

    /// <summary>Runs <paramref name="work"/> with a progress bar of <paramref name="total"/> steps; the callback reports steps done.</summary>
    public static T Run<T>(string title, double total, Func<Action<double, string?>, T> work)
    {
        if (!Interactive) return work((_, _) => { });
        T result = default!;
        s_err.Value.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), maxValue: Math.Max(1, total));
                result = work((done, desc) =>
                {
                    task.Value = done;
                    if (desc != null) task.Description = Markup.Escape(desc);
                });
            });
        return result;
    }
}
