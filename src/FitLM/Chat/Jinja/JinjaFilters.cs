using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>jinja2's built-in filters that chat templates use, plus Hugging Face's tojson.</summary>
internal static class JinjaFilters
{
    public static readonly HashSet<string> Names =
    [
        "trim", "length", "count", "upper", "lower", "capitalize", "title", "default", "d", "tojson", "string", "join",
        "first", "last", "replace", "items", "list", "selectattr", "rejectattr", "select", "reject", "map", "safe", "abs",
        "int", "float", "reverse", "indent", "unique", "sort", "dictsort", "sum", "min", "max", "wordcount", "e", "escape",
    ];

    public static object? Apply(string name, object? v, List<object?> args, Dictionary<string, object?> kw, int maxChars)
    {
        object? Arg(int i, string key, object? dflt) => i < args.Count ? args[i] : kw.TryGetValue(key, out var x) ? x : dflt;
        switch (name)
        {
            case "trim": return JinjaMethods.Strip(JinjaOps.Str(v), Arg(0, "chars", null) as string, true, true);
            case "length" or "count": return JinjaOps.Length(v);
            case "upper": return JinjaOps.Str(v).ToUpperInvariant();
            case "lower": return JinjaOps.Str(v).ToLowerInvariant();
            case "capitalize": return JinjaMethods.Capitalize(JinjaOps.Str(v));
            case "title": return Title(JinjaOps.Str(v));
            case "default" or "d":
                {
                    bool boolean = JinjaOps.Truthy(Arg(1, "boolean", false));
                    bool useDefault = v is Undefined || boolean && !JinjaOps.Truthy(v);
                    return useDefault ? Arg(0, "default_value", "") : v;
                }
            case "tojson":
                {
                    // Hugging Face's tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
                    bool ascii = JinjaOps.Truthy(Arg(0, "ensure_ascii", false));
                    object? indent = Arg(1, "indent", null);
                    string? ind = indent switch { long n => new string(' ', (int)Math.Clamp(n, 0, 64)), string s => s, _ => null };
                    string itemSep = ind == null ? ", " : ",", keySep = ": ";
                    if (kw.TryGetValue("separators", out var seps) && seps is List<object?> { Count: 2 } pair)
                    {
                        itemSep = JinjaOps.Str(pair[0]);
                        keySep = JinjaOps.Str(pair[1]);
                    }
                    bool sortKeys = kw.TryGetValue("sort_keys", out var sk) && JinjaOps.Truthy(sk);
                    return JinjaJson.Dumps(v, ind, itemSep, keySep, sortKeys, ascii, maxChars);
                }
            case "string": return JinjaOps.Str(v);
            case "safe" or "e" or "escape": return name == "safe" ? v : Escape(JinjaOps.Str(v));
            case "join":
                {
                    string sep = JinjaOps.Str(Arg(0, "d", ""));
                    var items = JinjaOps.Iterate(v);
                    if (Arg(1, "attribute", null) is string attr) items = items.Select(x => Attribute(x, attr)).ToList();
                    var sb = new StringBuilder();
                    for (int i = 0; i < items.Count; i++)
                    {
                        if (i > 0) sb.Append(sep);
                        sb.Append(JinjaOps.Str(items[i]));
                        if (sb.Length > maxChars) throw new JinjaRuntimeException("chat template output is too long");
                    }
                    return sb.ToString();
                }
            case "first": { var l = JinjaOps.Iterate(v); return l.Count > 0 ? l[0] : new Undefined("No first item, sequence was empty."); }
            case "last": { var l = JinjaOps.Iterate(v); return l.Count > 0 ? l[^1] : new Undefined("No last item, sequence was empty."); }
            case "replace":
                {
                    var call = new List<object?> { Arg(0, "old", ""), Arg(1, "new", "") };
                    if (Arg(2, "count", null) is long c) call.Add(c);
                    JinjaMethods.TryCall(JinjaOps.Str(v), "replace", call, out var r);
                    return r;
                }
            case "items":
                if (v is Undefined) return new List<object?>();
                if (v is not OrderedDictionary<string, object?> dict) throw new JinjaRuntimeException("items: can only get item pairs from a mapping");
                return dict.Select(kv => (object?)new PyTuple { kv.Key, kv.Value }).ToList();
            case "list": return new List<object?>(JinjaOps.Iterate(v));
            case "reverse": return v is string str ? string.Concat(JinjaOps.Chars(str).AsEnumerable().Reverse()) : JinjaOps.Iterate(v).AsEnumerable().Reverse().ToList();
            case "unique":
                {
                    var result = new List<object?>();
                    foreach (var x in JinjaOps.Iterate(v)) if (!result.Any(y => JinjaOps.Equals(x, y))) result.Add(x);
                    return result;
                }
            case "sort":
                {
                    bool reverse = JinjaOps.Truthy(Arg(0, "reverse", false));
                    string? attr = Arg(2, "attribute", null) as string;
                    var list = new List<object?>(JinjaOps.Iterate(v));
                    Comparison<object?> cmp = (a, b) => JinjaOps.Compare(attr == null ? a : Attribute(a, attr), attr == null ? b : Attribute(b, attr), "<");
                    var sorted = list.Order(Comparer<object?>.Create(cmp)).ToList();
                    if (reverse) sorted.Reverse();
                    return sorted;
                }
            case "dictsort":
                if (v is not OrderedDictionary<string, object?> ds) throw new JinjaRuntimeException("dictsort: expected a mapping");
                return ds.OrderBy(kv => kv.Key, StringComparer.OrdinalIgnoreCase).Select(kv => (object?)new PyTuple { kv.Key, kv.Value }).ToList();
            case "selectattr" or "rejectattr":
                {
                    string attr = JinjaOps.Str(Arg(0, "attribute", ""));
                    return Select(JinjaOps.Iterate(v), x => Attribute(x, attr), args.Skip(1).ToList(), name == "selectattr");
                }
            case "select" or "reject": return Select(JinjaOps.Iterate(v), x => x, args, name == "select");
            case "map":
                {
                    var items = JinjaOps.Iterate(v);
                    if (kw.TryGetValue("attribute", out var a))
                    {
                        string attr = JinjaOps.Str(a);
                        return items.Select(x =>
                        {
                            var r = Attribute(x, attr);
                            return r is Undefined && kw.TryGetValue("default", out var dv) ? dv : r;
                        }).ToList();
                    }
                    if (args.Count == 0) throw new JinjaRuntimeException("map: needs a filter name or attribute=");
                    string filter = JinjaOps.Str(args[0]);
                    if (!Names.Contains(filter)) throw new JinjaRuntimeException($"map: no filter named '{filter}'");
                    var rest = args.Skip(1).ToList();
                    return items.Select(x => Apply(filter, x, rest, new Dictionary<string, object?>(), maxChars)).ToList();
                }
            case "abs": return v switch { long l => (object)Math.Abs(l), double d => Math.Abs(d), _ => throw new JinjaRuntimeException($"bad operand type for abs(): '{JinjaOps.TypeName(v)}'") };
            case "int":
                return v switch
                {
                    long l => (object)l,
                    bool b => b ? 1L : 0L,
                    double d => (long)Math.Truncate(d),
                    string s when long.TryParse(s.Trim(), out var p) => p,
                    string s when double.TryParse(s.Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var f) => (long)Math.Truncate(f),
                    _ => Arg(0, "default", 0L),
                };
            case "float":
                return v switch
                {
                    long l => (object)(double)l,
                    double d => d,
                    bool b => b ? 1.0 : 0.0,
                    string s when double.TryParse(s.Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var f) => f,
                    _ => Arg(0, "default", 0.0),
                };
            case "sum":
                {
                    object? total = Arg(1, "start", 0L);
                    string? attr = Arg(0, "attribute", null) as string;
                    foreach (var x in JinjaOps.Iterate(v)) total = JinjaOps.Binary("+", total, attr == null ? x : Attribute(x, attr), maxChars);
                    return total;
                }
            case "min" or "max":
                {
                    var l = JinjaOps.Iterate(v);
                    if (l.Count == 0) return new Undefined($"No {name} item, sequence was empty.");
                    var best = l[0];
                    foreach (var x in l.Skip(1))
                        if (name == "min" ? JinjaOps.Compare(x, best, "<") < 0 : JinjaOps.Compare(x, best, ">") > 0) best = x;
                    return best;
                }
            case "wordcount": return (long)JinjaOps.Str(v).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "indent": return Indent(JinjaOps.Str(v), Arg(0, "width", 4L), JinjaOps.Truthy(Arg(1, "first", false)), JinjaOps.Truthy(Arg(2, "blank", false)));
            default: throw new JinjaRuntimeException($"no filter named '{name}'");
        }
    }

