using System.CommandLine;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Server;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm serve`: an OpenAI-compatible HTTP server with continuous batching, all requests within --memory.</summary>
internal static class ServeCommand
{
    public static Command Create()
    {
        var load = new ModelLoadOptions();
        var host = new Option<string>("--host") { Description = "address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0: any free port, printed at start)", DefaultValueFactory = _ => 8080 };
        var parallel = new Option<int>("--parallel", "-np") { Description = "most requests decoded together in one batch", DefaultValueFactory = _ => 8 };
        var queue = new Option<int>("--queue") { Description = "requests that may wait for a slot or KV memory; more get 503 with Retry-After", DefaultValueFactory = _ => 64 };
        var invariant = new Option<bool>("--batch-invariant")
        {
            Description = "decode each request exactly as alone (true: output independent of load, equal to `fitlm run` at --temp 0); false: batches use the matrix-matrix kernel, and greedy text may change at near-ties under load",
            DefaultValueFactory = _ => true,
        };
        var apiKey = new Option<string?>("--api-key") { Description = "require 'Authorization: Bearer KEY' (all endpoints but /health and /metrics)" };
        load.Context.Aliases.Add("--ctx");
        load.Context.Description = $"context per request in tokens (prompt + completion; 0: the model's trained context, at most {LoadOptions.DefaultContextCap})";
        var cmd = new Command("serve", "serve a model over an OpenAI-compatible HTTP API (continuous batching)")
        {
            host, port, parallel, queue, apiKey, invariant,
        };
        load.AddTo(cmd);
        var moving = new MovingBudget();
        moving.AddTo(cmd);
        cmd.SetAction(r => Common.Guard(ct =>
        {
            using var watcher = MovingBudget.Start(r, load);
            var options = new ServerOptions
            {
                Host = r.GetValue(host)!,
                Port = r.GetValue(port),
                Parallel = r.GetValue(parallel),
                QueueCapacity = r.GetValue(queue),
                ApiKey = r.GetValue(apiKey),
                BatchInvariant = r.GetValue(invariant),
                Watcher = watcher,
            };
            options.Validate();
            // Every slot keeps a row of logits: the planner counts them with the rest of the process. Layers are movable
            // whatever --memory says: POST /budget may change the budget of any server started with --api-key.
            // The plan keeps room for the server's overhead and slots (ServerSlots), so a model that does not fit whole
            // streams a little more (or caches fewer experts) rather than leaving the KV pool nothing.
            var loadOptions = load.Read(r, new LoadOptions { LogitRows = options.Parallel }) with { MovableWeights = true, ServerSlots = options.Parallel, DeviceSequences = options.Parallel };
            using var lm = Warmup.Loaded(load.Load(r, loadOptions), ct);
            var server = FitLMServer.StartAsync(lm, options, ct).GetAwaiter().GetResult();
            moving.Attach(r, watcher, lm, server.WakeScheduler);
            try
            {
                var b = server.Budget;
                Console.Out.WriteLine($"fitlm serve: listening on {server.Address.ToString().TrimEnd('/')} (model {Path.GetFileName(lm.Source.Path)}, parallel {options.Parallel}, " +
                    $"context {b.Context}, KV {(lm.Transformer.Device != null ? $"{loadOptions.Kv.Type.ToString().ToLowerInvariant()} on the GPU" : lm.Transformer.KvStores.Options)} up to {ProcessMemory.Format(b.CapacityBytes)}, budget {ProcessMemory.Format(lm.Plan.BudgetBytes)})");
                Console.Out.Flush();
                server.WaitAsync(ct).GetAwaiter().GetResult();
            }
            finally
            {
                server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
            Common.PrintPeakRss();
            return 0;
        }));
        return cmd;
    }
}
