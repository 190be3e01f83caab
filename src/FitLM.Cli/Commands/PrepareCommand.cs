using System.CommandLine;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Conversion;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm prepare`: bundle each FFN neuron's weights into one contiguous chunk (LLM in a flash row-column bundling).</summary>
internal static class PrepareCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var output = new Option<string>("--output", "-o") { Description = "prepared GGUF to write (e.g. MODEL.flash.gguf)", Required = true };
        var cmd = new Command("prepare", "re-lay out a model's FFN weights per neuron for sparse streaming (LLM in a flash)") { model, output };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            string outPath = r.GetValue(output)!;
            if (Directory.Exists(outPath)) throw new FitLMException($"{outPath}: is a folder; give the GGUF file to write");
            OutputFile.EnsureNotInput(outPath, r.GetValue(model)!);
            var result = Progress.Run("bundling FFN neurons", 1000, report =>
                FlashPrepare.Write(r.GetValue(model)!, outPath, (done, total) => report(total > 0 ? 1000.0 * done / total : 0, null), ct));
            Console.Out.WriteLine($"wrote {result.Path}: {result.Layers} layers bundled, {ProcessMemory.Format(result.Bytes)} in {result.Seconds:F1} s");
            return 0;
        }));
        return cmd;
    }
}
