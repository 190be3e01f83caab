using FitLM.KvCache;
using FitLM.Model;

namespace FitLM.Backends.Cuda;

/// <summary>
/// How one layer of one sequence's KV cache sits in GPU memory, for each type the GPU runs (docs/cuda.md):
/// <list type="bullet">
/// <item>f32, f16: keys (after RoPE) and values, one row of KvDim per position, for the whole context.</item>
/// <item>KIVI 2/4 (<see cref="KiviKvStore"/>'s layout and numerics): the quantized tiles of the whole context, then a
/// ring of <see cref="RingTiles"/> float16 tiles of 32 positions for the newest ones. Keys: per tile, a
/// <see cref="GroupQuant"/> block per channel over its 32 positions; values: per tile, position, KV head and group of
/// 32 channels, a block. A tile is quantized (from its f16 rows, as the CPU does) once it is wholly older than the
/// newest <see cref="KvCacheOptions.Residual"/> positions; the ring holds every tile a batch's queries still read as
/// floats, and those a batch quantizes, until it is done: (R + batch) / 32 + 3 tiles.</item>
/// </list>
/// Keys and values are separate buffers per layer, <see cref="Sequences"/> slots of <see cref="KeyBytes"/> and
/// <see cref="ValueBytes"/> each.
/// </summary>
internal sealed record DeviceKvLayout
{
    public const int Group = KvCacheOptions.Group;

    public required KvCacheOptions Options { get; init; }
    public required int Context { get; init; }
    public required int KvDim { get; init; }
    public required int KvHeads { get; init; }
    public required int HeadDim { get; init; }
    /// <summary>KIVI: tiles of the float16 ring; 0 for the float types.</summary>
    public int RingTiles { get; init; }
    /// <summary>KIVI: blocks of 32 channels per head (the last may be partial).</summary>
    public int GroupsPerHead => (HeadDim + Group - 1) / Group;

    public bool IsKivi => Options.IsKivi;
    public bool Half => Options.Type != KvType.F32;
    public int Bits => Options.Bits;
    public int Residual => Options.Residual;
    /// <summary>KIVI: bytes of a <see cref="GroupQuant"/> block (4·bits + 4).</summary>
    public int BlockBytes => GroupQuant.BlockBytes(Bits);
    /// <summary>KIVI: tiles of the context (quantized area's length).</summary>
    public int Tiles => (Context + Group - 1) / Group;
    /// <summary>KIVI: bytes of the quantized area of a slot's keys (the ring follows it); values: <see cref="ValueQuantizedBytes"/>.</summary>
    public long KeyQuantizedBytes => IsKivi ? (long)Tiles * KvDim * BlockBytes : 0;
    public long ValueQuantizedBytes => IsKivi ? (long)Tiles * Group * KvHeads * GroupsPerHead * BlockBytes : 0;
    /// <summary>Offset of the ring in a slot's keys or values: 256-byte aligned after the quantized area.</summary>
    public long KeyRingOffset => Align(KeyQuantizedBytes);
    public long ValueRingOffset => Align(ValueQuantizedBytes);
    private long RingBytes => (long)RingTiles * Group * KvDim * 2;
    /// <summary>Bytes of one slot's keys (values: <see cref="ValueBytes"/>) of one layer: a row per position, or KIVI's tiles and ring.</summary>
    public long KeyBytes => IsKivi ? KeyRingOffset + RingBytes : (long)Context * KvDim * (Half ? 2 : 4);
    public long ValueBytes => IsKivi ? ValueRingOffset + RingBytes : KeyBytes;

    /// <summary>The KV types the GPU runs: f32, f16, kivi2, kivi4 (with an f16 window).</summary>
    public static string? Unsupported(KvCacheOptions o)
    {
        if (o.Evict != KvEviction.None) return "H2O eviction (--kv-evict)";
        if (o.Type is not (KvType.F32 or KvType.F16 or KvType.Kivi2 or KvType.Kivi4)) return $"--kv {KvCacheOptions.Name(o.Type)}";
        if (o.IsKivi && o.FullPrecisionResidual) return "KIVI with a float32 window";
        return null;
    }

    /// <summary>The layout for <paramref name="c"/> at <paramref name="context"/> positions, passes of up to <paramref name="batch"/> rows.</summary>
    public static DeviceKvLayout For(ModelConfig c, int context, int batch, KvCacheOptions o)
    {
        if (Unsupported(o) is { } what) throw new FitLMException($"{what} does not run on the GPU yet: use --kv f32, f16, kivi2 or kivi4 with --device cuda, or --device cpu");
        var kv = new DeviceKvLayout { Options = o, Context = context, KvDim = c.KvDim, KvHeads = c.KvHeads, HeadDim = c.HeadDim };
        return o.IsKivi ? kv with { RingTiles = Math.Min(kv.Tiles, (o.Residual + Math.Min(batch, context) + Group - 1) / Group + 3) } : kv;
    }

    private static long Align(long bytes) => (bytes + 255) & ~255L;

    /// <summary>Where the f16 rings of a slot's keys and values start (KIVI).</summary>
    public (ulong Keys, ulong Values) Rings(ulong keys, ulong values) => (keys + (ulong)KeyRingOffset, values + (ulong)ValueRingOffset);

    /// <summary>Bytes of one sequence's cache over <paramref name="layers"/> layers.</summary>
    public long SequenceBytes(int layers) => (KeyBytes + ValueBytes) * layers;

    /// <summary>
    /// Why a pass from <paramref name="pos"/> cannot run on a slot that holds <paramref name="length"/> positions, or null:
    /// KIVI cannot rewind into positions it has already quantized (the CPU's store refuses the same).
    /// </summary>
    public string? RewindRefusal(int pos, int length)
    {
        if (!IsKivi || pos >= length) return null;
        return KiviKvStore.RewindRefusal(pos, Residual, KiviKvStore.QuantizedTiles(length, Residual));
    }

    /// <summary>The type as the load line names it: "f16", "kivi4 (R=128)".</summary>
    public override string ToString() => Options.ToString();
}
