using System.CommandLine;
using System.Globalization;
using FitLM.Adapters;
using FitLM.Training;

namespace FitLM.Cli.Commands;

/// <summary>The flags of `fitlm finetune` and the <see cref="FinetuneOptions"/> they make.</summary>
internal sealed class FinetuneFlags
{
    // -m is not Required here: a resumed run finds its model in the checkpoint.
    public readonly Option<string?> Model = new("--model", "-m") { Description = "model: a .gguf file or a Hugging Face folder (with --resume: the checkpoint's)" };
    public readonly Option<string?> File = new("--file", "-f") { Description = "training text (cut into windows of --ctx tokens)", HelpName = "TRAIN.txt" };
    public readonly Option<string?> TrainIds = new("--train-ids") { Description = "a JSON array of token-id arrays trained as the batch at every step (instead of -f)", HelpName = "BATCH.json" };
    public readonly Option<string?> Eval = new("--eval") { Description = "held-out text: its perplexity is measured every --eval-every steps and at the end", HelpName = "EVAL.txt" };
    public readonly Option<int> EvalEvery = new("--eval-every") { Description = "evaluate every N steps (0: only at the end)", DefaultValueFactory = _ => 0 };
    public readonly Option<int> EvalWindows = new("--eval-windows") { Description = "evaluate on at most N windows of the --eval text", DefaultValueFactory = _ => 16 };
    public readonly Option<string?> Output = new("--output", "-o") { Description = "folder for the adapter (PEFT files, adapter.gguf), checkpoints and the training log", HelpName = "OUT_DIR" };
    public readonly Option<string> Method = new("--method") { Description = "lora (backpropagation, AdamW) or mezo (forward passes only: the memory of inference)", DefaultValueFactory = _ => "lora" };
    public readonly Option<string?> Memory = new("--memory") { Description = "memory budget for the whole process, e.g. 1GiB (or auto, cgroup, cgroup:PATH: read once at start): the planner picks micro-batch, checkpointing and weight streaming" };
    public readonly Option<int> Context = new("--ctx", "--ctx-size", "-c") { Description = "tokens per training window", DefaultValueFactory = _ => 256 };
    public readonly Option<int> Batch = new("--batch", "-b") { Description = "sequences per optimizer step", DefaultValueFactory = _ => 4 };
    public readonly Option<int> MicroBatch = new("--micro-batch") { Description = "sequences per forward/backward pass (gradient accumulation; default: the planner's choice)", DefaultValueFactory = _ => 0 };
    public readonly Option<double?> LearningRate = new("--lr") { Description = "peak learning rate (default 1e-3 for lora, 1e-4 for mezo)" };
    public readonly Option<long> Steps = new("--steps") { Description = "optimizer steps (default: one epoch)", DefaultValueFactory = _ => 0 };
    public readonly Option<double> Epochs = new("--epochs") { Description = "passes over the training windows (instead of --steps)", DefaultValueFactory = _ => 0 };
    public readonly Option<int> Seed = new("--seed") { Description = "seed of the new adapter, the data order and MeZO's directions", DefaultValueFactory = _ => 0 };
    public readonly Option<int> Rank = new("--rank") { Description = "LoRA rank", DefaultValueFactory = _ => 8 };
    public readonly Option<double> Alpha = new("--alpha") { Description = "LoRA alpha (the update is scaled by alpha / rank)", DefaultValueFactory = _ => 16 };
    public readonly Option<string> Targets = new("--targets") { Description = "projections to adapt, comma-separated", DefaultValueFactory = _ => string.Join(",", LoraAdapter.AllTargets) };
    public readonly Option<string> Checkpoint = new("--checkpoint") { Description = "activation checkpointing: auto (the planner's choice), none, or a checkpoint every N layers", DefaultValueFactory = _ => "auto" };
    public readonly Option<string> Schedule = new("--lr-schedule") { Description = "constant or cosine (decay to zero at the last step)", DefaultValueFactory = _ => "cosine" };
    public readonly Option<int> Warmup = new("--warmup") { Description = "steps of linear learning-rate warm-up", DefaultValueFactory = _ => 0 };
    public readonly Option<double> Clip = new("--clip") { Description = "clip the gradient's global L2 norm to this (0: no clipping)", DefaultValueFactory = _ => 1.0 };
    public readonly Option<double> WeightDecay = new("--weight-decay") { Description = "AdamW's decoupled weight decay", DefaultValueFactory = _ => 0.0 };
    public readonly Option<double> MezoEpsilon = new("--mezo-eps") { Description = "MeZO's perturbation size", DefaultValueFactory = _ => 1e-3 };
    public readonly Option<bool> MezoFull = new("--mezo-full") { Description = "with --method mezo: train every weight of an F32/F16/BF16 GGUF model instead of an adapter; writes OUT_DIR/model.gguf" };
    public readonly Option<int> SaveEvery = new("--save-every") { Description = "write a checkpoint every N steps (0: only on Ctrl-C and at the end)", DefaultValueFactory = _ => 0 };
    public readonly Option<string?> Resume = new("--resume") { Description = "continue the run checkpointed in this OUT_DIR, bit for bit", HelpName = "OUT_DIR" };
    public readonly Option<string?> AdapterInit = new("--adapter-init") { Description = "start from this adapter (a PEFT folder or a GGUF LoRA file) instead of a new one", HelpName = "DIR" };
    public readonly Option<string?> Plot = new("--plot") { Description = "draw train and eval loss against step to this SVG file", HelpName = "loss.svg" };
    public readonly Option<int> Threads = Common.Threads();

