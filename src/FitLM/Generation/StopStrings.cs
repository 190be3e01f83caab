using System.Text;

namespace FitLM.Generation;

/// <summary>Stop-string matching over streamed text.</summary>
public static class StopStrings
{
    /// <summary>
    /// Given the text not yet emitted, returns what can be emitted now and whether a stop string was hit.
    /// On a hit, the text before the stop string is emitted and the rest dropped. Otherwise the longest
    /// tail that could still begin a stop string stays in <paramref name="pending"/>.
    /// </summary>
    public static (string Emit, bool Stopped) Split(StringBuilder pending, IReadOnlyList<string> stops)
    {
        string text = pending.ToString();
        int first = -1;
        foreach (var s in stops)
        {
            int at = text.IndexOf(s, StringComparison.Ordinal);
            if (at >= 0 && (first < 0 || at < first)) first = at;
        }
        if (first >= 0)
        {
            pending.Clear();
            return (text[..first], true);
        }
        int hold = 0;
        foreach (var s in stops)
            for (int len = Math.Min(s.Length - 1, text.Length); len > hold; len--)
                if (string.CompareOrdinal(text, text.Length - len, s, 0, len) == 0) { hold = len; break; }
        pending.Clear();
        pending.Append(text, text.Length - hold, hold);
        return (text[..^hold], false);
    }
}
