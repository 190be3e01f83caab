using System.CommandLine;
using FitLM.Chat;
using FitLM.Cli.Chat;
using FitLM.Generation;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm chat`: an interactive chat in the terminal through the model's chat template (also `run -cnv`).</summary>
internal static class ChatCommand
{
    public static Command Create()
    {
        var system = new Option<string?>("--system", "-sys", "--system-prompt") { Description = "system prompt (kept when /clear forgets the conversation)" };
        var template = new Option<string?>("--chat-template")
        {
            Description = $"chat template: a Jinja file (or a tokenizer_config.json holding one), or a built-in: {string.Join(", ", BuiltInChatTemplates.Names)} " +
                "(default: the model's own; chatml when it has none)",
        };
        var verbose = new Option<bool>("--verbose-prompt") { Description = "print each turn's rendered prompt and token counts to stderr" };
        var n = new Option<int>("--n-predict", "-n") { Description = "most tokens per reply (-1: until the end of the turn or of the context)", DefaultValueFactory = _ => -1 };
        var temp = new Option<float>("--temp") { Description = "temperature (0: greedy)", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "top-k sampling (0: off)", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "top-p sampling (1.0: off)", DefaultValueFactory = _ => 0.95f };
        var minP = new Option<float>("--min-p") { Description = "min-p sampling (0.0: off)", DefaultValueFactory = _ => 0.05f };
        var repeat = new Option<float>("--repeat-penalty") { Description = "penalize repeated tokens (1.0: off)", DefaultValueFactory = _ => 1.0f };
        var repeatN = new Option<int>("--repeat-last-n") { Description = "tokens the repeat penalty looks back over", DefaultValueFactory = _ => 64 };
        var seed = new Option<int>("--seed", "-s") { Description = "random seed (-1: random)", DefaultValueFactory = _ => -1 };
        var load = new ModelLoadOptions();
        var cmd = new Command("chat", "chat with a model in the terminal (its chat template, streamed replies, history; /clear, /exit, Ctrl-C stops a reply)")
        {
            system, template, verbose, n, temp, topK, topP, minP, repeat, repeatN, seed,
        };
        load.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(_ =>
        {
            var settings = new ChatSettings
            {
                System = r.GetValue(system),
                Template = r.GetValue(template),
                VerbosePrompt = r.GetValue(verbose),
                Reply = new ChatReplyOptions { MaxTokens = r.GetValue(n), Sampling = Sampling(r) },
            };
            var options = load.Read(r);
            return Start(() => load.Load(r, options), load.ModelPath(r), settings);
        }));
        return cmd;
    }

    /// <summary>
    /// `fitlm run -cnv` (llama.cpp's conversation flag): the same chat with run's flags; -p (or -f FILE) is the system
    /// prompt, and -n limits each reply only when given (run's default of 128 is for one completion).
    /// </summary>
    public static int FromRun(ParseResult r, ModelLoadOptions load)
    {
        string? system = r.GetValue<string?>("--prompt");
        if (r.GetValue<string?>("--file") is { } file)
        {
            if (file == "-") throw new FitLMException("-f - reads standard input, which the chat reads messages from: give the system prompt with -p or -f FILE");
            if (!File.Exists(file)) throw new FitLMException($"{file}: prompt file not found");
            system = File.ReadAllText(file);
        }
        var n = r.CommandResult.Command.Options.First(o => o.Name == "--n-predict");
        var settings = new ChatSettings
        {
            System = system,
            Reply = new ChatReplyOptions { MaxTokens = r.GetResult(n) is { Implicit: false } ? r.GetValue<int>("--n-predict") : -1, Sampling = Sampling(r) },
        };
        var options = load.Read(r);
        return Start(() => load.Load(r, options), load.ModelPath(r), settings);
    }

    /// <summary>The sampling flags, which chat and run name alike.</summary>
    private static SamplingOptions Sampling(ParseResult r) => new()
    {
        Temperature = r.GetValue<float>("--temp"),
        TopK = r.GetValue<int>("--top-k"),
        TopP = r.GetValue<float>("--top-p"),
        MinP = r.GetValue<float>("--min-p"),
        RepeatPenalty = r.GetValue<float>("--repeat-penalty"),
        RepeatLastN = r.GetValue<int>("--repeat-last-n"),
        Seed = r.GetValue<int>("--seed"),
    };

    /// <summary>Validates the settings and runs the chat: `fitlm chat` and `fitlm run -cnv` both come here.</summary>
    public static int Start(Func<LanguageModel> loadModel, string modelPath, ChatSettings settings)
    {
        settings.Reply.Sampling.Validate();
        if (settings.Reply.MaxTokens is < -1 or 0) throw new FitLMException($"--n-predict {settings.Reply.MaxTokens} is out of range (-1 or at least 1)");
        return ChatLoop.Run(loadModel, modelPath, settings);
    }
}
