using Xunit;
using FitLM.Model;
using FitLM.Training;
using static FitLM.Tests.Training.GradientCheck;

namespace FitLM.Tests.Training;

/// <summary>The gated FFN's middle, act(g) ⊙ u: forward and both gradients against central differences in double.</summary>
public class GateGradientTests
{
    private static double Act(double x, FfnActivation act) => act switch
    {
        FfnActivation.Silu => x / (1 + Math.Exp(-x)),
        FfnActivation.Relu => Math.Max(x, 0),
        _ => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x))),
    };

    [Theory]
    [InlineData(FfnActivation.Silu, 37)]
    [InlineData(FfnActivation.Relu, 41)]
    [InlineData(FfnActivation.Gelu, 29)]
    [InlineData(FfnActivation.Gelu, 256)]
    public void BackwardMatchesCentralDifferences(FfnActivation act, int n)
    {
        var rng = new Random(77 + n + (int)act);
        var g = Uniform(rng, n, 4);
        if (act == FfnActivation.Relu)
            for (int i = 0; i < n; i++)
                while (Math.Abs(g[i]) < 0.05f) g[i] = Uniform(rng, 1, 4)[0]; // no difference quotient across the kink
        var u = Uniform(rng, n, 2);
        var dh = Uniform(rng, n);

        var hidden = new float[n];
        GateGradient.Forward(g, u, hidden, act);
        for (int i = 0; i < n; i++)
            Assert.True(Math.Abs(hidden[i] - Act(g[i], act) * u[i]) <= 1e-5 * (1 + Math.Abs(hidden[i])), $"{act}({g[i]}) · {u[i]} = {hidden[i]}");

        var dg = new float[n];
        var du = new float[n];
        GateGradient.Backward(g, u, dh, dg, du, act);

        var gd = ToDouble(g);
        var ud = ToDouble(u);
        double Loss()
        {
            double s = 0;
            for (int i = 0; i < n; i++) s += Act(gd[i], act) * ud[i] * dh[i];
            return s;
        }
        AssertClose(CentralDifferences(gd, Loss, 1e-6), dg, 1e-5, $"{act} dg");
        AssertClose(CentralDifferences(ud, Loss, 1e-6), du, 1e-5, $"{act} du");
    }
}
