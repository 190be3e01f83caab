namespace FitLM.Chat.Jinja;

/// <summary>What a statement tells the enclosing loop: go on, break or continue (jinja2.ext.loopcontrols).</summary>
internal enum Flow { Normal, Break, Continue }

internal abstract class Stmt(int line)
{
    public int Line { get; } = line;

    public Flow Render(RenderContext ctx)
    {
        ctx.Step(Line);
        try { return Execute(ctx); }
        catch (JinjaRuntimeException e) when (!e.Located) { throw JinjaRuntimeException.At(Line, e.Message); }
        catch (OverflowException) { throw JinjaRuntimeException.At(Line, "integer overflow"); }
    }

    protected abstract Flow Execute(RenderContext ctx);

    public static Flow RenderAll(List<Stmt> body, RenderContext ctx)
    {
        foreach (var s in body)
        {
            var flow = s.Render(ctx);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }
}

internal sealed class DataStmt(int line, string text) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx) { ctx.Write(text, Line); return Flow.Normal; }
}

internal sealed class PrintStmt(int line, Expr expr) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx) { ctx.Write(JinjaOps.Str(expr.Eval(ctx)), Line); return Flow.Normal; }
}

internal sealed class IfStmt(int line, List<(Expr Test, List<Stmt> Body)> branches, List<Stmt>? otherwise) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx)
    {
        foreach (var (test, body) in branches)
            if (JinjaOps.Truthy(test.Eval(ctx))) return RenderAll(body, ctx);
        return otherwise != null ? RenderAll(otherwise, ctx) : Flow.Normal;
    }
}

internal sealed class ForStmt(int line, List<string> targets, Expr iterable, Expr? filter, List<Stmt> body, List<Stmt>? otherwise) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx)
    {
        var source = JinjaOps.Iterate(iterable.Eval(ctx));
        List<object?> items = source;
        if (filter != null)
        {
            // "for x in xs if cond": the condition sees only the loop variables, and loop.* counts what passes.
            items = new List<object?>();
            foreach (var item in source)
            {
                ctx.PushScope();
                try
                {
                    Bind(ctx, item);
                    if (JinjaOps.Truthy(filter.Eval(ctx))) items.Add(item);
                }
                finally { ctx.PopScope(); }
            }
        }
        if (items.Count == 0) return otherwise != null ? RenderAll(otherwise, ctx) : Flow.Normal;
        var loop = new LoopInfo(items);
        for (int i = 0; i < items.Count; i++)
        {
            ctx.Step(Line);
            loop.Index0 = i;
            ctx.PushScope();
            try
            {
                Bind(ctx, items[i]);
                ctx.Set("loop", loop);
                if (RenderAll(body, ctx) == Flow.Break) break;
            }
            finally { ctx.PopScope(); }
        }
        return Flow.Normal;
    }

    private void Bind(RenderContext ctx, object? item)
    {
        if (targets.Count == 1) { ctx.Set(targets[0], item); return; }
        var parts = JinjaOps.Iterate(item);
        if (parts.Count != targets.Count)
            throw new JinjaRuntimeException($"cannot unpack {parts.Count} values into {targets.Count} loop variables");
        for (int i = 0; i < targets.Count; i++) ctx.Set(targets[i], parts[i]);
    }
}

internal sealed class SetStmt(int line, List<string> targets, string? attribute, Expr value) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx)
    {
        var v = value.Eval(ctx);
        if (attribute != null)
        {
            var obj = ctx.Lookup(targets[0]);
            if (obj is not Namespace ns) throw new JinjaRuntimeException($"cannot assign attribute on non-namespace object '{targets[0]}'");
            ns.Attrs[attribute] = v;
        }
        else if (targets.Count == 1) ctx.Set(targets[0], v);
        else
        {
            var parts = JinjaOps.Iterate(v);
            if (parts.Count != targets.Count) throw new JinjaRuntimeException($"cannot unpack {parts.Count} values into {targets.Count} names");
            for (int i = 0; i < targets.Count; i++) ctx.Set(targets[i], parts[i]);
        }
        return Flow.Normal;
    }
}

/// <summary>{% set name %}...{% endset %}: captures the rendered body as a string.</summary>
internal sealed class SetBlockStmt(int line, string name, List<Stmt> body) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx)
    {
        int start = ctx.Output.Length;
        RenderAll(body, ctx);
        string captured = ctx.Output.ToString(start, ctx.Output.Length - start);
        ctx.Output.Length = start;
        ctx.Set(name, captured);
        return Flow.Normal;
    }
}

internal sealed class LoopControlStmt(int line, Flow flow) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx) => flow;
}

/// <summary>Hugging Face's {% generation %} marks assistant text for training masks; rendering just emits the body.</summary>
internal sealed class BlockStmt(int line, List<Stmt> body) : Stmt(line)
{
    protected override Flow Execute(RenderContext ctx) => RenderAll(body, ctx);
}
