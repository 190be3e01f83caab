using System.Globalization;
using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>
/// The tojson filter as Hugging Face defines it for chat templates: Python's json.dumps with ensure_ascii=False,
/// optional indent, separators and sort_keys (not jinja2's HTML-escaping tojson).
/// </summary>
internal static class JinjaJson
{
    public static string Dumps(object? value, string? indent, string itemSep, string keySep, bool sortKeys, bool ensureAscii, int maxChars)
    {
        var sb = new StringBuilder();
        Write(sb, value, indent, itemSep, keySep, sortKeys, 0, maxChars, ensureAscii);
        return sb.ToString();
    }

    private static void Write(StringBuilder sb, object? v, string? indent, string itemSep, string keySep, bool sortKeys, int depth, int maxChars, bool ascii)
    {
        if (depth > 100) throw new JinjaRuntimeException("tojson: value nested too deeply");
        if (sb.Length > maxChars) throw new JinjaRuntimeException("chat template output is too long");
        switch (v)
        {
            case null: sb.Append("null"); return;
            case bool b: sb.Append(b ? "true" : "false"); return;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); return;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : JinjaOps.FloatRepr(d));
                return;
            case string s: WriteString(sb, s, ascii); return;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); return; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(itemSep);
                    NewLine(sb, indent, depth + 1);
                    Write(sb, list[i], indent, itemSep, keySep, sortKeys, depth + 1, maxChars, ascii);
                }
                NewLine(sb, indent, depth);
                sb.Append(']');
                return;
            case OrderedDictionary<string, object?> dict:
                if (dict.Count == 0) { sb.Append("{}"); return; }
                sb.Append('{');
                IEnumerable<KeyValuePair<string, object?>> pairs = sortKeys ? dict.OrderBy(kv => kv.Key, StringComparer.Ordinal) : dict;
                int n = 0;
                foreach (var kv in pairs)
                {
                    if (n++ > 0) sb.Append(itemSep);
                    NewLine(sb, indent, depth + 1);
                    WriteString(sb, kv.Key, ascii);
                    sb.Append(keySep);
                    Write(sb, kv.Value, indent, itemSep, keySep, sortKeys, depth + 1, maxChars, ascii);
                }
                NewLine(sb, indent, depth);
                sb.Append('}');
                return;
            default:
                throw new JinjaRuntimeException($"tojson: object of type {JinjaOps.TypeName(v)} is not JSON serializable");
        }
    }

    private static void NewLine(StringBuilder sb, string? indent, int depth)
    {
        if (indent == null) return;
        sb.Append('\n');
        for (int i = 0; i < depth; i++) sb.Append(indent);
    }

    private static void WriteString(StringBuilder sb, string s, bool ascii)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20 || ascii && c > 0x7f) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}
