using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using FitLM.Tensors;

namespace FitLM.Training;

/// <summary>
/// Moves MeZO's parameters along the direction z of a seed without storing z: the parameters are cut into chunks of
/// <see cref="ChunkElements"/>, and chunk k's part of z is drawn from its own <see cref="GaussianStream"/> seeded by
/// (seed, k), so the chunks are moved in parallel and z is the same whatever the thread count.
/// <para>
/// F32 values move exactly as the paper's implementation does: θ += (b − a)·z. Values rounded to F16/BF16 cannot
/// take that path (+εz, −2εz, +εz would round three times and drift); a move from offset a to offset b first
/// recovers θ = R(x − a·z), then writes R(θ + b·z). Recovering is exact while the rounding error of the perturbed
/// value is below half a unit in θ's last place (θ and θ ± εz in one binade); the rest drift by a unit
/// (<see cref="MezoTrainer"/> measures both on pycoder-29m BF16).
/// </para>
/// </summary>
internal sealed class MezoPerturbation : IParallelJob
{
    /// <summary>Elements per chunk: 64 KiB of z, with its scratch well inside L2.</summary>
    public const int ChunkElements = 16384;

    private readonly IReadOnlyList<MezoParameter> _parameters;
    private readonly (int Parameter, long First, int Count)[] _chunks;
    private ulong _seed;
    private float _from, _to, _decay, _step;
    private bool _update;
    private long _unchanged, _rounded;

    [ThreadStatic] private static float[]? t_z, t_scratch, t_values;
    [ThreadStatic] private static Half[]? t_half;

    public MezoPerturbation(IReadOnlyList<MezoParameter> parameters)
    {
        _parameters = parameters;
        var chunks = new List<(int, long, int)>();
        for (int p = 0; p < parameters.Count; p++)
            for (long first = 0; first < parameters[p].Length; first += ChunkElements)
                chunks.Add((p, first, (int)Math.Min(ChunkElements, parameters[p].Length - first)));
        _chunks = [.. chunks];
        Elements = parameters.Sum(p => p.Length);
    }

    /// <summary>Numbers moved.</summary>
    public long Elements { get; }

    /// <summary>From θ + <paramref name="from"/>·z to θ + <paramref name="to"/>·z (z of <paramref name="seed"/>).</summary>
    public void Move(ulong seed, float from, float to)
    {
        (_seed, _from, _to, _update) = (seed, from, to, false);
        WorkerPool.Shared.Run(this, _chunks.Length);
    }

    /// <summary>
    /// θ ← <paramref name="decay"/>·θ + <paramref name="step"/>·z. Returns how many rounded (F16/BF16) values the
    /// update left unchanged, of how many rounded values there are: updates below half a unit in the last place vanish.
    /// </summary>
    public (long Unchanged, long Rounded) Update(ulong seed, float decay, float step)
    {
        (_seed, _decay, _step, _update, _unchanged, _rounded) = (seed, decay, step, true, 0, 0);
        WorkerPool.Shared.Run(this, _chunks.Length);
        return (_unchanged, _rounded);
    }

    /// <summary>The direction z of <paramref name="seed"/>, one array per parameter (for tests: small models only).</summary>
    public float[][] Direction(ulong seed)
    {
        var z = _parameters.Select(p => new float[p.Length]).ToArray();
        for (int k = 0; k < _chunks.Length; k++)
        {
            var (p, first, count) = _chunks[k];
            Draw(seed, k, count).CopyTo(z[p].AsSpan((int)first, count));
        }
        return z;
    }

