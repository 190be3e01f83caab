using FitLM.Model;

namespace FitLM.Evaluation;

public sealed record PerplexityResult(double Ppl, double Error, int Chunks, long TokensScored, double[] ChunkPpl);

/// <summary>
/// Perplexity with llama.cpp's protocol (llama-perplexity): the whole text is tokenized with BOS and cut
/// into chunks of n_ctx tokens; each chunk is evaluated on its own with its first token replaced by BOS,
/// and only the second half of each chunk is scored (tokens first+1 .. n_ctx-1 with first = n_ctx/2), so
/// every scored token sees at least n_ctx/2 tokens of context.
/// </summary>
public static class Perplexity
{
    public static PerplexityResult Run(LanguageModel model, int[] tokens, int nCtx, int maxChunks,
        Action<int, int, double>? progress = null, CancellationToken ct = default)
    {
        if (nCtx < 8) throw new FitLMException($"context {nCtx} is too small for perplexity (at least 8)");
        if (nCtx > model.Transformer.MaxContext) throw new FitLMException($"context {nCtx} exceeds the loaded context {model.Transformer.MaxContext}");
        int available = tokens.Length / nCtx;
        if (available < 1)
            throw new FitLMException($"the text has {tokens.Length} tokens; perplexity with -c {nCtx} needs at least {nCtx}");
        int chunks = maxChunks > 0 ? Math.Min(maxChunks, available) : available;
        int vocab = model.Config.Vocab;
        int first = nCtx / 2;
        int scoredPerChunk = nCtx - 1 - first;
        var logits = new float[(long)scoredPerChunk * vocab];
        var chunk = new int[nCtx];
        int bos = model.Tokenizer.BosId;
        bool addBos = model.Tokenizer.AddBos && bos >= 0;
        double nll = 0, nll2 = 0;
        long count = 0;
        var perChunk = new double[chunks];
        for (int c = 0; c < chunks; c++)
        {
            ct.ThrowIfCancellationRequested();
            Array.Copy(tokens, (long)c * nCtx, chunk, 0, nCtx);
            if (addBos) chunk[0] = bos;
            // Logits of positions first .. nCtx-2 predict tokens first+1 .. nCtx-1.
            model.Transformer.Forward(chunk.AsSpan(0, nCtx - 1), 0, logits, first, ct);
            double chunkNll = 0;
            for (int i = 0; i < scoredPerChunk; i++)
            {
                var row = logits.AsSpan(i * vocab, vocab);
                int target = chunk[first + 1 + i];
                double v = -LogSoftmaxAt(row, target);
                nll += v;
                nll2 += v * v;
                chunkNll += v;
            }
            count += scoredPerChunk;
            perChunk[c] = Math.Exp(chunkNll / scoredPerChunk);
            progress?.Invoke(c + 1, chunks, Math.Exp(nll / count));
        }
        double mean = nll / count;
        double var = nll2 / count - mean * mean;
        double err = var > 0 && count > 1 ? Math.Sqrt(var / (count - 1)) * Math.Exp(mean) : 0;
        return new PerplexityResult(Math.Exp(mean), err, chunks, count, perChunk);
    }

    /// <summary>log softmax(row)[target], computed stably in double.</summary>
    public static double LogSoftmaxAt(ReadOnlySpan<float> row, int target)
    {
        float max = System.Numerics.Tensors.TensorPrimitives.Max(row);
        double sum = 0;
        foreach (var x in row) sum += Math.Exp(x - max);
        return row[target] - max - Math.Log(sum);
    }
}
