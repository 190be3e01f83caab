using System.CommandLine;
using FitLM.Compression;
using FitLM.Model;
using FitLM.Runtime;
using FitLM.Tensors;
using FitLM.Weights;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm info`: what a model is and what running it would take.</summary>
internal static class InfoCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var ctx = Common.Context(0);
        var cmd = new Command("info", "show a model's architecture, tensors, tokenizer and memory needs") { model, ctx };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            using var src = ModelSource.Open(r.GetValue(model)!);
            var c = src.Config;
            int n = r.GetValue(ctx) > 0 ? r.GetValue(ctx) : LoadOptions.DefaultContext(c.ContextLength);
            var o = Console.Out;
            o.WriteLine($"model:          {src.Path}");
            o.WriteLine($"format:         {(src is GgufSource g ? $"GGUF v{g.File.Version}" : "Hugging Face safetensors")}");
            o.WriteLine($"architecture:   {c.Architecture}");
            o.WriteLine($"layers:         {c.Layers}");
            o.WriteLine($"embedding:      {c.Dim}");
            o.WriteLine($"heads:          {c.Heads} (KV heads {c.KvHeads}, head dim {c.HeadDim})");
            o.WriteLine($"feed-forward:   {c.FfnDim} ({c.Activation.ToString().ToLowerInvariant()})");
            o.WriteLine($"vocabulary:     {c.Vocab}");
            o.WriteLine($"context:        {c.ContextLength} (trained)");
            o.WriteLine($"rope:           base {c.RopeTheta}, {c.RopeDims} dims, {c.RopeStyle.ToString().ToLowerInvariant()}" +
                (c.RopeLlama3 != null ? $", llama3 scaling x{c.RopeLlama3.Factor}" : "") + (c.RopeLinearFactor != 1 ? $", linear x{c.RopeLinearFactor}" : ""));
            o.WriteLine($"rms norm eps:   {c.RmsEps}");
            o.WriteLine($"qkv bias:       {(c.QkvBias ? "yes" : "no")}, q/k norm: {(c.QkNorm ? c.QkNormWholeRow ? "yes (whole projection)" : "yes (per head)" : "no")}, output: {(src.Find("output.weight") != null ? "separate" : "tied to embeddings")}");
            ModelOptionsReport.Write(o, c);
            // BitStack: a stacked file's parameters are its matrices' logical shapes, and its weights a range of sizes.
            var layout = src is GgufSource gs && StackLayout.IsStacked(gs.File) ? StackLayout.Read(gs) : null;
            long parameters = layout?.Parameters ?? src.Tensors.Sum(t => t.Elements);
            long bytes = src.Tensors.Sum(t => t.ByteSize);
            o.WriteLine($"parameters:     {parameters:N0} ({parameters / 1e6:F2} M)");
            if (layout != null)
            {
                int all = layout.Entries.Count, smallest = layout.BaseEntries;
                o.WriteLine($"weights:        {ProcessMemory.Format(layout.BytesAt(smallest))} to {ProcessMemory.Format(layout.BytesAt(all))} " +
                    $"({layout.TotalBitsPerWeight(smallest):F2} to {layout.TotalBitsPerWeight(all):F2} bits per weight), as many blocks as the budget holds");
            }
            else o.WriteLine($"weights:        {ProcessMemory.Format(bytes)} ({bytes * 8.0 / parameters:F2} bits per weight)");
            o.WriteLine();
            if (layout != null) o.WriteLine("tensors as stored (a stacked matrix is 3 F16 tensors per block):");
            o.WriteLine($"{"type",-6} {"tensors",8} {"parameters",14} {"bytes",14}");
            foreach (var grp in src.Tensors.GroupBy(t => t.Type).OrderBy(x => x.Key))
                o.WriteLine($"{GgmlTypes.Name(grp.Key),-6} {grp.Count(),8} {grp.Sum(t => t.Elements),14:N0} {grp.Sum(t => t.ByteSize),14:N0}");
            o.WriteLine();
            var tok = src.Tokenizer;
            o.WriteLine($"tokenizer:      {tok.Kind} (pre-tokenizer {tok.PreTokenizer}), {tok.VocabSize} tokens, BOS {tok.BosId}{(tok.AddBos ? " (added)" : "")}, EOS {tok.EosId}");
            int batch = 256;
            long kv = KvCache.KvStoreFactory.PlanBytes(c, new KvCache.KvCacheOptions(), n, 1, batch); // f32, as plan counts it with its attention scratch
            long scratch = Footprint.ScratchBytes(c, n, batch) + 4L * c.Vocab; // as the planner counts them
            o.WriteLine();
            long caches = layout != null ? StackedWeights.CacheBytesFor(layout, StackedWeights.DefaultCache) : 0;
            if (layout != null) bytes = layout.BytesAt(layout.Entries.Count);
            o.WriteLine($"memory for a run with context {n}{(layout != null ? " and the whole stack (fitlm plan: what a budget holds)" : "")}:");
            o.WriteLine($"  weights       {ProcessMemory.Format(bytes),12}");
            if (layout != null) o.WriteLine($"  matrix caches {ProcessMemory.Format(caches),12}  ({GgmlTypes.Name(StackedWeights.DefaultCache)}, the default --stack-cache)");
            o.WriteLine($"  KV cache      {ProcessMemory.Format(kv),12}  (f32, {ProcessMemory.Format(2L * c.Layers * c.KvDim * sizeof(float))} per token)");
            o.WriteLine($"  scratch       {ProcessMemory.Format(scratch),12}");
            long runtime = RuntimeFootprint.Bytes(src); // the number plan and run count (docs/memory.md)
            o.WriteLine($"  runtime       {ProcessMemory.Format(runtime),12}  (the .NET runtime, code and tokenizer, measured)");
            o.WriteLine($"  total         {ProcessMemory.Format(bytes + caches + kv + scratch + runtime),12}");
            o.WriteLine();
            KvOptions.PrintTable(o, c, 512);
            StackOptions.PrintLadder(src, o); // BitStack: the size ladder of a stacked file
            o.WriteLine();
            o.WriteLine("tensors:");
            foreach (var t in src.Tensors)
                o.WriteLine($"  {t.Name,-28} {GgmlTypes.Name(t.Type),-5} [{string.Join(", ", t.Shape)}] {t.ByteSize:N0} bytes");
            return 0;
        }));
        return cmd;
    }
}