    public void Execute(int item)
    {
        var (pi, first, count) = _chunks[item];
        var p = _parameters[pi];
        var z = Draw(_seed, item, count);
        var bytes = p.Bytes(first, count);
        if (p.Memory == GgmlType.F32 && p.Rounding == GgmlType.F32)
        {
            var x = MemoryMarshal.Cast<byte, float>(bytes);
            if (!_update) TensorPrimitives.MultiplyAdd(z, _to - _from, x, x);
            else
            {
                if (_decay != 1f) TensorPrimitives.Multiply(x, _decay, x);
                TensorPrimitives.MultiplyAdd(z, _step, x, x);
            }
            return;
        }
        var v = Buffer(ref t_values, count);
        Dequantize.Row(p.Memory, bytes, v);
        if (!_update)
        {
            if (_from != 0f)
            {
                TensorPrimitives.MultiplyAdd(z, -_from, v, v);
                Round(v, p.Rounding);
            }
            TensorPrimitives.MultiplyAdd(z, _to, v, v);
            Round(v, p.Rounding);
        }
        else
        {
            var old = Buffer(ref t_scratch, count);
            v.CopyTo(old);
            if (_decay != 1f) TensorPrimitives.Multiply(v, _decay, v);
            TensorPrimitives.MultiplyAdd(z, _step, v, v);
            Round(v, p.Rounding);
            int same = 0;
            for (int i = 0; i < count; i++)
                if (BitConverter.SingleToInt32Bits(v[i]) == BitConverter.SingleToInt32Bits(old[i])) same++;
            Interlocked.Add(ref _unchanged, same);
            Interlocked.Add(ref _rounded, count);
        }
        if (p.Memory == p.Rounding) Store(v, p.Memory, bytes);
        else Quantize.Row(p.Memory, v, bytes);
    }

    /// <summary>Chunk <paramref name="chunk"/>'s part of z, in this thread's buffer.</summary>
    private static Span<float> Draw(ulong seed, int chunk, int count)
    {
        int even = (count + 1) & ~1;
        var z = Buffer(ref t_z, even);
        new GaussianStream(GaussianStream.Mix(seed ^ GaussianStream.Mix((ulong)chunk))).Fill(z, Buffer(ref t_scratch, GaussianStream.ScratchFor(even)));
        return z[..count];
    }

    /// <summary>Rounds every value to the nearest one <paramref name="type"/> holds (F32: nothing to do).</summary>
    private static void Round(Span<float> v, GgmlType type)
    {
        switch (type)
        {
            case GgmlType.F16:
                {
                    var h = t_half is { } a && a.Length >= v.Length ? a.AsSpan(0, v.Length) : (t_half = new Half[ChunkElements]).AsSpan(0, v.Length);
                    TensorPrimitives.ConvertToHalf(v, h);
                    TensorPrimitives.ConvertToSingle(h, v);
                    return;
                }
            case GgmlType.BF16:
                {
                    // Quantize.ToBF16 (nearest even; NaN stays a quiet NaN), 8 lanes at a time: the scalar loop cost 4 ns a value.
                    var u = MemoryMarshal.Cast<float, uint>(v);
                    int i = 0;
                    for (; i + 8 <= u.Length; i += 8)
                    {
                        var x = Vector256.Create<uint>(u[i..]);
                        var rounded = (x + Vector256.Create(0x7FFFu) + ((x >> 16) & Vector256<uint>.One)) & Vector256.Create(0xFFFF0000u);
                        var nan = Vector256.GreaterThan(x & Vector256.Create(0x7FFFFFFFu), Vector256.Create(0x7F800000u));
                        Vector256.ConditionalSelect(nan, (x | Vector256.Create(0x400000u)) & Vector256.Create(0xFFFF0000u), rounded).CopyTo(u[i..]);
                    }
                    for (; i < u.Length; i++) v[i] = BitConverter.UInt32BitsToSingle((uint)Quantize.ToBF16(v[i]) << 16);
                    return;
                }
        }
    }

    /// <summary>Stores values already rounded to <paramref name="type"/> (exact: a BF16 value is the top half of its float).</summary>
    private static void Store(ReadOnlySpan<float> v, GgmlType type, Span<byte> bytes)
    {
        if (type != GgmlType.BF16)
        {
            Quantize.Row(type, v, bytes);
            return;
        }
        var u = MemoryMarshal.Cast<float, uint>(v);
        var h = MemoryMarshal.Cast<byte, ushort>(bytes);
        int i = 0;
        for (; i + 16 <= u.Length; i += 16)
            Vector256.Narrow(Vector256.Create<uint>(u[i..]) >> 16, Vector256.Create<uint>(u[(i + 8)..]) >> 16).CopyTo(h[i..]);
        for (; i < u.Length; i++) h[i] = (ushort)(u[i] >> 16);
    }

    private static Span<float> Buffer(ref float[]? buffer, int length)
    {
        if (buffer == null || buffer.Length < length) buffer = new float[Math.Max(length, GaussianStream.ScratchFor(ChunkElements))];
        return buffer.AsSpan(0, length);
    }
}
