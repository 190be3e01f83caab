using System.Diagnostics;
using FitLM.Adapters;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Training;

/// <summary>The data of a run: training windows (or a fixed batch), optional evaluation windows, and where they came from (saved in checkpoints).</summary>
public sealed record FinetuneData(TrainingData Train, TrainingData? Eval = null)
{
    public string? TrainPath { get; init; }
    public string? EvalPath { get; init; }
}

/// <summary>
/// The fine-tuning loop: takes each step's batch, splits it into micro-batches (gradient accumulation), steps the
/// method, evaluates every <see cref="FinetuneOptions.EvalEvery"/> steps and at the end, checkpoints every
/// <see cref="FinetuneOptions.SaveEvery"/> steps, when cancelled and at the end, and finally writes the adapter to
/// OUT_DIR as a PEFT folder (adapter_model.safetensors, adapter_config.json), as OUT_DIR/adapter.gguf (llama.cpp's
/// LoRA GGUF) and the loss history as OUT_DIR/train-log.jsonl. A NaN or infinite loss stops the run and leaves the
/// last checkpoint as it was. A resumed run continues bit for bit: the data order is a function of (seed, step),
/// and the checkpoint holds the adapter, the optimizer's arrays and the step.
/// </summary>
public sealed class FinetuneRun
{
    public const string AdapterGgufFile = "adapter.gguf";

    private readonly IModelSource _source;
    private readonly FinetuneData _data;
    private readonly FinetuneOptions _options;
    private readonly string _outputDir;
    private readonly long _total;
    private readonly List<TrainingLogEntry> _history;
    private readonly IFinetuneMethod _method;
    private readonly int _microBatch;
    private readonly List<TrainingBatch>? _fixedBatches;
    private readonly List<TrainingBatch> _evalBatches = [];
    private long _lastCheckpointStep;

    private FinetuneRun(IModelSource source, IWeightProvider weights, FinetuneData data, FinetuneOptions options, string outputDir,
        long total, LoraAdapter? adapter, long stepsDone, List<TrainingLogEntry> history)
    {
        _source = source;
        _data = data;
        _options = options;
        _outputDir = outputDir;
        _total = total;
        _history = history;
        _lastCheckpointStep = stepsDone > 0 ? stepsDone : -1;
        var c = source.Config;
        var train = data.Train;
        int batch = train.FixedBatch ? train.Windows.Count : options.Batch;
        _microBatch = options.MicroBatch > 0 ? Math.Min(options.MicroBatch, batch) : batch;
        int trainTokens;
        if (train.FixedBatch)
        {
            _fixedBatches = Split(train.Windows, _microBatch).Select(s => new TrainingBatch(s)).ToList();
            trainTokens = _fixedBatches.Max(b => b.Count);
        }
        else trainTokens = _microBatch * train.LongestWindow;
        int graphTokens = trainTokens;
        if (data.Eval is { } eval)
        {
            var windows = eval.Take(options.EvalWindows).Windows;
            int perBatch = Math.Max(1, trainTokens / eval.LongestWindow);
            graphTokens = Math.Max(graphTokens, Math.Min(perBatch, windows.Count) * eval.LongestWindow);
            foreach (var chunk in Split(windows, perBatch)) _evalBatches.Add(new TrainingBatch(chunk));
        }
        if (total > int.MaxValue) throw new FitLMException($"--steps {total} is too many");
        var mezo = new MezoOptions
        {
            Epsilon = options.MezoEpsilon, LearningRate = options.LearningRate, WarmupSteps = options.WarmupSteps,
            Cosine = options.Cosine, TotalSteps = (int)total, WeightDecay = options.WeightDecay, Seed = options.Seed,
        };
        _method = options.Method switch
        {
            FinetuneMethod.Mezo when options.MezoFull => MezoTrainer.Full(source, weights, graphTokens, mezo),
            FinetuneMethod.Mezo => new MezoTrainer(c, weights, adapter!, graphTokens, mezo),
            _ => new LoraTrainer(c, weights, adapter!, graphTokens, options.SegmentLayers(c.Layers), new OptimizerOptions
            {
                LearningRate = options.LearningRate, WarmupSteps = options.WarmupSteps, Cosine = options.Cosine,
                Clip = options.Clip, WeightDecay = options.WeightDecay, TotalSteps = (int)total,
            }),
        };
        _method.StepsDone = stepsDone;
    }

