namespace FitLM.Generation;

/// <summary>Sampling settings with llama.cpp's defaults; Temperature ≤ 0 means greedy.</summary>
public sealed record SamplingOptions
{
    public float Temperature { get; init; } = 0.8f;
    public int TopK { get; init; } = 40;
    public float TopP { get; init; } = 0.95f;
    public float MinP { get; init; } = 0.05f;
    public float RepeatPenalty { get; init; } = 1.0f;
    /// <summary>How many recent tokens the repetition penalty looks at.</summary>
    public int RepeatLastN { get; init; } = 64;
    public int Seed { get; init; } = -1;

    public static SamplingOptions Greedy => new() { Temperature = 0 };

    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0 || Temperature > 100) throw new FitLMException($"temperature {Temperature} is out of range (0..100)");
        if (TopK < 0) throw new FitLMException($"top-k {TopK} is out of range (0 disables it)");
        if (!(TopP is > 0 and <= 1)) throw new FitLMException($"top-p {TopP} is out of range (0, 1]");
        if (!(MinP is >= 0 and <= 1)) throw new FitLMException($"min-p {MinP} is out of range [0, 1]");
        if (!(RepeatPenalty is > 0 and <= 10)) throw new FitLMException($"repeat penalty {RepeatPenalty} is out of range (0, 10]");
        if (RepeatLastN < 0) throw new FitLMException($"repeat-last-n {RepeatLastN} is out of range");
    }
}
