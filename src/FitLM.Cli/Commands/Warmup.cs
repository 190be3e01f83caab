namespace FitLM.Cli.Commands;

/// <summary>
/// llama.cpp's warm-up: one short prompt pass and one decode step before the timed run, then the KV cache is
/// emptied (`run`, and `chat` and `serve` at load). The kernels are compiled on their first call (TieredCompilation is off, so that call compiles fully
/// optimized code); without a warm-up, "prompt eval" of a two-token demo prompt measured ~480 ms of start-up
/// against ~7 ms per decoded token. The warm-up counts in the load time, where llama.cpp counts it too.
/// On a GPU the prompt pass is as wide as the prompt's passes (the batch, up to the context): a narrower one takes other
/// kernels (cuBLAS and the tiled attention start at 16 and 32 rows), so the first prompt paid their first use; run 30
/// measured its prompt eval at 3732 tok/s against `bench`'s 9461 at the same pass width.
/// </summary>
internal static class Warmup
{
    /// <summary>The model, warmed up (`chat` and `serve`: the first reply or request does not pay for it).</summary>
    public static LanguageModel Loaded(LanguageModel lm, CancellationToken ct = default)
    {
        try
        {
            Run(lm, ct);
            return lm;
        }
        catch
        {
            lm.Dispose();
            throw;
        }
    }

    public static void Run(LanguageModel lm, CancellationToken ct)
    {
        var tf = lm.Transformer;
        // A streamed model would read every streamed weight once more: seconds of I/O to save milliseconds of compilation.
        if (lm.Plan.Streams || tf.MaxContext < 4) return;
        int token = lm.Tokenizer.BosId >= 0 ? lm.Tokenizer.BosId : 0;
        var logits = new float[lm.Config.Vocab];
        int width = tf.Device != null ? Math.Min(tf.MaxBatch, tf.MaxContext - 1) : 2;
        var prompt = new int[width];
        Array.Fill(prompt, token);
        try
        {
            tf.Forward(prompt, 0, logits, width - 1, ct);   // the batched prompt path, the last row's logits
            tf.Forward([token], width, logits, 0, ct);      // the one-token decode path
        }
        finally
        {
            tf.Kv.Truncate(0);
        }
    }
}
