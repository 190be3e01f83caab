using FitLM.Adapters;

namespace FitLM.Training;

/// <summary>
/// <c>LanguageModel.Finetune</c>: the library's entry to fine-tuning. The model's weights stay frozen in their
/// stored type; the adapter is trained and written to the output folder (PEFT folder and adapter.gguf).
/// </summary>
/// <example><code>
/// using var model = LanguageModel.Load("model.gguf", new LoadOptions { ContextLength = 256, MaxBatch = 1 });
/// var result = model.Finetune(File.ReadAllText("train.txt"), new FinetuneOptions { Steps = 200 }, "out", progress: p, ct: ct);
/// </code></example>
public static class LanguageModelFinetune
{
    /// <summary>Trains on <paramref name="data"/> into <paramref name="outputDir"/>; cancelling writes a checkpoint and returns (<see cref="FinetuneResult.Cancelled"/>).</summary>
    public static FinetuneResult Finetune(this LanguageModel model, FinetuneData data, FinetuneOptions options, string outputDir,
        LoraAdapter? initialAdapter = null, IProgress<FinetuneProgress>? progress = null, CancellationToken ct = default) =>
        FinetuneRun.Start(model.Source, model.Weights, data, options, outputDir, initialAdapter, progress, ct);

    /// <summary>Trains on <paramref name="trainText"/> (windows of <see cref="FinetuneOptions.Context"/> tokens), evaluating on <paramref name="evalText"/> if given.</summary>
    public static FinetuneResult Finetune(this LanguageModel model, string trainText, FinetuneOptions options, string outputDir,
        string? evalText = null, IProgress<FinetuneProgress>? progress = null, CancellationToken ct = default)
    {
        var train = TrainingData.FromText(model.Tokenizer, trainText, options.Context, "the training text", ct);
        var eval = evalText == null ? null : TrainingData.FromText(model.Tokenizer, evalText, options.Context, "the evaluation text", ct);
        return model.Finetune(new FinetuneData(train, eval), options, outputDir, null, progress, ct);
    }

    /// <summary>Continues the run checkpointed in <paramref name="outputDir"/> on the same data, with the options it started with.</summary>
    public static FinetuneResult ResumeFinetune(this LanguageModel model, FinetuneData data, string outputDir,
        IProgress<FinetuneProgress>? progress = null, CancellationToken ct = default) =>
        FinetuneRun.Resume(model.Source, model.Weights, data, outputDir, progress, ct);
}