    /// <summary>A dotted attribute path ("function.name") as selectattr/map/sort use it.</summary>
    private static object? Attribute(object? x, string path)
    {
        foreach (var part in path.Split('.'))
        {
            if (x is Undefined) return x;
            x = long.TryParse(part, out var i) ? JinjaOps.GetItem(x, i) : JinjaOps.GetItem(x, part);
        }
        return x;
    }

    private static List<object?> Select(List<object?> items, Func<object?, object?> key, List<object?> testArgs, bool keep)
    {
        Func<object?, bool> pass = testArgs.Count == 0
            ? JinjaOps.Truthy
            : x => JinjaTests.Apply(JinjaOps.Str(testArgs[0]), x, testArgs.Skip(1).ToList());
        return items.Where(x => pass(key(x)) == keep).ToList();
    }

    /// <summary>jinja2's title filter: capitalizes words split at whitespace, dashes and opening brackets.</summary>
    private static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool start = true;
        foreach (char c in s)
        {
            bool sep = char.IsWhiteSpace(c) || c is '-' or '(' or '{' or '[' or '<';
            sb.Append(sep ? c : start ? char.ToUpperInvariant(c) : char.ToLowerInvariant(c));
            start = sep;
        }
        return sb.ToString();
    }

    private static string Escape(string s) =>
        s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");

    private static string Indent(string s, object? width, bool first, bool blank)
    {
        string pad = width switch { long n => new string(' ', (int)Math.Clamp(n, 0, 256)), string w => w, _ => "    " };
        var lines = s.Split('\n');
        var sb = new StringBuilder();
        for (int i = 0; i < lines.Length; i++)
        {
            if (i > 0) sb.Append('\n');
            bool indentThis = (i > 0 || first) && (blank || lines[i].Trim().Length > 0);
            if (indentThis) sb.Append(pad);
            sb.Append(lines[i]);
        }
        return sb.ToString();
    }
}
