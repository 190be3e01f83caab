namespace FitLM.Chat.Jinja;

/// <summary>An expression node; <see cref="Depth"/> bounds evaluation recursion (checked by the parser).</summary>
internal abstract class Expr(int line, params Expr?[] children)
{
    public int Line { get; } = line;
    public int Depth { get; } = 1 + children.Where(c => c != null).Select(c => c!.Depth).DefaultIfEmpty(0).Max();
    public abstract object? Eval(RenderContext ctx);
}

internal sealed class ConstExpr(int line, object? value) : Expr(line)
{
    public object? Value { get; } = value;
    public override object? Eval(RenderContext ctx) => Value;
}

internal sealed class NameExpr(int line, string name) : Expr(line)
{
    public string Name { get; } = name;
    public override object? Eval(RenderContext ctx) => ctx.Lookup(Name);
}

internal sealed class ListExpr(int line, List<Expr> items, bool tuple = false) : Expr(line, [.. items])
{
    public override object? Eval(RenderContext ctx)
    {
        var values = items.Select(i => i.Eval(ctx));
        return tuple ? new PyTuple(values) : values.ToList();
    }
}

internal sealed class DictExpr(int line, List<(Expr Key, Expr Value)> pairs) : Expr(line, [.. pairs.SelectMany(p => new[] { p.Key, p.Value })])
{
    public override object? Eval(RenderContext ctx)
    {
        var d = new OrderedDictionary<string, object?>();
        foreach (var (k, v) in pairs)
        {
            var key = k.Eval(ctx);
            d[key as string ?? JinjaOps.Str(key)] = v.Eval(ctx);
        }
        return d;
    }
}

internal sealed class GetAttrExpr(int line, Expr obj, string name) : Expr(line, obj)
{
    public Expr Obj { get; } = obj;
    public string Name { get; } = name;
    public override object? Eval(RenderContext ctx) => JinjaOps.GetAttr(Obj.Eval(ctx), Name);
}

internal sealed class GetItemExpr(int line, Expr obj, Expr key) : Expr(line, obj, key)
{
    public override object? Eval(RenderContext ctx) => JinjaOps.GetItem(obj.Eval(ctx), key.Eval(ctx));
}

internal sealed class SliceExpr(int line, Expr obj, Expr? start, Expr? stop, Expr? step) : Expr(line, obj, start, stop, step)
{
    public override object? Eval(RenderContext ctx) =>
        JinjaOps.Slice(obj.Eval(ctx), start?.Eval(ctx), stop?.Eval(ctx), step?.Eval(ctx));
}

/// <summary>Positional and keyword arguments of a call, filter or test.</summary>
internal sealed record CallArgs(List<Expr> Positional, List<(string Name, Expr Value)> Keywords)
{
    public static readonly CallArgs None = new([], []);
    public IEnumerable<Expr> All => Positional.Concat(Keywords.Select(k => k.Value));

    public (List<object?> Args, Dictionary<string, object?> Kwargs) Eval(RenderContext ctx) =>
        (Positional.Select(p => p.Eval(ctx)).ToList(), Keywords.ToDictionary(k => k.Name, k => k.Value.Eval(ctx)));
}

internal sealed class CallExpr(int line, Expr callee, CallArgs args) : Expr(line, [callee, .. args.All])
{
    public override object? Eval(RenderContext ctx)
    {
        if (callee is GetAttrExpr ga)
        {
            var obj = ga.Obj.Eval(ctx);
            if (obj is Undefined u) throw JinjaOps.UndefinedError(u);
            var (a, _) = args.Eval(ctx);
            if (JinjaMethods.TryCall(obj, ga.Name, a, out var result)) return result;
            return Invoke(JinjaOps.GetAttr(obj, ga.Name), ctx);
        }
        return Invoke(callee.Eval(ctx), ctx);
    }

    private object? Invoke(object? f, RenderContext ctx)
    {
        if (f is Undefined u) throw JinjaOps.UndefinedError(u);
        if (f is not JinjaFunction fn) throw new JinjaRuntimeException($"'{JinjaOps.TypeName(f)}' object is not callable");
        var (a, kw) = args.Eval(ctx);
        return fn(a, kw);
    }
}

