using FitLM.Model;
using Xunit;

namespace FitLM.Tests.Robustness;

/// <summary>A config claiming fewer layers than the weights hold is refused in one line (the fuzz found an IndexOutOfRange here).</summary>
public sealed class LayerCountTests
{
    [Fact]
    public void FewerLayersInConfigThanInTheWeightsIsAClearError()
    {
        if (TestPaths.Shared is not { } shared) return;
        string dir = Directory.CreateTempSubdirectory("fitlm-layers-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Path.Combine(shared, "models", "pycoder-29m")))
                File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            string config = Path.Combine(dir, "config.json");
            File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 8", "\"num_hidden_layers\": 5"));
            var e = Assert.Throws<FitLMException>(() => LanguageModel.Load(dir, 16, 4));
            Assert.Contains("is for layer 5, but the model has 5 layers", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
