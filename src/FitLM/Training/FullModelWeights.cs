using FitLM.Formats;
using FitLM.Model;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Training;

/// <summary>
/// Every weight of a resident F32/F16/BF16 GGUF model as MeZO parameters (<c>--mezo-full</c>): the token embedding,
/// the output head when it is not tied to the embedding, each layer's seven projections, and the vectors the
/// graph reads (every RMSNorm weight, Qwen2's Q/K/V biases, Qwen3's Q/K norms), as the MeZO paper perturbs all
/// parameters. Matrices are moved in place in the resident memory; vectors are the provider's own float arrays,
/// rounded to their file type. Anything else in the file (rope_freqs) is copied unchanged.
/// The trained model is written as a GGUF with the source's metadata, tensor order, types and alignment.
/// </summary>
public sealed class FullModelWeights
{
    /// <summary>The trained model's file name in OUT_DIR and in a checkpoint.</summary>
    public const string FileName = "model.gguf";

    private readonly GgufSource _source;
    private readonly Dictionary<string, MezoParameter> _byName;

    internal IReadOnlyList<MezoParameter> Parameters { get; }
    /// <summary>Numbers trained.</summary>
    public long ParameterCount => Parameters.Sum(p => p.Length);

    private FullModelWeights(GgufSource source, List<MezoParameter> parameters)
    {
        _source = source;
        Parameters = parameters;
        _byName = parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
    }

    /// <summary>
    /// Refuses, with one line a user can act on, a model that full-weight MeZO cannot train: a Hugging Face folder
    /// (the output is a GGUF: convert first), a stacked or prepared file, or weights in a quantized type.
    /// </summary>
    public static void CheckSource(IModelSource source)
    {
        string convert = $"convert the original model with `fitlm convert --type f32` (or f16, bf16), or train a LoRA adapter with MeZO (drop --mezo-full)";
        if (source is not GgufSource gguf)
            throw new FitLMException($"{source.Path}: --mezo-full writes the trained model as a GGUF; convert the folder first (fitlm convert -m {source.Path} -o MODEL-f32.gguf --type f32)");
        if (GgufSource.IsStacked(gguf.File) || ModelValidation.IsBundled(source))
            throw new FitLMException($"{source.Path}: a stacked or prepared model cannot be trained with --mezo-full; train the original model, then compress or prepare it");
        foreach (var name in ParameterNames(source))
        {
            var t = source.Find(name)!;
            if (!MezoParameter.IsFloatType(t.Type))
                throw new FitLMException($"{source.Path}: --mezo-full trains weights stored as F32, F16 or BF16, and '{name}' is {t.Type}; {convert}");
        }
    }

    /// <summary>The parameters of <paramref name="source"/> in <paramref name="weights"/>, which must hold them resident.</summary>
    public static FullModelWeights Of(IModelSource source, IWeightProvider weights)
    {
        CheckSource(source);
        if (weights is not ResidentWeights)
            throw new FitLMException($"{source.Path}: --mezo-full needs every weight resident in memory as stored (not streamed, no --lora applied); give a larger --memory, or train a LoRA adapter with MeZO (drop --mezo-full)");
        var list = new List<MezoParameter>();
        foreach (var name in ParameterNames(source))
        {
            var t = source.Find(name)!;
            if (t.Shape.Length >= 2 && t.Shape.Skip(1).Any(d => d > 1))
            {
                if (weights.Matrix(name) is not ResidentMatrix m) throw new FitLMException($"{source.Path}: '{name}' is not resident; --mezo-full needs every weight in memory");
                list.Add(new MatrixParameter(m));
            }
            else list.Add(new ArrayParameter(name, weights.Vector(name), t.Type));
        }
        return new FullModelWeights((GgufSource)source, list);
    }

