using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>
/// POST /v1/embeddings in OpenAI's shape. A generative model has no pooling of its own, so, as llama.cpp does for
/// one, each input's embedding is the mean of its final hidden states (after the output norm) over all its
/// tokens, scaled to unit L2 length (llama.cpp's server default, --embd-normalize 2). Inputs run through the
/// scheduler like prompts (their chunks in passes of their own), so an embedding does not depend on the load.
/// </summary>
internal sealed class EmbeddingEndpoints(ServerState state)
{
    /// <summary>Most inputs in one request (OpenAI's limit).</summary>
    private const int MaxInputs = 2048;

    public async Task EmbeddingsAsync(HttpContext http)
    {
        var ct = http.RequestAborted;
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, ct);
        var root = doc.RootElement;
        string? model = RequestReader.OptionalString(root, "model");
        if (!state.Serves(model))
            throw new ApiException(404, $"the model '{RequestReader.Cap(model!)}' does not exist; this server runs '{state.ModelId}' (GET /v1/models)", "model_not_found");
        string format = RequestReader.OptionalString(root, "encoding_format") ?? "float";
        if (format is not ("float" or "base64")) throw ApiException.BadRequest($"encoding_format '{RequestReader.Cap(format)}' is not one of float, base64");
        int dim = state.Model.Config.Dim;
        if (RequestReader.OptionalInt(root, "dimensions") is { } d && d != dim)
            throw ApiException.BadRequest($"dimensions {d} is not supported: this model's embeddings have {dim} (leave dimensions out)", "unsupported_parameter");
        var inputs = ReadInputs(root);

        var vectors = new float[inputs.Count][];
        int tokens = 0;
        for (int i = 0; i < inputs.Count; i++)
        {
            vectors[i] = await EmbedAsync(inputs[i], dim, ct);
            tokens += inputs[i].Length;
        }
        var usage = new EmbeddingUsage(tokens, tokens);
        if (format == "base64")
        {
            // The float32 values' bytes, little-endian, as OpenAI's SDKs decode them.
            if (!BitConverter.IsLittleEndian) throw new ApiException(500, "base64 embeddings need a little-endian machine", "unsupported_platform", "server_error");
            var items = vectors.Select((v, i) => new EmbeddingItem<string>("embedding", i, Convert.ToBase64String(MemoryMarshal.AsBytes(v.AsSpan())))).ToArray();
            await GenerationEndpoints.Json(http, new EmbeddingList<string>("list", items, state.ModelId, usage), JsonContext.Web.EmbeddingListString, ct);
        }
        else
        {
            var items = vectors.Select((v, i) => new EmbeddingItem<float[]>("embedding", i, v)).ToArray();
            await GenerationEndpoints.Json(http, new EmbeddingList<float[]>("list", items, state.ModelId, usage), JsonContext.Web.EmbeddingListSingleArray, ct);
        }
    }

    /// <summary>One input through the scheduler: queued, prefilled, pooled.</summary>
    private async Task<float[]> EmbedAsync(int[] prompt, int dim, CancellationToken ct)
    {
        string id = ServerState.NewRequestId("embd");
        var seq = Sequence.ForEmbedding(id, prompt, dim);
        var started = Stopwatch.StartNew();
        state.Admit(seq);
        var finish = FinishReason.Cancelled;
        try
        {
            using var reg = ct.Register(() => state.Scheduler.Cancel(seq));
            var end = await GenerationEndpoints.Drain(seq, _ => Task.CompletedTask, ct);
            finish = end.Finish;
            if (end.Finish == FinishReason.Error) throw new ApiException(500, end.Error ?? "embedding failed", "embedding_failed", "server_error");
            if (end.Finish != FinishReason.Stop || seq.Embedding == null) throw new ApiException(503, "the server is shutting down", "server_shutdown", "server_error");
            return seq.Embedding;
        }
        finally
        {
            state.Scheduler.Cancel(seq);
            if (finish == FinishReason.Error) state.Metrics.RequestFailed();
            state.LogRequest(id, prompt.Length, 0, started.Elapsed, 0, finish);
        }
    }

    /// <summary>input: a string, an array of strings, an array of token ids, or an array of arrays of token ids.</summary>
    private List<int[]> ReadInputs(JsonElement root)
    {
        if (!root.TryGetProperty("input", out var input) || input.ValueKind == JsonValueKind.Null)
            throw ApiException.BadRequest("input is missing: give a string, an array of strings, or token ids", "missing_required_parameter");
        var list = new List<int[]>();
        if (input.ValueKind == JsonValueKind.String) list.Add(Tokens(RequestReader.Text(input, "input"), "input"));
        else if (input.ValueKind == JsonValueKind.Array)
        {
            int n = input.GetArrayLength();
            if (n == 0) throw ApiException.BadRequest("input is an empty array");
            if (n > MaxInputs) throw ApiException.BadRequest($"input has {n} items; at most {MaxInputs} per request");
            if (input[0].ValueKind == JsonValueKind.Number) list.Add(Ids(input, "input"));
            else
            {
                int i = 0;
                foreach (var item in input.EnumerateArray())
                {
                    string name = $"input[{i++}]";
                    list.Add(item.ValueKind switch
                    {
                        JsonValueKind.String => Tokens(RequestReader.Text(item, name), name),
                        JsonValueKind.Array => Ids(item, name),
                        _ => throw ApiException.BadRequest($"{name} must be a string or an array of token ids"),
                    });
                }
            }
        }
        else throw ApiException.BadRequest("input must be a string, an array of strings, or token ids");
        return list;
    }

    private int[] Tokens(string text, string name) => Check(state.Model.Tokenizer.Encode(text, addSpecial: true, parseSpecial: true), name);

    private int[] Ids(JsonElement array, string name)
    {
        int vocab = state.Model.Config.Vocab;
        var ids = new int[array.GetArrayLength()];
        for (int i = 0; i < ids.Length; i++)
            if (array[i].ValueKind != JsonValueKind.Number || !array[i].TryGetInt32(out ids[i]) || (uint)ids[i] >= (uint)vocab)
                throw ApiException.BadRequest($"{name}[{i}] is not a token id (0..{vocab - 1})");
        return Check(ids, name);
    }

    private int[] Check(int[] ids, string name)
    {
        if (ids.Length == 0) throw ApiException.BadRequest($"{name} is empty (no tokens)");
        int context = state.Budget.Context;
        if (ids.Length > context)
            throw ApiException.BadRequest($"{name} has {ids.Length} tokens; the context holds {context} (raise --ctx)", "context_length_exceeded");
        return ids;
    }
}
