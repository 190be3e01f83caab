using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>Python str and dict methods that chat templates call (content.strip(), tool.items(), message.get(...)).</summary>
internal static class JinjaMethods
{
    public static bool TryCall(object? obj, string name, List<object?> args, out object? result)
    {
        result = null;
        switch (obj)
        {
            case string s: return TryString(s, name, args, out result);
            case OrderedDictionary<string, object?> d: return TryDict(d, name, args, out result);
            default: return false;
        }
    }

    private static string StrArg(List<object?> args, int i, string method)
    {
        if (i >= args.Count) throw new JinjaRuntimeException($"{method}() is missing an argument");
        return args[i] as string ?? throw new JinjaRuntimeException($"{method}() argument must be str, not {JinjaOps.TypeName(args[i])}");
    }

    private static string? OptChars(List<object?> args, string method) =>
        args.Count == 0 || args[0] is null ? null : StrArg(args, 0, method);

    private static bool TryString(string s, string name, List<object?> args, out object? result)
    {
        result = name switch
        {
            "strip" => Strip(s, OptChars(args, name), true, true),
            "lstrip" => Strip(s, OptChars(args, name), true, false),
            "rstrip" => Strip(s, OptChars(args, name), false, true),
            "upper" => s.ToUpperInvariant(),
            "lower" => s.ToLowerInvariant(),
            "title" => Title(s),
            "capitalize" => Capitalize(s),
            "startswith" => Affix(s, args, name, (x, p) => x.StartsWith(p, StringComparison.Ordinal)),
            "endswith" => Affix(s, args, name, (x, p) => x.EndsWith(p, StringComparison.Ordinal)),
            "split" => Split(s, args.Count > 0 && args[0] is not null ? StrArg(args, 0, name) : null, args.Count > 1 && args[1] is long m ? m : -1),
            "replace" => Replace(s, StrArg(args, 0, name), StrArg(args, 1, name), args.Count > 2 && args[2] is long c ? c : -1),
            "find" => (long)s.IndexOf(StrArg(args, 0, name), StringComparison.Ordinal),
            "count" => (long)CountOf(s, StrArg(args, 0, name)),
            "join" => string.Join(s, JinjaOps.Iterate(args.Count > 0 ? args[0] : null).Select(JinjaOps.Str)),
            "isdigit" => s.Length > 0 && s.All(char.IsDigit),
            "isspace" => s.Length > 0 && s.All(char.IsWhiteSpace),
            _ => Missing,
        };
        return !ReferenceEquals(result, Missing);
    }

    private static readonly object Missing = new();

    private static bool TryDict(OrderedDictionary<string, object?> d, string name, List<object?> args, out object? result)
    {
        result = name switch
        {
            "items" => d.Select(kv => (object?)new PyTuple { kv.Key, kv.Value }).ToList(),
            "keys" => d.Keys.Cast<object?>().ToList(),
            "values" => d.Values.ToList(),
            "get" => args.Count == 0 ? throw new JinjaRuntimeException("get() is missing an argument")
                : args[0] is string k && d.TryGetValue(k, out var v) ? v : args.Count > 1 ? args[1] : null,
            _ => Missing,
        };
        return !ReferenceEquals(result, Missing);
    }

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        int a = 0, b = s.Length;
        bool Strippable(char c) => chars == null ? char.IsWhiteSpace(c) : chars.Contains(c);
        if (left) while (a < b && Strippable(s[a])) a++;
        if (right) while (b > a && Strippable(s[b - 1])) b--;
        return s[a..b];
    }

    private static bool Affix(string s, List<object?> args, string method, Func<string, string, bool> test)
    {
        if (args.Count > 0 && args[0] is List<object?> options) return options.Any(o => o is string p && test(s, p));
        return test(s, StrArg(args, 0, method));
    }

    private static List<object?> Split(string s, string? sep, long maxSplit)
    {
        var parts = new List<object?>();
        if (sep == null)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && parts.Count == maxSplit) { parts.Add(s[i..].TrimEnd()); break; }
                int j = i;
                while (j < s.Length && !char.IsWhiteSpace(s[j])) j++;
                parts.Add(s[i..j]);
                i = j;
            }
            return parts;
        }
        if (sep.Length == 0) throw new JinjaRuntimeException("split(): empty separator");
        int start = 0;
        while (maxSplit < 0 || parts.Count < maxSplit)
        {
            int k = s.IndexOf(sep, start, StringComparison.Ordinal);
            if (k < 0) break;
            parts.Add(s[start..k]);
            start = k + sep.Length;
        }
        parts.Add(s[start..]);
        return parts;
    }

    private static string Replace(string s, string old, string @new, long count)
    {
        if (count < 0) return old.Length == 0 ? Python.ReplaceEmpty(s, @new, -1) : s.Replace(old, @new, StringComparison.Ordinal);
        if (old.Length == 0) return Python.ReplaceEmpty(s, @new, count);
        var sb = new StringBuilder();
        int start = 0;
        for (long n = 0; n < count; n++)
        {
            int k = s.IndexOf(old, start, StringComparison.Ordinal);
            if (k < 0) break;
            sb.Append(s, start, k - start).Append(@new);
            start = k + old.Length;
        }
        return sb.Append(s, start, s.Length - start).ToString();
    }

    private static int CountOf(string s, string sub)
    {
        if (sub.Length == 0) return s.Length + 1;
        int n = 0, i = 0;
        while ((i = s.IndexOf(sub, i, StringComparison.Ordinal)) >= 0) { n++; i += sub.Length; }
        return n;
    }

    /// <summary>Python's str.title(): a letter after a non-letter is upper-cased, the others lower-cased.</summary>
    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            sb.Append(prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevCased = char.IsLetter(c);
        }
        return sb.ToString();
    }

    public static string Capitalize(string s) =>
        s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    private static class Python
    {
        // "ab".replace("", "-") == "-a-b-": the empty string matches between every character.
        public static string ReplaceEmpty(string s, string with, long count)
        {
            var sb = new StringBuilder();
            long n = 0;
            for (int i = 0; i <= s.Length; i++)
            {
                if (count < 0 || n < count) { sb.Append(with); n++; }
                if (i < s.Length) sb.Append(s[i]);
            }
            return sb.ToString();
        }
    }
}
