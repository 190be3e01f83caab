using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using FitLM.Adapters;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// Everything a run needs to continue as if it had never stopped, in OUT_DIR/checkpoint/: the adapter as a PEFT
/// folder (so a checkpoint is also a usable adapter), the optimizer's state arrays in optimizer.safetensors, and
/// state.json (the step, the options, the data's fingerprint, the loss history). A checkpoint is written whole in a
/// temporary folder beside it and renamed into place; the previous one is removed only after the new one is in place,
/// and a crash between the two renames leaves the previous one under a hidden name that <see cref="Find"/> still finds.
/// </summary>
public sealed class TrainingCheckpoint
{
    public const string FolderName = "checkpoint";
    public const string StateFile = "state.json";
    public const string OptimizerFile = "optimizer.safetensors";
    private const int FormatVersion = 1;
    private const string OldPrefix = ".checkpoint.old-";

    public required FinetuneOptions Options { get; init; }
    /// <summary>Steps done when the checkpoint was written.</summary>
    public required long Step { get; init; }
    public required long TotalSteps { get; init; }
    /// <summary>The model trained on (its full path), so a resume without -m finds it.</summary>
    public required string ModelPath { get; init; }
    /// <summary>The training text or id batch (full path; null when the data came from memory).</summary>
    public string? TrainPath { get; init; }
    public string? EvalPath { get; init; }
    /// <summary>The training data was a fixed batch of ids (--train-ids), not a text.</summary>
    public bool TrainFixedBatch { get; init; }
    public required ulong TrainFingerprint { get; init; }
    public required int TrainWindows { get; init; }
    public required IReadOnlyList<TrainingLogEntry> History { get; init; }

    /// <summary>The checkpoint folder of <paramref name="outputDir"/>, or null when it holds none.</summary>
    public static string? Find(string outputDir)
    {
        string main = Path.Combine(outputDir, FolderName);
        if (File.Exists(Path.Combine(main, StateFile))) return main;
        if (!Directory.Exists(outputDir)) return null;
        // Interrupted between moving the old checkpoint aside and the new one in: the old one is complete.
        return Directory.EnumerateDirectories(outputDir, OldPrefix + "*")
            .Where(d => File.Exists(Path.Combine(d, StateFile)))
            .OrderByDescending(Directory.GetLastWriteTimeUtc).FirstOrDefault();
    }

    /// <summary>Writes this checkpoint of <paramref name="method"/> (trained on <paramref name="source"/>) into <paramref name="outputDir"/>.</summary>
    public string Write(string outputDir, IFinetuneMethod method, IModelSource source)
    {
        string final = Path.Combine(outputDir, FolderName);
        string suffix = $"{Environment.ProcessId}-{Guid.NewGuid().ToString("N")[..8]}";
        string temp = Path.Combine(outputDir, $".checkpoint.tmp-{suffix}");
        try
        {
            Directory.CreateDirectory(temp);
            if (method.Adapter is { } adapter) PeftAdapterFolder.Write(adapter, temp, source);
            method.ModelWeights?.Write(Path.Combine(temp, FullModelWeights.FileName)); // --mezo-full: the model is the state
            if (method.OptimizerState.Count > 0)
                SafetensorsWriter.Write(Path.Combine(temp, OptimizerFile),
                    method.OptimizerState.Select(kv => new SafetensorsTensor(kv.Key, [kv.Value.Length], kv.Value)).ToList());
            Storage.OutputFile.WriteAtomically(Path.Combine(temp, StateFile), t => File.WriteAllText(t, StateJson(), new UTF8Encoding(false)));
            string? old = null;
            if (Directory.Exists(final))
            {
                old = Path.Combine(outputDir, OldPrefix + suffix);
                Directory.Move(final, old);
            }
            Directory.Move(temp, final);
            if (old != null) TryDelete(old);
            foreach (var stale in Directory.EnumerateDirectories(outputDir, OldPrefix + "*")) TryDelete(stale);
            return final;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temp);
            throw new FitLMException($"{outputDir}: cannot write the checkpoint: {e.Message}", e);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    /// <summary>Reads the state of the checkpoint in <paramref name="outputDir"/> (not its arrays: <see cref="ReadAdapter"/>, <see cref="RestoreOptimizer"/>).</summary>
    public static (TrainingCheckpoint Checkpoint, string Folder) Read(string outputDir)
    {
        string folder = Find(outputDir) ?? throw new FitLMException(Directory.Exists(outputDir)
            ? $"{outputDir}: no checkpoint to resume ({FolderName}/{StateFile} is missing)"
            : $"{outputDir}: no such folder to resume");
        string path = Path.Combine(folder, StateFile);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var o = doc.RootElement;
            int version = o.GetProperty("format").GetInt32();
            if (version != FormatVersion) throw new FitLMException($"{path}: checkpoint format {version} is not the {FormatVersion} this FitLM reads");
            return (new TrainingCheckpoint
            {
                Options = ReadOptions(o.GetProperty("options")),
                Step = o.GetProperty("step").GetInt64(),
                TotalSteps = o.GetProperty("total_steps").GetInt64(),
                ModelPath = o.GetProperty("model").GetString()!,
                TrainPath = o.TryGetProperty("train", out var tp) ? tp.GetString() : null,
                EvalPath = o.TryGetProperty("eval", out var ep) ? ep.GetString() : null,
                TrainFixedBatch = o.TryGetProperty("train_fixed_batch", out var fb) && fb.GetBoolean(),
                TrainFingerprint = ulong.Parse(o.GetProperty("train_fingerprint").GetString()!, NumberStyles.HexNumber, CultureInfo.InvariantCulture),
                TrainWindows = o.GetProperty("train_windows").GetInt32(),
                History = o.GetProperty("history").EnumerateArray().Select(TrainingLog.FromJson).ToList(),
            }, folder);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException or OverflowException)
        {
            throw new FitLMException($"{path}: the checkpoint's state is corrupt ({e.Message})", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"{path}: cannot read: {e.Message}", e);
        }
    }