    public void AddTo(Command cmd)
    {
        foreach (Option o in new Option[] { Model, File, TrainIds, Eval, EvalEvery, EvalWindows, Output, Method, Memory, Context, Batch, MicroBatch,
                     LearningRate, Steps, Epochs, Seed, Rank, Alpha, Targets, Checkpoint, Schedule, Warmup, Clip, WeightDecay, MezoEpsilon, MezoFull,
                     SaveEvery, Resume, AdapterInit, Plot, Threads })
            cmd.Add(o);
    }

    /// <summary>The options the flags give, validated (the checkpoint setting as -1 auto, 0 none, N).</summary>
    public FinetuneOptions Build(ParseResult r)
    {
        var method = r.GetValue(Method) switch
        {
            "lora" => FinetuneMethod.Lora,
            "mezo" => FinetuneMethod.Mezo,
            var m => throw new FitLMException($"--method '{m}' is not a fine-tuning method (lora, mezo)"),
        };
        if (r.GetValue(Steps) > 0 && r.GetValue(Epochs) > 0) throw new FitLMException("give --steps or --epochs, not both");
        var o = new FinetuneOptions
        {
            Method = method,
            Context = r.GetValue(Context),
            Batch = r.GetValue(Batch),
            MicroBatch = r.GetValue(MicroBatch),
            Steps = r.GetValue(Steps),
            Epochs = r.GetValue(Epochs),
            Seed = r.GetValue(Seed),
            Rank = r.GetValue(Rank),
            Alpha = (float)r.GetValue(Alpha),
            Targets = ParseTargets(r.GetValue(Targets)!),
            CheckpointLayers = ParseCheckpoint(r.GetValue(Checkpoint)!),
            LearningRate = (float)(r.GetValue(LearningRate) ?? (method == FinetuneMethod.Mezo ? 1e-4 : 1e-3)),
            Cosine = r.GetValue(Schedule) switch
            {
                "cosine" => true,
                "constant" => false,
                var s => throw new FitLMException($"--lr-schedule '{s}' is not a schedule (constant, cosine)"),
            },
            WarmupSteps = r.GetValue(Warmup),
            Clip = (float)r.GetValue(Clip),
            WeightDecay = (float)r.GetValue(WeightDecay),
            MezoEpsilon = (float)r.GetValue(MezoEpsilon),
            MezoFull = r.GetValue(MezoFull),
            SaveEvery = r.GetValue(SaveEvery),
            EvalEvery = r.GetValue(EvalEvery),
            EvalWindows = r.GetValue(EvalWindows),
        };
        if (r.GetValue(MicroBatch) < 0) throw new FitLMException($"--micro-batch {r.GetValue(MicroBatch)} must be at least 1");
        if (o.MezoFull)
            foreach (var adapterFlag in new Option[] { Rank, Alpha, Targets })
                if (r.GetResult(adapterFlag) is { Implicit: false })
                    throw new FitLMException($"{adapterFlag.Name} describes a LoRA adapter, and --mezo-full trains the model's own weights (drop {adapterFlag.Name})");
        if (r.GetValue(LearningRate) is { } lr && !(lr > 0 && double.IsFinite(lr)))
            throw new FitLMException($"--lr {lr.ToString(CultureInfo.InvariantCulture)} must be a positive number");
        o.Validate();
        return o;
    }

