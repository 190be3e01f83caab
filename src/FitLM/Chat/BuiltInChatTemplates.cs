using FitLM.Tokenization;

namespace FitLM.Chat;

/// <summary>
/// Chat templates of the common model families, by name, for models whose file carries none or a wrong one
/// (<c>fitlm chat --chat-template llama3</c>). Each renders a system/user/assistant conversation as that family's
/// own template does; a system message goes where the family puts it (its own turn, or before the first user message
/// for families that have no system role).
/// </summary>
public static class BuiltInChatTemplates
{
    // The leading system message, if any, and the messages after it (families without a system turn fold it in).
    private const string SplitSystem =
        "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}" +
        "{% set rest = messages[1:] if messages and messages[0]['role'] == 'system' else messages %}";

    private static readonly Dictionary<string, string> Sources = new(StringComparer.OrdinalIgnoreCase)
    {
        // Llama 3, 3.1, 3.2, 3.3 instruct: header-delimited turns, each ended by <|eot_id|>.
        ["llama3"] =
            "{{ bos_token }}{% for message in messages %}" +
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}" +
            "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
        // Llama 2 chat: [INST] ... [/INST] pairs, each exchange its own BOS...EOS; the system prompt in <<SYS>> inside the first.
        ["llama2"] = SplitSystem +
            "{% for message in rest %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' }}" +
            "{% if loop.first and system %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}" +
            "{{ message['content'] | trim + ' [/INST]' }}" +
            "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}",
        // Mistral / Mixtral instruct (v0.1-v0.3): one BOS, [INST] ... [/INST] reply</s>; no system role, so it leads the first message.
        ["mistral"] = SplitSystem +
            "{{ bos_token }}{% for message in rest %}{% if message['role'] == 'user' %}{{ '[INST] ' }}" +
            "{% if loop.first and system %}{{ system + '\\n\\n' }}{% endif %}{{ message['content'] + ' [/INST]' }}" +
            "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}",
        // Gemma 1 and 2: <start_of_turn>user|model ... <end_of_turn>; no system role, so it leads the first message.
        ["gemma"] = SplitSystem +
            "{{ bos_token }}{% for message in rest %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}" +
            "{{ '<start_of_turn>' + role + '\\n' }}{% if loop.first and system %}{{ system + '\\n\\n' }}{% endif %}" +
            "{{ message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}" +
            "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
        // Phi-3 and 3.5: <|role|>\n ... <|end|>\n.
        ["phi3"] =
            "{% for message in messages %}{% if message['role'] != 'system' or message['content'] %}" +
            "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}" +
            "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}",
    };

    /// <summary>The names <see cref="Get"/> knows, "chatml" and "completion" included.</summary>
    public static IReadOnlyList<string> Names { get; } = ["chatml", .. Sources.Keys, "completion"];

    /// <summary>True when <paramref name="name"/> is one of <see cref="Names"/> (case-insensitive).</summary>
    public static bool Exists(string name) => Names.Contains(name, StringComparer.OrdinalIgnoreCase);

    /// <summary>The built-in template <paramref name="name"/>, with the tokenizer's BOS and EOS texts.</summary>
    public static ChatTemplate Get(string name, Tokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        string bos = tokenizer.BosId >= 0 ? tokenizer.TokenText(tokenizer.BosId) : "";
        string eos = tokenizer.EosId >= 0 ? tokenizer.TokenText(tokenizer.EosId) : "";
        return Get(name, bos, eos);
    }

    /// <summary>The built-in template <paramref name="name"/> with the given BOS and EOS texts.</summary>
    internal static ChatTemplate Get(string name, string bos, string eos)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Equals("chatml", StringComparison.OrdinalIgnoreCase)) return ChatTemplate.ChatMl;
        if (name.Equals("completion", StringComparison.OrdinalIgnoreCase)) return ChatTemplate.Completion;
        if (!Sources.TryGetValue(name, out var source))
            throw new FitLMException($"'{name}' is not a built-in chat template ({string.Join(", ", Names)}; or give a .jinja file)");
        return ChatTemplate.FromJinja(source, bos, eos, name.ToLowerInvariant());
    }
}
