using FitLM.Model;

namespace FitLM.Memory;

/// <summary>
/// What a `fitlm` process holds besides the parts a plan counts one by one (weights, KV cache, activations, stream
/// buffers): the .NET runtime and the code it maps and compiles, the GC heap's slack, thread stacks, the tokenizer and
/// the model's metadata. One number, used by the planner, `plan`, `info` and the stacked planner alike, so the same
/// inputs give the same plan whatever ran before in the process (it used to be the RSS measured at load plus a 24 MiB
/// margin: the storage probe's buffers, run first by `plan`, moved it by several MiB).
///
/// How it was measured (docs/memory.md): `fitlm run`, `perplexity`, `bench` and `serve` on the demo model and
/// small Hugging Face folders, each under budgets from generous down to its minimum, peak RSS read from outside
/// (/usr/bin/time -v, which reports the kernel's VmHWM); the constant is the largest peak minus the plan's other
/// parts, rounded up. The same measurement runs as tests/FitLM.Tests/Cli/BudgetTests.
/// </summary>
public static class RuntimeFootprint
{
    /// <summary>
    /// The process with a small model, measured at peak: 46.6 MiB for `fitlm run` of the demo model with a two-token
    /// prompt and streamed weights, about 50 with them resident, 57.9 MiB for `bench` and `perplexity` (whose native heap
    /// is twice run's, not explained yet). Of it, runtime code mapped from files is ~31 MiB (CoreLib 10.5, coreclr 5.5, clrjit 4.5, libc and
    /// libstdc++ 3); compiled code, the GC heap, malloc arenas and 12 threads' stacks are the rest. The largest, rounded up.
    /// </summary>
    public const long BaseBytes = 58L << 20;

    /// <summary>
    /// The same for a Native AOT build (`dotnet publish -r linux-x64 -p:PublishAot=true`, docs/memory.md): no JIT, no
    /// IL and no CoreLib mapped from files, the code is one 18 MiB binary of which a process touches a part. Measured as
    /// <see cref="BaseBytes"/> was (bench/aot-memory.sh): peak minus the plan's other parts at context 256 was 22.8–23.1 MiB
    /// for `run` and 20.0–23.9 for `bench` (the JIT build: 47.0–48.4 and 48.3–52.3; `--help` 17.3 vs 34.2 MiB in all);
    /// counting 30 MiB, `perplexity -c 256` on 60 KB of text peaked at 99–100% of its budget. So 34: the demo model then
    /// runs in 52 MiB (peak 40.0) instead of 76.
    /// </summary>
    public const long AotBaseBytes = 34L << 20;

    /// <summary>Native AOT compiles everything ahead of time and cannot generate code at run time; a JIT build can.</summary>
    private static bool IsNativeAot => !System.Runtime.CompilerServices.RuntimeFeature.IsDynamicCodeSupported;

    /// <summary>
    /// Per compute thread (the measurement above ran 2): its stack's touched pages, its malloc arena's first pages and
    /// the JIT's per-thread data, rounded up. Per-thread tiles are counted with the activations (<see cref="Footprint"/>).
    /// Counted for the default thread count (the physical cores), whatever -t says, so `info`, which runs no threads,
    /// prints the same number as `plan` and `run`.
    /// </summary>
    public const long BytesPerThread = 512L << 10;

    /// <summary>Token strings, lookup tables and merges per vocabulary entry (measured: 1.5 MiB more for 32000 tokens than for 8192).</summary>
    public const long BytesPerVocabEntry = 96;

    /// <summary>
    /// A Hugging Face folder: its tokenizer.json is parsed as a document (measured: 5 MiB for a 0.53 MB file) and its
    /// safetensors headers and configs read as JSON; `perplexity` on pycoder-29m peaked 0.4 MiB over a 140 MiB budget at
    /// 10× the tokenizer's size, so 16×.
    /// </summary>
    public const int TokenizerJsonFactor = 16;

    /// <summary>The process's footprint besides the plan's parts, for <paramref name="source"/>.</summary>
    public static long Bytes(IModelSource source)
    {
        long bytes = (IsNativeAot ? AotBaseBytes : BaseBytes) + Runtime.CpuInfo.PhysicalCores * BytesPerThread + (long)source.Config.Vocab * BytesPerVocabEntry;
        string json = System.IO.Path.Combine(source.Path, "tokenizer.json");
        if (Directory.Exists(source.Path) && File.Exists(json)) bytes += TokenizerJsonFactor * new FileInfo(json).Length;
        return bytes;
    }
}
