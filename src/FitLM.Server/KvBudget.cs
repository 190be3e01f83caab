using FitLM.KvCache;
using FitLM.Model;
using FitLM.Runtime;

namespace FitLM.Server;

/// <summary>
/// How much KV memory the running sequences may hold, and what they have reserved. The planner sized the
/// process for one sequence of the full context (plan.KvBytes = KvStoreFactory.PlanBytes: one sequence plus what
/// the factory shares, in the loaded --kv type); whatever the budget leaves beyond the rest of the plan, the
/// shared KV bytes, the server's own overhead and the per-slot buffers is the pool every sequence shares.
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

    private readonly LanguageModel _lm;
    private readonly ModelConfig _config;
    private readonly int _maxBatch, _parallel;
    private long _reserved, _capacity;

    /// <summary>
    /// Bytes all sequences' KV stores may hold together: set at start, lowered and raised with the memory budget
    /// (<see cref="Resize"/>). Lowering it never touches a running request: new ones wait until enough is released.
    /// </summary>
    public long CapacityBytes => Interlocked.Read(ref _capacity);
    public long ReservedBytes => Interlocked.Read(ref _reserved);
    /// <summary>The context each sequence may use (prompt + completion).</summary>
    public int Context { get; }

    public KvBudget(LanguageModel lm, int parallel)
    {
        _lm = lm;
        _config = lm.Config;
        _parallel = parallel;
        Context = lm.Transformer.MaxContext;
        _maxBatch = lm.Transformer.MaxBatch;
        long budget = lm.Plan.BudgetBytes;
        long available = Available(budget);
        long oneSequence = BytesFor(Context);
        if (available < oneSequence)
            throw new FitLMException(
                $"a budget of {ProcessMemory.Format(budget)} leaves {ProcessMemory.Format(Math.Max(0, available))} for KV caches, less than one sequence of " +
                $"{Context} tokens needs ({ProcessMemory.Format(oneSequence)}): give a larger --memory, a smaller --ctx, fewer --parallel or a smaller --kv type");
        _capacity = CapacityFor(budget);
    }

    /// <summary>
    /// What the sequences may hold under <paramref name="budget"/>: what it leaves beyond the rest of the model's plan as
    /// it is now (placement, KV type), the shared KV bytes, the server's overhead and the slots; at most every slot's full context.
    /// </summary>
    public long CapacityFor(long budget) => Math.Clamp(Available(budget), 0, BytesFor(Context) * _parallel);

    private long Available(long budget)
    {
        var plan = _lm.Plan;
        // The same function the plan counted with: plan.KvBytes = shared + oneSequence, so the pool is what is left for sequences.
        long shared = KvStoreFactory.PlanBytes(_config, Kv, Context, sequences: 0, _maxBatch);
        // A plan made by `fitlm serve` already reserved the overhead and slots (ServerReserveBytes): count them once.
        return budget - (plan.TotalBytes - plan.KvBytes - plan.ServerReserveBytes) - shared - ServerOverheadBytes - _parallel * SlotBytes(_lm);
    }

    /// <summary>Sets the capacity for a new memory budget; returns the old capacity.</summary>
    public long Resize(long budget) => Interlocked.Exchange(ref _capacity, CapacityFor(budget));

    /// <summary>The KV type the sequences hold now (it moves down and up the ladder with the budget).</summary>
    private KvCacheOptions Kv => _lm.Transformer.KvStores.Options;

    /// <summary>KV bytes of one sequence of <paramref name="tokens"/> tokens in this model's store type now (its pages and its store's arrays, as the plan counts them).</summary>
    public long BytesFor(int tokens) => KvStoreFactory.SequenceBytes(_config, Kv, Math.Clamp(tokens, 1, Context), _maxBatch);

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

    /// <summary>
    /// What `fitlm serve` reserves in the model's plan (<see cref="LoadOptions.ServerReserveBytes"/>): the overhead and every
    /// slot, for a context of at most <paramref name="context"/>; the plan then leaves the KV pool room even when the model
    /// does not fit whole (layers streamed, experts cached) instead of giving the weights every byte.
    /// </summary>
    public static long PlanReserveBytes(int parallel, int vocab, int context) => ServerOverheadBytes + (long)parallel * SlotBytes(vocab, context);

    /// <summary>What each decode slot holds besides its KV store (pages and page tables: <see cref="BytesFor"/>): its row of logits, the sampler's two vocab-sized buffers, token history.</summary>
    private static long SlotBytes(LanguageModel lm) => SlotBytes(lm.Config.Vocab, lm.Transformer.MaxContext);

    private static long SlotBytes(int vocab, int context) => 3L * vocab * sizeof(float) + 2L * context * sizeof(int) + 64 * 1024;
}
