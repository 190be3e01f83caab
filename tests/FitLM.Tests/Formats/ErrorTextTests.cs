using FitLM.Formats;
using Xunit;

namespace FitLM.Tests.Formats;

/// <summary>Names from a file, as error messages quote them: short, printable, one line.</summary>
public class ErrorTextTests
{
    [Fact]
    public void AnOrdinaryNameIsQuotedAsItIs() =>
        Assert.Equal("'blk.0.attn_q.weight'", ErrorText.Quote("blk.0.attn_q.weight"));

    [Fact]
    public void ControlCharactersAreEscaped() =>
        Assert.Equal("'a\\x00b\\x0a\\u200bc\\'d'", ErrorText.Quote("a\0b\n\u200bc'd"));

    [Fact]
    public void ALongNameIsCutAndItsLengthSaid()
    {
        string quoted = ErrorText.Quote(new string('x', 2000));
        Assert.StartsWith("'xxxx", quoted);
        Assert.EndsWith("'... (2000 characters)", quoted);
        Assert.True(quoted.Length < ErrorText.MaxNameChars + 32, quoted);
        string binary = ErrorText.Quote(new string('\u0001', 2000));
        Assert.True(binary.Length < ErrorText.MaxNameChars + 32, binary);
    }
}
