using System.Text;
using FitLM.Model;
using FitLM.Tokenization;

namespace FitLM.Chat;

/// <summary>One message of a conversation: role ("system", "user", "assistant") and text.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>
/// STAND-IN until the Jinja chat templates land: ChatML when the vocabulary has &lt;|im_start|&gt;, otherwise a
/// plain-completion template (message contents joined by newlines) for base models. Same API as the real one.
/// </summary>
public sealed class ChatTemplate
{
    private readonly bool _chatMl;

    private ChatTemplate(bool chatMl)
    {
        _chatMl = chatMl;
        Name = chatMl ? "chatml" : "completion";
        StopStrings = chatMl ? ["<|im_end|>"] : [];
    }

    /// <summary>"model" | "chatml" | "completion".</summary>
    public string Name { get; }

    /// <summary>Text that ends the assistant's turn besides the end-of-generation tokens.</summary>
    public IReadOnlyList<string> StopStrings { get; }

    public static ChatTemplate ForModel(LanguageModel model) =>
        new(Array.IndexOf(model.Tokenizer.Tokens, "<|im_start|>") >= 0);

    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true)
    {
        if (!_chatMl) return string.Join("\n", messages.Select(m => m.Content));
        var sb = new StringBuilder();
        foreach (var m in messages) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }

    /// <summary>Tokens of a rendered prompt, control tokens parsed, BOS as the tokenizer adds it (as `fitlm run` does).</summary>
    public int[] Tokenize(Tokenizer tokenizer, string rendered) => tokenizer.Encode(rendered, addSpecial: true, parseSpecial: true);
}
