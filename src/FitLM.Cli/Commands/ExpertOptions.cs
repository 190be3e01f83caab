using System.CommandLine;
using FitLM.Memory;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`--expert-cache` and `--expert-policy`: how a mixture of experts holds its routed experts (docs/moe.md).</summary>
internal sealed class ExpertOptions
{
    public readonly Option<string?> Cache = new("--expert-cache")
    {
        Description = "mixtures of experts: memory for the expert cache (e.g. 8MiB): each layer holds as many experts as this gives it " +
            "(at least the k a token runs); the others are read from storage when the router picks them",
    };

    public readonly Option<string?> Policy = new("--expert-policy")
    {
        Description = "mixtures of experts: which experts the cache keeps: lru, frequency, predict (default: the next layer's router reads " +
            "ahead, the most used stay), predict-lru (read ahead, the most recent stay) or none (every routed expert read each time, nothing kept)",
    };

    public readonly Option<int> Margin = new("--expert-margin")
    {
        Description = "mixtures of experts, predict and predict-lru: experts read ahead per token beyond the k the router will pick " +
            $"(more hits for more bytes read; default {ExpertCachedWeights.DefaultPredictMargin})",
        DefaultValueFactory = _ => ExpertCachedWeights.DefaultPredictMargin,
    };

    public void AddTo(Command command)
    {
        command.Add(Cache);
        command.Add(Policy);
        command.Add(Margin);
    }

    public LoadOptions Apply(ParseResult r, LoadOptions o)
    {
        long bytes = r.GetValue(Cache) is { } s ? MemorySize.Parse(s) : 0;
        var policy = r.GetValue(Policy) is { } p ? ParsePolicy(p) : o.ExpertPolicy;
        int margin = r.GetValue(Margin);
        if (margin is < 0 or > 64) throw new FitLMException($"--expert-margin {margin} is out of range (0..64)");
        return o with { ExpertCacheBytes = bytes, ExpertPolicy = policy, ExpertPredictMargin = margin };
    }

    public static ExpertPolicy ParsePolicy(string s) => s switch
    {
        "lru" => ExpertPolicy.Lru,
        "frequency" => ExpertPolicy.Frequency,
        "predict" => ExpertPolicy.Predict,
        "predict-lru" => ExpertPolicy.PredictLru,
        "none" => ExpertPolicy.None,
        _ => throw new FitLMException($"--expert-policy '{s}' is not an expert policy (lru, frequency, predict, predict-lru, none)"),
    };
}
