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
    /// <summary>OpenAI's frequency_penalty: subtracted from a token's logit once per time it was generated so far.</summary>
    public float FrequencyPenalty { get; init; }
    /// <summary>OpenAI's presence_penalty: subtracted once from the logit of every token generated so far.</summary>
    public float PresencePenalty { get; init; }
    /// <summary>OpenAI's logit_bias: added to the logits of these token ids before anything else.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }
    public int Seed { get; init; } = -1;
    /// <summary>llama.cpp's --ignore-eos: end-of-generation tokens are never sampled, so generation runs to its token limit (benchmarks).</summary>
    public bool IgnoreEos { get; init; }

    public static SamplingOptions Greedy => new() { Temperature = 0 };

    public void Validate()
    {
        if (!float.IsFinite(Temperature) || Temperature < 0 || Temperature > 100) throw new FitLMException($"temperature {Temperature} is out of range (0..100)");
        if (TopK < 0) throw new FitLMException($"top-k {TopK} is out of range (0 disables it)");
        if (!(TopP is > 0 and <= 1)) throw new FitLMException($"top-p {TopP} is out of range (0, 1]");
        if (!(MinP is >= 0 and <= 1)) throw new FitLMException($"min-p {MinP} is out of range [0, 1]");
        if (!(RepeatPenalty is > 0 and <= 10)) throw new FitLMException($"repeat penalty {RepeatPenalty} is out of range (0, 10]");
        if (RepeatLastN < 0) throw new FitLMException($"repeat-last-n {RepeatLastN} is out of range");
        if (!(FrequencyPenalty is >= -2 and <= 2)) throw new FitLMException($"frequency penalty {FrequencyPenalty} is out of range [-2, 2]");
        if (!(PresencePenalty is >= -2 and <= 2)) throw new FitLMException($"presence penalty {PresencePenalty} is out of range [-2, 2]");
        if (LogitBias != null)
            foreach (var (id, bias) in LogitBias)
            {
                if (id < 0) throw new FitLMException($"logit bias for token {id}: not a token id");
                if (!(bias is >= -100 and <= 100)) throw new FitLMException($"logit bias {bias} for token {id} is out of range [-100, 100]");
            }
    }
}
