namespace FitLM;

/// <summary>
/// An error a user can act on: bad input files, unsupported models, impossible budgets.
/// The CLI prints <see cref="Exception.Message"/> as one line and exits non-zero, so the message is kept
/// to one printable line even when it quotes text from a corrupt file.
/// </summary>
public class FitLMException : Exception
{
    public FitLMException(string message) : base(OneLine(message)) { }
    public FitLMException(string message, Exception inner) : base(OneLine(message), inner) { }

    private static string OneLine(string message)
    {
        if (message.Length > 2000) message = message[..2000] + "...";
        if (!message.Any(char.IsControl)) return message;
        return string.Create(message.Length, message, (dst, src) =>
        {
            for (int i = 0; i < src.Length; i++) dst[i] = char.IsControl(src[i]) ? '?' : src[i];
        });
    }
}

/// <summary>The memory budget cannot hold even the smallest plan; <see cref="MinimumBytes"/> is the smallest that can.</summary>
public sealed class BudgetTooSmallException(string message, long minimumBytes) : FitLMException(message)
{
    public long MinimumBytes { get; } = minimumBytes;
}
