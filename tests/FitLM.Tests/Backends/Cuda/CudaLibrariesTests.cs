using FitLM.Backends.Cuda;
using Xunit;

namespace FitLM.Tests.Backends.Cuda;

public sealed class CudaLibrariesTests
{
    [Fact]
    public void Names_AreEachSystemsOwn()
    {
        Assert.Equal(["nvcuda.dll"], CudaLibraries.DriverNames(windows: true));
        Assert.Equal("libcuda.so.1", CudaLibraries.DriverNames(windows: false)[0]);
        Assert.All(CudaLibraries.NvrtcNames(windows: true), n => Assert.Matches(@"^nvrtc64_1[23]0_0\.dll$", n));
        Assert.All(CudaLibraries.CublasNames(windows: true), n => Assert.Matches(@"^cublas64_1[23]\.dll$", n));
        Assert.Equal("libnvrtc.so.13", CudaLibraries.NvrtcNames(windows: false)[0]);
    }

    [Fact]
    public void WindowsCandidates_LookUnderCudaPathsBinFolders_Newest_First()
    {
        string root = Directory.CreateTempSubdirectory("fitlm-cuda-path").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "bin", "x64"));
            File.WriteAllBytes(Path.Combine(root, "bin", "x64", "nvrtc64_130_0.dll"), []);
            File.WriteAllBytes(Path.Combine(root, "bin", "nvrtc64_120_0.dll"), []);
            var names = CudaLibraries.NvrtcNames(windows: true);
            string[] candidates = [.. CudaLibraries.Candidates(names, "cuda_nvrtc", windows: true, cudaPath: root)];
            // The bare names first (the loader's own search: PATH, the application's folder), then the files that exist.
            Assert.Equal([.. names, Path.Combine(root, "bin", "x64", "nvrtc64_130_0.dll"), Path.Combine(root, "bin", "nvrtc64_120_0.dll")], candidates);
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void LinuxCandidates_LookUnderCudaPathsLib64()
    {
        string root = Directory.CreateTempSubdirectory("fitlm-cuda-path").FullName;
        try
        {
            Directory.CreateDirectory(Path.Combine(root, "lib64"));
            File.WriteAllBytes(Path.Combine(root, "lib64", "libnvrtc.so.12"), []);
            var names = CudaLibraries.NvrtcNames(windows: false);
            string[] candidates = [.. CudaLibraries.Candidates(names, "cuda_nvrtc", windows: false, cudaPath: root)];
            Assert.Equal(names, candidates[..names.Length]);
            Assert.Contains(Path.Combine(root, "lib64", "libnvrtc.so.12"), candidates);
            Assert.DoesNotContain(candidates, c => c.EndsWith(".dll", StringComparison.Ordinal));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }
}
