using System.Text.Json;
using FitLM.Tokenization;

namespace FitLM.Training;

/// <summary>
/// The sequences a run trains or evaluates on: non-overlapping windows of exactly --ctx tokens of a tokenized
/// text (the last partial window is dropped, so every step is the same size and the planner's numbers hold), or
/// one fixed batch of token ids (--train-ids) that every step trains on as given.
/// </summary>
public sealed class TrainingData
{
    /// <summary>The windows (or the fixed batch's sequences), in file order.</summary>
    public IReadOnlyList<int[]> Windows { get; }
    /// <summary>True for --train-ids: every step takes all <see cref="Windows"/>, in order, unshuffled.</summary>
    public bool FixedBatch { get; }
    /// <summary>Tokens in the windows.</summary>
    public long TokenCount { get; }
    /// <summary>A hash of every window's ids (FNV-1a, 64 bits): a resumed run refuses other data.</summary>
    public ulong Fingerprint { get; }

    // The order of the epoch last asked for (a run asks for each epoch's steps in turn).
    private int[]? _order;
    private long _orderEpoch;
    private int _orderSeed;

    private TrainingData(IReadOnlyList<int[]> windows, bool fixedBatch)
    {
        Windows = windows;
        FixedBatch = fixedBatch;
        TokenCount = windows.Sum(w => (long)w.Length);
        ulong h = 14695981039346656037UL;
        foreach (var w in windows)
        {
            h = (h ^ (uint)w.Length) * 1099511628211UL;
            foreach (int t in w) h = (h ^ (uint)t) * 1099511628211UL;
        }
        Fingerprint = h;
    }

    /// <summary>The longest sequence, in tokens.</summary>
    public int LongestWindow => Windows.Max(w => w.Length);

    /// <summary>
    /// <paramref name="text"/> tokenized whole (with BOS when the model adds one) and cut into windows of
    /// <paramref name="context"/> tokens. <paramref name="what"/> names the input in errors ("c-train.txt").
    /// </summary>
    public static TrainingData FromText(Tokenizer tokenizer, string text, int context, string what, CancellationToken ct = default)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new FitLMException($"{what} is empty: there is nothing to train on");
        ct.ThrowIfCancellationRequested();
        return FromTokens(tokenizer.Encode(text, addSpecial: true), context, what);
    }

    /// <summary>Non-overlapping windows of <paramref name="context"/> tokens of <paramref name="tokens"/>.</summary>
    public static TrainingData FromTokens(int[] tokens, int context, string what)
    {
        if (context < 2) throw new FitLMException($"--ctx {context} is too small: a training window needs at least 2 tokens");
        if (tokens.Length < context)
            throw new FitLMException($"{what} has {tokens.Length} token(s); --ctx {context} needs at least {context} (give more text or a smaller --ctx)");
        var windows = new int[tokens.Length / context][];
        for (int i = 0; i < windows.Length; i++) windows[i] = tokens.AsSpan(i * context, context).ToArray();
        return new TrainingData(windows, fixedBatch: false);
    }

    /// <summary>A fixed batch (--train-ids): a JSON array of token-id arrays, each at least 2 ids, all below <paramref name="vocab"/>.</summary>
    public static TrainingData FromIdsJson(string json, int vocab, string what)
    {
        int[][]? seqs;
        try
        {
            using var doc = JsonDocument.Parse(json);
            if (doc.RootElement.ValueKind != JsonValueKind.Array) throw new FitLMException($"{what}: not a JSON array of token-id arrays");
            seqs = doc.RootElement.EnumerateArray().Select((row, i) =>
            {
                if (row.ValueKind != JsonValueKind.Array) throw new FitLMException($"{what}: item {i} is not an array of token ids");
                return row.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id)
                    ? id : throw new FitLMException($"{what}: item {i} holds '{e}', not a token id")).ToArray();
            }).ToArray();
        }
        catch (JsonException e) { throw new FitLMException($"{what}: not valid JSON: {e.Message}", e); }
        if (seqs.Length == 0) throw new FitLMException($"{what}: the batch is empty (give a JSON array of token-id arrays)");
        for (int i = 0; i < seqs.Length; i++)
        {
            if (seqs[i].Length < 2) throw new FitLMException($"{what}: sequence {i} has {seqs[i].Length} token(s); a training sequence needs at least 2");
            foreach (int id in seqs[i])
                if ((uint)id >= (uint)vocab) throw new FitLMException($"{what}: token id {id} in sequence {i} is outside the model's vocabulary (0..{vocab - 1})");
        }
        return new TrainingData(seqs, fixedBatch: true);
    }

    /// <summary>The first <paramref name="count"/> windows (an evaluation's cap), as data of their own.</summary>
    public TrainingData Take(int count) => count >= Windows.Count ? this : new TrainingData(Windows.Take(count).ToArray(), FixedBatch);

    /// <summary>
    /// The sequences of step <paramref name="step"/> (0-based) with <paramref name="batch"/> sequences a step: the
    /// windows in a per-epoch order shuffled from <paramref name="seed"/>, a step running on into the next epoch
    /// when this one ends. A pure function of its arguments, so a resumed run takes the same batches.
    /// </summary>
    public IReadOnlyList<int[]> BatchAt(long step, int batch, int seed)
    {
        if (FixedBatch) return Windows;
        var result = new int[batch][];
        long position = step * batch;
        for (int i = 0; i < batch; i++, position++)
        {
            long epoch = position / Windows.Count;
            if (_order == null || _orderEpoch != epoch || _orderSeed != seed) (_order, _orderEpoch, _orderSeed) = (EpochOrder(epoch, seed), epoch, seed);
            result[i] = Windows[_order[position % Windows.Count]];
        }
        return result;
    }

    /// <summary>Steps that make <paramref name="epochs"/> passes over the windows at <paramref name="batch"/> a step (at least 1).</summary>
    public long StepsFor(double epochs, int batch) =>
        FixedBatch ? Math.Max(1, (long)Math.Ceiling(epochs)) : Math.Max(1, (long)Math.Ceiling(epochs * Windows.Count / batch));

    /// <summary>Fisher–Yates from a seed of (seed, epoch).</summary>
    private int[] EpochOrder(long epoch, int seed)
    {
        var order = Enumerable.Range(0, Windows.Count).ToArray();
        // Not HashCode.Combine: it is randomized per process, and a resumed run must shuffle as the first one did.
        ulong mix = ((ulong)(uint)seed * 0x9E3779B97F4A7C15UL) ^ ((ulong)epoch * 0xC2B2AE3D27D4EB4FUL);
        mix ^= mix >> 29;
        var rng = new Random((int)(mix & int.MaxValue));
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }
}
