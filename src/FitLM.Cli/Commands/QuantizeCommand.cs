using System.CommandLine;
using FitLM.Conversion;
using FitLM.Runtime;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm quantize IN OUT TYPE`: llama-quantize's command, with its argument order, types and per-tensor mix.</summary>
internal static class QuantizeCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "model to quantize: a GGUF file (F32/F16/BF16, or quantized: requantized with a warning) or a Hugging Face folder" };
        var output = new Argument<string>("output") { Description = "GGUF file to write" };
        var type = new Argument<string>("type") { Description = $"file type, case-insensitive: {QuantizationType.Names} (Q4_K = Q4_K_M)" };
        var imatrix = new Option<string?>("--imatrix") { Description = "importance matrix from llama-imatrix (GGUF or legacy .dat) to weigh the quantization error", HelpName = "FILE" };
        var threads = new Option<int>("--threads", "-t") { Description = "threads that quantize (default: all cores)", DefaultValueFactory = _ => 0 };
        var cmd = new Command("quantize", "quantize a model as llama.cpp's llama-quantize does (Q4_K_M, Q8_0, ...)") { input, output, type, imatrix, threads };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            var quantType = QuantizationType.Parse(r.GetValue(type));
            int n = r.GetValue(threads);
            if (n < 0 || n > 1024) throw new FitLMException($"--threads {n} is out of range (1..1024)");
            var options = new QuantizeOptions(r.GetValue(imatrix), n, message => Console.Error.WriteLine($"warning: {message}"));
            var result = GgufQuantizer.Quantize(r.GetValue(input)!, r.GetValue(output)!, quantType, options,
                new LineProgress(line => Console.Error.WriteLine(line)), ct);
            Console.Out.WriteLine(Summary(result));
            return 0;
        }));
        return cmd;
    }

    /// <summary>The closing line of quantize and convert --type: the file, its tensor types and sizes.</summary>
    public static string Summary(QuantizeResult r)
    {
        string types = string.Join(", ", r.TensorTypes.OrderBy(kv => kv.Key).Select(kv => $"{QuantizedTensor.TypeName(kv.Key)} x{kv.Value}"));
        return $"wrote {r.OutputPath}: {r.Type.Name}, {r.Tensors} tensors ({types}), " +
               $"{ProcessMemory.Format(r.BytesIn)} -> {ProcessMemory.Format(r.BytesOut)} in {r.Seconds:F1} s";
    }

    /// <summary>Reports on the calling thread (System.Progress would post to the thread pool and reorder lines).</summary>
    private sealed class LineProgress(Action<string> write) : IProgress<QuantizedTensor>
    {
        public void Report(QuantizedTensor value) => write(value.ToString());
    }
}
