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
        var load = new ModelLoadOptions();
        var sampling = new SamplingFlags();
        var cmd = new Command("chat", "chat with a model in the terminal (its chat template, streamed replies, history; /clear, /exit, Ctrl-C stops a reply)")
        {
            system, template, verbose, n,
        };
        sampling.AddTo(cmd);
        load.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(_ =>
        {
            var settings = new ChatSettings
            {
                System = r.GetValue(system),
                Template = r.GetValue(template),
                VerbosePrompt = r.GetValue(verbose),
                Reply = new ChatReplyOptions { MaxTokens = r.GetValue(n), Sampling = sampling.Read(r) },
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
    public static int FromRun(ParseResult r, ModelLoadOptions load, SamplingFlags sampling)
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
            Reply = new ChatReplyOptions { MaxTokens = r.GetResult(n) is { Implicit: false } ? r.GetValue<int>("--n-predict") : -1, Sampling = sampling.Read(r) },
        };
        var options = load.Read(r);
        return Start(() => load.Load(r, options), load.ModelPath(r), settings);
    }

    /// <summary>Validates the settings and runs the chat: `fitlm chat` and `fitlm run -cnv` both come here.</summary>
    public static int Start(Func<LanguageModel> loadModel, string modelPath, ChatSettings settings)
    {
        if (settings.Reply.MaxTokens is < -1 or 0) throw new FitLMException($"--n-predict {settings.Reply.MaxTokens} is out of range (-1 or at least 1)");
        return ChatLoop.Run(() => Warmup.Loaded(loadModel()), modelPath, settings);
    }
}
