using System.CommandLine;
using System.Diagnostics;
using FitLM.Generation;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm run`: generate text from a prompt, streamed to stdout (llama-cli style flags).</summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var load = new ModelLoadOptions();
        var sampling = new SamplingFlags();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "prompt text" };
        var file = new Option<string?>("--file", "-f") { Description = "read the prompt from a file ('-': standard input)" };
        var n = new Option<int>("--n-predict", "-n") { Description = "tokens to generate (-1: until end of generation or context)", DefaultValueFactory = _ => 128 };
        var stop = new Option<string[]>("--stop") { Description = "stop when this text is generated (repeatable)", AllowMultipleArgumentsPerToken = false };
        var ids = new Option<bool>("--ids") { Description = "print the generated token ids, space-separated, instead of text" };
        var noWarmup = new Option<bool>("--no-warmup") { Description = "skip the warm-up pass at load (then prompt eval includes compiling the kernels)" };
        var moving = new MovingBudget();
        var speculative = new SpeculativeOptions();

        var cmd = new Command("run", "generate text from a prompt")
        {
            prompt, file, n, stop, ids, noWarmup,
        };
        sampling.AddTo(cmd);
        load.AddTo(cmd);
        moving.AddTo(cmd);
        speculative.AddTo(cmd);
        var conversation = new Option<bool>("--conversation", "-cnv") { Description = "chat in the terminal instead, as fitlm chat does (-p: the system prompt)" };
        cmd.Add(conversation);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            if (r.GetValue(conversation) && speculative.Enabled(r)) throw new FitLMException("--draft and --lookup apply to run, not to -cnv (chat)");
            if (r.GetValue(conversation)) return ChatCommand.FromRun(r, load, sampling);
            string text = ReadPrompt(r.GetValue(prompt), r.GetValue(file));
            var options = sampling.Read(r);
            int predict = r.GetValue(n);
            if (predict < -1) throw new FitLMException($"--n-predict {predict} is out of range (-1 or more)");
            using var watcher = MovingBudget.Start(r, load);
            var loadOptions = load.Read(r) with { MovableWeights = watcher != null };

            var total = Stopwatch.StartNew();
            using var draft = speculative.LoadDraft(r, loadOptions); // first: the target's plan counts its bytes
            using var lm = load.Load(r, speculative.ForTarget(r, loadOptions, draft));
            using var drafter = speculative.CreateDrafter(r, lm, draft);
            moving.Attach(r, watcher, lm);
            if (!r.GetValue(noWarmup)) Warmup.Run(lm, ct);
            if (!r.GetValue(noWarmup) && drafter != null) SpeculativeOptions.Warm(lm, draft, ct);
            Weights.ExpertCachedWeights.Of(lm.Weights)?.Statistics.Reset(); // the report counts the run, not the warm-up
            var loadTime = total.Elapsed;
            var tokens = lm.Tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
            // Checked before the prompt is echoed: a prompt that cannot run prints one error line, not itself first.
            if (tokens.Length >= lm.Transformer.MaxContext)
                throw new FitLMException($"the prompt has {tokens.Length} tokens; the context holds {lm.Transformer.MaxContext} (raise -c)");
            // -1: one more than fits, so generation ends at the end of the context and says so ("context full").
            int max = predict < 0 ? lm.Transformer.MaxContext - tokens.Length + 1 : predict;
            var gen = new Generator(lm);
            var spec = drafter != null ? new SpeculativeGenerator(lm, drafter, speculative.DraftMaxFor(r)) : null;
            bool printIds = r.GetValue(ids);
            var stdout = Console.Out;
            if (!printIds) stdout.Write(text);
            stdout.Flush();

            var generation = Stopwatch.StartNew();
            int count = 0;
            foreach (var t in spec?.Generate(tokens, max, options, r.GetValue(stop), ct) ?? gen.Generate(tokens, max, options, r.GetValue(stop), ct: ct))
            {
                if (t.Id >= 0) count++;
                if (printIds)
                {
                    if (t.Id >= 0) stdout.Write(count == 1 ? $"{t.Id}" : $" {t.Id}");
                }
                else
                {
                    stdout.Write(t.Text);
                }
                stdout.Flush();
            }
            generation.Stop();
            total.Stop();
            stdout.WriteLine();
            var (promptTime, stopReason) = spec != null ? (spec.LastPromptEvalTime, spec.LastStopReason) : (gen.LastPromptEvalTime, gen.LastStopReason);
            RunStatistics.Print(Console.Error, new RunStatistics(loadTime, tokens.Length, promptTime,
                spec?.Statistics.Steps ?? DecodeForwards(count, stopReason), generation.Elapsed - promptTime, total.Elapsed, stopReason));
            if (spec != null) SpeculativeOptions.Print(Console.Error, speculative.Describe(r), spec.Statistics, count, generation.Elapsed - promptTime);
            bool peakPrinted = MemoryOptions.Report(lm);
            Common.ReportWeights(lm);
            if (!peakPrinted) Common.PrintPeakRss();
            return 0;
        }));
        return cmd;
    }

    /// <summary>The prompt from -p or -f (a file, or '-' for stdin); both given is an error, not a silent choice.</summary>
    public static string ReadPrompt(string? prompt, string? file)
    {
        if (prompt != null && file != null) throw new FitLMException("give the prompt with -p TEXT or -f FILE, not both");
        string? text = file != null ? TextInput.Read(file, "prompt file") : prompt;
        if (string.IsNullOrEmpty(text)) throw new FitLMException(file != null ? $"{file}: the prompt is empty" : "no prompt: give -p TEXT or -f FILE");
        return text;
    }

    /// <summary>
    /// Single-token forward passes after the prompt's: every generated token but the last needs one, and the
    /// last needs one too when generation then sampled the end of generation (the stop itself yields no token).
    /// </summary>
    private static int DecodeForwards(int generated, StopReason reason) =>
        generated == 0 ? 0 : reason == StopReason.EndOfGeneration ? generated : generated - 1;
}
