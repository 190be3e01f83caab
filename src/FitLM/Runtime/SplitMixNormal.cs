namespace FitLM.Runtime;

/// <summary>
/// Standard normal samples from a SplitMix64 stream through Box–Muller (each pair of uniforms gives two samples):
/// the same numbers on every machine and runtime, unlike <see cref="System.Random"/>'s unspecified algorithm. Used
/// where reproducibility matters: synthesized model files, BitStack's random projections, the GPU check's data.
/// A mutable struct: pass it by ref.
/// </summary>
public struct SplitMixNormal(ulong state)
{
    private ulong _state = state;
    private float _spare;
    private bool _hasSpare;

    /// <summary>A stream keyed by three numbers (a seed, a tensor, a row), so that any row can be made on its own.</summary>
    public static SplitMixNormal Keyed(ulong seed, ulong tensor, ulong row) =>
        new(seed * 0x9E3779B97F4A7C15UL ^ (tensor + 1) * 0xBF58476D1CE4E5B9UL ^ (row + 1) * 0x94D049BB133111EBUL);

    /// <summary>The next 64 uniform bits.</summary>
    public ulong NextU64()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The next standard normal sample.</summary>
    public float NextNormal()
    {
        if (_hasSpare) { _hasSpare = false; return _spare; }
        double u1 = ((NextU64() >> 11) + 1) * (1.0 / 9007199254740993.0); // (0, 1]
        double u2 = (NextU64() >> 11) * (1.0 / 9007199254740992.0);
        double r = Math.Sqrt(-2 * Math.Log(u1));
        _spare = (float)(r * Math.Sin(2 * Math.PI * u2));
        _hasSpare = true;
        return (float)(r * Math.Cos(2 * Math.PI * u2));
    }
}
