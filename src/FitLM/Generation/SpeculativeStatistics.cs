namespace FitLM.Generation;

/// <summary>
/// What speculation did in one generation: verification passes of the target (Steps; a step with nothing drafted
/// is a plain one-token pass and counts too), tokens drafted and accepted, and the tokens the steps produced (all
/// but the first generated token, which the prompt's pass gives).
/// </summary>
public sealed record SpeculativeStatistics(int Steps, int Drafted, int Accepted, int Produced)
{
    /// <summary>Tokens each target pass produced on average (1 for plain decoding; up to draft-max + 1).</summary>
    public double TokensPerStep => Steps == 0 ? 0 : (double)Produced / Steps;

    /// <summary>Share of drafted tokens the target accepted.</summary>
    public double AcceptanceRate => Drafted == 0 ? 0 : (double)Accepted / Drafted;

    public override string ToString() =>
        $"{Steps} target passes, {Drafted} drafted, {Accepted} accepted ({100 * AcceptanceRate:F1}%), {TokensPerStep:F2} tokens per pass";
}
