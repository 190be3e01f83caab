using System.Text.Json;
using FitLM.Chat;
using FitLM.Chat.Jinja;
using Xunit;

namespace FitLM.Tests.Chat;

/// <summary>
/// Real chat templates (Llama 3.x, Qwen2.5/3, Mistral, Phi-3.5, Gemma, ChatML, ...) and feature snippets rendered
/// by FitLM must equal Python jinja2's rendering under Hugging Face's settings byte for byte (Fixtures/cases.json,
/// written by Fixtures/make_cases.py).
/// </summary>
public class TemplateFixtureTests
{
    private static readonly string FixtureDir = Path.Combine(TestPaths.RepoRoot, "tests", "FitLM.Tests", "Chat", "Fixtures");
    private static readonly Lazy<JsonDocument> Cases = new(() => JsonDocument.Parse(File.ReadAllBytes(Path.Combine(FixtureDir, "cases.json"))));

    private static DateTime FixedNow => DateTime.Parse(Cases.Value.RootElement.GetProperty("fixed_now").GetString()!, System.Globalization.CultureInfo.InvariantCulture);

    public static IEnumerable<object[]> CaseNames() =>
        Cases.Value.RootElement.GetProperty("cases").EnumerateArray().Select(c => new object[] { c.GetProperty("name").GetString()! });

    public static IEnumerable<object[]> ErrorIndexes() =>
        Enumerable.Range(0, Cases.Value.RootElement.GetProperty("syntax_and_runtime_errors").GetArrayLength()).Select(i => new object[] { i });

    private static JsonElement Case(string name) =>
        Cases.Value.RootElement.GetProperty("cases").EnumerateArray().Single(c => c.GetProperty("name").GetString() == name);

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void RendersExactlyAsJinja2(string name)
    {
        var c = Case(name);
        string template = c.TryGetProperty("template_text", out var inline)
            ? inline.GetString()!
            : File.ReadAllText(Path.Combine(FixtureDir, "templates", c.GetProperty("template").GetString()!));
        var chat = ChatTemplate.FromJinja(template, c.GetProperty("bos").GetString()!, c.GetProperty("eos").GetString()!, () => FixedNow);
        var messages = (List<object?>)JinjaTemplate.FromJson(c.GetProperty("messages"))!;
        var vars = (OrderedDictionary<string, object?>)JinjaTemplate.FromJson(c.GetProperty("vars"))!;
        bool agp = c.GetProperty("add_generation_prompt").GetBoolean();
        if (c.TryGetProperty("error", out var error))
        {
            var e = Assert.ThrowsAny<FitLMException>(() => chat.RenderValues(messages, agp, vars));
            Assert.Contains(error.GetString()!, e.Message);
            Assert.DoesNotContain('\n', e.Message);
            return;
        }
        Assert.Equal(c.GetProperty("expected").GetString(), chat.RenderValues(messages, agp, vars));
    }

    [Theory]
    [MemberData(nameof(ErrorIndexes))]
    public void ErrorsAreOneLineFitLMExceptions(int index)
    {
        var c = Cases.Value.RootElement.GetProperty("syntax_and_runtime_errors")[index];
        string template = c.GetProperty("template_text").GetString()!;
        var e = Assert.ThrowsAny<FitLMException>(() => ChatTemplate.FromJinja(template, "", "").Render([new ChatTurn("user", "hi")]));
        Assert.Contains(c.GetProperty("error_contains").GetString()!, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.StartsWith("chat template", e.Message);
    }
}
