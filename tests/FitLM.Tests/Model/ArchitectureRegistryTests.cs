using FitLM.Model;
using FitLM.Model.Architectures;
using Xunit;

namespace FitLM.Tests.Model;

/// <summary>The architecture descriptions: every name finds its family, unknown names give one clear error.</summary>
public class ArchitectureRegistryTests
{
    public static TheoryData<string> Families => new(ArchitectureRegistry.All.Select(f => f.Name));

    [Theory]
    [MemberData(nameof(Families))]
    public void EveryNameOfAFamilyFindsIt(string name)
    {
        var f = ArchitectureRegistry.Find(name)!;
        Assert.Same(f, new ModelConfig { Architecture = name, Dim = 8, Layers = 1, Heads = 1, KvHeads = 1, HeadDim = 8, FfnDim = 8, Vocab = 8, RopeDims = 8 }.Family);
        foreach (var g in f.GgufNames) Assert.Same(f, ArchitectureRegistry.FindGguf(g));
        foreach (var a in f.HfArchitectures) Assert.Same(f, ArchitectureRegistry.FindHuggingFace([a], null));
        foreach (var t in f.HfModelTypes) Assert.Same(f, ArchitectureRegistry.FindHuggingFace([], t));
        // What the converter writes is read back as some registered family.
        Assert.NotNull(ArchitectureRegistry.FindGguf(f.GgufNameWritten));
        Assert.Equal(f.HfRopeStyle != f.GgufRopeStyle, f.ConverterPermutesQk);
    }

    [Fact]
    public void NamesBelongToOneFamilyEach()
    {
        var all = ArchitectureRegistry.All;
        Assert.Equal(all.Count, all.Select(f => f.Name).Distinct().Count());
        Assert.Equal(all.Sum(f => f.GgufNames.Count), all.SelectMany(f => f.GgufNames).Distinct().Count());
        Assert.Equal(all.Sum(f => f.HfArchitectures.Count), all.SelectMany(f => f.HfArchitectures).Distinct().Count());
        Assert.Equal(all.Sum(f => f.HfModelTypes.Count), all.SelectMany(f => f.HfModelTypes).Distinct().Count());
    }