    /// <summary>The method being trained (its adapter, graph and optimizer state).</summary>
    public IFinetuneMethod Method => _method;

    /// <summary>
    /// Starts a run into <paramref name="outputDir"/> (created if needed; one holding a checkpoint is refused: resume
    /// it instead). The adapter is <paramref name="initialAdapter"/> (--adapter-init) or a new one of
    /// <paramref name="options"/>' rank, alpha and targets. Cancelling writes a checkpoint and returns with
    /// <see cref="FinetuneResult.Cancelled"/>.
    /// </summary>
    public static FinetuneResult Start(IModelSource source, IWeightProvider weights, FinetuneData data, FinetuneOptions options, string outputDir,
        LoraAdapter? initialAdapter = null, IProgress<FinetuneProgress>? progress = null, CancellationToken ct = default)
    {
        options.Validate();
        TrainingSupport.Check(source, options, initialAdapter != null);
        PrepareOutput(outputDir);
        if (TrainingCheckpoint.Find(outputDir) != null)
            throw new FitLMException($"{outputDir}: holds the checkpoint of an earlier run; continue it with --resume {outputDir}, or choose another -o");
        if (!data.Train.FixedBatch && data.Train.LongestWindow > options.Context)
            throw new FitLMException($"training windows of {data.Train.LongestWindow} tokens are longer than --ctx {options.Context}");
        if (options.MezoFull && initialAdapter != null) throw new FitLMException("--mezo-full trains the model's own weights; --adapter-init starts an adapter (drop one of them)");
        if (options.MezoFull) FullModelWeights.CheckSource(source);
        var adapter = options.MezoFull ? null : initialAdapter ?? LoraAdapter.Create(source.Config, options.Targets, options.Rank, options.Alpha, options.Seed);
        // The checkpoint echoes what is trained: an initial adapter's own rank, alpha and targets.
        if (adapter != null) options = options with { Rank = adapter.Rank, Alpha = adapter.Alpha, Targets = adapter.Targets };
        long total = options.Steps > 0 ? options.Steps : data.Train.StepsFor(options.Epochs > 0 ? options.Epochs : 1, options.Batch);
        var run = new FinetuneRun(source, weights, data, options, outputDir, total, adapter, 0, []);
        return run.Loop(progress, ct);
    }

    /// <summary>
    /// Continues the run checkpointed in <paramref name="outputDir"/> with its own options, on the same model and
    /// the same training data (checked by fingerprint), as if it had never stopped.
    /// </summary>
    public static FinetuneResult Resume(IModelSource source, IWeightProvider weights, FinetuneData data, string outputDir,
        IProgress<FinetuneProgress>? progress = null, CancellationToken ct = default)
    {
        var (cp, folder) = TrainingCheckpoint.Read(outputDir);
        CheckResumable(cp, outputDir, source, data.Train);
        var adapter = cp.Options.MezoFull ? null : TrainingCheckpoint.ReadAdapter(folder, source);
        var history = cp.History.Where(e => e.Step <= cp.Step).ToList();
        var run = new FinetuneRun(source, weights, data with { TrainPath = data.TrainPath ?? cp.TrainPath, EvalPath = data.EvalPath ?? cp.EvalPath },
            cp.Options, outputDir, cp.TotalSteps, adapter, cp.Step, history);
        TrainingCheckpoint.RestoreOptimizer(folder, run._method);
        return run.Loop(progress, ct);
    }

