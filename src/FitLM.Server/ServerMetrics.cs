using System.Globalization;
using System.Text;
using FitLM.Runtime;

namespace FitLM.Server;

/// <summary>Counters for /metrics (Prometheus text format). Written by the scheduler and the handlers, read by scrapes.</summary>
public sealed class ServerMetrics
{
    private long _requests, _rejected, _failed, _internalErrors, _promptTokens, _generated, _decodeRows, _prefillRows, _passes;
    private long _decodeTicks; // pass time of passes with decode rows, in 100 ns ticks

    public long Requests => Interlocked.Read(ref _requests);
    public long DecodeRows => Interlocked.Read(ref _decodeRows);
    public double DecodeSeconds => Interlocked.Read(ref _decodeTicks) / 1e7;

    public void RequestStarted() => Interlocked.Increment(ref _requests);
    /// <summary>A request refused before it ran: bad input, auth, queue full.</summary>
    public void RequestRejected() => Interlocked.Increment(ref _rejected);
    public void RequestFailed() => Interlocked.Increment(ref _failed);
    /// <summary>A request answered 500 because the server failed (each also logged).</summary>
    public void InternalError() => Interlocked.Increment(ref _internalErrors);
    public void PromptTokens(int n) => Interlocked.Add(ref _promptTokens, n);

    public void RecordPass(int decodeRows, int prefillRows, int sampled, double seconds)
    {
        Interlocked.Increment(ref _passes);
        Interlocked.Add(ref _generated, sampled);
        Interlocked.Add(ref _prefillRows, prefillRows);
        if (decodeRows > 0)
        {
            Interlocked.Add(ref _decodeRows, decodeRows);
            Interlocked.Add(ref _decodeTicks, (long)(seconds * 1e7));
        }
    }

    public string Render(Scheduler scheduler, KvBudget budget, FitLM.KvCache.KvStoreFactory kv, Adaptation.MemoryGovernor governor)
    {
        var sb = new StringBuilder();
        void Metric(string name, string type, string help, double value)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            sb.Append(name).Append(' ').Append(value.ToString("R", CultureInfo.InvariantCulture)).Append('\n');
        }
        double decodeSeconds = DecodeSeconds;
        long pages = kv.Pool.PagesInUse + (kv.SecondPool?.PagesInUse ?? 0);
        long pageBytes = kv.BytesInUse;
        Metric("fitlm_requests_total", "counter", "Generation requests accepted.", Requests);
        Metric("fitlm_requests_rejected_total", "counter", "Requests refused (bad input, auth, queue full).", Interlocked.Read(ref _rejected));
        Metric("fitlm_requests_failed_total", "counter", "Accepted requests that ended in an error.", Interlocked.Read(ref _failed));
        Metric("fitlm_internal_errors_total", "counter", "Requests answered 500 because the server failed (each is logged).", Interlocked.Read(ref _internalErrors));
        Metric("fitlm_prompt_tokens_total", "counter", "Prompt tokens of accepted requests.", Interlocked.Read(ref _promptTokens));
        Metric("fitlm_prefill_tokens_total", "counter", "Prompt tokens run through the model.", Interlocked.Read(ref _prefillRows));
        Metric("fitlm_tokens_generated_total", "counter", "Tokens sampled.", Interlocked.Read(ref _generated));
        Metric("fitlm_decode_tokens_total", "counter", "Decode rows run (one per generating sequence per pass).", DecodeRows);
        Metric("fitlm_decode_seconds_total", "counter", "Time in passes that decoded.", decodeSeconds);
        Metric("fitlm_decode_tokens_per_second", "gauge", "Aggregate decode speed over all sequences while decoding.", decodeSeconds > 0 ? DecodeRows / decodeSeconds : 0);
        Metric("fitlm_forward_passes_total", "counter", "Batched forward passes.", Interlocked.Read(ref _passes));
        Metric("fitlm_queue_depth", "gauge", "Requests waiting for a slot or KV memory.", scheduler.QueueDepth);
        Metric("fitlm_active_sequences", "gauge", "Sequences in the running batch.", scheduler.ActiveCount);
        Metric("fitlm_kv_pages_in_use", "gauge", "KV pages held by sequences.", pages);
        Metric("fitlm_kv_bytes_in_use", "gauge", "Bytes of the KV pages held by sequences.", pageBytes);
        Metric("fitlm_kv_bytes_pool", "gauge", "Bytes the KV page pools hold (in use or free).", kv.BytesReserved);
        Metric("fitlm_kv_bytes_reserved", "gauge", "KV bytes reserved by admitted requests (their worst case).", budget.ReservedBytes);
        Metric("fitlm_kv_bytes_capacity", "gauge", "KV bytes all sequences may hold together.", budget.CapacityBytes);
        Metric("fitlm_memory_budget_bytes", "gauge", "The memory budget the process is adapted to now.", governor.Budget);
        Metric("fitlm_memory_budget_requested_bytes", "gauge", "The latest budget asked for (a watcher, POST /budget); equals the budget once applied.", governor.Requested);
        Metric("fitlm_memory_adaptations_total", "counter", "Times the model adapted to a new budget (docs/variable-memory.md).", governor.Count);
        Metric("fitlm_kv_bits_per_element", "gauge", "Bits per element of the KV cache's type now (32, 16, or the quantized width).", KvBits(kv.Options));
        Metric("fitlm_process_resident_memory_bytes", "gauge", "Resident set size.", ProcessMemory.RssBytes());
        Metric("fitlm_process_peak_resident_memory_bytes", "gauge", "Peak resident set size.", ProcessMemory.PeakRssBytes());
        return sb.ToString();
    }

    private static int KvBits(FitLM.KvCache.KvCacheOptions o) => o.Type switch
    {
        FitLM.KvCache.KvType.F32 => 32,
        FitLM.KvCache.KvType.F16 => 16,
        _ => o.Bits,
    };
}