    /// <summary>
    /// A resumed run keeps the options it started with: a training flag given again must say the same, else it
    /// is refused (naming the flag and both values) rather than silently ignored.
    /// </summary>
    public void CheckSameAs(ParseResult r, FinetuneOptions saved, string resumeDir)
    {
        var given = Build(r);
        var checks = new (Option Flag, Func<FinetuneOptions, string> Show)[]
        {
            (Method, o => o.Method.ToString().ToLowerInvariant()), (Context, o => S(o.Context)), (Batch, o => S(o.Batch)),
            (MicroBatch, o => S(o.MicroBatch)), (Steps, o => S(o.Steps)), (Epochs, o => S(o.Epochs)), (Seed, o => S(o.Seed)),
            (Rank, o => S(o.Rank)), (Alpha, o => S(o.Alpha)), (Targets, o => string.Join(",", o.Targets)),
            (Checkpoint, o => S(o.CheckpointLayers)), (LearningRate, o => S(o.LearningRate)), (Schedule, o => o.Cosine ? "cosine" : "constant"),
            (Warmup, o => S(o.WarmupSteps)), (Clip, o => S(o.Clip)), (WeightDecay, o => S(o.WeightDecay)), (MezoEpsilon, o => S(o.MezoEpsilon)), (MezoFull, o => o.MezoFull ? "on" : "off"),
            (SaveEvery, o => S(o.SaveEvery)), (EvalEvery, o => S(o.EvalEvery)), (EvalWindows, o => S(o.EvalWindows)),
        };
        foreach (var (flag, show) in checks)
        {
            if (r.GetResult(flag) is not { Implicit: false }) continue;
            if (flag == Checkpoint && given.CheckpointLayers == -1) continue; // auto: whatever the run chose
            if (flag == MicroBatch && given.MicroBatch == 0) continue;
            if (show(given) != show(saved))
                throw new FitLMException($"{flag.Name} {show(given)} differs from the checkpoint's {show(saved)} in {resumeDir}: a resumed run continues with the options it started with (drop {flag.Name})");
        }
    }

    private static string S(IFormattable v) => v.ToString(null, CultureInfo.InvariantCulture);

    private static string[] ParseTargets(string text)
    {
        var targets = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (targets.Length == 0) throw new FitLMException("--targets is empty (use any of q,k,v,o,gate,up,down)");
        foreach (var t in targets) LoraAdapter.TensorOf(t);
        return targets.Distinct().ToArray();
    }

    private static int ParseCheckpoint(string text) => text switch
    {
        "auto" => -1,
        "none" => 0,
        _ when int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n >= 1 => n,
        _ => throw new FitLMException($"--checkpoint '{text}' must be auto, none or a number of layers per segment (1 or more)"),
    };
}
