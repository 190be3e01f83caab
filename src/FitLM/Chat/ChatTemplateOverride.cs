using System.Text.Json;
using FitLM.Tokenization;

namespace FitLM.Chat;

/// <summary>
/// A chat template the user chose instead of the model's (<c>--chat-template FILE|NAME</c>): a Jinja file, a Hugging Face
/// tokenizer_config.json / chat_template.json holding one, or the name of a <see cref="BuiltInChatTemplates">built-in</see>.
/// </summary>
public static class ChatTemplateOverride
{
    /// <summary>Files larger than this are not templates (real ones are under 20 KB; Command-R's with tools is ~11 KB).</summary>
    private const long MaxFileBytes = 1 << 20;

    /// <summary>The template <paramref name="fileOrName"/> names; a FitLMException with a one-line reason otherwise.</summary>
    public static ChatTemplate Resolve(string fileOrName, Tokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(fileOrName);
        ArgumentNullException.ThrowIfNull(tokenizer);
        if (File.Exists(fileOrName)) return FromFile(fileOrName, tokenizer);
        if (BuiltInChatTemplates.Exists(fileOrName)) return BuiltInChatTemplates.Get(fileOrName, tokenizer);
        if (Directory.Exists(fileOrName)) throw new FitLMException($"{fileOrName}: is a folder; give a .jinja file or a built-in name ({string.Join(", ", BuiltInChatTemplates.Names)})");
        bool looksLikePath = fileOrName.Contains('/') || fileOrName.Contains('\\') || Path.HasExtension(fileOrName);
        throw new FitLMException(looksLikePath
            ? $"{fileOrName}: chat template file not found"
            : $"chat template '{fileOrName}' is neither a file nor a built-in ({string.Join(", ", BuiltInChatTemplates.Names)})");
    }

    private static ChatTemplate FromFile(string path, Tokenizer tokenizer)
    {
        string text;
        try
        {
            if (new FileInfo(path).Length > MaxFileBytes) throw new FitLMException($"{path}: {new FileInfo(path).Length:N0} bytes is too large for a chat template");
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FitLMException($"{path}: cannot read the chat template ({e.Message})");
        }
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase)) text = FromJson(text, path);
        if (string.IsNullOrWhiteSpace(text)) throw new FitLMException($"{path}: the chat template is empty");
        string bos = tokenizer.BosId >= 0 ? tokenizer.TokenText(tokenizer.BosId) : "";
        string eos = tokenizer.EosId >= 0 ? tokenizer.TokenText(tokenizer.EosId) : "";
        try { return ChatTemplate.FromJinja(text, bos, eos, Path.GetFileName(path)); }
        catch (FitLMException e) { throw new FitLMException($"{path}: {e.Message}", e); }
    }

    private static string FromJson(string text, string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("chat_template", out var t))
                return ChatTemplateSource.FromJsonValue(t, path) ?? "";
            throw new FitLMException($"{path}: has no \"chat_template\"");
        }
        catch (JsonException e) { throw new FitLMException($"{path}: not valid JSON ({e.Message})"); }
    }
}
