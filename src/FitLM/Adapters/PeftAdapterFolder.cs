using System.Text.Json;
using System.Text.Json.Nodes;
using FitLM.Formats;
using FitLM.Model;
using FitLM.Storage;
using FitLM.Tensors;

namespace FitLM.Adapters;

/// <summary>
/// A LoRA adapter as Hugging Face PEFT saves it: a folder with <c>adapter_config.json</c> and
/// <c>adapter_model.safetensors</c>, tensors named <c>base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight</c>
/// (A [r × in]) and <c>….lora_B.weight</c> (B [out × r]), q/k rows in transformers' rotate-half order.
/// </summary>
public static class PeftAdapterFolder
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    private const string PeftPrefix = "base_model.model.";

    /// <summary>Reads the adapter in <paramref name="dir"/> for the model <paramref name="source"/>: names mapped, shapes checked, B in the model's row order.</summary>
    public static LoraAdapter Read(string dir, IModelSource source, CancellationToken ct = default)
    {
        var config = source.Config;
        var family = config.Family;
        string configPath = Path.Combine(dir, ConfigFile), weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(configPath))
            throw new FitLMException($"{dir}: no {ConfigFile} (a PEFT adapter folder holds {ConfigFile} and {WeightsFile})");
        if (!File.Exists(weightsPath))
            throw new FitLMException(File.Exists(Path.Combine(dir, "adapter_model.bin"))
                ? $"{dir}: only safetensors adapters are read, and this one is adapter_model.bin (save it with safe_serialization=True)"
                : $"{dir}: no {WeightsFile}");
        var (rank, alpha) = ReadConfig(configPath);

        using var file = SafetensorsFile.Open(weightsPath);
        var a = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
        var b = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
        foreach (var t in file.Tensors.Values)
        {
            bool isA = t.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal), isB = t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal);
            if (!isA && !isB)
                throw new FitLMException($"{weightsPath}: tensor '{t.Name}' is not a LoRA A or B matrix (only LoRA weights are read, not modules_to_save or biases)");
            string hf = t.Name[..^".lora_A.weight".Length] + ".weight";
            if (hf.StartsWith(PeftPrefix, StringComparison.Ordinal)) hf = hf[PeftPrefix.Length..];
            string gguf = family.GgufTensorName(hf) ?? throw new FitLMException($"{weightsPath}: tensor '{t.Name}' adapts '{hf}', which is not a {family.Name} matrix");
            if (ShortTarget(gguf) == null)
                throw new FitLMException($"{weightsPath}: tensor '{t.Name}' adapts '{hf}'; only the attention and FFN projections (q,k,v,o,gate,up,down) can be adapted");
            if (t.Shape.Length != 2) throw new FitLMException($"{weightsPath}: tensor '{t.Name}' has {t.Shape.Length} dimensions, a LoRA matrix has 2");
            if (!(isA ? a : b).TryAdd(gguf, t)) throw new FitLMException($"{weightsPath}: two tensors adapt '{hf}'");
        }
        if (a.Count == 0) throw new FitLMException($"{weightsPath}: no LoRA tensors");
        bool permuted = QkRowOrder.IsPermuted(source);
        var pairs = new List<LoraPair>();
        foreach (var (name, ta) in a)
        {
            if (!b.TryGetValue(name, out var tb)) throw new FitLMException($"{weightsPath}: '{ta.Name}' has no lora_B beside it");
            int r = (int)ta.Shape[0];
            if (r != rank || tb.Shape[1] != rank)
                throw new FitLMException($"{weightsPath}: '{ta.Name}' has rank {r} and its B {tb.Shape[1]}, the config says r = {rank} (per-module ranks are not supported)");
            var pair = new LoraPair(name, rank, (int)ta.Shape[1], (int)tb.Shape[0]);
            ReadFloats(file, ta, pair.A);
            ReadFloats(file, tb, pair.B);
            pairs.Add(pair);
            ct.ThrowIfCancellationRequested();
        }
        foreach (var name in b.Keys)
            if (!a.ContainsKey(name)) throw new FitLMException($"{weightsPath}: '{b[name].Name}' has no lora_A beside it");
        var adapter = Assemble(rank, alpha, pairs);
        LoraFile.CheckAgainst(adapter, source, dir);
        foreach (var p in adapter.Pairs)
            QkRowOrder.Reorder(p, config, fromInterleaved: false, toInterleaved: permuted).CopyTo(p.B, 0);
        return adapter;
    }

    /// <summary>
    /// Writes <paramref name="adapter"/> (rows in the order of the model <paramref name="source"/> is loaded in) to
    /// <paramref name="dir"/> as PEFT saves one, F32; the folder is created if needed and each file appears whole
    /// (temp name, then rename). <paramref name="baseModel"/> is adapter_config.json's base_model_name_or_path.
    /// </summary>
    public static void Write(LoraAdapter adapter, string dir, IModelSource source, string? baseModel = null, CancellationToken ct = default) =>
        Write(adapter, dir, source.Config, QkRowOrder.IsPermuted(source), baseModel ?? Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(source.Path)), ct);

    /// <summary>As <see cref="Write(LoraAdapter, string, IModelSource, string?, CancellationToken)"/>, for a model of <paramref name="config"/> whose q/k rows are <paramref name="qkPermuted"/> (<see cref="QkRowOrder.IsPermuted"/>).</summary>
    public static void Write(LoraAdapter adapter, string dir, ModelConfig config, bool qkPermuted, string baseModel, CancellationToken ct = default)
    {
        if (File.Exists(dir)) throw new FitLMException($"{dir}: is a file; a PEFT adapter is a folder");
        try { Directory.CreateDirectory(dir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new FitLMException($"{dir}: cannot create the folder: {e.Message}", e); }
        var tensors = new List<SafetensorsTensor>();
        var modules = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in adapter.Pairs)
        {
            string hf = HfModuleOf(p.Name, config);
            modules.Add(hf[(hf.LastIndexOf('.') + 1)..]);
            tensors.Add(new SafetensorsTensor($"{PeftPrefix}{hf}.lora_A.weight", [p.Rank, p.In], p.A));
            tensors.Add(new SafetensorsTensor($"{PeftPrefix}{hf}.lora_B.weight", [p.Out, p.Rank],
                QkRowOrder.Reorder(p, config, fromInterleaved: qkPermuted, toInterleaved: false)));
        }
        SafetensorsWriter.Write(Path.Combine(dir, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" }, GgmlType.F32, ct);
        var json = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["r"] = adapter.Rank,
            ["lora_alpha"] = adapter.Alpha,
            ["lora_dropout"] = 0.0,
            ["bias"] = "none",
            ["target_modules"] = new JsonArray(modules.OrderBy(m => Array.IndexOf(HfModuleOrder, m)).Select(m => (JsonNode)m!).ToArray()),
            ["base_model_name_or_path"] = baseModel,
            ["fan_in_fan_out"] = false,
            ["use_rslora"] = false,
            ["use_dora"] = false,
            ["inference_mode"] = true,
        };
        string text = json.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
        OutputFile.WriteAtomically(Path.Combine(dir, ConfigFile), temp => File.WriteAllText(temp, text));
    }

    private static readonly string[] HfModuleOrder = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>rank and alpha from adapter_config.json, refusing what this reader would get wrong (rsLoRA, DoRA, other PEFT methods).</summary>
    private static (int Rank, float Alpha) ReadConfig(string path)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new FitLMException($"{path}: not valid JSON: {e.Message}", e); }
        if (root is not JsonObject o) throw new FitLMException($"{path}: not a JSON object");
        string peftType = Str(o, "peft_type") ?? throw new FitLMException($"{path}: peft_type is missing");
        if (!string.Equals(peftType, "LORA", StringComparison.OrdinalIgnoreCase))
            throw new FitLMException($"{path}: peft_type '{peftType}' is not supported (only LORA adapters are read)");
        if (Bool(o, "use_rslora")) throw new FitLMException($"{path}: rank-stabilized LoRA (use_rslora) is not supported");
        if (Bool(o, "use_dora")) throw new FitLMException($"{path}: DoRA (use_dora) is not supported");
        if (Bool(o, "fan_in_fan_out")) throw new FitLMException($"{path}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported");
        foreach (var key in new[] { "rank_pattern", "alpha_pattern" })
            if (o[key] is JsonObject { Count: > 0 }) throw new FitLMException($"{path}: per-module ranks or alphas ({key}) are not supported");
        int rank = (int)(Num(o, "r", path) ?? throw new FitLMException($"{path}: r (the LoRA rank) is missing"));
        double alpha = Num(o, "lora_alpha", path) ?? rank; // PEFT's default alpha is 8 = its default r; missing: scale 1
        if (rank <= 0) throw new FitLMException($"{path}: r {rank} must be at least 1");
        return (rank, (float)alpha);
    }

    private static string? Str(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
    private static bool Bool(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue<bool>(out var b) && b;
    private static double? Num(JsonObject o, string key, string path)
    {
        if (o[key] is null) return null;
        if (o[key] is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d)) return d;
        throw new FitLMException($"{path}: {key} is not a number");
    }

    private static void ReadFloats(SafetensorsFile file, SafetensorsTensorInfo t, float[] dst)
    {
        var bytes = new byte[t.ByteSize];
        file.ReadTensorBytes(t, 0, bytes);
        Dequantize.Row(t.Type, bytes, dst);
        foreach (var x in dst)
            if (!float.IsFinite(x)) throw new FitLMException($"{file.Path}: tensor '{t.Name}' holds a NaN or infinite value");
    }

    /// <summary>The short target name of a GGUF matrix name ("blk.3.attn_q.weight" → "q"), or null for a matrix LoRA does not adapt.</summary>
    public static string? ShortTarget(string ggufName)
    {
        if (TensorNames.LayerOf(ggufName) < 0) return null;
        string suffix = ggufName[(ggufName.IndexOf('.', 4) + 1)..];
        return LoraAdapter.AllTargets.FirstOrDefault(t => LoraAdapter.TensorOf(t) == suffix);
    }

    /// <summary>An adapter of <paramref name="pairs"/> in layer order then target order, its targets the ones present.</summary>
    internal static LoraAdapter Assemble(int rank, float alpha, List<LoraPair> pairs)
    {
        var order = LoraAdapter.AllTargets.ToList();
        var sorted = pairs.OrderBy(p => TensorNames.LayerOf(p.Name)).ThenBy(p => order.IndexOf(ShortTarget(p.Name)!)).ToList();
        var targets = order.Where(t => sorted.Any(p => ShortTarget(p.Name) == t)).ToList();
        return new LoraAdapter(rank, alpha, targets, sorted);
    }

    /// <summary>The Hugging Face module of a GGUF matrix: "blk.3.attn_q.weight" → "model.layers.3.self_attn.q_proj".</summary>
    private static string HfModuleOf(string ggufName, ModelConfig config)
    {
        var family = config.Family;
        var spec = family.FindTensor(ggufName);
        if (spec?.Hf == null || !spec.PerLayer) throw new FitLMException($"'{ggufName}' has no Hugging Face name in {family.Name}");
        string hf = spec.Hf.EndsWith(".weight", StringComparison.Ordinal) ? spec.Hf[..^".weight".Length] : spec.Hf;
        return $"{family.HfLayerPrefix}{TensorNames.LayerOf(ggufName)}.{hf}";
    }
}
