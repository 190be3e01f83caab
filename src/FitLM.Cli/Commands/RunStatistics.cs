using FitLM.Generation;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm run`'s timings, as llama.cpp's llama_perf_context_print prints them: load (around the load only),
/// prompt eval (around the prompt's forward pass only), eval (the single-token passes after it, sampling
/// included), total; then why generation stopped, in words.
/// </summary>
internal sealed record RunStatistics(TimeSpan Load, int PromptTokens, TimeSpan PromptEval, int DecodeRuns, TimeSpan Eval, TimeSpan Total, StopReason Stop)
{
    public static void Print(TextWriter o, RunStatistics s)
    {
        o.WriteLine($"       load time = {s.Load.TotalMilliseconds,10:F2} ms");
        o.WriteLine($"prompt eval time = {s.PromptEval.TotalMilliseconds,10:F2} ms / {s.PromptTokens,5} tokens ({Rates(s.PromptEval, s.PromptTokens)})");
        o.WriteLine($"       eval time = {s.Eval.TotalMilliseconds,10:F2} ms / {s.DecodeRuns,5} runs   ({Rates(s.Eval, s.DecodeRuns)})");
        o.WriteLine($"      total time = {s.Total.TotalMilliseconds,10:F2} ms / {s.PromptTokens + s.DecodeRuns,5} tokens");
        o.WriteLine($"stopped: {Words(s.Stop)}");
    }

    public static string Words(StopReason reason) => reason switch
    {
        StopReason.EndOfGeneration => "end of generation",
        StopReason.StopString => "stop string",
        StopReason.Length => "token limit",
        StopReason.ContextFull => "context full",
        _ => reason.ToString(),
    };

    private static string Rates(TimeSpan time, int tokens) => tokens == 0 || time <= TimeSpan.Zero
        ? $"{"n/a",8} ms per token, {"n/a",8} tokens per second"
        : $"{time.TotalMilliseconds / tokens,8:F2} ms per token, {tokens / time.TotalSeconds,8:F2} tokens per second";
}
