using FitLM.Chat;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Tokenization;
using Xunit;

namespace FitLM.Tests.Chat;

public class ChatTemplateTests
{
    private static readonly ChatTurn[] Conversation =
    [
        new("system", "You are terse."),
        new("user", "Hello"),
        new("assistant", "Hi"),
        new("user", "Sum 2 and 3"),
    ];

    [Fact]
    public void CompletionJoinsContentsWithoutRoleMarkup()
    {
        var t = ChatTemplate.Completion;
        Assert.Equal("completion", t.Name);
        Assert.Equal("You are terse.\nHello\nHi\nSum 2 and 3", t.Render(Conversation));
        Assert.Equal("def f():", t.Render([new ChatTurn("user", "def f():")]));
        Assert.Empty(t.StopStrings);
    }

    [Fact]
    public void ChatMlRendersTurnsAndStopsAtImEnd()
    {
        var t = ChatTemplate.ChatMl;
        Assert.Equal("chatml", t.Name);
        Assert.Equal("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", t.Render([new ChatTurn("user", "Hello")]));
        Assert.Equal("<|im_start|>user\nHello<|im_end|>\n", t.Render([new ChatTurn("user", "Hello")], addGenerationPrompt: false));
        Assert.Equal(["<|im_end|>"], t.StopStrings);
    }

    [Fact]
    public void StopStringsComeFromTheTemplatesTurnMarkers()
    {
        var llama = ChatTemplate.FromJinja("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}", "<|begin_of_text|>", "<|eot_id|>");
        Assert.Equal(["<|eot_id|>"], llama.StopStrings);
        var mistral = ChatTemplate.FromJinja("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]{% else %}{{ m.content + eos_token }}{% endif %}{% endfor %}", "<s>", "</s>");
        Assert.Equal(["</s>"], mistral.StopStrings);
        Assert.Equal("model", mistral.Name);
        Assert.Equal("<s>[INST] Hello [/INST]Hi</s>[INST] Sum 2 and 3 [/INST]", mistral.Render(Conversation.Skip(1).ToList()));
    }

    [Fact]
    public void DemoBaseModelGetsTheCompletionTemplateAndOneBos()
    {
        using var model = LanguageModel.Load(TestPaths.DemoModel, contextLength: 64);
        var t = ChatTemplate.ForModel(model);
        Assert.Equal("completion", t.Name);
        var tok = model.Tokenizer;
        var ids = t.Tokenize(tok, t.Render([new ChatTurn("user", "def add(a, b):")]));
        Assert.Equal(tok.Encode("def add(a, b):", addSpecial: true), ids);
        Assert.Equal(tok.BosId, ids[0]);
        // Rendered text that already starts with BOS's text keeps a single BOS, parsed as the special token.
        var withBos = t.Tokenize(tok, tok.TokenText(tok.BosId) + "def add(a, b):");
        Assert.Equal(ids, withBos);
    }

    [Fact]
    public void GgufChatTemplateIsFoundAndSpecialTokensParse()
    {
        if (TestPaths.Shared is not { } shared) { Console.WriteLine("skipped: ../shared is absent"); return; }
        string path = Path.Combine(shared, "tokenizer-tests", "ggml-vocab-phi-3.gguf");
        using var gguf = GgufFile.Open(path);
        var tok = Tokenizer.FromGguf(gguf);
        string? text = ChatTemplateSource.FromGguf(gguf);
        Assert.False(string.IsNullOrEmpty(text));
        var t = ChatTemplate.Choose(text, tok, path);
        Assert.Equal("model", t.Name);
        Assert.Contains("<|end|>", t.StopStrings);
        string rendered = t.Render([new ChatTurn("user", "Hello")]);
        Assert.Contains("<|user|>", rendered);
        Assert.EndsWith("<|assistant|>\n", rendered);
        var ids = t.Tokenize(tok, rendered);
        int userId = Array.IndexOf(tok.Tokens, "<|user|>");
        Assert.True(userId >= 0);
        Assert.Contains(userId, ids);
        Assert.Equal(1, ids.Count(i => i == tok.BosId));
    }

    [Fact]
    public void HuggingFaceFolderTemplateForms()
    {
        string dir = Directory.CreateTempSubdirectory("fitlm-chat-").FullName;
        try
        {
            Assert.Null(ChatTemplateSource.FromFolder(dir));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": "A{{ messages[0].content }}"}""");
            Assert.Equal("A{{ messages[0].content }}", ChatTemplateSource.FromFolder(dir));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
                """{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ 1 }}"}]}""");
            Assert.Equal("D{{ 1 }}", ChatTemplateSource.FromFolder(dir));
            File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "J");
            Assert.Equal("J", ChatTemplateSource.FromFolder(dir));
            File.Delete(Path.Combine(dir, "chat_template.jinja"));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": 5}""");
            var e = Assert.Throws<FitLMException>(() => ChatTemplateSource.FromFolder(dir));
            Assert.Contains("chat_template must be a string", e.Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void HuggingFaceModelFolderUsesItsTemplate()
    {
        if (TestPaths.Shared is not { } shared) { Console.WriteLine("skipped: ../shared is absent"); return; }
        string src = Path.Combine(shared, "models", "pycoder-29m");
        string dir = Directory.CreateTempSubdirectory("fitlm-chat-hf-").FullName;
        try
        {
            // The weights are linked, not copied; only tokenizer_config.json gains a chat template.
            foreach (var f in Directory.GetFiles(src))
                if (Path.GetFileName(f) != "tokenizer_config.json") File.CreateSymbolicLink(Path.Combine(dir, Path.GetFileName(f)), f);
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
                """{"bos_token": "<|bos|>", "eos_token": "<|eos|>", "chat_template": "{{ bos_token }}{% for m in messages %}### {{ m.role|capitalize }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}### Assistant:{% endif %}"}""");
            using var source = ModelSource.Open(dir);
            var t = ChatTemplate.ForSource(source);
            Assert.Equal("model", t.Name);
            Assert.Equal("<|bos|>### User: hi\n### Assistant:", t.Render([new ChatTurn("user", "hi")]));
            var ids = t.Tokenize(source.Tokenizer, t.Render([new ChatTurn("user", "hi")]));
            Assert.Equal(source.Tokenizer.BosId, ids[0]);
            Assert.Equal(1, ids.Count(i => i == source.Tokenizer.BosId));
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
