using System.Globalization;
using System.Text;

namespace FitLM.Chat.Jinja;

internal enum TokenKind { Data, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, End }

internal readonly record struct Token(TokenKind Kind, string Text, int Line, int Col, object? Value = null)
{
    public bool Is(TokenKind kind, string text) => Kind == kind && Text == text;
    public bool IsName(string name) => Kind == TokenKind.Name && Text == name;
    public bool IsOp(string op) => Kind == TokenKind.Operator && Text == op;

    public string Describe() => Kind switch
    {
        TokenKind.End => "end of template",
        TokenKind.BlockEnd => "end of statement block",
        TokenKind.VariableEnd => "end of print statement",
        TokenKind.Data => "template data",
        _ => $"'{Text}'",
    };
}

/// <summary>
/// Splits a template into data and tag tokens as jinja2's lexer does with Hugging Face's settings
/// (trim_blocks and lstrip_blocks on, keep_trailing_newline off), so whitespace around tags comes out byte-exactly.
/// </summary>
internal sealed class JinjaLexer
{
    private readonly string _src;
    private readonly List<Token> _tokens = new();
    private int _pos;
    private readonly int[] _lineStarts;

    private JinjaLexer(string source)
    {
        // jinja2 normalizes newlines to \n and drops one trailing newline before lexing.
        source = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (source.EndsWith('\n')) source = source[..^1];
        _src = source;
        var starts = new List<int> { 0 };
        for (int i = 0; i < source.Length; i++) if (source[i] == '\n') starts.Add(i + 1);
        _lineStarts = starts.ToArray();
    }

    public static List<Token> Tokenize(string source)
    {
        var lexer = new JinjaLexer(source);
        lexer.Run();
        return lexer._tokens;
    }

    private (int Line, int Col) Where(int pos)
    {
        int idx = Array.BinarySearch(_lineStarts, pos);
        if (idx < 0) idx = ~idx - 1;
        return (idx + 1, pos - _lineStarts[idx] + 1);
    }

    private JinjaSyntaxException Error(int pos, string message)
    {
        var (line, col) = Where(pos);
        return new JinjaSyntaxException(line, col, message);
    }

    private void Add(TokenKind kind, string text, int pos, object? value = null)
    {
        var (line, col) = Where(pos);
        _tokens.Add(new Token(kind, text, line, col, value));
    }

    private void Run()
    {
        bool lineStarting = true;
        while (_pos < _src.Length)
        {
            int idx = NextTagStart(_pos);
            string text = _src[_pos..idx];
            if (idx >= _src.Length)
            {
                if (text.Length > 0) Add(TokenKind.Data, text, _pos);
                break;
            }
            char kind = _src[idx + 1];
            char modifier = idx + 2 < _src.Length && (_src[idx + 2] == '-' || _src[idx + 2] == '+') ? _src[idx + 2] : '\0';
            if (modifier == '-') text = text.TrimEnd();
            else if (modifier != '+' && kind != '{')
            {
                // lstrip_blocks: spaces between the line start and a block or comment tag vanish.
                int lpos = text.LastIndexOf('\n') + 1;
                if ((lpos > 0 || lineStarting) && lpos < text.Length && IsAllWhitespace(text, lpos)) text = text[..lpos];
            }
            if (text.Length > 0) Add(TokenKind.Data, text, _pos);
            int inner = idx + 2 + (modifier != '\0' ? 1 : 0);
            if (kind == '#') lineStarting = SkipComment(idx, inner);
            else lineStarting = LexTag(idx, inner, kind == '{');
        }
        Add(TokenKind.End, "", _src.Length);
    }

    private static bool IsAllWhitespace(string s, int from)
    {
        for (int i = from; i < s.Length; i++) if (!char.IsWhiteSpace(s[i])) return false;
        return true;
    }

    private int NextTagStart(int from)
    {
        int i = from;
        while (true)
        {
            i = _src.IndexOf('{', i);
            if (i < 0 || i + 1 >= _src.Length) return _src.Length;
            char c = _src[i + 1];
            if (c == '{' || c == '%' || c == '#') return i;
            i++;
        }
    }

    /// <summary>Consumes what follows a closing delimiter: all whitespace after '-', one newline after a block end (trim_blocks).</summary>
    private bool AfterClose(int after, bool strip, bool trimNewline)
    {
        int p = after;
        if (strip) while (p < _src.Length && char.IsWhiteSpace(_src[p])) p++;
        else if (trimNewline && p < _src.Length && _src[p] == '\n') p++;
        _pos = p;
        return p > 0 && _src[p - 1] == '\n';
    }

    private bool SkipComment(int start, int inner)
    {
        int end = _src.IndexOf("#}", inner, StringComparison.Ordinal);
        if (end < 0) throw Error(start, "unclosed comment: '{#' has no matching '#}'");
        bool strip = end > inner && _src[end - 1] == '-';
        return AfterClose(end + 2, strip, trimNewline: true);
    }

