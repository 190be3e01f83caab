using FitLM.Chat;
using Xunit;

namespace FitLM.Tests.Chat;

/// <summary>Templates come from model files, which may be hostile: limits turn runaway templates into FitLMExceptions.</summary>
public class HostileTemplateTests
{
    private static FitLMException Fails(string template)
    {
        // The limits are counts (depth, steps, output length), so a runaway template ends in a bounded number of steps.
        var e = Assert.ThrowsAny<FitLMException>(() => ChatTemplate.FromJinja(template, "", "").Render([new ChatTurn("user", "hi")]));
        Assert.DoesNotContain('\n', e.Message);
        return e;
    }

    [Fact]
    public void DeepNestingIsRejectedAtParse()
    {
        Assert.Contains("nested too deeply", Fails("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}").Message);
        Assert.Contains("nested too deeply", Fails("{{ 1" + string.Concat(Enumerable.Repeat(" + 1", 5000)) + " }}").Message);
        Assert.Contains("nested too deeply", Fails(string.Concat(Enumerable.Repeat("{% if true %}", 5000))).Message);
        Assert.Contains("nested too deeply", Fails("{{ x" + string.Concat(Enumerable.Repeat("|trim", 5000)) + " }}").Message);
    }

    [Fact]
    public void OutputAndStepLimits()
    {
        Assert.Contains("exceeds", Fails("{% for i in range(1000000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}").Message);
        Assert.Contains("too long", Fails("{{ 'x' * 1000000000 }}").Message);
        Assert.Contains("steps", Fails("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}").Message);
        Assert.Contains("range()", Fails("{{ range(100000000)|length }}").Message);
        Assert.Contains("too long", Fails("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}").Message);
    }

    [Fact]
    public void RuntimeErrorsNameTheLine()
    {
        var e = Fails("line one\n{{ messages[0].role }}\n{{ messages[9].role }}");
        Assert.StartsWith("chat template line 3:", e.Message);
        Assert.Contains("Roles must alternate", Fails("{% if messages|length == 1 %}\n{{ raise_exception('Roles must alternate') }}{% endif %}").Message);
        Assert.Contains("unsupported operand", Fails("{{ 1 + 'a' }}").Message);
        Assert.Contains("modulo by zero", Fails("{{ 1 // 0 }}").Message);
        Assert.Contains("line 1, col 9: expected an expression", Fails("{{ 1 +  }}").Message);
    }
}
