using FitLM.Backends.Cuda;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm plan --device cuda`: where `run --device cuda` would put the model (CudaForward.Plan, the same arithmetic):
/// what stays in GPU memory, which layers stream from host memory per token, and, where a GPU is present, the decode
/// speed the measured bandwidth allows: streamed bytes per token against the host-to-device copy, or, every layer
/// resident, the weights read per token against the device's own copy. Without a GPU it needs --gpu-memory, and
/// predicts nothing.
/// </summary>
internal static class GpuPlan
{
    public static int Write(TextWriter o, string path, LoadOptions load)
    {
        using var source = ModelSource.Open(path);
        int n = load.ContextLength > 0 ? load.ContextLength : LoadOptions.DefaultContext(source.Config.ContextLength); // as run loads it
        bool naive = load.Stream == Weights.StreamMode.Naive, half = load.Kv.Type == KvCache.KvType.F16;
        CudaDevice? device = null;
        try
        {
            string? noDevice = null;
            try { device = CudaDevice.Open(0); }
            catch (FitLMException e) { noDevice = e.Message; }
            long budget = load.GpuMemoryBudget;
            if (budget == 0)
            {
                if (device == null) throw new FitLMException($"give --gpu-memory SIZE: there is no GPU to read free memory from ({noDevice})");
                budget = device.FreeMemory() - CudaForward.Headroom;
            }
            var p = CudaForward.Plan(source, n, load.MaxBatch, half, budget, naive);
            o.WriteLine($"GPU plan for {Path.GetFileName(Path.TrimEndingDirectorySeparator(path))} at context {n}, budget {ProcessMemory.Format(budget)}" +
                (load.GpuMemoryBudget == 0 ? $" (free on {device!.Name})" : ""));
            o.WriteLine($"  in GPU memory        {ProcessMemory.Format(p.DeviceBytes),12}  ({(p.Resident == p.Layers ? "every layer" : p.Resident == 0 ? "no layer" : $"layers 0-{p.Resident - 1}")} of {p.Layers}, " +
                $"KV cache {(half ? "f16" : "f32")} {ProcessMemory.Format(p.KvBytes)}, activations, norms, output head" +
                (p.SlotBytes > 0 ? $", {(naive ? "one slot" : "two slots")} of {ProcessMemory.Format(p.SlotBytes / (naive ? 1 : 2))}" : "") + ")");
            if (p.StreamedBytes == 0)
            {
                o.WriteLine("  streamed per token   nothing      (decode is bound by the GPU's own memory bandwidth)");
                long read = p.Blocks.Sum(b => b.Bytes) + p.Head.Bytes;
                if (device == null)
                {
                    o.WriteLine($"  predicted decode     not measured (no GPU here: {noDevice}); {ProcessMemory.Format(read)} of weights read per token");
                    return 0;
                }
                // Weights read once per token against what the device copies; the kernels reach a share of it (docs/cuda.md).
                double copy = device.CopyBandwidth(Math.Min(1L << 30, Math.Max(64L << 20, (device.FreeMemory() - p.DeviceBytes) / 4)));
                o.WriteLine($"  predicted decode     at most {copy / read:F1} tok/s  ({ProcessMemory.Format(read)} of weights read per token against the " +
                    $"{copy / 1e9:F0} GB/s the device copies, measured now; `fitlm bench --device cuda` measures the share decode reaches)");
                return 0;
            }
            o.WriteLine($"  streamed per token   {ProcessMemory.Format(p.StreamedBytes),12}  (layers {p.Resident}-{p.Layers - 1} " +
                (naive ? "read from the model file and uploaded before each use: --stream naive)" : "from pinned host memory, copied while the layers before them run)"));
            if (device == null)
            {
                o.WriteLine($"  predicted decode     not measured (no GPU here: {noDevice})");
                return 0;
            }
            double h2d = device.HostToDeviceBandwidth();
            o.WriteLine($"  predicted decode     at most {h2d / p.StreamedBytes:F2} tok/s  (the {h2d / 1e9:F1} GB/s host-to-device copy measured now" +
                (naive ? "; the naive loop also reads the file and does not overlap, so it runs far below this)" : ")"));
            return 0;
        }
        finally { device?.Dispose(); }
    }
}
