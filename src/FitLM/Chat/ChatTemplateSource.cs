using System.Text.Json;
using FitLM.Model;

namespace FitLM.Chat;

/// <summary>Finds a model's own chat template: GGUF metadata, or the files of a Hugging Face folder.</summary>
internal static class ChatTemplateSource
{
    public static string? Find(IModelSource source) => source switch
    {
        GgufSource g => FromGguf(g.File),
        HuggingFaceSource h => FromFolder(h.Path),
        _ => null,
    };

    public static string? FromGguf(Formats.GgufFile file)
    {
        if (file.Find("tokenizer.chat_template") is not { } v) return null;
        try { return v.AsString(); }
        catch (FitLMException e) { throw new FitLMException($"{file.Path}: metadata 'tokenizer.chat_template': {e.Message}"); }
    }

    /// <summary>
    /// tokenizer_config.json "chat_template" (a string, or a list of {name, template} from which "default" is taken);
    /// newer transformers save it beside as chat_template.jinja or chat_template.json instead.
    /// </summary>
    public static string? FromFolder(string folder)
    {
        string jinja = Path.Combine(folder, "chat_template.jinja");
        if (File.Exists(jinja)) return File.ReadAllText(jinja);
        foreach (var name in new[] { "tokenizer_config.json", "chat_template.json" })
        {
            string path = Path.Combine(folder, name);
            if (!File.Exists(path)) continue;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
                if (doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("chat_template", out var t))
                    return FromJsonValue(t, path);
            }
            catch (JsonException e) { throw new FitLMException($"{path}: not valid JSON ({e.Message})"); }
        }
        return null;
    }

    public static string? FromJsonValue(JsonElement t, string where)
    {
        switch (t.ValueKind)
        {
            case JsonValueKind.String: return t.GetString();
            case JsonValueKind.Null: return null;
            case JsonValueKind.Array:
                string? first = null;
                foreach (var item in t.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.Object || !item.TryGetProperty("template", out var tpl) || tpl.ValueKind != JsonValueKind.String)
                        throw new FitLMException($"{where}: chat_template list entries must be {{\"name\", \"template\"}} objects");
                    string? name = item.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : null;
                    if (name == "default") return tpl.GetString();
                    first ??= tpl.GetString();
                }
                return first;
            default:
                throw new FitLMException($"{where}: chat_template must be a string or a list of named templates");
        }
    }
}
