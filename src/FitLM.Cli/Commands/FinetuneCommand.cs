using System.CommandLine;
using System.Diagnostics;
using FitLM.Adapters;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Training;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm finetune`: trains a LoRA adapter (backpropagation and AdamW, or MeZO) on a text or a fixed batch of ids,
/// within a memory budget, and writes it to OUT_DIR as a PEFT folder and a llama.cpp GGUF LoRA. Ctrl-C writes a
/// checkpoint; --resume OUT_DIR continues it.
/// </summary>
internal static class FinetuneCommand
{
    private static readonly string[] OutputFiles = [PeftAdapterFolder.WeightsFile, PeftAdapterFolder.ConfigFile, FinetuneRun.AdapterGgufFile, TrainingLog.FileName, FullModelWeights.FileName];

    public static Command Create()
    {
        var f = new FinetuneFlags();
        var cmd = new Command("finetune", "train a LoRA adapter on a text (LoRA with AdamW, or MeZO) within a memory budget; writes OUT_DIR/adapter.gguf and a PEFT adapter");
        f.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct => Execute(r, f, ct)));
        return cmd;
    }

    private static int Execute(ParseResult r, FinetuneFlags f, CancellationToken ct)
    {
        Common.ApplyThreads(r.GetValue(f.Threads));
        string? resumeDir = r.GetValue(f.Resume);
        string? adapterInit = r.GetValue(f.AdapterInit);
        TrainingCheckpoint? cp = null;
        FinetuneOptions options;
        string outDir;
        if (resumeDir != null)
        {
            if (adapterInit != null) throw new FitLMException("--adapter-init starts a new run; a resumed run continues from its checkpoint's adapter (drop --adapter-init)");
            cp = TrainingCheckpoint.Read(resumeDir).Checkpoint;
            f.CheckSameAs(r, cp.Options, resumeDir);
            options = cp.Options;
            outDir = resumeDir;
            if (r.GetValue(f.Output) is { } o && Path.GetFullPath(o) != Path.GetFullPath(resumeDir))
                throw new FitLMException($"-o {o} differs from --resume {resumeDir}: a resumed run writes into its own folder (drop -o)");
        }
        else
        {
            options = f.Build(r);
            outDir = r.GetValue(f.Output) ?? throw new FitLMException("finetune needs an output folder: -o OUT_DIR");
        }

        string modelPath = r.GetValue(f.Model) ?? cp?.ModelPath ?? throw new FitLMException("finetune needs a model: -m MODEL");
        string? textPath = r.GetValue(f.File), idsPath = r.GetValue(f.TrainIds), evalPath = r.GetValue(f.Eval) ?? cp?.EvalPath;
        if (textPath != null && idsPath != null) throw new FitLMException("give -f TRAIN.txt or --train-ids BATCH.json, not both");
        if (textPath == null && idsPath == null && cp?.TrainPath is { } saved)
        {
            if (cp.TrainFixedBatch) idsPath = saved;
            else textPath = saved;
        }
        if (textPath == null && idsPath == null) throw new FitLMException("finetune needs training data: -f TRAIN.txt (or --train-ids BATCH.json)");
        string? plotPath = r.GetValue(f.Plot);

        // Nothing written may replace an input: not the folder, not a file in it, not the plot.
        string[] inputs = [modelPath, textPath!, idsPath!, evalPath!, adapterInit!];
        OutputFile.EnsureNotInput(outDir, inputs);
        foreach (var name in OutputFiles) OutputFile.EnsureNotInput(Path.Combine(outDir, name), inputs);
        if (plotPath != null) OutputFile.EnsureNotInput(plotPath, inputs);
        if (resumeDir == null && TrainingCheckpoint.Find(outDir) != null)
            throw new FitLMException($"{outDir}: holds the checkpoint of an earlier run; continue it with --resume {outDir}, or choose another -o");

        // Read the inputs before the model loads, so a missing file fails at once.
        string? text = textPath != null ? TextInput.Read(textPath, "training text") : null;
        string? ids = idsPath != null ? TextInput.Read(idsPath, "training batch") : null;
        string? evalText = evalPath != null ? TextInput.Read(evalPath, "evaluation text") : null;
        long memory = r.GetValue(f.Memory) is { } m ? BudgetSpec.Parse(m).Read() : 0; // auto/cgroup: read once, at start

        FinetuneData data;
        FinetunePlanRequest request;
        LoraAdapter? initial = null;
        FinetunePlan plan;
        var load = new LoadOptions { MemoryBudget = memory, MaxBatch = 1 };
        using (var src = ModelSource.Open(modelPath))
        {
            var c = src.Config;
            if (options.MezoFull) FullModelWeights.CheckSource(src); // before tokenizing: a quantized model fails at once
            // A family the method cannot train fails at once too (an --adapter-init adapter is checked when it loads).
            if (cp == null) TrainingSupport.Check(src, options, initialAdapter: adapterInit != null);
            var sw = Stopwatch.StartNew();
            var train = ids != null
                ? TrainingData.FromIdsJson(ids, c.Vocab, idsPath!)
                : TrainingData.FromText(src.Tokenizer, text!, options.Context, textPath!, ct);
            var eval = evalText != null ? TrainingData.FromText(src.Tokenizer, evalText, options.Context, evalPath!, ct) : null;
            Console.Error.WriteLine(train.FixedBatch
                ? $"training batch: {train.Windows.Count} sequences, {train.TokenCount} tokens (the same batch every step)"
                : $"training text: {train.TokenCount} tokens in {train.Windows.Count} windows of {options.Context} ({sw.Elapsed.TotalSeconds:F1} s to tokenize)" +
                  (eval != null ? $"; evaluation: {Math.Min(eval.Windows.Count, options.EvalWindows)} windows of {evalPath}" : ""));
            data = new FinetuneData(train, eval) { TrainPath = textPath ?? idsPath, EvalPath = evalPath };
            if (cp != null) FinetuneRun.CheckResumable(cp, resumeDir!, src, train);

            if (adapterInit != null && options.MezoFull)
                throw new FitLMException("--mezo-full trains the model's own weights; --adapter-init starts an adapter (drop one of them)");
            if (adapterInit != null)
            {
                initial = LoraFile.Load(adapterInit, src, ct);
                CheckInitialAdapter(r, f, initial);
                options = options with { Rank = initial.Rank, Alpha = initial.Alpha, Targets = initial.Targets };
            }
            int batch = train.FixedBatch ? train.Windows.Count : options.Batch;
            request = new FinetunePlanRequest
            {
                Method = options.Method,
                BudgetBytes = memory,
                Context = train.FixedBatch ? Math.Max(train.LongestWindow, eval != null ? options.Context : 0) : options.Context,
                Batch = batch,
                MicroBatch = Math.Min(options.MicroBatch, batch),
                SegmentLayers = options.CheckpointLayers < 0 ? null : options.CheckpointLayers,
                Rank = options.Rank,
                Targets = options.Targets,
                MezoFull = options.MezoFull,
                DataBytes = Footprint.TextBytes((text?.Length ?? ids!.Length) + (evalText?.Length ?? 0)),
            };
            plan = FinetunePlanner.Plan(modelPath, src, request, load);
            PrintPlan(src, plan, options, memory, batch);
            // What the planner chose is part of the run: a resumed run takes the same micro-batches and segments.
            options = options with { MicroBatch = plan.MicroBatch, CheckpointLayers = plan.SegmentLayers };
        }

        using var lm = LanguageModel.Load(modelPath, FinetunePlanner.LoadOptionsFor(load, request, plan.ActivationBytes + plan.AdapterStateBytes));
        var clock = Stopwatch.StartNew();
        long first = cp?.Step ?? 0, total = cp?.TotalSteps ?? (options.Steps > 0 ? options.Steps : data.Train.StepsFor(options.Epochs > 0 ? options.Epochs : 1, options.Batch));
        if (cp != null) Console.Error.WriteLine($"resuming {resumeDir} at step {first} of {total}");
        FinetuneResult result;
        try
        {
            result = FinetuneDisplay.Run(total, first, display => cp != null
                ? lm.ResumeFinetune(data, outDir, display, ct)
                : lm.Finetune(data, options, outDir, initial, display, ct));
        }
        catch (FitLMException) when (plotPath != null && File.Exists(Path.Combine(outDir, TrainingLog.FileName)))
        {
            FinetuneDisplay.WritePlot(plotPath, TrainingLog.Read(Path.Combine(outDir, TrainingLog.FileName)));
            throw;
        }
        if (plotPath != null) FinetuneDisplay.WritePlot(plotPath, result.History);
        if (result.Cancelled)
        {
            Console.Error.WriteLine($"stopped at step {result.StepsDone} of {result.TotalSteps}; checkpoint in {result.CheckpointDir}");
            Console.Error.WriteLine($"resume with: fitlm finetune --resume {outDir}");
            return 130;
        }
        string evalSummary = double.IsNaN(result.EvalLoss) ? "" : $"; eval loss {result.EvalLoss:F4}, perplexity {result.EvalPerplexity:F4}";
        Console.Error.WriteLine($"{result.TotalSteps - first} steps in {clock.Elapsed.TotalSeconds:F1} s ({result.TokensPerSecond:F1} tokens/s){evalSummary}");
        if (!double.IsNaN(result.StepTokensPerSecond)) Console.Error.WriteLine($"training speed: {result.StepTokensPerSecond:F1} tokens/s after warm-up (steps only)");
        Console.Error.WriteLine(result.ModelGguf != null
            ? $"wrote the trained model {result.ModelGguf}"
            : $"wrote {Path.Combine(outDir, FinetuneRun.AdapterGgufFile)} and the PEFT adapter ({PeftAdapterFolder.WeightsFile}, {PeftAdapterFolder.ConfigFile}) in {outDir}");
        Common.PrintPeakRss();
        return 0;
    }

    /// <summary>--rank, --alpha and --targets describe a new adapter; given with --adapter-init they must agree with it.</summary>
    private static void CheckInitialAdapter(ParseResult r, FinetuneFlags f, LoraAdapter a)
    {
        if (r.GetResult(f.Rank) is { Implicit: false } && r.GetValue(f.Rank) != a.Rank)
            throw new FitLMException($"--rank {r.GetValue(f.Rank)} differs from the --adapter-init adapter's rank {a.Rank} (drop --rank)");
        if (r.GetResult(f.Alpha) is { Implicit: false } && (float)r.GetValue(f.Alpha) != a.Alpha)
            throw new FitLMException($"--alpha {r.GetValue(f.Alpha)} differs from the --adapter-init adapter's alpha {a.Alpha} (drop --alpha)");
        if (r.GetResult(f.Targets) is { Implicit: false })
        {
            var given = r.GetValue(f.Targets)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Order();
            if (!given.SequenceEqual(a.Targets.Order()))
                throw new FitLMException($"--targets {r.GetValue(f.Targets)} differs from the --adapter-init adapter's {string.Join(",", a.Targets)} (drop --targets)");
        }
    }

    /// <summary>The plan, as `fitlm plan` prints one, on stderr (stdout carries the step lines).</summary>
    private static void PrintPlan(IModelSource src, FinetunePlan plan, FinetuneOptions o, long memory, int batch)
    {
        var c = src.Config;
        var w = plan.WeightsPlan;
        var e = Console.Error;
        string method = o.MezoFull ? "MeZO on all weights" : $"{(o.Method == FinetuneMethod.Mezo ? "MeZO" : "LoRA")} rank {o.Rank} on {string.Join(",", o.Targets)}";
        e.WriteLine($"finetune plan for {src.Path}, budget {ProcessMemory.Format(w.BudgetBytes)}{(memory == 0 ? " (free memory)" : "")}: {method}, " +
            $"micro-batch {plan.MicroBatch} of {batch}, {(o.Method == FinetuneMethod.Mezo ? "forward passes only" : FinetunePlanner.Describe(c, plan.SegmentLayers))}, weights {(w.Streams ? "streamed" : "resident")}");
        e.WriteLine($"  runtime (fixed, measured)     {ProcessMemory.Format(plan.RuntimeBytes),12}");
        e.WriteLine($"  resident weights              {ProcessMemory.Format(w.ResidentWeightBytes),12}");
        if (w.Streams) e.WriteLine($"  stream buffers                {ProcessMemory.Format(w.StreamBufferBytes),12}");
        e.WriteLine($"  KV cache and scratch          {ProcessMemory.Format(w.KvBytes + w.ScratchBytes),12}");
        e.WriteLine($"  training activations          {ProcessMemory.Format(plan.ActivationBytes),12}");
        e.WriteLine($"  adapter and optimizer state   {ProcessMemory.Format(plan.AdapterStateBytes),12}");
        e.WriteLine($"  training data                 {ProcessMemory.Format(plan.DataBytes),12}");
        e.WriteLine($"  training code, heap slack     {ProcessMemory.Format(plan.OverheadBytes),12}");
        e.WriteLine($"  total                         {ProcessMemory.Format(plan.TotalBytes),12}  of {ProcessMemory.Format(w.BudgetBytes)}");
    }
}
