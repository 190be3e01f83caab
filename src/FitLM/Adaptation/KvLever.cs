using FitLM.KvCache;
using FitLM.Memory;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Adaptation;

/// <summary>Holds KV stores of the transformer's factory besides its own (the server's sequences): they are converted too.</summary>
public interface IKvStoreOwner
{
    /// <summary>The stores held now, in a fixed order.</summary>
    IReadOnlyList<IKvStore> Stores { get; }
    /// <summary>The stores converted to the new type, in the order of <see cref="Stores"/> (the old ones are disposed).</summary>
    void Replace(IReadOnlyList<IKvStore> converted);
}

/// <summary>
/// The KV cache's type: requantized in place one step down the ladder f32 → f16 → kivi4 → kivi2 (<see cref="KvLadder"/>)
/// when memory is short, each step about half the bytes per token and a measured perplexity cost
/// (docs/variable-memory.md), and back up, no higher than the type the model was loaded with, when it returns (the
/// positions already quantized keep their values; new ones get the larger type). Every position is kept. Types off
/// the ladder (XQuant, H2O eviction) are left as they are.
/// </summary>
/// <param name="plan">The model's plan now, and a way to set it: the plan counts the KV cache in its current type.</param>
public sealed class KvLever(Transformer tf, Func<MemoryPlan> plan, Action<MemoryPlan> setPlan) : IMemoryLever
{
    private readonly KvCacheOptions _loaded = tf.KvStores.Options;
    private readonly List<IKvStoreOwner> _owners = [];

    public void AddOwner(IKvStoreOwner owner)
    {
        lock (_owners) _owners.Add(owner);
    }

    public void RemoveOwner(IKvStoreOwner owner)
    {
        lock (_owners) _owners.Remove(owner);
    }

    // On a GPU (tf.Device) the KV cache lives in device memory, allocated with the model: the host's budget does not move it.
    public string? Shrink(long budget) => tf.Device == null && KvLadder.Smaller(tf.KvStores.Options) is { } next ? Change(next) : null;

    public string? Grow(long budget)
    {
        if (tf.Device != null) return null;
        var start = tf.KvStores.Options;
        long held = HeldBytes();
        bool changed = false;
        while (KvLadder.Larger(tf.KvStores.Options, _loaded) is { } larger)
        {
            // Both promises must hold at the larger type: the plan (the full context in it) and the process as it is
            // now plus what converting what it holds would add.
            var now = tf.KvStores.Options;
            var current = plan();
            long planned = current.TotalBytes - current.KvBytes + PlanBytes(larger);
            double ratio = KvStoreFactory.BytesPerToken(tf.Config, larger) / KvStoreFactory.BytesPerToken(tf.Config, now);
            long growth = (long)(HeldBytes() * (ratio - 1));
            if (planned > budget || ProcessMemory.RssBytes() + growth > budget) break;
            Change(larger);
            changed = true;
        }
        return changed ? Describe(start, held) : null;
    }

    private string Change(KvCacheOptions next)
    {
        var from = tf.KvStores.Options;
        long before = HeldBytes();
        IKvStoreOwner[] owners;
        lock (_owners) owners = [.. _owners];
        var stores = owners.Select(o => o.Stores).ToArray();
        var converted = tf.ChangeKv(next, stores.SelectMany(s => s).ToArray());
        int at = 0;
        for (int i = 0; i < owners.Length; i++)
        {
            owners[i].Replace(converted.AsSpan(at, stores[i].Count).ToArray());
            at += stores[i].Count;
        }
        setPlan(plan() with { KvBytes = PlanBytes(next) });
        return Describe(from, before);
    }

    private string Describe(KvCacheOptions from, long heldBefore) =>
        $"kv {from.Spec} -> {tf.KvStores.Options.Spec} (held {ProcessMemory.Format(heldBefore)} -> {ProcessMemory.Format(HeldBytes())})";

    /// <summary>The KV cache in <paramref name="o"/> as the plan counts it: one sequence at the full context, and what the factory shares.</summary>
    private long PlanBytes(KvCacheOptions o) => KvStoreFactory.PlanBytes(tf.Config, o, tf.MaxContext, 1, tf.MaxBatch);

    /// <summary>Bytes the KV pools hold in pages now.</summary>
    private long HeldBytes() => tf.KvStores.BytesInUse;
}
