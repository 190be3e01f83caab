namespace FitLM.Chat.Jinja;

/// <summary>
/// Recursive-descent parser for the jinja2 subset chat templates use, with jinja2's operator precedence
/// (filters and tests bind tighter than arithmetic: 'a' + x | trim is 'a' + (x | trim)).
/// </summary>
internal sealed class JinjaParser
{
    private readonly List<Token> _t;
    private readonly JinjaLimits _limits;
    private int _i;
    private int _blockDepth;
    private int _loopDepth;

    private JinjaParser(List<Token> tokens, JinjaLimits limits)
    {
        _t = tokens;
        _limits = limits;
    }

    public static List<Stmt> Parse(string source, JinjaLimits limits)
    {
        var p = new JinjaParser(JinjaLexer.Tokenize(source), limits);
        var body = p.ParseBody([], out _);
        return body;
    }

    private Token Cur => _t[_i];
    private Token Peek(int k = 1) => _t[Math.Min(_i + k, _t.Count - 1)];
    private Token Next() => _t[_i++];

    private JinjaSyntaxException Error(Token at, string message) => new(at.Line, at.Col, message);

    private Token Expect(TokenKind kind, string? text, string what)
    {
        var t = Cur;
        if (t.Kind != kind || text != null && t.Text != text) throw Error(t, $"expected {what}, got {t.Describe()}");
        return Next();
    }

    private void ExpectBlockEnd() => Expect(TokenKind.BlockEnd, null, "'%}'");

