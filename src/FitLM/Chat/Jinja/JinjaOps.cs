using System.Globalization;
using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>
/// Python semantics for template values: ints are long, floats double, strings, bools, null (None),
/// List&lt;object?&gt; (list/tuple), OrderedDictionary&lt;string, object?&gt; (dict), <see cref="Undefined"/>,
/// <see cref="Namespace"/>, <see cref="LoopInfo"/>, <see cref="JinjaFunction"/>. Templates are Python code in
/// disguise, so truthiness, str(), ==, +, //, % and friends follow Python exactly.
/// </summary>
internal static class JinjaOps
{
    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        PyTuple => "tuple",
        List<object?> => "list",
        OrderedDictionary<string, object?> => "dict",
        Undefined => "Undefined",
        Namespace => "Namespace",
        LoopInfo => "LoopContext",
        JinjaFunction => "function",
        _ => v.GetType().Name,
    };

    public static JinjaRuntimeException UndefinedError(Undefined u) => new(u.Hint);

    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        OrderedDictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's str().</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        Undefined => "",
        _ => Repr(v),
    };

    /// <summary>Python's repr() (what str() gives for lists and dicts).</summary>
    public static string Repr(object? v)
    {
        var sb = new StringBuilder();
        AppendRepr(sb, v, 0);
        return sb.ToString();
    }

    private static void AppendRepr(StringBuilder sb, object? v, int depth)
    {
        if (depth > 100) throw new JinjaRuntimeException("chat template: value nested too deeply to print");
        switch (v)
        {
            case null: sb.Append("None"); break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(FloatRepr(d)); break;
            case string s: AppendStringRepr(sb, s); break;
            case Undefined: break;
            case List<object?> list:
                bool tuple = list is PyTuple;
                sb.Append(tuple ? '(' : '[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    AppendRepr(sb, list[i], depth + 1);
                }
                if (tuple && list.Count == 1) sb.Append(',');
                sb.Append(tuple ? ')' : ']');
                break;
            case OrderedDictionary<string, object?> dict:
                sb.Append('{');
                int n = 0;
                foreach (var kv in dict)
                {
                    if (n++ > 0) sb.Append(", ");
                    AppendStringRepr(sb, kv.Key);
                    sb.Append(": ");
                    AppendRepr(sb, kv.Value, depth + 1);
                }
                sb.Append('}');
                break;
            case Namespace: sb.Append("<Namespace>"); break;
            default: sb.Append('<').Append(TypeName(v)).Append('>'); break;
        }
    }

    private static void AppendStringRepr(StringBuilder sb, string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(q);
        foreach (char c in s)
        {
            if (c == q || c == '\\') sb.Append('\\').Append(c);
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c == '\t') sb.Append("\\t");
            else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
            else sb.Append(c);
        }
        sb.Append(q);
    }

    /// <summary>Python's float repr: shortest round-trip digits, exponent form outside 1e-4 .. 1e16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        // Shortest round-trip digits: "R" gives them, in a layout we normalize.
        string shortest = d.ToString("R", CultureInfo.InvariantCulture);
        bool neg = shortest[0] == '-';
        if (neg) shortest = shortest[1..];
        int exp = 0;
        int e = shortest.IndexOfAny(['E', 'e']);
        if (e >= 0)
        {
            exp = int.Parse(shortest[(e + 1)..], CultureInfo.InvariantCulture);
            shortest = shortest[..e];
        }
        int dot = shortest.IndexOf('.');
        string digits = dot >= 0 ? shortest.Remove(dot, 1) : shortest;
        int intLen = dot >= 0 ? dot : shortest.Length;
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') { lead++; }
        digits = digits[lead..];
        int decpt = intLen - lead + exp; // value = 0.digits * 10^decpt
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var sb = new StringBuilder();
        if (neg) sb.Append('-');
        if (decpt > 16 || decpt < -3)
        {
            sb.Append(digits[0]);
            if (digits.Length > 1) sb.Append('.').Append(digits, 1, digits.Length - 1);
            int x = decpt - 1;
            sb.Append('e').Append(x < 0 ? '-' : '+').Append(Math.Abs(x).ToString("00", CultureInfo.InvariantCulture));
        }
        else if (decpt <= 0)
        {
            sb.Append("0.").Append('0', -decpt).Append(digits);
        }
        else if (decpt >= digits.Length)
        {
            sb.Append(digits).Append('0', decpt - digits.Length).Append(".0");
        }
        else
        {
            sb.Append(digits, 0, decpt).Append('.').Append(digits, decpt, digits.Length - decpt);
        }
        return sb.ToString();
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    private static double AsDouble(object? v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => throw new InvalidOperationException() };
    private static long AsLong(object? v) => v switch { long l => l, bool b => b ? 1 : 0, _ => throw new InvalidOperationException() };
    private static bool BothInts(object? a, object? b) => a is long or bool && b is long or bool;

    public static new bool Equals(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b)) return BothInts(a, b) ? AsLong(a) == AsLong(b) : AsDouble(a) == AsDouble(b);
        switch (a)
        {
            case null: return b is null;
            case string s: return b is string t && s == t;
            case Undefined: return b is Undefined;
            case List<object?> l:
                if (b is not List<object?> m || m.Count != l.Count || (l is PyTuple) != (m is PyTuple)) return false;
                for (int i = 0; i < l.Count; i++) if (!Equals(l[i], m[i])) return false;
                return true;
            case OrderedDictionary<string, object?> d:
                if (b is not OrderedDictionary<string, object?> e || e.Count != d.Count) return false;
                foreach (var kv in d)
                    if (!e.TryGetValue(kv.Key, out var other) || !Equals(kv.Value, other)) return false;
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    /// <summary>Python ordering (&lt;, &gt;, ...): numbers, strings and lists; anything else is a TypeError.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (IsNumber(a) && IsNumber(b)) return BothInts(a, b) ? AsLong(a).CompareTo(AsLong(b)) : AsDouble(a).CompareTo(AsDouble(b));
        if (a is string s && b is string t) return Math.Sign(string.CompareOrdinal(s, t));
        if (a is List<object?> l && b is List<object?> m)
        {
            for (int i = 0; i < Math.Min(l.Count, m.Count); i++)
                if (!Equals(l[i], m[i])) return Compare(l[i], m[i], op);
            return l.Count.CompareTo(m.Count);
        }
        if (a is Undefined u) throw UndefinedError(u);
        if (b is Undefined v) throw UndefinedError(v);
        throw new JinjaRuntimeException($"'{op}' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static object? Binary(string op, object? a, object? b, int maxString)
    {
        if (a is Undefined ua) throw UndefinedError(ua);
        if (b is Undefined ub) throw UndefinedError(ub);
        if (IsNumber(a) && IsNumber(b))
        {
            bool ints = BothInts(a, b);
            switch (op)
            {
                case "+": return ints ? checked(AsLong(a) + AsLong(b)) : (object)(AsDouble(a) + AsDouble(b));
                case "-": return ints ? checked(AsLong(a) - AsLong(b)) : (object)(AsDouble(a) - AsDouble(b));
                case "*": return ints ? checked(AsLong(a) * AsLong(b)) : (object)(AsDouble(a) * AsDouble(b));
                case "/":
                    if (AsDouble(b) == 0) throw new JinjaRuntimeException("division by zero");
                    return AsDouble(a) / AsDouble(b);
                case "//":
                    if (AsDouble(b) == 0) throw new JinjaRuntimeException("integer division or modulo by zero");
                    if (ints) { long x = AsLong(a), y = AsLong(b); long q = x / y; if ((x % y != 0) && ((x < 0) != (y < 0))) q--; return q; }
                    return Math.Floor(AsDouble(a) / AsDouble(b));
                case "%":
                    if (AsDouble(b) == 0) throw new JinjaRuntimeException("integer division or modulo by zero");
                    if (ints) { long x = AsLong(a), y = AsLong(b); long r = x % y; if (r != 0 && ((r < 0) != (y < 0))) r += y; return r; }
                    { double x = AsDouble(a), y = AsDouble(b); double r = x % y; if (r != 0 && ((r < 0) != (y < 0))) r += y; return r; }
                case "**":
                    if (ints && AsLong(b) >= 0)
                    {
                        long result = 1, bas = AsLong(a);
                        for (long i = 0; i < AsLong(b); i++) { result = checked(result * bas); if (result == 0 || result == 1 && bas == 1) break; }
                        return result;
                    }
                    return Math.Pow(AsDouble(a), AsDouble(b));
            }
        }
        if (op == "+" && a is string s1 && b is string s2)
        {
            if ((long)s1.Length + s2.Length > maxString) throw new JinjaRuntimeException("chat template output is too long");
            return s1 + s2;
        }
        if (op == "+" && a is List<object?> l1 && b is List<object?> l2)
        {
            if ((l1 is PyTuple) != (l2 is PyTuple)) throw new JinjaRuntimeException($"can only concatenate {TypeName(a)} (not \"{TypeName(b)}\") to {TypeName(a)}");
            return l1 is PyTuple ? new PyTuple(l1.Concat(l2)) : new List<object?>(l1.Concat(l2));
        }
        if (op == "*" && (a is string || b is string) && (a is long || b is long))
        {
            string s = a as string ?? (string)b!;
            long n = a is long x ? x : (long)b!;
            if (n <= 0) return "";
            if (s.Length * n > maxString) throw new JinjaRuntimeException("chat template output is too long");
            return new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
        }
        throw new JinjaRuntimeException($"unsupported operand type(s) for {op}: '{TypeName(a)}' and '{TypeName(b)}'");
    }

    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string t ? s.Contains(t, StringComparison.Ordinal)
            : throw new JinjaRuntimeException($"'in <string>' requires string as left operand, not {TypeName(item)}"),
        List<object?> l => l.Any(x => Equals(x, item)),
        OrderedDictionary<string, object?> d => item is string k && d.ContainsKey(k),
        Undefined u => throw UndefinedError(u),
        _ => throw new JinjaRuntimeException($"argument of type '{TypeName(container)}' is not iterable"),
    };

    /// <summary>Python's iteration: lists, dict keys, string characters; Undefined iterates as empty.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        OrderedDictionary<string, object?> d => d.Keys.Cast<object?>().ToList(),
        string s => Chars(s).Cast<object?>().ToList(),
        Undefined => [],
        _ => throw new JinjaRuntimeException($"'{TypeName(v)}' object is not iterable"),
    };

    /// <summary>A string's characters as Python sees them: code points, not UTF-16 units.</summary>
    public static List<string> Chars(string s)
    {
        var list = new List<string>(s.Length);
        foreach (var r in s.EnumerateRunes()) list.Add(r.ToString());
        return list;
    }

    private static bool HasSurrogates(string s) => s.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') >= 0;

    public static long Length(object? v) => v switch
    {
        string s => HasSurrogates(s) ? Chars(s).Count : s.Length,
        List<object?> l => l.Count,
        OrderedDictionary<string, object?> d => d.Count,
        Undefined => 0,
        _ => throw new JinjaRuntimeException($"object of type '{TypeName(v)}' has no len()"),
    };

    /// <summary>jinja2's obj.name: the attribute, else the item of that name, else Undefined.</summary>
    public static object? GetAttr(object? obj, string name) => obj switch
    {
        Undefined u => throw UndefinedError(u),
        OrderedDictionary<string, object?> d => d.TryGetValue(name, out var v) ? v : new Undefined($"'dict object' has no attribute '{name}'"),
        Namespace ns => ns.Attrs.TryGetValue(name, out var v) ? v : new Undefined($"'Namespace object' has no attribute '{name}'"),
        LoopInfo loop => loop.Get(name),
        null => new Undefined($"'None' has no attribute '{name}'"),
        _ => new Undefined($"'{TypeName(obj)} object' has no attribute '{name}'"),
    };

    /// <summary>jinja2's obj[key]: the item, else the attribute of that name, else Undefined.</summary>
    public static object? GetItem(object? obj, object? key)
    {
        if (obj is Undefined u) throw UndefinedError(u);
        if (key is long or bool && obj is List<object?> or string)
        {
            long i = key is bool b ? (b ? 1 : 0) : (long)key;
            if (obj is List<object?> l)
            {
                if (i < 0) i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new Undefined($"list object has no element {key}");
            }
            var chars = Chars((string)obj);
            if (i < 0) i += chars.Count;
            return i >= 0 && i < chars.Count ? chars[(int)i] : new Undefined($"str object has no element {key}");
        }
        if (obj is OrderedDictionary<string, object?> d)
            return key is string k && d.TryGetValue(k, out var v) ? v : new Undefined($"'dict object' has no attribute '{Str(key)}'");
        if (key is string name) return GetAttr(obj, name);
        return new Undefined($"'{TypeName(obj)} object' has no element {Repr(key)}");
    }

    /// <summary>Python slicing obj[start:stop:step] of a list or string.</summary>
    public static object? Slice(object? obj, object? start, object? stop, object? step)
    {
        if (obj is Undefined u) throw UndefinedError(u);
        long st = step is null or Undefined ? 1 : step is long s ? s : throw new JinjaRuntimeException("slice indices must be integers");
        if (st == 0) throw new JinjaRuntimeException("slice step cannot be zero");
        IReadOnlyList<object?> items = obj switch
        {
            List<object?> l => l,
            string str => Chars(str),
            _ => throw new JinjaRuntimeException($"'{TypeName(obj)}' object is not subscriptable"),
        };
        int n = items.Count;
        long Bound(object? v, long dflt, bool isStart)
        {
            if (v is null or Undefined) return dflt;
            if (v is not long x) throw new JinjaRuntimeException("slice indices must be integers");
            if (x < 0) { x += n; if (x < 0) x = st < 0 ? -1 : 0; }
            else if (x >= n) x = st < 0 ? n - 1 : n;
            return x;
        }
        long lo = Bound(start, st < 0 ? n - 1 : 0, true);
        long hi = Bound(stop, st < 0 ? -1 : n, false);
        var picked = new List<object?>();
        if (st > 0) for (long i = lo; i < hi; i += st) picked.Add(items[(int)i]);
        else for (long i = lo; i > hi; i += st) picked.Add(items[(int)i]);
        if (obj is string) return string.Concat(picked.Cast<string>());
        return obj is PyTuple ? new PyTuple(picked) : picked;
    }
}
