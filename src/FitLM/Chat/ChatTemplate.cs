using FitLM.Chat.Jinja;
using FitLM.Model;
using FitLM.Tokenization;

namespace FitLM.Chat;

/// <summary>
/// Turns a conversation into the prompt text a model was trained on: the model's own Jinja chat template
/// (rendered as Hugging Face's apply_chat_template does), built-in ChatML, or plain completion for base models.
/// Instances are immutable and thread-safe.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>End-of-turn markers of well-known template families, looked for in a template's text.</summary>
    private static readonly string[] KnownTurnEnds = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|END_OF_TURN_TOKEN|>", "<|end_of_turn|>", "<|EOT|>"];

    private const string ChatMlSource =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private readonly JinjaTemplate? _jinja;
    private readonly string _bos, _eos;
    private readonly Func<DateTime> _now;

    public string Name { get; }

    /// <summary>
    /// Strings that end an assistant turn under this template (e.g. "&lt;|im_end|&gt;", "&lt;|eot_id|&gt;", "&lt;|end|&gt;", "&lt;/s&gt;"),
    /// for templates whose end marker is not an end-of-generation token of the vocabulary.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; }

    private ChatTemplate(string name, JinjaTemplate? jinja, string bos, string eos, IReadOnlyList<string> stops, Func<DateTime>? now = null)
    {
        Name = name;
        _jinja = jinja;
        _bos = bos;
        _eos = eos;
        StopStrings = stops;
        _now = now ?? (() => DateTime.Now);
    }

    /// <summary>The built-in ChatML template (&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n).</summary>
    public static ChatTemplate ChatMl { get; } = new("chatml", new JinjaTemplate(ChatMlSource), "", "", ["<|im_end|>"]);

    /// <summary>Plain completion for base models: the messages' contents joined by newlines, no role markup.</summary>
    public static ChatTemplate Completion { get; } = new("completion", null, "", "", []);

    /// <summary>
    /// The model's template (GGUF <c>tokenizer.chat_template</c>, or HF folder <c>tokenizer_config.json</c> "chat_template",
    /// string or the list-of-{name,template} form: "default" is taken), else built-in ChatML when the vocabulary has
    /// &lt;|im_start|&gt;/&lt;|im_end|&gt;, else plain completion for base models.
    /// </summary>
    public static ChatTemplate ForModel(LanguageModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        return ForSource(model.Source);
    }

    internal static ChatTemplate ForSource(IModelSource source) =>
        Choose(ChatTemplateSource.Find(source), source.Tokenizer, source.Path);

    /// <summary>The model's template text when it has one, else ChatML for ChatML vocabularies, else completion.</summary>
    internal static ChatTemplate Choose(string? text, Tokenizer tok, string where)
    {
        if (!string.IsNullOrWhiteSpace(text))
        {
            string bos = tok.BosId >= 0 ? tok.TokenText(tok.BosId) : "";
            string eos = tok.EosId >= 0 ? tok.TokenText(tok.EosId) : "";
            try { return FromJinja(text, bos, eos); }
            catch (FitLMException e) { throw new FitLMException($"{where}: the model's chat template: {e.Message}", e); }
        }
        if (Array.IndexOf(tok.Tokens, "<|im_start|>") >= 0 && Array.IndexOf(tok.Tokens, "<|im_end|>") >= 0) return ChatMl;
        return Completion;
    }

    /// <summary>Parses a Jinja chat template; throws <see cref="FitLMException"/> naming line and column on syntax it cannot handle.</summary>
    public static ChatTemplate FromJinja(string template, string bosToken, string eosToken) =>
        FromJinja(template, bosToken, eosToken, null);

    /// <summary>As <see cref="FromJinja(string, string, string)"/> with a fixed clock for strftime_now (tests).</summary>
    internal static ChatTemplate FromJinja(string template, string bosToken, string eosToken, Func<DateTime>? now) =>
        FromJinja(template, bosToken, eosToken, "model", now);

    /// <summary>As <see cref="FromJinja(string, string, string)"/>, reported as <paramref name="name"/> (a built-in's name, a file's).</summary>
    internal static ChatTemplate FromJinja(string template, string bosToken, string eosToken, string name, Func<DateTime>? now = null)
    {
        ArgumentNullException.ThrowIfNull(template);
        var jinja = new JinjaTemplate(template);
        var stops = KnownTurnEnds.Where(m => template.Contains(m, StringComparison.Ordinal)).ToList();
        if (!string.IsNullOrEmpty(eosToken) && template.Contains("eos_token", StringComparison.Ordinal) && !stops.Contains(eosToken)) stops.Add(eosToken);
        return new ChatTemplate(name, jinja, bosToken ?? "", eosToken ?? "", stops, now);
    }

    /// <summary>Renders the conversation; with <paramref name="addGenerationPrompt"/> the text ends where the assistant's reply begins.</summary>
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (_jinja == null) return string.Join("\n", messages.Select(m => m.Content));
        var list = messages.Select(m => (object?)new OrderedDictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList();
        return RenderValues(list, addGenerationPrompt, null);
    }

    /// <summary>Renders template values directly (messages with tool calls, tools, extra variables): the fixtures' path.</summary>
    internal string RenderValues(List<object?> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra)
    {
        if (_jinja == null) return string.Join("\n", messages.Select(m => JinjaOps.Str(JinjaOps.GetItem(m, "content"))));
        // The variables apply_chat_template passes: tools and documents are None when not given.
        var vars = new Dictionary<string, object?>
        {
            ["messages"] = messages,
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = _bos,
            ["eos_token"] = _eos,
            ["tools"] = null,
            ["documents"] = null,
        };
        if (extra != null) foreach (var kv in extra) vars[kv.Key] = kv.Value;
        return _jinja.Render(vars, _now);
    }

    /// <summary>
    /// Tokenizes a rendered prompt: special-token texts in it become their ids; BOS is prepended when the tokenizer
    /// wants one, unless the rendered text already starts with the BOS token's text.
    /// </summary>
    public int[] Tokenize(Tokenizer tokenizer, string rendered)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(rendered);
        var ids = tokenizer.Encode(rendered, addSpecial: false, parseSpecial: true);
        bool hasBos = tokenizer.BosId >= 0 && (ids.Length > 0 && ids[0] == tokenizer.BosId
            || tokenizer.TokenText(tokenizer.BosId) is { Length: > 0 } bosText && rendered.StartsWith(bosText, StringComparison.Ordinal));
        if (tokenizer.AddBos && tokenizer.BosId >= 0 && !hasBos) return [tokenizer.BosId, .. ids];
        return ids;
    }
}
