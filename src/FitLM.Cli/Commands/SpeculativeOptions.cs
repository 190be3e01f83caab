using System.CommandLine;
using FitLM.Generation;
using FitLM.Memory;
using FitLM.Tensors;

namespace FitLM.Cli.Commands;

/// <summary>
/// `--draft MODEL`, `--lookup N`, `--draft-max N`: speculative decoding for run and bench (docs/speculative.md).
/// The draft model loads before the target, fully resident; its bytes (weights, KV cache, scratch) count against
/// --memory as bytes the process holds besides the target, so the target's plan leaves room for it.
/// </summary>
internal sealed class SpeculativeOptions
{
    /// <summary>
    /// Drafted tokens per step when --draft-max is not given: passes of 8 and 12 rows, whole tiles of the row-wise
    /// kernels (8 and 4 rows at once; docs/speculative.md). A draft model's tokens each cost one of its passes, so fewer.
    /// </summary>
    public const int DefaultDraftMaxModel = 7, DefaultDraftMaxLookup = 11;

    public readonly Option<string?> Draft = new("--draft", "-md", "--model-draft")
    {
        Description = "speculative decoding with this draft model (GGUF or Hugging Face folder) of the same tokenizer, drafting greedily",
    };

    public readonly Option<int> Lookup = new("--lookup")
    {
        Description = "speculative decoding by prompt lookup: draft what followed the latest earlier occurrence of the last N tokens (then N-1 … 2)",
    };

    public readonly Option<int> DraftMax = new("--draft-max")
    {
        Description = $"most tokens drafted per step (default {DefaultDraftMaxModel} with --draft, {DefaultDraftMaxLookup} with --lookup)",
    };

    public void AddTo(Command command)
    {
        command.Add(Draft);
        command.Add(Lookup);
        command.Add(DraftMax);
    }

    /// <summary>Whether --draft or --lookup was given (validated: not both, in range).</summary>
    public bool Enabled(ParseResult r)
    {
        bool draft = r.GetValue(Draft) != null, lookup = r.GetResult(Lookup) is { Implicit: false };
        if (draft && lookup) throw new FitLMException("give --draft MODEL or --lookup N, not both");
        if (lookup && r.GetValue(Lookup) is < 1 or > 64) throw new FitLMException($"--lookup {r.GetValue(Lookup)} is out of range (1..64: the n-gram length matched)");
        if (r.GetResult(DraftMax) is { Implicit: false } && !draft && !lookup) throw new FitLMException("--draft-max applies with --draft MODEL or --lookup N");
        if (r.GetResult(DraftMax) is { Implicit: false } && r.GetValue(DraftMax) is < 1 or > 64) throw new FitLMException($"--draft-max {r.GetValue(DraftMax)} is out of range (1..64)");
        return draft || lookup;
    }

    public int DraftMaxFor(ParseResult r) => r.GetResult(DraftMax) is { Implicit: false }
        ? r.GetValue(DraftMax)
        : r.GetValue(Draft) != null ? DefaultDraftMaxModel : DefaultDraftMaxLookup;

    /// <summary>
    /// The draft model of --draft (null without it), loaded before the target under the same budget, with the
    /// target's context when one was given; <see cref="ForTarget"/> then counts its bytes in the target's plan.
    /// </summary>
    public LanguageModel? LoadDraft(ParseResult r, LoadOptions target)
    {
        if (!Enabled(r) || r.GetValue(Draft) is not { } path) return null;
        return LanguageModel.Load(path, new LoadOptions
        {
            ContextLength = target.ContextLength,
            MemoryBudget = target.MemoryBudget,
            RuntimeBytes = target.RuntimeBytes,
            MaxBatch = 64, // the catch-up after the prompt is one batch; more rows would only be scratch
        });
    }

    /// <summary>The target's load options with the draft's bytes held besides it and room for a step's logits.</summary>
    public LoadOptions ForTarget(ParseResult r, LoadOptions o, LanguageModel? draft)
    {
        if (!Enabled(r)) return o;
        int rows = DraftMaxFor(r) + 1;
        o = o with { LogitRows = Math.Max(o.LogitRows, rows), MaxBatch = Math.Max(o.MaxBatch, rows) };
        if (draft == null) return o;
        var plan = draft.Plan;
        return o with { HostBytes = o.HostBytes + plan.TotalBytes - plan.RuntimeBytes };
    }

    /// <summary>The drafter the flags ask for (null: none); a draft model is checked against the target's tokenizer and then owned by the drafter.</summary>
    public IDrafter? CreateDrafter(ParseResult r, LanguageModel target, LanguageModel? draft)
    {
        if (!Enabled(r)) return null;
        return draft != null ? new ModelDrafter(draft, target, ownsModel: false) : new LookupDrafter(r.GetValue(Lookup));
    }

    /// <summary>One line: which drafter, how many tokens per step.</summary>
    public string Describe(ParseResult r) => r.GetValue(Draft) is { } path
        ? $"draft model {Path.GetFileName(path.TrimEnd('/'))}, draft-max {DraftMaxFor(r)}"
        : $"lookup {r.GetValue(Lookup)}-gram, draft-max {DraftMaxFor(r)}";

    /// <summary>
    /// Compiles the verification path (the row-wise kernels of a several-row pass) and the draft model's before
    /// anything is timed, as <see cref="Warmup"/> does for plain decoding; the caches are emptied again.
    /// </summary>
    public static void Warm(LanguageModel target, LanguageModel? draft, CancellationToken ct)
    {
        if (draft != null) Warmup.Run(draft, ct);
        var tf = target.Transformer;
        if (target.Plan.Streams || tf.MaxContext < 4 || tf.MaxBatch < 3) return;
        int token = target.Tokenizer.BosId >= 0 ? target.Tokenizer.BosId : 0;
        var logits = new float[3 * target.Config.Vocab];
        try { tf.Forward([token, token, token], 0, logits, 0, batchInvariant: true, ct); }
        finally { tf.Kv.Truncate(0); }
    }

    /// <summary>
    /// The end-of-run line: passes, drafted, accepted, tokens per pass, and the decode rate in tokens (the eval line
    /// above counts target passes as llama.cpp counts runs): <paramref name="generated"/> - 1 tokens after the
    /// prompt's pass in <paramref name="eval"/>.
    /// </summary>
    public static void Print(TextWriter o, string what, SpeculativeStatistics s, int generated, TimeSpan eval) =>
        o.WriteLine($"speculative: {what}: {s.Steps} target passes, {s.Drafted} drafted, {s.Accepted} accepted ({100 * s.AcceptanceRate:F1}%), " +
            $"{s.TokensPerStep:F2} tokens per pass, {(eval > TimeSpan.Zero ? Math.Max(0, generated - 1) / eval.TotalSeconds : 0):F2} tokens per second");
}
