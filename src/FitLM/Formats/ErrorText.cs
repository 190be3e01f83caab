using System.Text;

namespace FitLM.Formats;

/// <summary>
/// Names read from a file (tensor names, metadata keys) as error messages quote them: a corrupt file's "name"
/// can be kilobytes of binary (a fuzzed header echoed 2 KB of it), so it is capped and non-printable characters
/// are escaped, keeping the message one readable line.
/// </summary>
public static class ErrorText
{
    /// <summary>Characters of a quoted name, escapes included, shown before it is cut (ggml's names are at most 63 bytes).</summary>
    public const int MaxNameChars = 64;

    /// <summary><paramref name="name"/> in single quotes: control and other non-printable characters as \xNN or \uNNNN, cut after <see cref="MaxNameChars"/> characters (escapes included) with its length noted.</summary>
    public static string Quote(string name)
    {
        var sb = new StringBuilder(MaxNameChars + 32);
        sb.Append('\'');
        int shown = 0;
        for (; shown < name.Length && sb.Length <= MaxNameChars; shown++)
        {
            char c = name[shown];
            if (c == '\'' || c == '\\') sb.Append('\\').Append(c);
            else if (c < 0x20 || c == 0x7f) sb.Append($"\\x{(int)c:x2}");
            else if (char.IsControl(c) || char.IsSurrogate(c) || c == '\uFFFD' || char.GetUnicodeCategory(c) is System.Globalization.UnicodeCategory.Format
                         or System.Globalization.UnicodeCategory.OtherNotAssigned or System.Globalization.UnicodeCategory.LineSeparator
                         or System.Globalization.UnicodeCategory.ParagraphSeparator)
                sb.Append($"\\u{(int)c:x4}");
            else sb.Append(c);
        }
        sb.Append('\'');
        if (name.Length > shown) sb.Append($"... ({name.Length} characters)");
        return sb.ToString();
    }
}
