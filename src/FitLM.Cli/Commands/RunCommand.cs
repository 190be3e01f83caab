using System.CommandLine;
using System.Diagnostics;
using FitLM.Generation;
using FitLM.Model;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm run`: generate text from a prompt, streamed to stdout (llama-cli style flags).</summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "prompt text" };
        var file = new Option<string?>("--file", "-f") { Description = "read the prompt from a file" };
        var n = new Option<int>("--n-predict", "-n") { Description = "tokens to generate (-1: until end of generation or context)", DefaultValueFactory = _ => 128 };
        var ctx = Common.Context(0);
        var temp = new Option<float>("--temp") { Description = "temperature (0: greedy)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "top-k sampling (0: off)", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "top-p sampling (1.0: off)", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "min-p sampling (0.0: off)", DefaultValueFactory = _ => 0.05f };
        var repeat = new Option<float>("--repeat-penalty") { Description = "penalize repeated tokens (1.0: off)", DefaultValueFactory = _ => 1.0f };
        var repeatN = new Option<int>("--repeat-last-n") { Description = "tokens the repeat penalty looks back over", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed", "-s") { Description = "random seed (-1: random)", DefaultValueFactory = _ => -1 };
        var stop = new Option<string[]>("--stop") { Description = "stop when this text is generated (repeatable)", AllowMultipleArgumentsPerToken = false };
        var ids = new Option<bool>("--ids") { Description = "print the generated token ids, space-separated, instead of text" };
        var threads = Common.Threads();

        var memory = new MemoryOptions();
        var kv = new KvOptions();
        var cmd = new Command("run", "generate text from a prompt")
        {
            model, prompt, file, n, ctx, temp, topK, topP, minP, repeat, repeatN, seed, stop, ids, threads,
        };
        memory.AddTo(cmd);
        var stack = new StackOptions(); stack.AddTo(cmd); // BitStack: --weights, --stack-cache
        kv.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string? text = r.GetValue(prompt);
            string? path = r.GetValue(file);
            if (path != null)
            {
                if (!File.Exists(path)) throw new FitLMException($"{path}: prompt file not found");
                text = File.ReadAllText(path);
            }
            if (string.IsNullOrEmpty(text)) throw new FitLMException("no prompt: give -p TEXT or -f FILE");
            var options = new SamplingOptions
            {
                Temperature = r.GetValue(temp),
                TopK = r.GetValue(topK),
                TopP = r.GetValue(topP),
                MinP = r.GetValue(minP),
                RepeatPenalty = r.GetValue(repeat),
                RepeatLastN = r.GetValue(repeatN),
                Seed = r.GetValue(seed),
            };
            options.Validate();
            int predict = r.GetValue(n);
            if (predict < -1) throw new FitLMException($"--n-predict {predict} is out of range (-1 or more)");
            int contextSize = r.GetValue(ctx);
            if (contextSize < 0) throw new FitLMException($"--ctx-size {contextSize} is out of range");

            var load = Stopwatch.StartNew();
            using var lm = LanguageModel.Load(r.GetValue(model)!, kv.Apply(r, stack.Apply(r, memory.Apply(r, new LoadOptions { ContextLength = contextSize }))));
            load.Stop();
            var tokens = lm.Tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
            int max = predict < 0 ? lm.Transformer.MaxContext - tokens.Length : predict;
            var gen = new Generator(lm);
            bool printIds = r.GetValue(ids);
            if (!printIds) Console.Out.Write(text);
            Console.Out.Flush();

            var sw = Stopwatch.StartNew();
            TimeSpan firstToken = TimeSpan.Zero;
            int count = 0;
            var stdout = Console.Out;
            foreach (var t in gen.Generate(tokens, max, options, r.GetValue(stop), ct))
            {
                if (count == 0 && t.Id >= 0) firstToken = sw.Elapsed;
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
            sw.Stop();
            stdout.WriteLine();
            double decodeMs = (sw.Elapsed - firstToken).TotalMilliseconds;
            Console.Error.WriteLine($"load time = {load.Elapsed.TotalMilliseconds,10:F2} ms");
            Console.Error.WriteLine($"prompt eval time = {firstToken.TotalMilliseconds,10:F2} ms / {tokens.Length,5} tokens ({tokens.Length / Math.Max(1e-9, firstToken.TotalSeconds),8:F2} tokens per second)");
            if (count > 1)
                Console.Error.WriteLine($"eval time = {decodeMs,10:F2} ms / {count - 1,5} runs   ({decodeMs / (count - 1),8:F2} ms per token, {(count - 1) / (decodeMs / 1000),8:F2} tokens per second)");
            Console.Error.WriteLine($"stop: {gen.LastStopReason.ToString().ToLowerInvariant()}");
            MemoryOptions.Report(lm);
            StackOptions.Report(lm);
            Common.PrintPeakRss();
            return 0;
        }));
        return cmd;
    }
}
