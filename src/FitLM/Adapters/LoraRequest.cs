using FitLM.Model;

namespace FitLM.Adapters;

/// <summary>An adapter to apply, as a user names it (<c>--lora PATH</c>, <c>--lora-scale S</c>): a PEFT folder or a GGUF LoRA file, and its scale.</summary>
public sealed record LoraRequest(string Path, float Scale = 1f)
{
    /// <summary>Loads every requested adapter for <paramref name="source"/> (checked against its shapes, rows in its order).</summary>
    public static IReadOnlyList<ScaledAdapter> LoadAll(IReadOnlyList<LoraRequest> requests, IModelSource source, CancellationToken ct = default)
    {
        var result = new List<ScaledAdapter>();
        foreach (var r in requests)
        {
            if (!float.IsFinite(r.Scale)) throw new FitLMException($"--lora-scale {r.Scale} is not a number");
            result.Add(new ScaledAdapter(LoraFile.Load(r.Path, source, ct), r.Scale));
        }
        return result;
    }
}
