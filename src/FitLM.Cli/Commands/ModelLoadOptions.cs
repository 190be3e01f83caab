using System.CommandLine;
using FitLM.Formats;
using FitLM.Weights;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>
/// The flags that load a model, one group for run, perplexity, bench, serve and plan, so every command
/// accepts the same ones: the model, context, threads, memory and streaming (<see cref="MemoryOptions"/>),
/// stacked models (<see cref="StackOptions"/>), the KV cache (<see cref="KvOptions"/>), LoRA adapters (<see cref="LoraOptions"/>)
/// and a mixture's expert cache (<see cref="ExpertOptions"/>).
/// </summary>
internal sealed class ModelLoadOptions
{
    public Option<string> Model { get; } = Common.Model();
    public Option<int> Context { get; }
    public Option<int> Threads { get; } = Common.Threads();
    public MemoryOptions Memory { get; } = new();
    public StackOptions Stack { get; } = new();
    public KvOptions Kv { get; } = new();
    public LoraOptions Lora { get; } = new();
    public ExpertOptions Experts { get; } = new();
    public Option<string> Device { get; } = DeviceOption();
    public Option<string> GpuMemory { get; } = new("--gpu-memory")
    {
        Description = "with --device cuda: GPU memory the model may take (e.g. 2GiB; default: what the GPU has free); layers beyond it stream from host memory (--stream naive: from the file, no overlap)",
    };

    private static Option<string> DeviceOption()
    {
        var o = new Option<string>("--device")
        {
            Description = "where the model runs: cpu, cuda (GPU 0 holds the weights and KV cache; docs/cuda.md), or auto (default: cuda where it can run the model, else cpu, saying why in one line)",
            DefaultValueFactory = _ => "auto",
        };
        o.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        return o;
    }

    /// <param name="defaultContext">0: the model's trained context, at most <see cref="LoadOptions.DefaultContextCap"/> (run, serve, plan); perplexity's is 512.</param>
    public ModelLoadOptions(int defaultContext = 0)
    {
        Context = new Option<int>("--ctx-size", "-c")
        {
            Description = defaultContext > 0
                ? "context size in tokens"
                : $"context size in tokens (0: the model's trained context, at most {LoadOptions.DefaultContextCap})",
            DefaultValueFactory = _ => defaultContext,
        };
    }

    public void AddTo(Command command)
    {
        command.Add(Model);
        command.Add(Context);
        command.Add(Threads);
        Memory.AddTo(command);
        Stack.AddTo(command);
        Kv.AddTo(command);
        Lora.AddTo(command);
        Experts.AddTo(command);
        command.Add(Device);
        command.Add(GpuMemory);
    }

    public string ModelPath(ParseResult r) => r.GetValue(Model)!;

    /// <summary>The context given (0: the default), checked.</summary>
    public int ContextSize(ParseResult r)
    {
        int n = r.GetValue(Context);
        if (n < 0 || n > LoadOptions.MaxContext) throw new FitLMException($"--ctx-size {n} is out of range (0..{LoadOptions.MaxContext})");
        return n;
    }

    /// <summary>
    /// Every flag of the group, validated, on top of <paramref name="start"/> (a command's batch and logit rows);
    /// applies --threads. The context is the one given (0: the default) unless <paramref name="start"/> set one
    /// and the user gave none.
    /// </summary>
    public LoadOptions Read(ParseResult r, LoadOptions? start = null)
    {
        Common.ApplyThreads(r.GetValue(Threads));
        var o = start ?? new LoadOptions();
        int ctx = ContextSize(r);
        if (ctx > 0 || o.ContextLength == 0) o = o with { ContextLength = ctx };
        o = o with
        {
            Device = r.GetValue(Device) switch { "cuda" => ComputeDevice.Cuda, "auto" => ComputeDevice.Auto, _ => ComputeDevice.Cpu },
        };
        if (r.GetValue(GpuMemory) is { } gpu)
        {
            if (o.Device == ComputeDevice.Cpu) throw new FitLMException("--gpu-memory goes with --device cuda (or auto)");
            long bytes = MemorySize.Parse(gpu);
            if (bytes <= 0) throw new FitLMException($"--gpu-memory {gpu} is not a size (e.g. 2GiB)");
            o = o with { GpuMemoryBudget = bytes };
        }
        return Experts.Apply(r, Lora.Apply(r, Kv.Apply(r, Stack.Apply(r, Memory.Apply(r, o)))));
    }

    /// <summary>Loads the model as <paramref name="options"/> (from <see cref="Read"/>) say; refuses stack flags on a model that is not stacked; warns once past the trained context.</summary>
    public LanguageModel Load(ParseResult r, LoadOptions options)
    {
        string path = ModelPath(r);
        EnsureStackFlagsApply(r, path);
        var lm = LanguageModel.Load(path, options);
        if (lm.Transformer.Device is { } device) Console.Error.WriteLine($"device: {device.Description}");
        else if (lm.DeviceFallback is { } why) Console.Error.WriteLine($"device: cpu ({why})");
        WarnPastTrainedContext(lm.Transformer.MaxContext, lm.Config.ContextLength);
        return lm;
    }

    /// <summary>--weights and --stack-cache size a stacked (BitStack) file; on any other model they would be ignored, so they are refused.</summary>
    public void EnsureStackFlagsApply(ParseResult r, string path)
    {
        string? flag = r.GetResult(Stack.Weights) is { Implicit: false } ? "--weights" : r.GetResult(Stack.Cache) is { Implicit: false } ? "--stack-cache" : null;
        if (flag == null) return;
        bool stacked = false;
        if (File.Exists(path))
        {
            using var gguf = GgufFile.Open(path);
            stacked = StackLayout.IsStacked(gguf);
        }
        if (!stacked)
            throw new FitLMException($"{flag} applies to stacked (BitStack) models only, and {path} is not one (fitlm compress makes one; for others use --memory)");
    }

    /// <summary>One line on stderr when the context runs past the positions the model was trained on (quality drops there).</summary>
    public static void WarnPastTrainedContext(int context, int trained)
    {
        if (trained > 0 && context > trained)
            Console.Error.WriteLine($"warning: context {context} is longer than the {trained} positions the model was trained on; output past position {trained} may degrade");
    }
}
