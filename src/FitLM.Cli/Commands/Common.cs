using System.CommandLine;
using FitLM.Runtime;

namespace FitLM.Cli.Commands;

/// <summary>Options and error handling shared by the commands.</summary>
internal static class Common
{
    public static Option<string> Model() => new("--model", "-m")
    {
        Description = "model: a .gguf file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json)",
        Required = true,
    };

    public static Option<int> Threads() => new("--threads", "-t")
    {
        Description = "number of threads (default: the number of physical cores)",
        DefaultValueFactory = _ => CpuInfo.PhysicalCores,
    };

    public static Option<int> Context(int fallback) => new("--ctx-size", "-c")
    {
        Description = "context size in tokens",
        DefaultValueFactory = _ => fallback,
    };

    public static void ApplyThreads(int threads)
    {
        if (threads < 1 || threads > 1024) throw new FitLMException($"--threads {threads} is out of range (1..1024)");
        Tensors.MatMul.Threads = threads;
    }

    /// <summary>Runs a command body: a FitLMException or any other failure becomes one line on stderr and a non-zero exit.</summary>
    public static int Guard(Func<CancellationToken, int> body)
    {
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
        Console.CancelKeyPress += onCancel;
        try
        {
            return body(cts.Token);
        }
        catch (FitLMException e)
        {
            Console.Out.Flush();
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("cancelled");
            return 130;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or OutOfMemoryException)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            return 1;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"error: internal error ({e.GetType().Name}): {OneLine(e.Message)}");
            return 2;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>What the weight provider reports after a run (FFN sparsity of a prepared model, a stack's blocks), one line each.</summary>
    public static void ReportWeights(LanguageModel lm)
    {
        foreach (var line in lm.Weights.Report(lm.Config)) Console.Error.WriteLine(line);
    }

    public static void PrintPeakRss() =>
        Console.Error.WriteLine($"peak RSS: {ProcessMemory.Format(ProcessMemory.PeakRssBytes())}");
}
