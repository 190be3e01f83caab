using System.CommandLine;
using FitLM.Generation;

namespace FitLM.Cli.Commands;

/// <summary>The sampling flags, named as llama.cpp names them: one group that run and chat (and run -cnv) share.</summary>
internal sealed class SamplingFlags
{
    public readonly Option<float> Temperature = new("--temp") { Description = "temperature (0: greedy)", DefaultValueFactory = _ => 0.8f };
    public readonly Option<int> TopK = new("--top-k") { Description = "top-k sampling (0: off)", DefaultValueFactory = _ => 40 };
    public readonly Option<float> TopP = new("--top-p") { Description = "top-p sampling (1.0: off)", DefaultValueFactory = _ => 0.95f };
    public readonly Option<float> MinP = new("--min-p") { Description = "min-p sampling (0.0: off)", DefaultValueFactory = _ => 0.05f };
    public readonly Option<float> RepeatPenalty = new("--repeat-penalty") { Description = "penalize repeated tokens (1.0: off)", DefaultValueFactory = _ => 1.0f };
    public readonly Option<int> RepeatLastN = new("--repeat-last-n") { Description = "tokens the repeat penalty looks back over", DefaultValueFactory = _ => 64 };
    public readonly Option<int> Seed = new("--seed", "-s") { Description = "random seed (-1: random)", DefaultValueFactory = _ => -1 };
    public readonly Option<bool> IgnoreEos = new("--ignore-eos") { Description = "never sample the end-of-generation tokens: generate all -n tokens (benchmarks)" };

    public void AddTo(Command command)
    {
        command.Add(Temperature);
        command.Add(TopK);
        command.Add(TopP);
        command.Add(MinP);
        command.Add(RepeatPenalty);
        command.Add(RepeatLastN);
        command.Add(Seed);
        command.Add(IgnoreEos);
    }

    /// <summary>The options the flags give, validated.</summary>
    public SamplingOptions Read(ParseResult r)
    {
        var options = new SamplingOptions
        {
            Temperature = r.GetValue(Temperature),
            TopK = r.GetValue(TopK),
            TopP = r.GetValue(TopP),
            MinP = r.GetValue(MinP),
            RepeatPenalty = r.GetValue(RepeatPenalty),
            RepeatLastN = r.GetValue(RepeatLastN),
            Seed = r.GetValue(Seed),
            IgnoreEos = r.GetValue(IgnoreEos),
        };
        options.Validate();
        return options;
    }
}
