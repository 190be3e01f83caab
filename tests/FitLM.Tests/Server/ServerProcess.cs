using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;
using Xunit;

namespace FitLM.Tests.Server;

/// <summary>A real `fitlm serve` process on 127.0.0.1 and a free port (--port 0; the bound address is read from its first line).</summary>
public sealed class ServerProcess : IDisposable
{
    public const string ApiKey = "test-key-7";
    /// <summary>The memory budget the process is started with (--memory).</summary>
    public const long BudgetBytes = 192L << 20;

    private readonly Process _process;
    public Uri Address { get; }
    /// <summary>Lines the server wrote to stderr (the request log).</summary>
    public ConcurrentQueue<string> Log { get; } = new();
    /// <summary>Authorized with <see cref="ApiKey"/>; no timeout beyond the test's own.</summary>
    public HttpClient Http { get; }

    public ServerProcess() : this(["--memory", $"{BudgetBytes >> 20}MiB", "--ctx", "512", "--parallel", "8", "--api-key", ApiKey, "-t", "2"], 0) { }

    /// <summary>A server with other flags (each test class that needs one starts its own).</summary>
    public static ServerProcess With(params string[] args) => new(args, 0);

    private ServerProcess(string[] args, int _)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "fitlm.dll"));
        foreach (var a in new[] { "serve", "-m", TestPaths.DemoModel, "--port", "0" }.Concat(args)) psi.ArgumentList.Add(a);
        _process = Process.Start(psi)!;
        _process.ErrorDataReceived += (_, e) => { if (e.Data != null) Log.Enqueue(e.Data); };
        _process.BeginErrorReadLine();
        var first = _process.StandardOutput.ReadLineAsync();
        if (!first.Wait(TimeSpan.FromSeconds(60)) || first.Result is not { } line || !line.Contains("listening on "))
        {
            Kill();
            throw new InvalidOperationException($"fitlm serve did not start: {first.Result} {string.Join(" | ", Log)}");
        }
        string url = line.Split("listening on ")[1].Split(' ')[0];
        Address = new Uri(url + "/");
        Http = new HttpClient { BaseAddress = Address, Timeout = TimeSpan.FromMinutes(2) };
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
    }

    /// <summary>A metric's value from /metrics.</summary>
    public async Task<double> MetricAsync(string name)
    {
        string text = await Http.GetStringAsync("metrics");
        foreach (var line in text.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal)) return double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
        throw new Xunit.Sdk.XunitException($"metric {name} is missing from /metrics");
    }

    /// <summary>Streams a completion (raw SSE, usage included) and returns its text, the finish reason and the completion tokens.</summary>
    public async Task<(string Text, string? Finish, int Tokens)> StreamChatAsync(string prompt, int maxTokens, bool ignoreEos = false, CancellationToken ct = default)
    {
        var body = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = prompt } }, max_tokens = maxTokens, temperature = 0, stream = true,
            stream_options = new { include_usage = true }, ignore_eos = ignoreEos });
        using var req = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json") };
        using var resp = await Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct);
        Assert.Equal(200, (int)resp.StatusCode);
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync(ct));
        var text = new System.Text.StringBuilder();
        string? finish = null;
        int tokens = -1;
        bool done = false;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            string data = line[6..];
            if (data == "[DONE]") { done = true; break; }
            using var doc = JsonDocument.Parse(data);
            if (doc.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                tokens = usage.GetProperty("completion_tokens").GetInt32();
            foreach (var choice in doc.RootElement.GetProperty("choices").EnumerateArray())
            {
                if (choice.GetProperty("delta").TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String) text.Append(c.GetString());
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
            }
        }
        Assert.True(done, "the stream did not end with data: [DONE]");
        Assert.True(tokens >= 0, "no usage chunk although stream_options.include_usage was set");
        return (text.ToString(), finish, tokens);
    }

    private void Kill()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _process.WaitForExit(10_000);
    }

    public void Dispose()
    {
        Http?.Dispose();
        Kill();
        _process.Dispose();
    }
}

/// <summary>The server tests share one `fitlm serve` process and run one class at a time (their timings and memory readings stay their own).</summary>
[CollectionDefinition(Name)]
public sealed class ServerCollection : ICollectionFixture<ServerProcess>
{
    public const string Name = "Server";
}
