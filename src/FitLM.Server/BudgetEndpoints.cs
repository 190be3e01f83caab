using System.Text.Json;
using FitLM.Memory;
using FitLM.Runtime;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>
/// GET and POST /budget: the process's memory budget, read and changed over HTTP (what <c>LanguageModel.SetBudget</c>
/// does for embedders; docs/variable-memory.md). Changing it needs the server's API key: a server started without
/// --api-key refuses, since anyone who can reach it could otherwise shrink it. POST {"memory": "256MiB"} (or
/// {"bytes": N}) sets a budget, overriding a moving --memory source; {"memory": "follow"} goes back to following it.
/// The answer comes once the scheduler has applied the budget between two passes (at most a few seconds).
/// </summary>
internal sealed class BudgetEndpoints(ServerState state)
{
    /// <summary>How long POST waits for the scheduler to apply the new budget before answering with what is known.</summary>
    private static readonly TimeSpan ApplyWait = TimeSpan.FromSeconds(10);

    public Task GetAsync(HttpContext http)
    {
        RequireKey();
        return GenerationEndpoints.Json(http, State(), JsonContext.Web.BudgetState, http.RequestAborted);
    }

    public async Task PostAsync(HttpContext http)
    {
        RequireKey();
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, http.RequestAborted);
        var root = doc.RootElement;
        var governor = state.Model.Governor;
        var watcher = state.Options.Watcher;
        string? memory = RequestReader.OptionalString(root, "memory");
        long bytes;
        if (memory is "follow")
        {
            if (watcher is not { Spec.Moves: true })
                throw ApiException.BadRequest("\"follow\" needs a server started with --memory auto, cgroup or cgroup:PATH");
            watcher.FollowSource();
            bytes = watcher.Current;
        }
        else
        {
            bytes = memory != null ? ParseSize(memory)
                : root.TryGetProperty("bytes", out var b) && b.ValueKind == JsonValueKind.Number && b.TryGetInt64(out long n) ? n
                : throw ApiException.BadRequest("give {\"memory\": \"256MiB\"} or {\"bytes\": N}", "missing_required_parameter");
            if (bytes < BudgetSpec.MinimumBytes || bytes > 1L << 50)
                throw ApiException.BadRequest($"a memory budget of {bytes} bytes is out of range");
            if (watcher != null) watcher.SetBudget(bytes); // the watcher tells the governor (and stops following its source)
        }
        governor.Request(bytes);
        state.Scheduler.Wake();
        var deadline = DateTime.UtcNow + ApplyWait;
        while (governor.Budget != bytes && DateTime.UtcNow < deadline && governor.Requested == bytes)
            await Task.Delay(10, http.RequestAborted);
        await GenerationEndpoints.Json(http, State(), JsonContext.Web.BudgetState, http.RequestAborted);
    }

    private static long ParseSize(string text)
    {
        try { return MemorySize.Parse(text); }
        catch (FitLMException e) { throw ApiException.BadRequest(e.Message); }
    }

    private void RequireKey()
    {
        // The guard has already checked the key when there is one; without one, nobody may change the budget.
        if (state.Options.ApiKey == null)
            throw new ApiException(403, "the memory budget can be read and changed over HTTP only on a server started with --api-key", "forbidden");
    }

    private BudgetState State()
    {
        var g = state.Model.Governor;
        return new BudgetState(g.Budget, g.Requested, state.Options.Watcher?.Spec.ToString() ?? "fixed", g.Count, g.Last?.ToString(),
            ProcessMemory.RssBytes(), state.Model.Transformer.KvStores.Options.Spec);
    }
}
