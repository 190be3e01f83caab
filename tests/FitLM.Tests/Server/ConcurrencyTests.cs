using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Server;

/// <summary>Continuous batching: many streams at once each get what they get alone; aggregate speed is reported.</summary>
[Collection(ServerCollection.Name)]
public class ConcurrencyTests(ServerProcess server, ITestOutputHelper output)
{
    private static readonly string[] Subjects =
    [
        "sort a list", "parse a date", "read a file", "add two numbers", "reverse a string", "count words", "merge two dicts", "flatten a list",
        "compute a mean", "find the maximum", "check a prime", "format a name", "open a socket", "hash a password", "load json", "write csv",
    ];

    /// <summary>32 different prompts (two per subject, in two styles).</summary>
    private static string Prompt(int i) => i < 16
        ? $"def {Subjects[i].Replace(' ', '_')}(x):\n    \"\"\"{Subjects[i]}\"\"\"\n"
        : $"# {Subjects[i - 16]}\nclass Helper{i}:\n    def run(self, value):\n";

    [Fact]
    public async Task ThirtyTwoConcurrentStreamsEachEqualTheirOutputAlone()
    {
        const int n = 32, maxTokens = 16;
        var alone = new string[n];
        for (int i = 0; i < n; i++) alone[i] = (await server.StreamChatAsync(Prompt(i), maxTokens)).Text;

        // --parallel 8: eight decode together while the rest wait in the queue and join as slots free up.
        var together = await Task.WhenAll(Enumerable.Range(0, n).Select(i => server.StreamChatAsync(Prompt(i), maxTokens)));
        for (int i = 0; i < n; i++)
        {
            Assert.False(string.IsNullOrEmpty(together[i].Text), $"stream {i} returned no text");
            Assert.True(alone[i] == together[i].Text, $"stream {i}: alone {alone[i]!.ReplaceLineEndings("⏎")} | together {together[i].Text.ReplaceLineEndings("⏎")}");
        }
        Assert.Equal(0, await server.MetricAsync("fitlm_queue_depth"));
    }

    [Fact]
    public async Task AggregateDecodeSpeedAtEightStreamsVersusOne()
    {
        const int maxTokens = 64;
        await server.StreamChatAsync(Prompt(0), 4); // warm
        var one = await Measure(1, maxTokens);
        var eight = await Measure(8, maxTokens);
        // A report, not an assertion: the CPU is shared with whatever else runs (measured numbers: docs/serving-throughput.md).
        output.WriteLine($"1 stream: {one.Client:F1} tok/s (server decode {one.Server:F1}); 8 streams: {eight.Client:F1} tok/s (server decode {eight.Server:F1}); " +
            $"ratio {eight.Client / one.Client:F2}x (server {eight.Server / one.Server:F2}x)");
        Assert.True(one.Client > 0 && eight.Client > 0);
    }

    /// <summary>Aggregate tokens per second: client side (all completion tokens / wall time) and server side (decode rows / decode pass time).</summary>
    private async Task<(double Client, double Server)> Measure(int streams, int maxTokens)
    {
        double rows0 = await server.MetricAsync("fitlm_decode_tokens_total"), secs0 = await server.MetricAsync("fitlm_decode_seconds_total");
        var sw = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, streams).Select(i => server.StreamChatAsync(Prompt(i + 3), maxTokens)));
        sw.Stop();
        double rows = await server.MetricAsync("fitlm_decode_tokens_total") - rows0, secs = await server.MetricAsync("fitlm_decode_seconds_total") - secs0;
        int tokens = results.Sum(r => r.Tokens);
        return (tokens / sw.Elapsed.TotalSeconds, rows / secs);
    }
}
