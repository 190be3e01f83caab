using System.Text.Json;

namespace FitLM.Chat.Jinja;

/// <summary>
/// A parsed jinja2 template rendered with the environment Hugging Face's apply_chat_template uses:
/// trim_blocks, lstrip_blocks, loop controls, tojson as json.dumps, raise_exception and strftime_now.
/// </summary>
internal sealed class JinjaTemplate
{
    private readonly List<Stmt> _body;
    private readonly JinjaLimits _limits;

    public JinjaTemplate(string source, JinjaLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        _limits = limits ?? new JinjaLimits();
        _body = JinjaParser.Parse(source, _limits);
    }

    /// <summary>Renders with <paramref name="vars"/> as the template's variables; <paramref name="now"/> is strftime_now's clock.</summary>
    public string Render(IReadOnlyDictionary<string, object?> vars, Func<DateTime>? now = null)
    {
        var ctx = new RenderContext(Globals(now ?? (() => DateTime.Now), _limits), vars, _limits);
        Stmt.RenderAll(_body, ctx);
        return ctx.Output.ToString();
    }

    private static Dictionary<string, object?> Globals(Func<DateTime> now, JinjaLimits limits) => new()
    {
        ["raise_exception"] = new JinjaFunction((args, _) =>
            throw new JinjaRuntimeException(args.Count > 0 ? JinjaOps.Str(args[0]) : "raise_exception() called")),
        ["strftime_now"] = new JinjaFunction((args, _) =>
            JinjaStrftime.Format(now(), args.Count > 0 ? JinjaOps.Str(args[0]) : throw new JinjaRuntimeException("strftime_now() needs a format"))),
        ["range"] = new JinjaFunction((args, _) => Range(args, limits.MaxRange)),
        ["namespace"] = new JinjaFunction((args, kw) =>
        {
            var ns = new Namespace();
            if (args.Count > 0 && args[0] is OrderedDictionary<string, object?> init) foreach (var kv in init) ns.Attrs[kv.Key] = kv.Value;
            foreach (var kv in kw) ns.Attrs[kv.Key] = kv.Value;
            return ns;
        }),
        ["dict"] = new JinjaFunction((args, kw) =>
        {
            var d = new OrderedDictionary<string, object?>();
            if (args.Count > 0 && args[0] is OrderedDictionary<string, object?> init) foreach (var kv in init) d[kv.Key] = kv.Value;
            foreach (var kv in kw) d[kv.Key] = kv.Value;
            return d;
        }),
    };

    private static List<object?> Range(List<object?> args, int max)
    {
        if (args.Count is 0 or > 3 || args.Any(a => a is not long)) throw new JinjaRuntimeException("range() takes 1 to 3 integers");
        long start = args.Count == 1 ? 0 : (long)args[0]!;
        long stop = args.Count == 1 ? (long)args[0]! : (long)args[1]!;
        long step = args.Count == 3 ? (long)args[2]! : 1;
        if (step == 0) throw new JinjaRuntimeException("range() step must not be zero");
        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (list.Count >= max) throw new JinjaRuntimeException($"range() is longer than {max} items");
            list.Add(i);
        }
        return list;
    }

    /// <summary>Converts JSON (messages, tools) into template values: objects keep their key order, numbers stay int or float.</summary>
    public static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().Aggregate(new OrderedDictionary<string, object?>(), (d, p) => { d[p.Name] = FromJson(p.Value); return d; }),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out var l) && !e.GetRawText().Contains('.') && !e.GetRawText().Contains('e') && !e.GetRawText().Contains('E') ? l : (object)e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };
}
