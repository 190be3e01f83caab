namespace FitLM;

/// <summary>
/// An error a user can act on: bad input files, unsupported models, impossible budgets.
/// The CLI prints <see cref="Exception.Message"/> as one line and exits non-zero.
/// </summary>
public class FitLMException : Exception
{
    public FitLMException(string message) : base(message) { }
    public FitLMException(string message, Exception inner) : base(message, inner) { }
}
