using System.CommandLine;
using FitLM.KvCache;
using FitLM.Model;
using FitLM.Memory;

namespace FitLM.Cli.Commands;

/// <summary>`--kv`, `--kv-evict`, `--kv-keep`, `--kv-sinks`: how the KV cache is held (docs/kv-cache.md).</summary>
internal sealed class KvOptions
{
    public readonly Option<string> Type = new("--kv")
    {
        Description = $"KV cache type: {string.Join(", ", KvCacheOptions.AllTypes.Select(KvCacheOptions.Name))} (modifiers, docs/kv-cache.md: kivi2:r32, xquant4:proj, ...)",
        DefaultValueFactory = _ => "f32",
    };

    public readonly Option<string> Evict = new("--kv-evict")
    {
        Description = "KV eviction: none, or h2o (heavy hitters + recent window + attention sinks, a fixed budget; f32/f16 only)",
        DefaultValueFactory = _ => "none",
    };

    public readonly Option<int> Keep = new("--kv-keep") { Description = "tokens H2O keeps per layer and KV head" };

    public readonly Option<int> Sinks = new("--kv-sinks")
    {
        Description = "first tokens H2O never evicts (attention sinks)",
        DefaultValueFactory = _ => 4,
    };

    public void AddTo(Command command)
    {
        command.Add(Type);
        command.Add(Evict);
        command.Add(Keep);
        command.Add(Sinks);
    }

    /// <summary>The KV options given, validated (a FitLMException names the bad flag).</summary>
    public KvCacheOptions Read(ParseResult r)
    {
        var o = KvCacheOptions.Parse(r.GetValue(Type)!) with
        {
            Evict = KvCacheOptions.ParseEviction(r.GetValue(Evict)!),
            Keep = r.GetValue(Keep),
            Sinks = r.GetValue(Sinks),
        };
        if (o.Evict == KvEviction.H2O && o.Keep <= 0) throw new FitLMException("--kv-evict h2o needs --kv-keep N (tokens to keep)");
        o.Validate();
        return o;
    }

    public LoadOptions Apply(ParseResult r, LoadOptions o) => o with { Kv = Read(r) };

    /// <summary>`fitlm info`'s table: KV bytes per token of every type for this model, averaged over a context.</summary>
    public static void PrintTable(TextWriter o, ModelConfig c, int context)
    {
        double f16 = KvStoreFactory.BytesPerToken(c, new KvCacheOptions { Type = KvType.F16 }, context);
        o.WriteLine($"KV cache bytes per token (averaged over {context} tokens; scales, zero points, full-precision windows and bases counted):");
        o.WriteLine($"  {"--kv",-10} {"bytes/token",12} {"vs f16",8}  held as");
        foreach (var t in KvCacheOptions.AllTypes)
        {
            var kv = new KvCacheOptions { Type = t };
            double b = KvStoreFactory.BytesPerToken(c, kv, context);
            o.WriteLine($"  {KvCacheOptions.Name(t),-10} {b,12:F1} {f16 / b,7:F2}x  {Describe(c, kv)}");
        }
    }

    private static string Describe(ModelConfig c, KvCacheOptions o) => o.Type switch
    {
        KvType.F32 => "float32 K and V",
        KvType.F16 => "float16 K and V",
        KvType.Kivi2 or KvType.Kivi4 => $"{o.Bits}-bit K per channel, V per token, last {o.Residual} tokens in f16",
        KvType.XQuantCl => $"token id + {o.Bits}-bit residual-stream deltas of {c.Layers - 1} layers",
        _ => c.Dim > 2 * c.KvDim
            ? $"{o.Bits}-bit latent of X ({2 * c.KvDim} wide, per channel) + f16 SVD basis"
            : $"{o.Bits}-bit X ({c.Dim} wide, per token)",
    };
}
