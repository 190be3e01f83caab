using System.Diagnostics;
using FitLM.Runtime;

namespace FitLM.Weights;

/// <summary>
/// What the expert cache did over a run, all layers together. A use is one routed expert of one layer in one batch
/// (a decode step of a top-k model makes k uses per layer), and each use is exactly one of:
/// <list type="bullet">
/// <item>a miss: the layer's Prepare found it neither held nor being read ahead, and read it then (synchronously
/// for the batch: Get waits for that read);</item>
/// <item>a hit: Prepare found it in a slot (held from an earlier use, or read ahead by the layer before) and its bytes
/// were complete when Get asked for it: nothing read for it and nothing waited for;</item>
/// <item>a late read ahead: Prepare found its read ahead started but Get found it still in flight, and waited (nothing
/// read twice, but not a hit).</item>
/// </list>
/// Hit rate is hits / uses. The I/O wait (time Get spends waiting for reads, misses and late reads ahead together) is
/// reported on its own, since a miss on fast storage may cost little; a late read ahead depends on how busy the CPUs
/// are (the readers are threads too), a miss does not. Bytes read count every expert read, ahead or on demand (a wrong
/// prediction's reads too).
/// </summary>
public sealed class ExpertStatistics
{
    public long Uses { get; private set; }
    public long Hits { get; private set; }
    public long LateReadsAhead { get; private set; }
    public long Misses { get; private set; }
    /// <summary>Experts read ahead of their layer on a prediction.</summary>
    public long ReadsAhead { get; private set; }
    /// <summary>Experts read ahead that the batch they were predicted for ran (hits or late).</summary>
    public long ReadsAheadUsed { get; private set; }
    public long BytesRead { get; private set; }
    /// <summary>Tokens that went through the first layer with experts (batch rows), for per-token figures.</summary>
    public long Tokens { get; private set; }
    public TimeSpan IoWait => Stopwatch.GetElapsedTime(0, _waitTicks);
    private long _waitTicks;

    private readonly long[] _layerUses, _layerHits;

    public ExpertStatistics(int layers)
    {
        _layerUses = new long[layers];
        _layerHits = new long[layers];
    }

    public double HitRate => Uses == 0 ? 0 : (double)Hits / Uses;

    /// <summary>The hit rate of layer <paramref name="layer"/> alone (the first layer cannot be predicted from one before it).</summary>
    public double LayerHitRate(int layer) => _layerUses[layer] == 0 ? 0 : (double)_layerHits[layer] / _layerUses[layer];

    internal void Hit(int layer, bool readAhead)
    {
        Uses++;
        Hits++;
        _layerUses[layer]++;
        _layerHits[layer]++;
        if (readAhead) ReadsAheadUsed++;
    }

    internal void Late(int layer)
    {
        Uses++;
        _layerUses[layer]++;
        LateReadsAhead++;
        ReadsAheadUsed++;
    }

    internal void Miss(int layer)
    {
        Uses++;
        _layerUses[layer]++;
        Misses++;
    }

    internal void Read(long bytes, bool ahead)
    {
        BytesRead += bytes;
        if (ahead) ReadsAhead++;
    }

    internal void AddTokens(int n) => Tokens += n;

    internal void Waited(long startTimestamp) => _waitTicks += Stopwatch.GetTimestamp() - startTimestamp;

    /// <summary>Starts counting again (after a warm-up pass).</summary>
    public void Reset()
    {
        Uses = Hits = LateReadsAhead = Misses = ReadsAhead = ReadsAheadUsed = BytesRead = Tokens = 0;
        _waitTicks = 0;
        Array.Clear(_layerUses);
        Array.Clear(_layerHits);
    }

    /// <summary>The report line: policy and size, hit rate, bytes read and I/O wait per token, read-ahead accuracy.</summary>
    public string Line(ExpertPolicy policy, string slots, long cacheBytes)
    {
        double tokens = Math.Max(1, Tokens);
        string ahead = ReadsAhead > 0 ? $", {ReadsAhead} read ahead ({100.0 * ReadsAheadUsed / ReadsAhead:F0}% used, {LateReadsAhead} late)" : "";
        return $"experts: {PolicyName(policy)}, {slots} cached ({ProcessMemory.Format(cacheBytes)}): " +
            $"hit rate {100 * HitRate:F1}% of {Uses} uses, {ProcessMemory.Format((long)(BytesRead / tokens))} read per token, " +
            $"I/O wait {IoWait.TotalMilliseconds / tokens:F3} ms per token{ahead}";
    }

    /// <summary>The policy as --expert-policy spells it.</summary>
    public static string PolicyName(ExpertPolicy policy) => policy switch
    {
        ExpertPolicy.PredictLru => "predict-lru",
        _ => policy.ToString().ToLowerInvariant(),
    };
}
