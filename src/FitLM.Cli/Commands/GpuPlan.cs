using FitLM.Backends.Cuda;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm plan --device cuda`: where `run --device cuda` would put the model (CudaBackend.Plan, the same arithmetic):
/// what stays in GPU memory, which layers stream from host memory per token, and, where a GPU is present, the decode
/// speed the measured bandwidth allows: streamed bytes per token against the host-to-device copy, or, every layer
/// resident, the weights read per token against the device's own copy. Without a GPU it needs --gpu-memory, and
/// predicts nothing. Measured first (<see cref="Measure"/>), then written as text or, with --json, as one object.
/// </summary>
internal static class GpuPlan
{
    /// <summary>The placement, and what the device measured now (null without one).</summary>
    private sealed record Report(string Model, int Context, long Budget, string? FreeOn, bool Naive, KvCache.KvCacheOptions Kv,
        CudaBackend.Placement Placement, string? NoDevice, double? DeviceCopy, double? HostToDevice)
    {
        public long WeightsReadPerToken => Placement.Blocks.Sum(b => b.Bytes) + Placement.Head.Bytes;

        /// <summary>The decode rate the measured bandwidth allows: resident, weights read per token against the device's
        /// copy; streaming, streamed bytes per token against the host-to-device copy. Null without a GPU.</summary>
        public double? PredictedTokensPerSecond => Placement.StreamedBytes == 0
            ? DeviceCopy / WeightsReadPerToken
            : HostToDevice / Placement.StreamedBytes;
    }

    public static int Write(TextWriter o, string path, LoadOptions load, bool json)
    {
        Print(o, Measure(path, load, auto: false), json);
        return 0;
    }

    /// <summary>
    /// `plan` with --device auto: the GPU plan when run would load the model on the GPU (the GPU path runs the model and
    /// its flags, a device opens, the fixed part fits), then null; else nothing written and the reason, as run's
    /// fallback line gives it.
    /// </summary>
    public static string? TryWrite(TextWriter o, string path, LoadOptions load, bool json)
    {
        Report r;
        try { r = Measure(path, load, auto: true); }
        catch (FitLMException e) { return e.Message; }
        Print(o, r, json);
        return null;
    }

    private static void Print(TextWriter o, Report r, bool json)
    {
        if (json) o.WriteLine(CliJson.Indented(Json(r)));
        else WriteText(o, r);
    }

    /// <param name="auto">--device auto: what the GPU path refuses, and no GPU, are FitLMExceptions (the CPU's plan then)
    /// rather than a plan without measurements.</param>
    private static Report Measure(string path, LoadOptions load, bool auto)
    {
        using var source = ModelSource.Open(path);
        if (auto && LanguageModel.GpuRefusal(source, load) is { } why) throw new FitLMException(why);
        int n = load.ContextLength > 0 ? load.ContextLength : LoadOptions.DefaultContext(source.Config.ContextLength); // as run loads it
        bool naive = load.Stream == Weights.StreamMode.Naive;
        CudaDevice? device = null;
        try
        {
            string? noDevice = null;
            try { device = CudaDevice.Open(0); }
            catch (FitLMException e) when (!auto) { noDevice = e.Message; }
            long budget = load.GpuMemoryBudget;
            if (budget == 0)
            {
                if (device == null) throw new FitLMException($"give --gpu-memory SIZE: there is no GPU to read free memory from ({noDevice})");
                budget = device.FreeMemory() - CudaBackend.Headroom;
            }
            var p = CudaBackend.Plan(source, n, load.MaxBatch, load.Kv, budget, naive, hostMemory: LanguageModel.GpuHostMemory(source, load));
            double? copy = null, h2d = null;
            if (device != null && p.StreamedBytes == 0)
                copy = device.CopyBandwidth(Math.Min(1L << 30, Math.Max(64L << 20, (device.FreeMemory() - p.DeviceBytes) / 4)));
            else if (device != null)
                h2d = device.HostToDeviceBandwidth();
            return new Report(Path.GetFileName(Path.TrimEndingDirectorySeparator(path)), n, budget,
                load.GpuMemoryBudget == 0 ? device!.Name : null, naive, load.Kv, p, noDevice, copy, h2d);
        }
        finally { device?.Dispose(); }
    }

    private static void WriteText(TextWriter o, Report r)
    {
        var p = r.Placement;
        o.WriteLine($"GPU plan for {r.Model} at context {r.Context}, budget {ProcessMemory.Format(r.Budget)}" + (r.FreeOn is { } name ? $" (free on {name})" : ""));
        o.WriteLine($"  in GPU memory        {ProcessMemory.Format(p.DeviceBytes),12}  ({(p.Resident == p.Layers ? "every layer" : p.Resident == 0 ? "no layer" : $"layers 0-{p.Resident - 1}")} of {p.Layers}, " +
            $"KV cache {r.Kv} {ProcessMemory.Format(p.KvBytes)}, activations, norms, output head" +
            (p.SlotBytes > 0 ? $", {(r.Naive ? "one slot" : "two slots")} of {ProcessMemory.Format(p.SlotBytes / (r.Naive ? 1 : 2))}" : "") + ")");
        if (p.StreamedBytes == 0)
        {
            o.WriteLine("  streamed per token   nothing      (decode is bound by the GPU's own memory bandwidth)");
            string read = ProcessMemory.Format(r.WeightsReadPerToken);
            // Weights read once per token against what the device copies; the kernels reach a share of it (docs/cuda.md).
            o.WriteLine(r.DeviceCopy is { } copy
                ? $"  predicted decode     at most {r.PredictedTokensPerSecond:F1} tok/s  ({read} of weights read per token against the " +
                  $"{copy / 1e9:F0} GB/s the device copies, measured now; `fitlm bench --device cuda` measures the share decode reaches)"
                : $"  predicted decode     not measured (no GPU here: {r.NoDevice}); {read} of weights read per token");
            return;
        }
        int fromFile = p.Resident + p.PinnedLayers;
        o.WriteLine($"  streamed per token   {ProcessMemory.Format(p.StreamedBytes),12}  (layers {p.Resident}-{p.Layers - 1} " +
            (r.Naive ? "read from the model file and uploaded before each use: --stream naive)"
                : fromFile == p.Layers ? "from pinned host memory, copied while the layers before them run)"
                : $"copied while the layers before them run: {(p.PinnedLayers > 0 ? $"{Layers(p.Resident, fromFile - 1)} from pinned host memory, " : "")}" +
                  $"{Layers(fromFile, p.Layers - 1)} read from the model file each token ({ProcessMemory.Format(p.FileBytesPerPass)}), as --memory holds no more pinned copies)"));
        o.WriteLine(r.HostToDevice is { } h2d
            ? $"  predicted decode     at most {r.PredictedTokensPerSecond:F2} tok/s  (the {h2d / 1e9:F1} GB/s host-to-device copy measured now" +
              (r.Naive ? "; the naive loop also reads the file and does not overlap, so it runs far below this)"
                  : p.FileBytesPerPass > 0 ? "; the layers read from the file are bound by its read speed too)" : ")")
            : $"  predicted decode     not measured (no GPU here: {r.NoDevice})");
    }

    private static string Layers(int first, int last) => first == last ? $"{first}" : $"{first}-{last}";

    /// <summary>`plan --device cuda --json`: the same fields as the text, bytes as numbers; measurements null without a GPU.</summary>
    private static Dictionary<string, object?> Json(Report r)
    {
        var p = r.Placement;
        return new Dictionary<string, object?>
        {
            ["device"] = "cuda",
            ["model"] = r.Model,
            ["context"] = r.Context,
            ["gpu_budget_bytes"] = r.Budget,
            ["budget_from_free_memory_of"] = r.FreeOn,
            ["layers"] = p.Layers,
            ["resident_layers"] = p.Resident,
            ["streamed_layers"] = p.Layers - p.Resident,
            ["stream"] = p.StreamedBytes == 0 ? "none" : r.Naive ? "naive" : "prefetch",
            ["gpu_bytes"] = p.DeviceBytes,
            ["kv_type"] = r.Kv.Spec,
            ["kv_bytes"] = p.KvBytes,
            ["stream_slot_bytes"] = p.SlotBytes,
            ["streamed_bytes_per_token"] = p.StreamedBytes,
            ["pinned_streamed_layers"] = p.PinnedLayers, // 0 when naive: Plan pins none
            ["file_bytes_per_token"] = p.FileBytesPerPass,
            ["weights_read_per_token"] = r.WeightsReadPerToken,
            ["device_copy_bytes_per_second"] = r.DeviceCopy,
            ["host_to_device_bytes_per_second"] = r.HostToDevice,
            ["predicted_tokens_per_second"] = r.PredictedTokensPerSecond,
            ["not_measured_because"] = r.NoDevice,
        };
    }
}
