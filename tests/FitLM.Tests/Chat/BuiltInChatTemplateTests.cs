using FitLM.Chat;
using Xunit;

namespace FitLM.Tests.Chat;

/// <summary>The named templates of `--chat-template NAME` render as the families' own templates do.</summary>
public class BuiltInChatTemplateTests
{
    private static readonly ChatTurn[] Conversation = [new("user", "Hi there"), new("assistant", "Hello! How can I help?"), new("user", "Write a haiku.")];

    private static string Fixture(string file) =>
        File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "tests", "FitLM.Tests", "Chat", "Fixtures", "templates", file));

    [Theory]
    [InlineData("llama3", "llama-3-8b-instruct.jinja", "<|begin_of_text|>", "<|end_of_text|>")]
    [InlineData("mistral", "mistral-7b-instruct-v0.2.jinja", "<s>", "</s>")]
    [InlineData("gemma", "gemma-2-2b-it.jinja", "<bos>", "<eos>")]
    [InlineData("phi3", "phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>")]
    [InlineData("chatml", "chatml-openhermes-2.5.jinja", "<s>", "</s>")]
    public void RendersAsTheFamilysOwnTemplate(string name, string fixture, string bos, string eos)
    {
        var own = ChatTemplate.FromJinja(Fixture(fixture), bos, eos);
        var builtIn = BuiltInChatTemplates.Get(name, bos, eos);
        Assert.Equal(own.Render(Conversation), builtIn.Render(Conversation));
        Assert.Equal(name, builtIn.Name);
        Assert.Equal(own.StopStrings, builtIn.StopStrings);
    }

    [Fact]
    public void FamiliesWithoutASystemRoleFoldItIntoTheFirstMessage()
    {
        ChatTurn[] withSystem = [new("system", "Be brief."), .. Conversation];
        Assert.Equal("<s>[INST] Be brief.\n\nHi there [/INST]Hello! How can I help?</s>[INST] Write a haiku. [/INST]",
            BuiltInChatTemplates.Get("mistral", "<s>", "</s>").Render(withSystem));
        Assert.StartsWith("<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n", BuiltInChatTemplates.Get("gemma", "<bos>", "<eos>").Render(withSystem));
        Assert.Equal("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST] Hello! How can I help? </s><s>[INST] Write a haiku. [/INST]",
            BuiltInChatTemplates.Get("llama2", "<s>", "</s>").Render(withSystem));
        Assert.StartsWith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>",
            BuiltInChatTemplates.Get("llama3", "<|begin_of_text|>", "<|end_of_text|>").Render(withSystem));
    }

    [Fact]
    public void AnUnknownNameListsTheBuiltIns()
    {
        var e = Assert.Throws<FitLMException>(() => BuiltInChatTemplates.Get("vicuna", "<s>", "</s>"));
        Assert.Contains("llama3", e.Message);
        Assert.True(BuiltInChatTemplates.Exists("LLAMA3"));
    }
}
