using FitLM.Chat;

namespace FitLM.Cli.Chat;

/// <summary>What `fitlm chat` (and `run -cnv`) was asked for, besides how the model loads.</summary>
internal sealed record ChatSettings
{
    /// <summary>The system prompt, or null for none.</summary>
    public string? System { get; init; }

    /// <summary>--chat-template: a Jinja file or a built-in name; null for the model's own (ChatML when it has none).</summary>
    public string? Template { get; init; }

    /// <summary>Print each turn's rendered prompt and its token counts to stderr.</summary>
    public bool VerbosePrompt { get; init; }

    public ChatReplyOptions Reply { get; init; } = new();
}