    /// <summary>The checkpoint's adapter, in the row order of <paramref name="source"/>.</summary>
    public static LoraAdapter ReadAdapter(string folder, IModelSource source) => PeftAdapterFolder.Read(folder, source);

    /// <summary>Copies the saved optimizer arrays into <paramref name="method"/>'s, refusing a checkpoint whose arrays do not match.</summary>
    public static void RestoreOptimizer(string folder, IFinetuneMethod method)
    {
        // --mezo-full: the trained weights are the state (MeZO keeps no other).
        method.ModelWeights?.Restore(Path.Combine(folder, FullModelWeights.FileName));
        if (method.OptimizerState.Count == 0) return;
        string path = Path.Combine(folder, OptimizerFile);
        if (!File.Exists(path)) throw new FitLMException($"{folder}: the checkpoint has no {OptimizerFile}");
        using var file = SafetensorsFile.Open(path);
        foreach (var (name, dst) in method.OptimizerState)
        {
            if (!file.Tensors.TryGetValue(name, out var t) || t.Type != GgmlType.F32 || t.Elements != dst.Length)
                throw new FitLMException($"{path}: '{name}' is missing or has the wrong shape; the checkpoint does not belong to this run");
            file.ReadTensorBytes(t, 0, MemoryMarshal.AsBytes(dst.AsSpan()));
        }
    }

    private string StateJson()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteNumber("format", FormatVersion);
            w.WriteNumber("step", Step);
            w.WriteNumber("total_steps", TotalSteps);
            w.WriteString("model", ModelPath);
            if (TrainPath != null) w.WriteString("train", TrainPath);
            if (EvalPath != null) w.WriteString("eval", EvalPath);
            w.WriteBoolean("train_fixed_batch", TrainFixedBatch);
            w.WriteString("train_fingerprint", TrainFingerprint.ToString("x16", CultureInfo.InvariantCulture));
            w.WriteNumber("train_windows", TrainWindows);
            w.WritePropertyName("options");
            WriteOptions(w, Options);
            w.WriteStartArray("history");
            foreach (var e in History) w.WriteRawValue(TrainingLog.Line(e));
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    // Floats as their exact bit patterns' round-trip text ("R"), so a resumed run has the very same settings.
    private static void WriteOptions(Utf8JsonWriter w, FinetuneOptions o)
    {
        w.WriteStartObject();
        w.WriteString("method", o.Method == FinetuneMethod.Mezo ? "mezo" : "lora");
        w.WriteNumber("ctx", o.Context);
        w.WriteNumber("batch", o.Batch);
        w.WriteNumber("micro_batch", o.MicroBatch);
        w.WriteNumber("steps", o.Steps);
        w.WriteNumber("epochs", o.Epochs);
        w.WriteNumber("seed", o.Seed);
        w.WriteNumber("rank", o.Rank);
        w.WriteNumber("alpha", o.Alpha);
        w.WriteStartArray("targets");
        foreach (var t in o.Targets) w.WriteStringValue(t);
        w.WriteEndArray();
        w.WriteNumber("checkpoint_layers", o.CheckpointLayers);
        w.WriteNumber("lr", o.LearningRate);
        w.WriteString("lr_schedule", o.Cosine ? "cosine" : "constant");
        w.WriteNumber("warmup", o.WarmupSteps);
        w.WriteNumber("clip", o.Clip);
        w.WriteNumber("weight_decay", o.WeightDecay);
        w.WriteNumber("mezo_eps", o.MezoEpsilon);
        w.WriteBoolean("mezo_full", o.MezoFull);
        w.WriteNumber("save_every", o.SaveEvery);
        w.WriteNumber("eval_every", o.EvalEvery);
        w.WriteNumber("eval_windows", o.EvalWindows);
        w.WriteEndObject();
    }

    private static FinetuneOptions ReadOptions(JsonElement o) => new()
    {
        Method = o.GetProperty("method").GetString() == "mezo" ? FinetuneMethod.Mezo : FinetuneMethod.Lora,
        Context = o.GetProperty("ctx").GetInt32(),
        Batch = o.GetProperty("batch").GetInt32(),
        MicroBatch = o.GetProperty("micro_batch").GetInt32(),
        Steps = o.GetProperty("steps").GetInt64(),
        Epochs = o.GetProperty("epochs").GetDouble(),
        Seed = o.GetProperty("seed").GetInt32(),
        Rank = o.GetProperty("rank").GetInt32(),
        Alpha = o.GetProperty("alpha").GetSingle(),
        Targets = o.GetProperty("targets").EnumerateArray().Select(t => t.GetString()!).ToArray(),
        CheckpointLayers = o.GetProperty("checkpoint_layers").GetInt32(),
        LearningRate = o.GetProperty("lr").GetSingle(),
        Cosine = o.GetProperty("lr_schedule").GetString() == "cosine",
        WarmupSteps = o.GetProperty("warmup").GetInt32(),
        Clip = o.GetProperty("clip").GetSingle(),
        WeightDecay = o.GetProperty("weight_decay").GetSingle(),
        MezoEpsilon = o.GetProperty("mezo_eps").GetSingle(),
        MezoFull = o.TryGetProperty("mezo_full", out var full) && full.GetBoolean(),
        SaveEvery = o.GetProperty("save_every").GetInt32(),
        EvalEvery = o.GetProperty("eval_every").GetInt32(),
        EvalWindows = o.GetProperty("eval_windows").GetInt32(),
    };

    private static void TryDelete(string folder)
    {
        try { if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
