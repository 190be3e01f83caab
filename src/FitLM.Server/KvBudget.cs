using FitLM.KvCache;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Server;

/// <summary>
/// How much KV memory the running sequences may hold, and what they have reserved. The planner sized the
/// process for one sequence of the full context (plan.KvBytes, float32); whatever the budget leaves beyond
/// the rest of the plan, the server's own overhead and the per-slot buffers is the pool every sequence shares.
/// Admission reserves a request's worst case (prompt + max_tokens, in the store's own bytes) so the pool can
/// never outgrow its share: requests that do not fit wait in the queue.
/// </summary>
public sealed class KvBudget
{
    /// <summary>
    /// ASP.NET Core's own heap, the JIT of its endpoints, connection buffers and thread stacks. Measured on the demo
    /// model: a server after a thousand requests peaks at about 120 MiB, `fitlm run` at 70 MiB, of which the
    /// difference up to 28 MiB was KV pages: 20-50 MiB.
    /// </summary>
    public const long ServerOverheadBytes = 40L << 20;

    private readonly ModelConfig _config;
    private readonly KvCacheOptions _kv;
    private long _reserved;

    /// <summary>Bytes all sequences' KV stores may hold together.</summary>
    public long CapacityBytes { get; }
    public long ReservedBytes => Interlocked.Read(ref _reserved);
    /// <summary>The context each sequence may use (prompt + completion).</summary>
    public int Context { get; }

    public KvBudget(LanguageModel lm, int parallel)
    {
        _config = lm.Config;
        _kv = lm.Transformer.KvStores.Options;
        Context = lm.Transformer.MaxContext;
        var plan = lm.Plan;
        long oneSequence = BytesFor(Context);
        long all = oneSequence * parallel;
        long available = plan.BudgetBytes - (plan.TotalBytes - plan.KvBytes) - ServerOverheadBytes - parallel * SlotBytes(lm);
        if (available < oneSequence)
            throw new FitLMException(
                $"a budget of {ProcessMemory.Format(plan.BudgetBytes)} leaves {ProcessMemory.Format(Math.Max(0, available))} for KV caches, less than one sequence of " +
                $"{Context} tokens needs ({ProcessMemory.Format(oneSequence)}): give a larger --memory, a smaller --ctx, fewer --parallel or a smaller --kv type");
        CapacityBytes = Math.Min(all, available);
    }

    /// <summary>KV bytes of one sequence of <paramref name="tokens"/> tokens in this model's store type.</summary>
    public long BytesFor(int tokens) => KvStoreFactory.Bytes(_config, _kv, Math.Clamp(tokens, 1, Context));

    /// <summary>Reserves a sequence's worst case; false when it does not fit now (it must wait).</summary>
    public bool TryReserve(long bytes)
    {
        while (true)
        {
            long now = Interlocked.Read(ref _reserved);
            if (now + bytes > CapacityBytes) return false;
            if (Interlocked.CompareExchange(ref _reserved, now + bytes, now) == now) return true;
        }
    }

    public void Release(long bytes) => Interlocked.Add(ref _reserved, -bytes);

    /// <summary>What each decode slot holds besides its KV pages: its row of logits, the sampler's two vocab-sized buffers, page tables, token history.</summary>
    private static long SlotBytes(LanguageModel lm)
    {
        var c = lm.Config;
        int ctx = lm.Transformer.MaxContext;
        long pageTables = 2L * c.Layers * ((ctx + KvCacheOptions.Group - 1) / KvCacheOptions.Group) * sizeof(int);
        return 3L * c.Vocab * sizeof(float) + pageTables + 2L * ctx * sizeof(int) + 64 * 1024;
    }
}