    [Fact]
    public void TheFamiliesAreDescribedAsLlamaCppHasThem()
    {
        Assert.Equal("llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, mixtral, qwen2moe, qwen3moe, olmoe", ArchitectureRegistry.SupportedNames);
        // llama.cpp: LLAMA_ROPE_TYPE_NORM for llama (its converter permutes Q/K), NEOX for Qwen2/3 (no permutation).
        Assert.True(LlamaFamily.Description.ConverterPermutesQk);
        Assert.True(MistralFamily.Description.ConverterPermutesQk);
        Assert.False(Qwen2Family.Description.ConverterPermutesQk);
        Assert.False(Qwen3Family.Description.ConverterPermutesQk);
        Assert.Equal("llama", MistralFamily.Description.GgufNameWritten); // convert_hf_to_gguf writes Mistral as llama
        Assert.Equal(TensorOption.Always, Qwen2Family.Description.QkvBias);
        Assert.Equal(TensorOption.Always, Qwen3Family.Description.QkNorm);
        Assert.Equal(TensorOption.Never, LlamaFamily.Description.QkNorm);
        Assert.Equal("llama.context_length", LlamaFamily.Description.GgufKey(ConfigKeys.Standard.ContextLength));
        Assert.Equal("qwen3.attention.layer_norm_rms_epsilon", Qwen3Family.Description.GgufKey(ConfigKeys.Standard.NormEpsilon));
        // Mixtral is written as "llama" with experts, permuted for llama's interleaved RoPE; the others are NEOX.
        Assert.Equal("llama", MixtralFamily.Description.GgufNameWritten);
        Assert.True(MixtralFamily.Description.ConverterPermutesQk);
        foreach (var f in new[] { Phi3Family.Description, Gemma2Family.Description, Gemma3Family.Description, Qwen2MoeFamily.Description, Qwen3MoeFamily.Description, OlmoeFamily.Description })
            Assert.False(f.ConverterPermutesQk, f.Name);
        // llama.cpp's swa pattern: Gemma 2 every other layer, Gemma 3 five of six with a local RoPE base of 10000.
        Assert.Equal(2, Gemma2Family.Description.GgufSlidingPeriod);
        Assert.Equal(6, Gemma3Family.Description.GgufSlidingPeriod);
        Assert.Equal(10000f, Gemma3Family.Description.GgufRopeThetaSliding);
        // Renormalized top-k weights where llama.cpp's graph renormalizes them.
        Assert.True(LlamaFamily.Description.DefaultExpertWeightsNorm);
        Assert.True(Qwen3MoeFamily.Description.DefaultExpertWeightsNorm);
        Assert.False(Qwen2MoeFamily.Description.DefaultExpertWeightsNorm);
        Assert.False(OlmoeFamily.Description.DefaultExpertWeightsNorm);
        Assert.Equal("qwen3moe.expert_used_count", Qwen3MoeFamily.Description.GgufKey(ConfigKeys.Standard.ExpertsUsed));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void HuggingFaceNamesMapToGgufNames(string name)
    {
        var f = ArchitectureRegistry.Find(name)!;
        foreach (var t in f.Tensors.Where(t => t.Hf != null))
        {
            // An expert's tensor names its stack, with the expert's number.
            string hf = t.PerLayer ? $"{f.HfLayerPrefix}17.{t.Hf!.Replace(TensorSpec.ExpertMark, "5")}" : t.Hf!;
            Assert.Equal(t.GgufName(17), f.GgufTensorName(hf));
            Assert.Equal(t.Experts ? 5 : -1, f.MapHfTensor(hf)!.Value.Expert);
            Assert.Same(t, f.FindTensor(t.GgufName(17)));
        }
        if (!f.FusedQkv) Assert.Equal("blk.3.attn_q.weight", f.GgufTensorName("model.layers.3.self_attn.q_proj.weight"));
        else Assert.Equal("blk.3.attn_qkv.weight", f.GgufTensorName("model.layers.3.self_attn.qkv_proj.weight"));
        Assert.Equal("output.weight", f.GgufTensorName("lm_head.weight"));
        Assert.Null(f.GgufTensorName("model.layers.0.self_attn.rotary_emb.inv_freq"));
        Assert.Null(f.GgufTensorName("model.layers.x.self_attn.q_proj.weight"));
        Assert.Null(f.FindTensor("blk.0.output.weight"));
        Assert.Null(f.FindTensor("attn_q.weight"));
    }

    [Fact]
    public void UnknownArchitecturesGiveOneLineListingTheSupportedOnes()
    {
        var e = Assert.Throws<FitLMException>(() => ArchitectureRegistry.GetGguf("gpt2", "x.gguf"));
        Assert.Equal("x.gguf: unsupported architecture 'gpt2' (supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, mixtral, qwen2moe, qwen3moe, olmoe)", e.Message);
        e = Assert.Throws<FitLMException>(() => ArchitectureRegistry.GetHuggingFace(["FalconForCausalLM"], "falcon", "config.json"));
        Assert.Equal("config.json: unsupported architecture 'falcon' (supported: llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3, mixtral, qwen2moe, qwen3moe, olmoe)", e.Message);
        e = Assert.Throws<FitLMException>(() => ArchitectureRegistry.GetHuggingFace(["FooForCausalLM"], null, "config.json"));
        Assert.Contains("'FooForCausalLM'", e.Message);
        // By "architectures" first, as llama.cpp's converter: a known class wins over an unknown model_type.
        Assert.Same(Qwen2Family.Description, ArchitectureRegistry.FindHuggingFace(["Qwen2ForCausalLM"], "something-new"));
    }

    [Fact]
    public void AVocabularyOnlyGgufOfAnotherArchitectureIsRefusedByName()
    {
        if (TestPaths.Shared is not { } shared) return;
        string gpt2 = Path.Combine(shared, "tokenizer-tests", "ggml-vocab-gpt-2.gguf");
        if (!File.Exists(gpt2)) return;
        var e = Assert.Throws<FitLMException>(() => GgufSource.Open(gpt2));
        Assert.EndsWith($"unsupported architecture 'gpt2' (supported: {ArchitectureRegistry.SupportedNames})", e.Message);
    }
}
