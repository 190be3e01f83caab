namespace FitLM.Chat.Jinja;

/// <summary>A template the engine cannot parse: names the line and column so the template's author can find it.</summary>
internal sealed class JinjaSyntaxException(int line, int col, string message)
    : FitLMException($"chat template line {line}, col {col}: {message}")
{
    public int Line { get; } = line;
    public int Col { get; } = col;
}

/// <summary>A template that fails while rendering (undefined values used, bad operands, limits, raise_exception).</summary>
internal sealed class JinjaRuntimeException : FitLMException
{
    /// <summary>True once the message names the template line (the statement that failed adds it).</summary>
    public bool Located { get; }

    public JinjaRuntimeException(string message) : base(message) { }
    private JinjaRuntimeException(string message, bool located) : base(message) => Located = located;

    public static JinjaRuntimeException At(int line, string message) => new($"chat template line {line}: {message}", true);
}
