using System.Diagnostics;
using System.Text.RegularExpressions;
using FitLM.Backends.Cuda;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>
/// FitLM's kernel files run on the CPU in tests/cuda-emulator (emulator.h: a host thread per GPU thread, real barriers
/// for __syncthreads and for each warp's shuffles, a launch's blocks in a shuffled order), compiled with g++: a new
/// kernel checked against one that GPU runs have checked, on any machine with a C++20 compiler. The harnesses say what they compare; each exits 1 on a
/// mismatch. Without g++ the test says it skipped in its output.
/// </summary>
public sealed partial class CudaEmulatorTests(ITestOutputHelper output)
{
    // The helpers whose bodies are PTX (asm): emulator.h defines them in C++.
    private static readonly string[] PtxHelpers = ["half_to_float", "float_to_half", "bf16_to_float", "dp4a", "ld_weights", "ld_l2"];

    [Theory]
    [InlineData("kivi_tiles.cpp", "forward.cu")]   // attend_kivi_tiles against attend_kivi
    [InlineData("kivi_prefill.cpp", "forward.cu")] // attend_tile_kivi_* against attend_batch_kivi
    [InlineData("dense_prefill.cpp", "forward.cu")] // attend_tile_* (over DenseTiles) against attend_batch_*
    [InlineData("matvec_loops.cpp", "matvec.cu")]  // the persistent one-token products against the kernels they loop
    [InlineData("fold_norm.cpp", "matvec.cu")]     // the folded RMSNorm against the product, norm and products it replaces
    [InlineData("gate_up_act.cpp", "matvec.cu")]   // gate, up and the activation in one launch against the products and gated_act
    [InlineData("attend_rope.cpp", "forward.cu")]  // RoPE, KV store and attention in one launch against the three
    public void Kernel_MatchesItsReference_InTheEmulator(string harness, string kernels)
    {
        string? compiler = OnPath("g++");
        if (compiler == null) { output.WriteLine("skipped: no g++ on PATH (the CUDA emulator is C++20)"); return; }
        string folder = Path.Combine(TestPaths.RepoRoot, "tests", "cuda-emulator");
        var dir = Directory.CreateTempSubdirectory("fitlm-emulator-");
        try
        {
            string source = Path.Combine(dir.FullName, "check.cpp"), program = Path.Combine(dir.FullName, "check");
            File.WriteAllText(source, Source(File.ReadAllText(Path.Combine(folder, harness)), kernels));
            var build = Run(compiler, TimeSpan.FromMinutes(3), "-std=c++20", "-O1", "-pthread", "-I", folder, source, "-o", program);
            Assert.True(build.ExitCode == 0, $"g++ failed:\n{build.Output}");
            var check = Run(program, TimeSpan.FromMinutes(5));
            output.WriteLine(check.Output);
            Assert.True(check.ExitCode == 0, check.Output);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void EveryPtxHelper_IsFoundAndRemoved()
    {
        string all = KernelModule.Source("common.cuh") + KernelModule.Source("forward.cu") + KernelModule.Source("matvec.cu");
        foreach (string name in PtxHelpers) Assert.Matches(Helper(name), all);
        // What asm is left is programmatic launch's, under #if __CUDA_ARCH__ >= 900, which the emulator leaves undefined.
        string stripped = Source("", "forward.cu") + Source("", "matvec.cu");
        Assert.Equal(Regex.Count(stripped, @"\basm( volatile)?\("), Regex.Count(stripped, @"asm volatile\(""griddepcontrol\."));
    }

    /// <summary>The program the emulator compiles: emulator.h, common.cuh and the kernel file without their PTX helpers, the harness.</summary>
    private static string Source(string harness, string kernels) =>
        "#include \"emulator.h\"\n" + Strip(KernelModule.Source("common.cuh")) + "\n" + Strip(KernelModule.Source(kernels)) + "\n" + harness;

    private static string Strip(string source)
    {
        foreach (string name in PtxHelpers) source = Helper(name).Replace(source, "", 1);
        return source;
    }

    private static Regex Helper(string name) => new(@"__device__ __forceinline__ [\w ]+ " + name + @"\([^)]*\)\n\{\n.*?\n\}\n", RegexOptions.Singleline);

    private static string? OnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    private static (int ExitCode, string Output) Run(string file, TimeSpan limit, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(limit))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{Path.GetFileName(file)} did not finish in {limit.TotalMinutes} minutes");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }
}