    /// <summary>Refuses to resume a finished run, or one on other data or another model.</summary>
    public static void CheckResumable(TrainingCheckpoint cp, string outputDir, IModelSource source, TrainingData train)
    {
        if (cp.Step >= cp.TotalSteps)
            throw new FitLMException($"{outputDir}: the run already did all its {cp.TotalSteps} steps; there is nothing to resume");
        if (!SamePath(cp.ModelPath, source.Path))
            throw new FitLMException($"{outputDir}: the checkpoint was trained on {cp.ModelPath}, not {source.Path}; resume with -m {cp.ModelPath}");
        if (train.Fingerprint != cp.TrainFingerprint || train.Windows.Count != cp.TrainWindows)
            throw new FitLMException($"{outputDir}: the training data differ from the checkpoint's ({cp.TrainWindows} windows{(cp.TrainPath != null ? " of " + cp.TrainPath : "")}); resume with the same data and --ctx");
    }

    private static bool SamePath(string a, string b) =>
        string.Equals(Path.TrimEndingDirectorySeparator(Path.GetFullPath(a)), Path.TrimEndingDirectorySeparator(Path.GetFullPath(b)), StringComparison.Ordinal);

    private static void PrepareOutput(string outputDir)
    {
        if (string.IsNullOrWhiteSpace(outputDir)) throw new FitLMException("no output folder given (-o OUT_DIR)");
        if (File.Exists(outputDir)) throw new FitLMException($"{outputDir}: is a file; -o names the folder the adapter and checkpoints go to");
        try { Directory.CreateDirectory(outputDir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new FitLMException($"{outputDir}: cannot create the folder: {e.Message}", e); }
    }

    private FinetuneResult Loop(IProgress<FinetuneProgress>? progress, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        long tokens = 0, firstStep = _method.StepsDone, warmTokens = 0, warmTicks = 0;
        double evalLoss = double.NaN;
        foreach (var e in _history)
            if (!double.IsNaN(e.EvalLoss)) evalLoss = e.EvalLoss;
        // MeZO perturbs its parameters in place during a step: cancelling inside one would checkpoint a perturbed
        // adapter, so its steps finish and cancellation is seen between them. LoRA updates only after its backward.
        var stepToken = _options.Method == FinetuneMethod.Lora ? ct : CancellationToken.None;
        for (long step = _method.StepsDone; step < _total; step++)
        {
            if (ct.IsCancellationRequested) return Cancelled(step, evalLoss);
            var micro = _fixedBatches ?? Split(_data.Train.BatchAt(step, _options.Batch, _options.Seed), _microBatch).Select(s => new TrainingBatch(s)).ToList();
            double loss;
            long t0 = Stopwatch.GetTimestamp();
            try { loss = _method.Step(micro, stepToken); }
            catch (OperationCanceledException) when (ct.IsCancellationRequested) { return Cancelled(step, evalLoss); }
            if (!double.IsFinite(loss)) Diverged(step + 1, loss);
            tokens += micro.Sum(b => b.Count);
            if (step > firstStep)
            {
                // Steps only (no evaluation, no checkpoint), after the first (JIT, first touch of the scratch).
                warmTicks += Stopwatch.GetTimestamp() - t0;
                warmTokens += micro.Sum(b => b.Count);
            }
            long done = step + 1;
            bool evaluate = _evalBatches.Count > 0 && (done == _total || (_options.EvalEvery > 0 && done % _options.EvalEvery == 0));
            if (evaluate)
            {
                try { evalLoss = Evaluate(ct); }
                catch (OperationCanceledException) when (ct.IsCancellationRequested)
                {
                    _history.Add(new TrainingLogEntry(done, loss, double.NaN));
                    return Cancelled(done, evalLoss);
                }
            }
            _history.Add(new TrainingLogEntry(done, loss, evaluate ? evalLoss : double.NaN));
            double elapsed = clock.Elapsed.TotalSeconds, stepsRun = done - firstStep;
            progress?.Report(new FinetuneProgress(done, _total, loss, evalLoss, evaluate, tokens / Math.Max(elapsed, 1e-9),
                ProcessMemory.PeakRssBytes(), TimeSpan.FromSeconds(elapsed / stepsRun * (_total - done))));
            if (_options.SaveEvery > 0 && done % _options.SaveEvery == 0 && done < _total) SaveCheckpoint(done);
        }
        string checkpoint = SaveCheckpoint(_total);
        // The run is complete: its outputs are written even if a cancel arrives now.
        string? gguf = null, model = null;
        if (_method.Adapter is { } adapter)
        {
            PeftAdapterFolder.Write(adapter, _outputDir, _source, ct: CancellationToken.None);
            gguf = Path.Combine(_outputDir, AdapterGgufFile);
            GgufAdapterFile.Write(adapter, gguf, _source, CancellationToken.None);
        }
        if (_method.ModelWeights is { } weights) model = weights.Write(Path.Combine(_outputDir, FullModelWeights.FileName), CancellationToken.None);
        return new FinetuneResult
        {
            StepsDone = _total, TotalSteps = _total, Cancelled = false, OutputDir = _outputDir, CheckpointDir = checkpoint,
            AdapterGguf = gguf, ModelGguf = model, History = _history, EvalLoss = evalLoss, TokensPerSecond = tokens / Math.Max(clock.Elapsed.TotalSeconds, 1e-9),
            StepTokensPerSecond = warmTicks == 0 ? double.NaN : warmTokens / (warmTicks / (double)Stopwatch.Frequency),
        };
    }

    /// <summary>The mean next-token loss over the evaluation windows, with the adapter as it is now.</summary>
    private double Evaluate(CancellationToken ct)
    {
        double sum = 0;
        long targets = 0;
        foreach (var b in _evalBatches)
        {
            sum += _method.EvaluateLoss(b, ct);
            targets += b.TargetCount;
        }
        return sum / targets;
    }

    private FinetuneResult Cancelled(long stepsDone, double evalLoss)
    {
        string checkpoint = stepsDone == _lastCheckpointStep
            ? TrainingCheckpoint.Find(_outputDir)!
            : SaveCheckpoint(stepsDone);
        return new FinetuneResult
        {
            StepsDone = stepsDone, TotalSteps = _total, Cancelled = true, OutputDir = _outputDir, CheckpointDir = checkpoint,
            History = _history, EvalLoss = evalLoss,
        };
    }

    /// <summary>Stops the run on a NaN or infinite loss; the last checkpoint stays as it was.</summary>
    private void Diverged(long step, double loss)
    {
        _history.Add(new TrainingLogEntry(step, loss, double.NaN));
        TrainingLog.Write(Path.Combine(_outputDir, TrainingLog.FileName), _history);
        string what = double.IsNaN(loss) ? "NaN" : "infinite";
        string kept = _lastCheckpointStep >= 0
            ? $"the last good checkpoint (step {_lastCheckpointStep}) is in {Path.Combine(_outputDir, TrainingCheckpoint.FolderName)}"
            : "no checkpoint was saved before it (--save-every N saves one every N steps)";
        throw new FitLMException($"loss became {what} at step {step}; {kept}; a lower --lr may help");
    }

    private string SaveCheckpoint(long stepsDone)
    {
        var cp = new TrainingCheckpoint
        {
            Options = _options, Step = stepsDone, TotalSteps = _total, ModelPath = Path.GetFullPath(_source.Path),
            TrainPath = _data.TrainPath is { } t ? Path.GetFullPath(t) : null,
            EvalPath = _data.EvalPath is { } e ? Path.GetFullPath(e) : null,
            TrainFixedBatch = _data.Train.FixedBatch, TrainFingerprint = _data.Train.Fingerprint, TrainWindows = _data.Train.Windows.Count, History = _history,
        };
        string folder = cp.Write(_outputDir, _method, _source);
        _lastCheckpointStep = stepsDone;
        TrainingLog.Write(Path.Combine(_outputDir, TrainingLog.FileName), _history);
        return folder;
    }

    private static IEnumerable<IReadOnlyList<int[]>> Split(IReadOnlyList<int[]> sequences, int size)
    {
        for (int i = 0; i < sequences.Count; i += size)
            yield return sequences.Skip(i).Take(size).ToArray();
    }
}