    /// <summary>The tensors trained, in the file's order: those the training graph reads, less rope_freqs.</summary>
    private static List<string> ParameterNames(IModelSource source)
    {
        var c = source.Config;
        var used = new HashSet<string>(StringComparer.Ordinal) { "token_embd.weight", "output.weight", "output_norm.weight" };
        string[] perLayer = ["attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
            "attn_norm.weight", "ffn_norm.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_q_norm.weight", "attn_k_norm.weight"];
        for (int l = 0; l < c.Layers; l++)
            foreach (var n in perLayer) used.Add($"blk.{l}.{n}");
        return source.Tensors.Where(t => used.Contains(t.Name)).Select(t => t.Name).ToList();
    }

    /// <summary>
    /// Writes the model as it is now to <paramref name="path"/> (temporary name, renamed when complete): metadata
    /// and every other tensor copied from the source file, the trained ones from memory in their file types.
    /// </summary>
    public string Write(string path, CancellationToken ct = default)
    {
        var file = _source.File;
        using var w = new GgufWriter(path, (int)file.Alignment, ct);
        foreach (var key in file.MetadataKeys) w.Add(key, file.Metadata[key]);
        foreach (var t in file.Tensors) w.AddTensor(t.Name, t.Shape, t.Type);
        const int chunk = 1 << 18; // elements per write: 1 MiB of F32
        var bytes = new byte[4 * chunk];
        var floats = new float[chunk];
        foreach (var t in file.Tensors)
        {
            ct.ThrowIfCancellationRequested();
            w.BeginTensor(t.Name);
            if (_byName.TryGetValue(t.Name, out var p))
            {
                for (long first = 0; first < p.Length; first += chunk)
                {
                    int n = (int)Math.Min(chunk, p.Length - first);
                    var held = p.Bytes(first, n);
                    if (p.Memory == t.Type)
                    {
                        w.WriteTensorData(held);
                        continue;
                    }
                    // A vector stored as F16/BF16 is held as floats (already rounded to its type): exact.
                    Dequantize.Row(p.Memory, held, floats.AsSpan(0, n));
                    var outBytes = bytes.AsSpan(0, (int)GgmlTypes.RowBytes(t.Type, n));
                    Quantize.Row(t.Type, floats.AsSpan(0, n), outBytes);
                    w.WriteTensorData(outBytes);
                }
                continue;
            }
            for (long off = 0; off < t.ByteSize; off += bytes.Length)
            {
                int n = (int)Math.Min(bytes.Length, t.ByteSize - off);
                file.ReadTensorBytes(t, off, bytes.AsSpan(0, n));
                w.WriteTensorData(bytes.AsSpan(0, n));
            }
        }
        w.Complete();
        return w.Path;
    }

    /// <summary>
    /// Reads the trained tensors back from <paramref name="path"/> (a checkpoint's model file) into memory, so a
    /// resumed run continues from exactly the weights it stopped with.
    /// </summary>
    public void Restore(string path)
    {
        if (!File.Exists(path)) throw new FitLMException($"{path}: missing; the checkpoint of a --mezo-full run holds the trained model");
        using var file = GgufFile.Open(path);
        var floats = new float[1 << 18];
        var bytes = new byte[4 * floats.Length];
        foreach (var p in Parameters)
        {
            var own = _source.File.GetTensor(p.Name);
            var t = file.FindTensor(p.Name);
            if (t == null || t.Type != own.Type || !t.Shape.SequenceEqual(own.Shape))
                throw new FitLMException($"{path}: tensor '{p.Name}' is missing or differs in type or shape from {_source.Path}'s; the checkpoint does not belong to this model");
            for (long first = 0; first < p.Length; first += floats.Length)
            {
                int n = (int)Math.Min(floats.Length, p.Length - first);
                long offset = GgmlTypes.RowBytes(t.Type, first);
                if (p.Memory == t.Type)
                {
                    file.ReadTensorBytes(t, offset, p.Bytes(first, n));
                    continue;
                }
                var stored = bytes.AsSpan(0, (int)GgmlTypes.RowBytes(t.Type, n));
                file.ReadTensorBytes(t, offset, stored);
                Dequantize.Row(t.Type, stored, floats.AsSpan(0, n));
                Quantize.Row(p.Memory, floats.AsSpan(0, n), p.Bytes(first, n));
            }
        }
    }
}
