using FitLM.KvCache;
using FitLM.Memory;
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
    /// <summary>ASP.NET Core's own heap, its endpoints' code, connections and threads (<see cref="Footprint.ServerOverheadBytes"/>).</summary>
    public const long ServerOverheadBytes = Footprint.ServerOverheadBytes;

    private readonly LanguageModel _lm;
    private readonly ModelConfig _config;
    private readonly int _maxBatch, _parallel;
    /// <summary>The GPU holding the sequences' KV caches, or null on the CPU.</summary>
    private readonly IModelDevice? _device;
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
        if (lm.Transformer.Device is { } device)
        {
            // On a GPU every slot's KV cache was allocated with the model, in device memory: a sequence takes a whole slot.
            _device = device;
            _capacity = device.Sequences * device.SequenceKvBytes;
            return;
        }
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
    public long CapacityFor(long budget) =>
        _device != null ? _device.Sequences * _device.SequenceKvBytes : Math.Clamp(Available(budget), 0, BytesFor(Context) * _parallel);

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
    public long BytesFor(int tokens) =>
        _device?.SequenceKvBytes ?? KvStoreFactory.SequenceBytes(_config, Kv, Math.Clamp(tokens, 1, Context), _maxBatch);

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

    /// <summary>What each decode slot holds besides its KV store (pages and page tables: <see cref="BytesFor"/>): its row of logits, the sampler's two vocab-sized buffers, token history.</summary>
    private static long SlotBytes(LanguageModel lm) => Footprint.ServerSlotBytes(lm.Config.Vocab, lm.Transformer.MaxContext);
}
