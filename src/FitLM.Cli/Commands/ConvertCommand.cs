using System.CommandLine;
using FitLM.Formats;
using FitLM.Runtime;
using FitLM.Storage;
using FitLM.Conversion;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm convert`: a Hugging Face folder → GGUF, as llama.cpp's convert_hf_to_gguf.py writes it.</summary>
internal static class ConvertCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m")
        {
            Description = "Hugging Face model folder (config.json, *.safetensors, tokenizer.json)",
            Required = true,
        };
        var output = new Option<string>("--output", "-o") { Description = "GGUF file to write (replaced if it exists, never if it is one of the folder's files)", Required = true };
        var type = new Option<string>("--type")
        {
            Description = "tensor type of the 2-D weights (norms and biases stay f32); llama-quantize's types (q4_k_m, q6_k, ...) quantize in the same pass",
            HelpName = string.Join("|", HfToGgufConverter.TypeNames.Concat(QuantizationType.All.Select(t => t.Name.ToLowerInvariant())).Distinct()),
            DefaultValueFactory = _ => "f16",
        };
        var cmd = new Command("convert", "convert a Hugging Face model folder to a GGUF file (llama.cpp's layout)") { model, output, type };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            string folder = r.GetValue(model)!;
            string outPath = r.GetValue(output)!;
            string typeName = r.GetValue(type)!;
            bool converterType = HfToGgufConverter.TypeNames.Contains(typeName.Trim().ToLowerInvariant());
            var quantType = converterType ? null : QuantizationType.Parse(typeName);
            if (!Directory.Exists(folder))
                throw new FitLMException(File.Exists(folder)
                    ? $"{folder}: is a file; convert needs a Hugging Face model folder (config.json, *.safetensors, tokenizer.json)"
                    : $"{folder}: no such folder");
            if (Directory.Exists(outPath)) throw new FitLMException($"{outPath}: is a folder; give the GGUF file to write (-o OUT.gguf)");
            OutputFile.EnsureNotInput(outPath, folder);
            if (quantType != null)
            {
                // HF folder -> quantized GGUF in one pass: what convert --outtype f32 then llama-quantize writes.
                var quantized = GgufQuantizer.Quantize(folder, outPath, quantType,
                    new QuantizeOptions(Warning: message => Console.Error.WriteLine($"warning: {message}")), progress: null, ct);
                Console.Out.WriteLine(QuantizeCommand.Summary(quantized));
                return 0;
            }
            var ggmlType = HfToGgufConverter.ParseType(typeName);
            var result = Progress.Run($"converting to {ggmlType}", 1000, report =>
                HfToGgufConverter.Convert(folder, outPath, ggmlType,
                    (done, total) => report(total > 0 ? 1000.0 * done / total : 0, null), ct));
            string types = string.Join(", ", result.TensorTypes.OrderBy(kv => kv.Key).Select(kv => $"{kv.Key} x{kv.Value}"));
            Console.Out.WriteLine($"wrote {result.OutputPath}: {result.Architecture}, {result.Tensors} tensors ({types}), " +
                $"{result.Bytes:N0} bytes ({ProcessMemory.Format(result.Bytes)}) in {result.Seconds:F1} s");
            return 0;
        }));
        return cmd;
    }
}
