namespace FitLM.Chat.Jinja;

/// <summary>jinja2's tests (x is defined, x is none, x is string, x is equalto y, ...).</summary>
internal static class JinjaTests
{
    public static readonly HashSet<string> Names =
    [
        "defined", "undefined", "none", "boolean", "true", "false", "string", "number", "integer", "float", "mapping",
        "iterable", "sequence", "callable", "equalto", "eq", "==", "ne", "!=", "lt", "<", "le", "<=", "gt", ">", "ge", ">=",
        "in", "sameas", "odd", "even", "divisibleby", "lower", "upper",
    ];

    public static bool Apply(string name, object? v, List<object?> args)
    {
        object? Arg(int i) => i < args.Count ? args[i] : throw new JinjaRuntimeException($"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return v is not Undefined;
            case "undefined": return v is Undefined;
            case "none": return v is null;
            case "boolean": return v is bool;
            case "true": return v is true;
            case "false": return v is false;
            case "string": return v is string;
            case "number": return v is long or double;
            case "integer": return v is long;
            case "float": return v is double;
            case "mapping": return v is OrderedDictionary<string, object?>;
            // Python strings and jinja2's Undefined are iterable too, which templates rely on.
            case "iterable": return v is string or List<object?> or OrderedDictionary<string, object?> or Undefined;
            case "sequence": return v is string or List<object?> or OrderedDictionary<string, object?> or Undefined;
            case "callable": return v is JinjaFunction;
            case "equalto" or "eq" or "==": return JinjaOps.Equals(v, Arg(0));
            case "ne" or "!=": return !JinjaOps.Equals(v, Arg(0));
            case "lt" or "<": return JinjaOps.Compare(v, Arg(0), "<") < 0;
            case "le" or "<=": return JinjaOps.Compare(v, Arg(0), "<=") <= 0;
            case "gt" or ">": return JinjaOps.Compare(v, Arg(0), ">") > 0;
            case "ge" or ">=": return JinjaOps.Compare(v, Arg(0), ">=") >= 0;
            case "in": return JinjaOps.Contains(Arg(0), v);
            case "sameas": return v is null or bool or long ? JinjaOps.Equals(v, Arg(0)) && JinjaOps.TypeName(v) == JinjaOps.TypeName(Arg(0)) : ReferenceEquals(v, Arg(0)) || v is string && Equals(v, Arg(0));
            case "odd": return v is long o ? o % 2 != 0 : throw new JinjaRuntimeException("test 'odd' needs an integer");
            case "even": return v is long e ? e % 2 == 0 : throw new JinjaRuntimeException("test 'even' needs an integer");
            case "divisibleby": return v is long a && Arg(0) is long b && b != 0 ? a % b == 0 : throw new JinjaRuntimeException("test 'divisibleby' needs integers");
            case "lower": return v is string s && string.Equals(s, s.ToLowerInvariant(), StringComparison.Ordinal);
            case "upper": return v is string u && string.Equals(u, u.ToUpperInvariant(), StringComparison.Ordinal);
            default: throw new JinjaRuntimeException($"no test named '{name}'");
        }
    }
}
