using System.Runtime.InteropServices;
using FitLM.Backends.Cuda;
using FitLM.Model;
using FitLM.Tests.Cli;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Backends.Cuda;

/// <summary>`fitlm devices` on a machine without CUDA (CI, this project's build machines): one line, and the right exit code.</summary>
public sealed class DevicesCommandTests(ITestOutputHelper output)
{
    internal static bool HasDriver()
    {
        if (!NativeLibrary.TryLoad("libcuda.so.1", out nint h)) return false;
        NativeLibrary.Free(h);
        return true;
    }

    [Fact]
    public void Listing_WithoutDriver_PrintsOneLineAndSucceeds()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1 (tests/gpu.sh covers it)"); return; }
        var r = CliRunner.Run("devices");
        Assert.Equal(0, r.ExitCode);
        Assert.Equal(CudaLibraries.NoDriver, r.StdOut.Trim());
        Assert.Equal("", r.StdErr.Trim());
    }

    [Fact]
    public void Check_WithoutDriver_FailsWithOneLine()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1 (tests/gpu.sh covers it)"); return; }
        var r = CliRunner.Run("devices", "--check");
        Assert.NotEqual(0, r.ExitCode); // a check that could not run must not pass
        Assert.Equal("", r.StdOut.Trim());
        Assert.Equal($"error: {CudaLibraries.NoDriver}", r.StdErr.Trim());
    }

    [Fact]
    public void DriverCalls_WithoutDriver_ThrowFitLMException_NotDllNotFound()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1"); return; }
        var e = Assert.Throws<FitLMException>(() => CudaDevice.Count());
        Assert.Equal(CudaLibraries.NoDriver, e.Message);
    }

    [Fact]
    public void RunOnCuda_WithoutDriver_FailsWithOneLine()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1 (tests/gpu.sh covers it)"); return; }
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def", "-n", "2", "--device", "cuda");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"error: {CudaLibraries.NoDriver}", r.StdErr.Trim());
        Assert.Equal("", r.StdOut.Trim());
    }

    [Fact]
    public void RunOnAuto_WithoutDriver_RunsOnTheCpuAndSaysWhy()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1 (tests/gpu.sh covers it)"); return; }
        var cpu = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def", "-n", "8", "--temp", "0", "--device", "cpu");
        var auto = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def", "-n", "8", "--temp", "0", "--device", "auto");
        Assert.Equal(0, auto.ExitCode);
        Assert.Equal(cpu.StdOut, auto.StdOut); // the same text: it ran on the CPU
        Assert.Contains($"device: cpu ({CudaLibraries.NoDriver})", auto.StdErr, StringComparison.Ordinal);
        Assert.DoesNotContain("device:", cpu.StdErr, StringComparison.Ordinal);
        // auto is the default: without --device, the same text and the same one line.
        var plain = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def", "-n", "8", "--temp", "0");
        Assert.Equal(cpu.StdOut, plain.StdOut);
        Assert.Single(plain.StdErr.Split('\n'), l => l.StartsWith("device: cpu (", StringComparison.Ordinal));
        // plan follows run: the CPU's plan, with the same line.
        var plan = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--no-probe");
        Assert.Equal(0, plan.ExitCode);
        Assert.StartsWith("plan for ", plan.StdOut, StringComparison.Ordinal);
        Assert.Contains($"device: cpu ({CudaLibraries.NoDriver})", plan.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void ServeOnCuda_WithoutDriver_FailsWithOneLine_BeforeListening()
    {
        if (HasDriver()) { output.WriteLine("skipped: this machine has libcuda.so.1 (tests/gpu.sh covers it)"); return; }
        var r = CliRunner.Run("serve", "-m", TestPaths.DemoModel, "--device", "cuda", "--port", "0");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal($"error: {CudaLibraries.NoDriver}", r.StdErr.Trim());
        Assert.DoesNotContain("listening", r.StdOut, StringComparison.Ordinal);
    }

    [Fact]
    public void PlanOnCuda_PlacesLayersWithoutAGpu()
    {
        // 105 MiB at the default context: the fixed part (KV, logits, cuBLAS and attention scratch, head) and two layers beside two slots.
        var r = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "105MiB");
        Assert.Equal(0, r.ExitCode);
        Assert.Contains("in GPU memory", r.StdOut, StringComparison.Ordinal);
        Assert.Contains("layers 0-1 of 8", r.StdOut, StringComparison.Ordinal);
        Assert.Contains("(layers 2-7 from pinned host memory", r.StdOut, StringComparison.Ordinal);
        var all = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "1GiB");
        Assert.Contains("every layer of 8", all.StdOut, StringComparison.Ordinal);
        if (!HasDriver()) Assert.Matches(@"predicted decode     not measured \(no GPU here: .*\); [0-9.]+ MiB of weights read per token", all.StdOut);
        var tooSmall = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "20MiB");
        Assert.Equal(1, tooSmall.ExitCode);
        Assert.StartsWith("error: the model needs at least", tooSmall.StdErr.Trim(), StringComparison.Ordinal);
        if (HasDriver()) return;
        Assert.Contains("predicted decode     not measured (no GPU here", r.StdOut, StringComparison.Ordinal);
        // --json: the same placement as one object, the measurements null and the reason given.
        var json = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "105MiB", "--json");
        Assert.Equal(0, json.ExitCode);
        using (var doc = System.Text.Json.JsonDocument.Parse(json.StdOut))
        {
            var o = doc.RootElement;
            Assert.Equal(8, o.GetProperty("layers").GetInt32());
            Assert.Equal(2, o.GetProperty("resident_layers").GetInt32());
            Assert.Equal("prefetch", o.GetProperty("stream").GetString());
            Assert.Equal(105L << 20, o.GetProperty("gpu_budget_bytes").GetInt64());
            Assert.True(o.GetProperty("gpu_bytes").GetInt64() <= 105L << 20);
            Assert.True(o.GetProperty("streamed_bytes_per_token").GetInt64() > 0);
            Assert.Equal(System.Text.Json.JsonValueKind.Null, o.GetProperty("predicted_tokens_per_second").ValueKind);
            Assert.StartsWith("no CUDA driver", o.GetProperty("not_measured_because").GetString(), StringComparison.Ordinal);
        }
        // --memory: the host holds pinned copies of the first streamed layers it has room for; the rest are read from the
        // file each token; a budget without room for the staging is refused with the minimum's reason.
        long overhead;
        using (var source = ModelSource.Open(TestPaths.DemoModel))
            overhead = (FitLM.Memory.RuntimeFootprint.Bytes(source) + CudaBackend.HostOverheadBytes + (1L << 20) - 1) >> 20; // MiB, rounded up
        var host = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "105MiB", "--memory", $"{overhead + 8}MiB");
        Assert.Equal(0, host.ExitCode);
        Assert.Matches(@"layers 2-7 copied while the layers before them run: (2(-[3-6])? from pinned host memory, )?[2-7](-7)? read from the model file each token", host.StdOut);
        var noRoom = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda", "--gpu-memory", "105MiB", "--memory", $"{overhead}MiB");
        Assert.Equal(1, noRoom.ExitCode);
        Assert.Contains("of staging that reading them from the model file needs", noRoom.StdErr, StringComparison.Ordinal);
        var noBudget = CliRunner.Run("plan", "-m", TestPaths.DemoModel, "--device", "cuda");
        Assert.Equal(1, noBudget.ExitCode);
        Assert.StartsWith("error: give --gpu-memory SIZE: there is no GPU", noBudget.StdErr.Trim(), StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownDevice_IsAUsageError()
    {
        var r = CliRunner.Run("run", "-m", TestPaths.DemoModel, "-p", "def", "--device", "gpu");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("'gpu' not recognized", r.StdErr, StringComparison.Ordinal);
    }

    [Fact]
    public void ModelWithoutCheck_IsRefused()
    {
        var r = CliRunner.Run("devices", "-m", TestPaths.DemoModel);
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("error: --model goes with --check", r.StdErr.Trim());
    }

    [Fact]
    public void CallName_IsTheDriverFunction()
    {
        Assert.Equal("cuMemAlloc_v2", CudaDriver.CallName("CudaDriver.cuMemAlloc_v2(&p, (nuint)n)"));
        Assert.Equal("cuInit", CudaDriver.CallName("cuInit(0)"));
    }
}