internal sealed class FilterExpr(int line, Expr value, string name, CallArgs args) : Expr(line, [value, .. args.All])
{
    public override object? Eval(RenderContext ctx)
    {
        var v = value.Eval(ctx);
        var (a, kw) = args.Eval(ctx);
        return JinjaFilters.Apply(name, v, a, kw, ctx.Limits.MaxOutputChars);
    }
}

internal sealed class TestExpr(int line, Expr value, string name, List<Expr> args, bool negated) : Expr(line, [value, .. args])
{
    public override object? Eval(RenderContext ctx)
    {
        bool r = JinjaTests.Apply(name, value.Eval(ctx), args.Select(a => a.Eval(ctx)).ToList());
        return negated ? !r : r;
    }
}

internal sealed class NotExpr(int line, Expr operand) : Expr(line, operand)
{
    public override object? Eval(RenderContext ctx) => !JinjaOps.Truthy(operand.Eval(ctx));
}

internal sealed class NegExpr(int line, Expr operand, bool negate) : Expr(line, operand)
{
    public override object? Eval(RenderContext ctx)
    {
        var v = operand.Eval(ctx);
        if (v is Undefined u) throw JinjaOps.UndefinedError(u);
        return v switch
        {
            long l => (object)(negate ? -l : l),
            double d => negate ? -d : d,
            bool b => negate ? -(b ? 1L : 0L) : (b ? 1L : 0L),
            _ => throw new JinjaRuntimeException($"bad operand type for unary {(negate ? "-" : "+")}: '{JinjaOps.TypeName(v)}'"),
        };
    }
}

/// <summary>and/or return an operand, as in Python (a or b is a when a is truthy).</summary>
internal sealed class LogicExpr(int line, bool isAnd, Expr left, Expr right) : Expr(line, left, right)
{
    public override object? Eval(RenderContext ctx)
    {
        var l = left.Eval(ctx);
        return JinjaOps.Truthy(l) == isAnd ? right.Eval(ctx) : l;
    }
}

internal sealed class BinaryExpr(int line, string op, Expr left, Expr right) : Expr(line, left, right)
{
    public override object? Eval(RenderContext ctx)
    {
        var l = left.Eval(ctx);
        var r = right.Eval(ctx);
        if (op == "~")
        {
            string s = JinjaOps.Str(l) + JinjaOps.Str(r);
            if (s.Length > ctx.Limits.MaxOutputChars) throw new JinjaRuntimeException("chat template output is too long");
            return s;
        }
        return JinjaOps.Binary(op, l, r, ctx.Limits.MaxOutputChars);
    }
}

/// <summary>A comparison chain: a &lt; b &lt;= c means a &lt; b and b &lt;= c.</summary>
internal sealed class CompareExpr(int line, Expr first, List<(string Op, Expr Operand)> rest) : Expr(line, [first, .. rest.Select(r => r.Operand)])
{
    public override object? Eval(RenderContext ctx)
    {
        var left = first.Eval(ctx);
        foreach (var (op, operand) in rest)
        {
            var right = operand.Eval(ctx);
            bool ok = op switch
            {
                "==" => JinjaOps.Equals(left, right),
                "!=" => !JinjaOps.Equals(left, right),
                "<" => JinjaOps.Compare(left, right, op) < 0,
                "<=" => JinjaOps.Compare(left, right, op) <= 0,
                ">" => JinjaOps.Compare(left, right, op) > 0,
                ">=" => JinjaOps.Compare(left, right, op) >= 0,
                "in" => JinjaOps.Contains(right, left),
                "notin" => !JinjaOps.Contains(right, left),
                _ => throw new InvalidOperationException(op),
            };
            if (!ok) return false;
            left = right;
        }
        return true;
    }
}

internal sealed class CondExpr(int line, Expr test, Expr then, Expr? otherwise) : Expr(line, test, then, otherwise)
{
    public override object? Eval(RenderContext ctx) =>
        JinjaOps.Truthy(test.Eval(ctx)) ? then.Eval(ctx)
        : otherwise != null ? otherwise.Eval(ctx) : new Undefined("the conditional expression's condition was false and it has no else");
}
