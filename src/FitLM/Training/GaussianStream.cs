using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace FitLM.Training;

/// <summary>
/// Standard normal numbers from a seed: xoshiro256** bits in four independent lanes (one Vector256 of state per
/// word, so the generator runs as vector shifts, adds and xors), Box–Muller pairs computed a block at a time with
/// the vectorized float functions. Reproducible across runs and thread counts: the numbers depend only on the seed
/// and the order of the calls.
/// MeZO draws its directions from these, one stream per chunk of parameters, so chunks are drawn in parallel.
/// </summary>
internal struct GaussianStream
{
    private Vector256<ulong> _s0, _s1, _s2, _s3;

    public GaussianStream(ulong seed)
    {
        ulong a = Mix(seed), b = Mix(a), c = Mix(b), d = Mix(c);
        // Lane j starts from the seed's state mixed with j: four unrelated streams.
        _s0 = Vector256.Create(a, Mix(a ^ 1), Mix(a ^ 2), Mix(a ^ 3));
        _s1 = Vector256.Create(b, Mix(b ^ 1), Mix(b ^ 2), Mix(b ^ 3));
        _s2 = Vector256.Create(c, Mix(c ^ 1), Mix(c ^ 2), Mix(c ^ 3));
        _s3 = Vector256.Create(d, Mix(d ^ 1), Mix(d ^ 2), Mix(d ^ 3));
    }

    /// <summary>SplitMix64's finalizer: a well-spread 64-bit value from any input.</summary>
    internal static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    private static Vector256<ulong> RotateLeft(Vector256<ulong> x, int k) => (x << k) | (x >> (64 - k));

    /// <summary>xoshiro256** on four lanes: result = rotl(s1 · 5, 7) · 9, with the multiplications as shifts and adds.</summary>
    private Vector256<ulong> NextBits()
    {
        var m5 = (_s1 << 2) + _s1;
        var r = RotateLeft(m5, 7);
        var result = (r << 3) + r;
        var t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = RotateLeft(_s3, 45);
        return result;
    }

    /// <summary>
    /// Fills <paramref name="z"/> (even length) with N(0, 1) numbers; <paramref name="scratch"/> holds at least
    /// <see cref="ScratchFor"/>(z.Length) floats. Box–Muller in float: u₁ ∈ (0, 1] and u₂ ∈ [0, 1) from 24 bits each
    /// of one 64-bit draw; the first half of z gets r·cos(2πu₂), the second r·sin(2πu₂), r = √(−2 ln u₁) (at most
    /// 5.8: tails beyond are cut). Sine and cosine are polynomials on the quadrant (error below 1e-7), 8 lanes at a
    /// time: TensorPrimitives.SinCosPi took 12 ns a number here, three times the rest of the draw.
    /// </summary>
    public void Fill(Span<float> z, Span<float> scratch)
    {
        int half = z.Length / 2, padded = (half + 7) & ~7;
        if (z.Length % 2 != 0 || scratch.Length < ScratchFor(z.Length)) throw new ArgumentException("z must have an even length and scratch ScratchFor(z.Length) floats");
        var r = scratch[..padded];
        var cos = scratch.Slice(padded, padded);
        var sin = scratch.Slice(2 * padded, padded);
        var low24 = Vector256.Create(0xFFFFFFUL);
        for (int i = 0; i < padded; i += 8)
        {
            var a = NextBits();
            var b = NextBits();
            var u1 = Vector256.Narrow(a >> 40, b >> 40).AsInt32() + Vector256<int>.One;   // 1 .. 2²⁴
            var u2 = Vector256.Narrow((a >> 16) & low24, (b >> 16) & low24).AsInt32();     // 0 .. 2²⁴ − 1
            (Vector256.ConvertToSingle(u1) * (1f / 16777216f)).CopyTo(r[i..]);            // (0, 1]
            var (c, s) = SinCos2Pi(u2);
            c.CopyTo(cos[i..]);
            s.CopyTo(sin[i..]);
        }
        r = r[..half];
        TensorPrimitives.Log(r, r);
        TensorPrimitives.Multiply(r, -2f, r);
        TensorPrimitives.Sqrt(r, r);
        TensorPrimitives.Multiply(cos[..half], r, z[..half]);
        TensorPrimitives.Multiply(sin[..half], r, z[half..]);
    }

    /// <summary>Scratch floats <see cref="Fill"/> needs for <paramref name="count"/> numbers.</summary>
    public static int ScratchFor(int count) => 3 * ((count / 2 + 7) & ~7);

    /// <summary>
    /// cos and sin of 2π·k/2²⁴ for k in [0, 2²⁴): the quadrant from the top 2 bits, φ ∈ [0, π/2) from the other 22,
    /// Taylor polynomials of degree 12 and 13 in φ (truncation below 1e-8), then the quadrant's rotation.
    /// </summary>
    private static (Vector256<float> Cos, Vector256<float> Sin) SinCos2Pi(Vector256<int> k)
    {
        var q = k >>> 22;
        var x = Vector256.ConvertToSingle(k & Vector256.Create(0x3FFFFF)) * (MathF.PI / 2 / 4194304f);
        var x2 = x * x;
        var c = Vector256.Create(1f / 479001600f);
        c = c * x2 - Vector256.Create(1f / 3628800f);
        c = c * x2 + Vector256.Create(1f / 40320f);
        c = c * x2 - Vector256.Create(1f / 720f);
        c = c * x2 + Vector256.Create(1f / 24f);
        c = c * x2 - Vector256.Create(0.5f);
        c = c * x2 + Vector256<float>.One;
        var s = Vector256.Create(1f / 6227020800f);
        s = s * x2 - Vector256.Create(1f / 39916800f);
        s = s * x2 + Vector256.Create(1f / 362880f);
        s = s * x2 - Vector256.Create(1f / 5040f);
        s = s * x2 + Vector256.Create(1f / 120f);
        s = s * x2 - Vector256.Create(1f / 6f);
        s = (s * x2 + Vector256<float>.One) * x;
        // Quadrant q: (cos, sin) = (C, S), (−S, C), (−C, −S), (S, −C).
        var swap = Vector256.Equals(q & Vector256<int>.One, Vector256<int>.One).AsSingle();
        var cq = Vector256.ConditionalSelect(swap, s, c);
        var sq = Vector256.ConditionalSelect(swap, c, s);
        var cosSign = (((q + Vector256<int>.One) & Vector256.Create(2)) << 30).AsSingle();
        var sinSign = ((q & Vector256.Create(2)) << 30).AsSingle();
        return (cq ^ cosSign, sq ^ sinSign);
    }
}