    /// <summary>Parses statements until a block tag named in <paramref name="enders"/>; returns with that tag's name consumed.</summary>
    private List<Stmt> ParseBody(string[] enders, out string? ender)
    {
        if (++_blockDepth > _limits.MaxDepth) throw Error(Cur, "blocks nested too deeply");
        var body = new List<Stmt>();
        while (true)
        {
            var t = Cur;
            switch (t.Kind)
            {
                case TokenKind.End:
                    if (enders.Length > 0) throw Error(t, $"unexpected end of template: expected '{{% {string.Join("' or '{% ", enders)} %}}'");
                    ender = null;
                    _blockDepth--;
                    return body;
                case TokenKind.Data:
                    Next();
                    body.Add(new DataStmt(t.Line, t.Text));
                    break;
                case TokenKind.VariableBegin:
                    Next();
                    var e = ParseExpression();
                    Expect(TokenKind.VariableEnd, null, "'}}'");
                    body.Add(new PrintStmt(t.Line, e));
                    break;
                case TokenKind.BlockBegin:
                    var name = Peek();
                    if (name.Kind != TokenKind.Name) throw Error(name, $"expected a statement name, got {name.Describe()}");
                    if (enders.Contains(name.Text))
                    {
                        _i += 2;
                        ender = name.Text;
                        _blockDepth--;
                        return body;
                    }
                    _i += 2;
                    body.Add(ParseStatement(name));
                    break;
                default:
                    throw Error(t, $"unexpected {t.Describe()}");
            }
        }
    }

    private Stmt ParseStatement(Token name)
    {
        switch (name.Text)
        {
            case "if": return ParseIf(name);
            case "for": return ParseFor(name);
            case "set": return ParseSet(name);
            case "break" or "continue":
                if (_loopDepth == 0) throw Error(name, $"'{name.Text}' outside a loop");
                ExpectBlockEnd();
                return new LoopControlStmt(name.Line, name.Text == "break" ? Flow.Break : Flow.Continue);
            case "generation":
                {
                    ExpectBlockEnd();
                    var body = ParseBody(["endgeneration"], out _);
                    ExpectBlockEnd();
                    return new BlockStmt(name.Line, body);
                }
            case "endif" or "endfor" or "endset" or "else" or "elif" or "endgeneration" or "endmacro":
                throw Error(name, $"unexpected '{name.Text}' (no open block for it)");
            default:
                throw Error(name, $"unknown or unsupported tag '{name.Text}'");
        }
    }

    private Stmt ParseIf(Token start)
    {
        var branches = new List<(Expr, List<Stmt>)>();
        List<Stmt>? otherwise = null;
        var test = ParseExpression();
        ExpectBlockEnd();
        while (true)
        {
            var body = ParseBody(["elif", "else", "endif"], out var ender);
            branches.Add((test, body));
            if (ender == "elif")
            {
                test = ParseExpression();
                ExpectBlockEnd();
                continue;
            }
            if (ender == "else")
            {
                ExpectBlockEnd();
                otherwise = ParseBody(["endif"], out _);
            }
            ExpectBlockEnd();
            return new IfStmt(start.Line, branches, otherwise);
        }
    }

    private Stmt ParseFor(Token start)
    {
        var targets = ParseTargets();
        if (!Cur.IsName("in")) throw Error(Cur, $"expected 'in', got {Cur.Describe()}");
        Next();
        var iterable = ParseExpression(withCondition: false);
        Expr? filter = null;
        if (Cur.IsName("if"))
        {
            Next();
            filter = ParseExpression(withCondition: false);
        }
        if (Cur.IsName("recursive")) throw Error(Cur, "recursive loops are not supported");
        ExpectBlockEnd();
        _loopDepth++;
        var body = ParseBody(["else", "endfor"], out var ender);
        _loopDepth--;
        List<Stmt>? otherwise = null;
        if (ender == "else")
        {
            ExpectBlockEnd();
            otherwise = ParseBody(["endfor"], out _);
        }
        ExpectBlockEnd();
        return new ForStmt(start.Line, targets, iterable, filter, body, otherwise);
    }

    private List<string> ParseTargets()
    {
        var names = new List<string>();
        bool paren = Cur.IsOp("(");
        if (paren) Next();
        while (true)
        {
            names.Add(Expect(TokenKind.Name, null, "a variable name").Text);
            if (!Cur.IsOp(",")) break;
            Next();
        }
        if (paren) Expect(TokenKind.Operator, ")", "')'");
        return names;
    }

    private Stmt ParseSet(Token start)
    {
        var first = Expect(TokenKind.Name, null, "a variable name");
        if (Cur.IsOp("."))
        {
            Next();
            var attr = Expect(TokenKind.Name, null, "an attribute name");
            Expect(TokenKind.Operator, "=", "'='");
            var v = ParseExpression();
            ExpectBlockEnd();
            return new SetStmt(start.Line, [first.Text], attr.Text, v);
        }
        var targets = new List<string> { first.Text };
        while (Cur.IsOp(","))
        {
            Next();
            targets.Add(Expect(TokenKind.Name, null, "a variable name").Text);
        }
        if (Cur.Kind == TokenKind.BlockEnd && targets.Count == 1)
        {
            Next();
            var body = ParseBody(["endset"], out _);
            ExpectBlockEnd();
            return new SetBlockStmt(start.Line, first.Text, body);
        }
        Expect(TokenKind.Operator, "=", "'='");
        var value = ParseTupleOrExpression();
        ExpectBlockEnd();
        return new SetStmt(start.Line, targets, null, value);
    }

    // ---------------------------------------------------------------- expressions

    private Expr Checked(Expr e)
    {
        if (e.Depth > _limits.MaxDepth) throw new JinjaSyntaxException(e.Line, 1, "expression nested too deeply");
        return e;
    }

    /// <summary>"a, b" (a tuple, as a list) or a single expression.</summary>
    private Expr ParseTupleOrExpression()
    {
        var first = ParseExpression();
        if (!Cur.IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (Cur.IsOp(","))
        {
            Next();
            if (Cur.Kind == TokenKind.BlockEnd) break;
            items.Add(ParseExpression());
        }
        return Checked(new ListExpr(first.Line, items, tuple: true));
    }

    private Expr ParseExpression(bool withCondition = true)
    {
        var e = ParseOr();
        if (withCondition && Cur.IsName("if"))
        {
            Next();
            var test = ParseOr();
            Expr? otherwise = null;
            if (Cur.IsName("else"))
            {
                Next();
                otherwise = ParseExpression();
            }
            e = Checked(new CondExpr(e.Line, test, e, otherwise));
        }
        return e;
    }

    private Expr ParseOr()
    {
        var e = ParseAnd();
        while (Cur.IsName("or")) { Next(); e = Checked(new LogicExpr(e.Line, false, e, ParseAnd())); }
        return e;
    }

    private Expr ParseAnd()
    {
        var e = ParseNot();
        while (Cur.IsName("and")) { Next(); e = Checked(new LogicExpr(e.Line, true, e, ParseNot())); }
        return e;
    }

    private Expr ParseNot()
    {
        if (Cur.IsName("not"))
        {
            var t = Next();
            return Checked(new NotExpr(t.Line, ParseNot()));
        }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            var t = Cur;
            if (t.Kind == TokenKind.Operator && t.Text is "==" or "!=" or "<" or "<=" or ">" or ">=") { Next(); rest.Add((t.Text, ParseMath1())); }
            else if (t.IsName("in")) { Next(); rest.Add(("in", ParseMath1())); }
            else if (t.IsName("not") && Peek().IsName("in")) { _i += 2; rest.Add(("notin", ParseMath1())); }
            else break;
        }
        return rest.Count == 0 ? first : Checked(new CompareExpr(first.Line, first, rest));
    }

    private Expr ParseMath1()
    {
        var e = ParseConcat();
        while (Cur.IsOp("+") || Cur.IsOp("-"))
        {
            var op = Next().Text;
            e = Checked(new BinaryExpr(e.Line, op, e, ParseConcat()));
        }
        return e;
    }

    private Expr ParseConcat()
    {
        var e = ParseMath2();
        while (Cur.IsOp("~")) { Next(); e = Checked(new BinaryExpr(e.Line, "~", e, ParseMath2())); }
        return e;
    }

    private Expr ParseMath2()
    {
        var e = ParsePow();
        while (Cur.IsOp("*") || Cur.IsOp("/") || Cur.IsOp("//") || Cur.IsOp("%"))
        {
            var op = Next().Text;
            e = Checked(new BinaryExpr(e.Line, op, e, ParsePow()));
        }
        return e;
    }

    private Expr ParsePow()
    {
        var e = ParseUnary(true);
        while (Cur.IsOp("**")) { Next(); e = Checked(new BinaryExpr(e.Line, "**", e, ParseUnary(true))); }
        return e;
    }

    private int _unaryDepth;

    private Expr ParseUnary(bool withFilter)
    {
        if (++_unaryDepth > _limits.MaxDepth) throw Error(Cur, "expression nested too deeply");
        try
        {
            Expr e;
            if (Cur.IsOp("-") || Cur.IsOp("+"))
            {
                var t = Next();
                e = Checked(new NegExpr(t.Line, ParseUnary(false), t.Text == "-"));
            }
            else e = ParsePrimary();
            e = ParsePostfix(e);
            if (withFilter) e = ParseFilters(e);
            return e;
        }
        finally { _unaryDepth--; }
    }

    private Expr ParsePrimary()
    {
        var t = Cur;
        switch (t.Kind)
        {
            case TokenKind.Name:
                Next();
                return t.Text switch
                {
                    "true" or "True" => new ConstExpr(t.Line, true),
                    "false" or "False" => new ConstExpr(t.Line, false),
                    "none" or "None" => new ConstExpr(t.Line, null),
                    _ => new NameExpr(t.Line, t.Text),
                };
            case TokenKind.String:
                {
                    Next();
                    string s = (string)t.Value!;
                    while (Cur.Kind == TokenKind.String) s += (string)Next().Value!; // adjacent literals concatenate
                    return new ConstExpr(t.Line, s);
                }
            case TokenKind.Integer or TokenKind.Float:
                Next();
                return new ConstExpr(t.Line, t.Value);
            case TokenKind.Operator when t.Text == "(":
                {
                    Next();
                    if (Cur.IsOp(")")) { Next(); return new ListExpr(t.Line, [], tuple: true); }
                    var e = ParseExpression();
                    if (Cur.IsOp(","))
                    {
                        var items = new List<Expr> { e };
                        while (Cur.IsOp(","))
                        {
                            Next();
                            if (Cur.IsOp(")")) break;
                            items.Add(ParseExpression());
                        }
                        e = Checked(new ListExpr(t.Line, items, tuple: true));
                    }
                    Expect(TokenKind.Operator, ")", "')'");
                    return e;
                }
            case TokenKind.Operator when t.Text == "[":
                {
                    Next();
                    var items = new List<Expr>();
                    while (!Cur.IsOp("]"))
                    {
                        if (items.Count > 0) { Expect(TokenKind.Operator, ",", "',' or ']'"); if (Cur.IsOp("]")) break; }
                        items.Add(ParseExpression());
                    }
                    Next();
                    return Checked(new ListExpr(t.Line, items));
                }
            case TokenKind.Operator when t.Text == "{":
                {
                    Next();
                    var pairs = new List<(Expr, Expr)>();
                    while (!Cur.IsOp("}"))
                    {
                        if (pairs.Count > 0) { Expect(TokenKind.Operator, ",", "',' or '}'"); if (Cur.IsOp("}")) break; }
                        var k = ParseExpression();
                        Expect(TokenKind.Operator, ":", "':'");
                        pairs.Add((k, ParseExpression()));
                    }
                    Next();
                    return Checked(new DictExpr(t.Line, pairs));
                }
            default:
                throw Error(t, $"expected an expression, got {t.Describe()}");
        }
    }

    private Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            var t = Cur;
            if (t.IsOp("."))
            {
                Next();
                var n = Next();
                if (n.Kind == TokenKind.Name) e = Checked(new GetAttrExpr(t.Line, e, n.Text));
                else if (n.Kind == TokenKind.Integer) e = Checked(new GetItemExpr(t.Line, e, new ConstExpr(n.Line, n.Value)));
                else throw Error(n, $"expected an attribute name, got {n.Describe()}");
            }
            else if (t.IsOp("[")) { Next(); e = ParseSubscript(e, t); }
            else if (t.IsOp("(")) { Next(); e = Checked(new CallExpr(t.Line, e, ParseCallArgs())); }
            else return e;
        }
    }

    private Expr ParseSubscript(Expr obj, Token open)
    {
        Expr? start = null, stop = null, step = null;
        bool slice = false;
        if (!Cur.IsOp(":")) start = ParseExpression();
        if (Cur.IsOp(":"))
        {
            slice = true;
            Next();
            if (!Cur.IsOp("]") && !Cur.IsOp(":")) stop = ParseExpression();
            if (Cur.IsOp(":"))
            {
                Next();
                if (!Cur.IsOp("]")) step = ParseExpression();
            }
        }
        Expect(TokenKind.Operator, "]", "']'");
        return Checked(slice ? new SliceExpr(open.Line, obj, start, stop, step) : new GetItemExpr(open.Line, obj, start!));
    }

    /// <summary>Arguments after '(' up to and including ')'.</summary>
    private CallArgs ParseCallArgs()
    {
        var pos = new List<Expr>();
        var kw = new List<(string, Expr)>();
        while (!Cur.IsOp(")"))
        {
            if (pos.Count + kw.Count > 0) { Expect(TokenKind.Operator, ",", "',' or ')'"); if (Cur.IsOp(")")) break; }
            if (Cur.Kind == TokenKind.Name && Peek().IsOp("="))
            {
                string name = Next().Text;
                Next();
                kw.Add((name, ParseExpression()));
            }
            else
            {
                if (kw.Count > 0) throw Error(Cur, "positional argument after keyword argument");
                pos.Add(ParseExpression());
            }
        }
        Next();
        return new CallArgs(pos, kw);
    }

    private Expr ParseFilters(Expr e)
    {
        while (true)
        {
            var t = Cur;
            if (t.IsOp("|"))
            {
                Next();
                var name = Expect(TokenKind.Name, null, "a filter name");
                if (!JinjaFilters.Names.Contains(name.Text)) throw Error(name, $"unknown filter '{name.Text}'");
                var args = CallArgs.None;
                if (Cur.IsOp("(")) { Next(); args = ParseCallArgs(); }
                e = Checked(new FilterExpr(t.Line, e, name.Text, args));
            }
            else if (t.IsName("is"))
            {
                Next();
                bool negated = false;
                if (Cur.IsName("not")) { Next(); negated = true; }
                var name = Cur;
                string testName;
                if (name.Kind == TokenKind.Name) testName = name.Text;
                else if (name.Kind == TokenKind.Operator && JinjaTests.Names.Contains(name.Text)) testName = name.Text;
                else throw Error(name, $"expected a test name, got {name.Describe()}");
                Next();
                if (!JinjaTests.Names.Contains(testName)) throw Error(name, $"unknown test '{testName}'");
                var args = new List<Expr>();
                if (Cur.IsOp("("))
                {
                    Next();
                    args = ParseCallArgs().Positional;
                }
                else if (Cur.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float
                         || Cur.IsOp("[") || Cur.IsOp("{"))
                {
                    if (!(Cur.IsName("else") || Cur.IsName("or") || Cur.IsName("and") || Cur.IsName("if") || Cur.IsName("is")))
                        args.Add(ParsePostfix(ParsePrimary()));
                }
                e = Checked(new TestExpr(t.Line, e, testName, args, negated));
            }
            else if (t.IsOp("(")) { Next(); e = Checked(new CallExpr(t.Line, e, ParseCallArgs())); }
            else return e;
        }
    }
}
