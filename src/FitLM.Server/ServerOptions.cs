namespace FitLM.Server;

/// <summary>How `fitlm serve` listens and how many requests it runs and queues.</summary>
public sealed record ServerOptions
{
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 picks a free one (the bound address is in <see cref="FitLMServer.Address"/>).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>Most sequences decoded together in one batched forward pass.</summary>
    public int Parallel { get; init; } = 8;
    /// <summary>Requests waiting for a slot or for KV memory; beyond this the server answers 503 with Retry-After.</summary>
    public int QueueCapacity { get; init; } = 64;
    /// <summary>When set, /v1/*, /tokenize and /detokenize need "Authorization: Bearer KEY".</summary>
    public string? ApiKey { get; init; }
    /// <summary>Largest request body accepted (413 beyond).</summary>
    public long MaxBodyBytes { get; init; } = 1 << 20;
    /// <summary>
    /// Most prompt tokens prefilled between two decode steps, so others' decoding is not starved. The default, the
    /// transformer's batch (256 unless loaded otherwise), cuts prompts where `fitlm run` does: the same numerics.
    /// </summary>
    public int PrefillChunk { get; init; } = 256;
    /// <summary>The model id clients name (the file name by default); "fitlm" is accepted too.</summary>
    public string? ModelId { get; init; }
    /// <summary>
    /// Decode each row of a batch exactly as alone (MatMul.RowWise): a request's output is then the same whatever
    /// else runs, and equals `fitlm run`'s at temperature 0. Off: the matrix-matrix kernel, whose sums differ in
    /// the last bits, so greedy text may change at near-ties depending on load.
    /// </summary>
    public bool BatchInvariant { get; init; } = true;
    /// <summary>
    /// Where a moving budget comes from (--memory auto, cgroup, cgroup:PATH): its changes reach the model's governor, and
    /// POST /budget overrides it. Null: the budget stays as loaded unless POST /budget changes it.
    /// </summary>
    public Memory.MemoryWatcher? Watcher { get; init; }
    /// <summary>Where the one-line-per-request log goes (stderr when null).</summary>
    public TextWriter? Log { get; init; }
    /// <summary>Runs before every endpoint: the tests make it throw, to see a server fault answered as a 500 with a message, logged and counted.</summary>
    internal Action<Microsoft.AspNetCore.Http.HttpContext>? BeforeEndpoint { get; init; }

    public void Validate()
    {
        if (Parallel is < 1 or > 256) throw new FitLMException($"--parallel {Parallel} is out of range (1..256)");
        if (Port is < 0 or > 65535) throw new FitLMException($"--port {Port} is out of range (0..65535)");
        if (QueueCapacity is < 0 or > 100_000) throw new FitLMException($"--queue {QueueCapacity} is out of range (0..100000)");
        if (string.IsNullOrWhiteSpace(Host)) throw new FitLMException("--host is empty");
        if (ApiKey is { Length: 0 }) throw new FitLMException("--api-key is empty");
        if (PrefillChunk < 1) throw new FitLMException($"prefill chunk {PrefillChunk} is out of range");
    }
}
