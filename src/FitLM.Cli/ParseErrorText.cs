using System.CommandLine;
using System.CommandLine.Parsing;
using System.Numerics;
using System.Text.RegularExpressions;

namespace FitLM.Cli;

/// <summary>
/// Parse errors in the user's words: System.CommandLine says "Cannot parse argument 'abc' for option '--temp'
/// as expected type 'System.Single'"; a user reads "--temp: 'abc' is not a number".
/// </summary>
internal static partial class ParseErrorText
{
    public static string Describe(ParseError error)
    {
        var match = CannotParse().Match(error.Message);
        if (!match.Success) return error.Message;
        string token = match.Groups["token"].Value;
        string name = match.Groups["symbol"].Value;
        Type? type = error.SymbolResult switch
        {
            OptionResult o => o.Option.ValueType,
            ArgumentResult { Parent: OptionResult o } => o.Option.ValueType,
            ArgumentResult a => a.Argument.ValueType,
            _ => null,
        };
        return $"{name}: '{token}' is not {Expected(type, token)}";
    }

    private static string Expected(Type? type, string token)
    {
        type = type is null ? null : Nullable.GetUnderlyingType(type) ?? (type.IsArray ? type.GetElementType() : type);
        if (type == typeof(float) || type == typeof(double)) return "a number";
        if (type == typeof(bool)) return "true or false";
        if (type == typeof(int) || type == typeof(long) || type == typeof(uint) || type == typeof(ulong))
        {
            (BigInteger min, BigInteger max) = type == typeof(int) ? ((BigInteger)int.MinValue, (BigInteger)int.MaxValue)
                : type == typeof(long) ? ((BigInteger)long.MinValue, (BigInteger)long.MaxValue)
                : type == typeof(uint) ? ((BigInteger)uint.MinValue, (BigInteger)uint.MaxValue) : ((BigInteger)ulong.MinValue, (BigInteger)ulong.MaxValue);
            return BigInteger.TryParse(token, out _) ? $"a whole number from {min} to {max}" : "a whole number";
        }
        return "a valid value";
    }

    [GeneratedRegex(@"^Cannot parse argument '(?<token>.*)' for (option|command|argument) '(?<symbol>.*)' as expected type '[^']*'\.?$", RegexOptions.Singleline)]
    private static partial Regex CannotParse();
}
