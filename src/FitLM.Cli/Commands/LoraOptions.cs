using System.CommandLine;
using System.Globalization;
using FitLM.Adapters;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>
/// `--lora PATH` (repeatable) and `--lora-scale S`: LoRA adapters applied at inference. One scale applies to every
/// adapter; several scales, one per --lora in order, give each its own (llama.cpp's --lora-scaled PATH S, as two flags).
/// </summary>
internal sealed class LoraOptions
{
    public readonly Option<string[]> Lora = new("--lora")
    {
        Description = "LoRA adapter to apply: a PEFT folder (adapter_config.json + adapter_model.safetensors) or a GGUF LoRA file (repeatable)",
        HelpName = "PATH",
        AllowMultipleArgumentsPerToken = false,
    };

    public readonly Option<string[]> Scale = new("--lora-scale")
    {
        Description = "scale of the adapters' update (default 1): one value for all, or one per --lora in order",
        HelpName = "S",
        AllowMultipleArgumentsPerToken = false,
    };

    public void AddTo(Command command)
    {
        command.Add(Lora);
        command.Add(Scale);
    }

    /// <summary>The adapters given, each with its scale; a FitLMException names a bad or unmatched --lora-scale.</summary>
    public IReadOnlyList<LoraRequest> Read(ParseResult r)
    {
        var paths = r.GetValue(Lora) ?? [];
        var scaleTexts = r.GetValue(Scale) ?? [];
        var scales = scaleTexts.Select(s => float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out float v) && float.IsFinite(v)
            ? v : throw new FitLMException($"--lora-scale {s} is not a number")).ToArray();
        if (paths.Length == 0 && scales.Length > 0) throw new FitLMException("--lora-scale applies to adapters; give them with --lora PATH");
        if (scales.Length > 1 && scales.Length != paths.Length)
            throw new FitLMException($"{scales.Length} --lora-scale values for {paths.Length} --lora adapters; give one scale for all or one per adapter");
        return paths.Select((p, i) => new LoraRequest(p, scales.Length == 0 ? 1f : scales[Math.Min(i, scales.Length - 1)])).ToList();
    }

    public LoadOptions Apply(ParseResult r, LoadOptions o) => o with { Adapters = Read(r) };
}
