using System.CommandLine;
using FitLM.Adapters;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm export -m MODEL --lora PATH [--lora-scale S] [--type TYPE] -o MERGED.gguf`: LoRA adapters merged into a GGUF model's weights.</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        model.Description = "model to merge into: a GGUF file (convert a Hugging Face folder first with fitlm convert)";
        var lora = new LoraOptions();
        var output = new Option<string>("--output", "-o") { Description = "merged GGUF file to write", HelpName = "MERGED.gguf", Required = true };
        var type = new Option<string>("--type")
        {
            Description = "type of the merged matrices (other tensors are copied unchanged): same keeps each matrix's own type and the file's size; " +
                "f16 (what llama-export-lora writes) keeps a quantized model within 0.1% of --lora in perplexity; or any quantize tensor type",
            HelpName = MergedTensorType.Names,
            DefaultValueFactory = _ => MergedTensorType.Same,
        };
        var threads = Common.Threads();
        var cmd = new Command("export", "merge LoRA adapters into a model's weights and write a GGUF (merged matrices in --type, by default their own)") { model, output, type, threads };
        lora.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            var mergedType = MergedTensorType.Parse(r.GetValue(type));
            var adapters = lora.Read(r);
            if (adapters.Count == 0) throw new FitLMException("export needs an adapter: --lora PATH (a PEFT adapter folder or a GGUF LoRA file)");
            var sw = System.Diagnostics.Stopwatch.StartNew();
            string written = LoraMerge.Export(r.GetValue(model)!, adapters, r.GetValue(output)!, mergedType, new LineProgress(), ct);
            Console.Out.WriteLine($"wrote {written}: {adapters.Count} adapter{(adapters.Count > 1 ? "s" : "")} merged in {sw.Elapsed.TotalSeconds:F1} s");
            return 0;
        }));
        return cmd;
    }

    /// <summary>Reports on the calling thread, in order.</summary>
    private sealed class LineProgress : IProgress<string>
    {
        public void Report(string value) => Console.Error.WriteLine(value);
    }
}
