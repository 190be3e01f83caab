namespace FitLM.Chat.Jinja;

/// <summary>
/// jinja2's default Undefined: falsy, renders empty, iterates as nothing; attribute access, arithmetic and
/// JSON on it fail. <see cref="Hint"/> says what was missing, for the error message.
/// </summary>
internal sealed class Undefined
{
    public string Hint { get; }
    public Undefined(string hint) => Hint = hint;
    public override string ToString() => "";
}

/// <summary>jinja2's namespace(): the one object whose attributes a template may assign, across loop scopes.</summary>
internal sealed class Namespace
{
    public OrderedDictionary<string, object?> Attrs { get; } = new();
}

/// <summary>A callable value: globals (range, namespace, raise_exception, ...) and bound methods such as loop.cycle.</summary>
internal delegate object? JinjaFunction(List<object?> args, Dictionary<string, object?> kwargs);

/// <summary>The 'loop' variable inside a for block.</summary>
internal sealed class LoopInfo(List<object?> items)
{
    public int Index0 { get; set; }

    public object? Get(string name) => name switch
    {
        "index0" => (long)Index0,
        "index" => (long)Index0 + 1,
        "revindex" => (long)(items.Count - Index0),
        "revindex0" => (long)(items.Count - Index0 - 1),
        "first" => Index0 == 0,
        "last" => Index0 == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => Index0 > 0 ? items[Index0 - 1] : new Undefined("there is no previous item"),
        "nextitem" => Index0 + 1 < items.Count ? items[Index0 + 1] : new Undefined("there is no next item"),
        "cycle" => new JinjaFunction((args, _) =>
            args.Count == 0 ? throw new JinjaRuntimeException("loop.cycle() needs at least one value") : args[Index0 % args.Count]),
        _ => new Undefined($"loop has no attribute '{name}'"),
    };
}

/// <summary>A Python tuple: behaves as a list but prints as (a, b), as dict.items() pairs and (a, b) literals do.</summary>
internal sealed class PyTuple : List<object?>
{
    public PyTuple() { }
    public PyTuple(IEnumerable<object?> items) : base(items) { }
}
