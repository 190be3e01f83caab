using System.Text;
using FitLM.Generation;
using FitLM.Tokenization;

namespace FitLM.Server;

/// <summary>Token logprobs in the two shapes OpenAI's API returns: chat's content[] and completions' parallel arrays.</summary>
internal sealed class LogprobShapes(Tokenizer tokenizer)
{
    /// <summary>choices[].logprobs for chat: token, logprob, UTF-8 bytes and the top alternatives of each token.</summary>
    public ChatLogprobs Chat(IReadOnlyList<TokenLogprob> tokens)
    {
        var content = new ChatTokenLogprob[tokens.Count];
        for (int i = 0; i < content.Length; i++)
        {
            var t = tokens[i];
            var top = new ChatTopLogprob[t.Top.Length];
            for (int k = 0; k < top.Length; k++) top[k] = new ChatTopLogprob(Piece(t.Top[k].Id), t.Top[k].Logprob, Bytes(t.Top[k].Id));
            content[i] = new ChatTokenLogprob(Piece(t.Id), t.Logprob, Bytes(t.Id), top);
        }
        return new ChatLogprobs(content);
    }

    /// <summary>choices[].logprobs for completions; text offsets count from the start of the returned text (after <paramref name="offset"/> echoed chars).</summary>
    public TextLogprobs Text(IReadOnlyList<TokenLogprob> tokens, int offset)
    {
        int n = tokens.Count;
        var pieces = new string[n];
        var logprobs = new float[n];
        var top = new Dictionary<string, float>[n];
        var offsets = new int[n];
        for (int i = 0; i < n; i++)
        {
            var t = tokens[i];
            pieces[i] = Piece(t.Id);
            logprobs[i] = t.Logprob;
            offsets[i] = offset + t.TextOffset;
            top[i] = new Dictionary<string, float>(t.Top.Length);
            // Two tokens may read the same (byte fallback pieces): the more likely one is listed.
            foreach (var alt in t.Top) top[i].TryAdd(Piece(alt.Id), alt.Logprob);
        }
        return new TextLogprobs(pieces, logprobs, top, offsets);
    }

    /// <summary>The token's text (special tokens as written, e.g. "&lt;/s&gt;"; an incomplete UTF-8 piece with U+FFFD).</summary>
    private string Piece(int id) => Encoding.UTF8.GetString(tokenizer.TokenBytes(id, special: true));

    private int[] Bytes(int id) => Array.ConvertAll(tokenizer.TokenBytes(id, special: true), b => (int)b);
}
