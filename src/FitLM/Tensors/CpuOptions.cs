namespace FitLM.Tensors;

/// <summary>
/// How the CPU kernels run a forward pass: threads, batch-invariant (row-wise) products, the generated (JIT)
/// kernels and the software-prefetch distances. The defaults come from the environment here and nowhere else
/// (<see cref="FromEnvironment"/>); a transformer carries one (its CPU backend's) and applies
/// <see cref="BatchInvariant"/> to its passes. The JIT switch and the prefetch distances are read by the kernels
/// from <see cref="Default"/> into static readonly fields, which the JIT folds into the hot loops as constants: they
/// are the process's, not a pass's, so a per-pass value would cost the decode loops a load and a branch.
/// </summary>
public sealed record CpuOptions
{
    /// <summary>
    /// Worker threads of the process's pool: <see cref="MatMul.Threads"/> starts at this, and the CLI's --threads sets
    /// it. One pool serves the whole process (matrix products, attention, compression), so it is sized there, not per pass.
    /// </summary>
    public int Threads { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>
    /// Passes compute each row of a several-row product exactly as a one-row product (<see cref="MatMul.RowWise"/>):
    /// a row's logits then do not depend on what else is in the batch. Off by default; the server's decode and
    /// speculative verification ask for it per pass.
    /// </summary>
    public bool BatchInvariant { get; init; }

    /// <summary>The generated AVX-512 kernels (Tensors/Jit); FITLM_JIT=0 turns them off.</summary>
    public bool Jit { get; init; } = true;

    /// <summary>Bytes the generated F16 row kernel prefetches ahead (FITLM_JIT_PREFETCH; see GeneratedKernels).</summary>
    public int JitPrefetchBytes { get; init; } = 4096;

    /// <summary>Bytes the quantized decode kernels prefetch ahead (FITLM_PREFETCH_BYTES; see IntDot).</summary>
    public int PrefetchBytes { get; init; } = 2048;

    /// <summary>Bytes the float decode kernels prefetch ahead, 0 for none (FITLM_PREFETCH_BYTES_FLOAT; see FloatDot).</summary>
    public int FloatPrefetchBytes { get; init; }

    /// <summary>The process's options: the defaults with the environment's overrides, read once at first use.</summary>
    public static CpuOptions Default { get; } = FromEnvironment(Environment.GetEnvironmentVariable);

    /// <summary>The defaults with the overrides <paramref name="read"/> gives (the environment's variables; tuning knobs).</summary>
    public static CpuOptions FromEnvironment(Func<string, string?> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        var o = new CpuOptions();
        int Bytes(string name, int fallback) => int.TryParse(read(name), out int b) && b >= 0 ? b : fallback;
        return o with
        {
            Jit = read("FITLM_JIT") != "0",
            JitPrefetchBytes = Bytes("FITLM_JIT_PREFETCH", o.JitPrefetchBytes),
            PrefetchBytes = Bytes("FITLM_PREFETCH_BYTES", o.PrefetchBytes),
            FloatPrefetchBytes = Bytes("FITLM_PREFETCH_BYTES_FLOAT", o.FloatPrefetchBytes),
        };
    }
}
