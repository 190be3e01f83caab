using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>Limits that keep a hostile template from exhausting memory or time.</summary>
internal sealed record JinjaLimits
{
    /// <summary>Characters a render may produce (and the longest string it may build).</summary>
    public int MaxOutputChars { get; init; } = 4 << 20;
    /// <summary>Statements and loop iterations a render may execute.</summary>
    public long MaxSteps { get; init; } = 1_000_000;
    /// <summary>Nesting depth of expressions and blocks accepted by the parser.</summary>
    public int MaxDepth { get; init; } = 200;
    /// <summary>Longest list range() may build.</summary>
    public int MaxRange { get; init; } = 1_000_000;
}

/// <summary>Variables, scopes and output of one render.</summary>
internal sealed class RenderContext
{
    private readonly IReadOnlyDictionary<string, object?> _globals;
    private readonly List<Dictionary<string, object?>> _scopes = new();
    private long _steps;

    public StringBuilder Output { get; } = new();
    public JinjaLimits Limits { get; }

    public RenderContext(IReadOnlyDictionary<string, object?> globals, IReadOnlyDictionary<string, object?> vars, JinjaLimits limits)
    {
        _globals = globals;
        Limits = limits;
        _scopes.Add(new Dictionary<string, object?>(vars));
    }

    public object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var v)) return v;
        return _globals.TryGetValue(name, out var g) ? g : new Undefined($"'{name}' is undefined");
    }

    public void Set(string name, object? value) => _scopes[^1][name] = value;

    /// <summary>A for-loop iteration's scope: assignments in it do not outlive the iteration (jinja2 semantics).</summary>
    public void PushScope() => _scopes.Add(new Dictionary<string, object?>());
    public void PopScope() => _scopes.RemoveAt(_scopes.Count - 1);

    public void Step(int line)
    {
        if (++_steps > Limits.MaxSteps) throw JinjaRuntimeException.At(line, $"the template ran more than {Limits.MaxSteps} steps");
    }

    public void Write(string s, int line)
    {
        if (Output.Length + (long)s.Length > Limits.MaxOutputChars)
            throw JinjaRuntimeException.At(line, $"the rendered prompt exceeds {Limits.MaxOutputChars} characters");
        Output.Append(s);
    }
}