    private bool LexTag(int start, int inner, bool variable)
    {
        Add(variable ? TokenKind.VariableBegin : TokenKind.BlockBegin, variable ? "{{" : "{%", start);
        char closer = variable ? '}' : '%';
        int depth = 0;
        int p = inner;
        while (true)
        {
            while (p < _src.Length && char.IsWhiteSpace(_src[p])) p++;
            if (p >= _src.Length)
                throw Error(start, variable ? "unclosed tag: '{{' has no matching '}}'" : "unclosed tag: '{%' has no matching '%}'");
            char c = _src[p];
            if (depth == 0)
            {
                bool dash = c == '-' && p + 2 < _src.Length && _src[p + 1] == closer && _src[p + 2] == '}';
                if (dash || (c == closer && p + 1 < _src.Length && _src[p + 1] == '}'))
                {
                    Add(variable ? TokenKind.VariableEnd : TokenKind.BlockEnd, variable ? "}}" : "%}", p);
                    return AfterClose(p + (dash ? 3 : 2), dash, trimNewline: !variable);
                }
            }
            if (char.IsLetter(c) || c == '_')
            {
                int s = p;
                while (p < _src.Length && (char.IsLetterOrDigit(_src[p]) || _src[p] == '_')) p++;
                Add(TokenKind.Name, _src[s..p], s);
            }
            else if (char.IsAsciiDigit(c)) p = LexNumber(p);
            else if (c == '\'' || c == '"') p = LexString(p);
            else
            {
                string op = MatchOperator(p) ?? throw Error(p, $"unexpected character '{c}'");
                if (op is "(" or "[" or "{") depth++;
                else if (op is ")" or "]" or "}")
                {
                    if (depth == 0) throw Error(p, $"unexpected '{op}'");
                    depth--;
                }
                Add(TokenKind.Operator, op, p);
                p += op.Length;
            }
        }
    }

    private static readonly string[] Operators =
        ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "=", ";"];

    private string? MatchOperator(int p)
    {
        foreach (var op in Operators)
            if (string.CompareOrdinal(_src, p, op, 0, op.Length) == 0) return op;
        return null;
    }

    private int LexNumber(int p)
    {
        int s = p;
        while (p < _src.Length && (char.IsAsciiDigit(_src[p]) || _src[p] == '_')) p++;
        bool isFloat = false;
        if (p + 1 < _src.Length && _src[p] == '.' && char.IsAsciiDigit(_src[p + 1]))
        {
            isFloat = true;
            p++;
            while (p < _src.Length && (char.IsAsciiDigit(_src[p]) || _src[p] == '_')) p++;
        }
        if (p < _src.Length && (_src[p] == 'e' || _src[p] == 'E'))
        {
            int q = p + 1;
            if (q < _src.Length && (_src[q] == '+' || _src[q] == '-')) q++;
            if (q < _src.Length && char.IsAsciiDigit(_src[q]))
            {
                isFloat = true;
                p = q;
                while (p < _src.Length && char.IsAsciiDigit(_src[p])) p++;
            }
        }
        string text = _src[s..p].Replace("_", "");
        if (isFloat) Add(TokenKind.Float, text, s, double.Parse(text, CultureInfo.InvariantCulture));
        else if (long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out long v)) Add(TokenKind.Integer, text, s, v);
        else throw Error(s, $"integer literal {text} is too large");
        return p;
    }

    private int LexString(int p)
    {
        char quote = _src[p];
        int s = p++;
        var sb = new StringBuilder();
        while (true)
        {
            if (p >= _src.Length) throw Error(s, "unterminated string literal");
            char c = _src[p++];
            if (c == quote) break;
            if (c != '\\') { sb.Append(c); continue; }
            if (p >= _src.Length) throw Error(s, "unterminated string literal");
            char e = _src[p++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'v': sb.Append('\v'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case '\n': break; // a backslash-newline continues the literal
                case 'x': sb.Append(Hex(p, 2, s)); p += 2; break;
                case 'u': sb.Append(Hex(p, 4, s)); p += 4; break;
                case 'U': sb.Append(Hex(p, 8, s)); p += 8; break;
                default: sb.Append('\\').Append(e); break; // Python keeps unknown escapes as written
            }
        }
        Add(TokenKind.String, _src[s..p], s, sb.ToString());
        return p;
    }

    private string Hex(int p, int digits, int start)
    {
        if (p + digits > _src.Length || !int.TryParse(_src.AsSpan(p, digits), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out int cp)
            || cp > 0x10FFFF)
            throw Error(start, "bad escape in string literal");
        return char.ConvertFromUtf32(cp);
    }
}
