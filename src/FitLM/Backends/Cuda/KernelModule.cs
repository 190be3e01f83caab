namespace FitLM.Backends.Cuda;

/// <summary>
/// One kernel source of Kernels/ (embedded in the assembly), after Kernels/common.cuh, compiled for the device through <see cref="KernelCache"/>
/// at first use and loaded; its entry points are looked up by name.
/// </summary>
internal sealed class KernelModule
{
    private readonly nint _module;

    public KernelModule(CudaDevice device, string file, Action<string>? log = null)
    {
        string source = Source("common.cuh") + "\n" + Source(file);
        string arch = device.Arch;
        var cache = new KernelCache(KernelCache.DefaultDirectory(), (s, o) => Nvrtc.Compile(s, file, o));
        byte[] cubin = cache.GetOrCompile(source, Nvrtc.Options(arch), Nvrtc.Version(), arch, log);
        _module = device.LoadModule(cubin);
    }

    public nint Function(string name) => CudaDevice.Function(_module, name);

    /// <summary>
    /// The text of Kernels/<paramref name="file"/> as embedded; FITLM_CUDA_SOURCE=DIR reads DIR/<paramref name="file"/>
    /// instead where it exists (kernel work on a GPU machine without republishing; the cache key follows the text,
    /// so nothing stale is loaded).
    /// </summary>
    public static string Source(string file)
    {
        if (Environment.GetEnvironmentVariable("FITLM_CUDA_SOURCE") is { Length: > 0 } dir && File.Exists(Path.Combine(dir, file)))
            return File.ReadAllText(Path.Combine(dir, file));
        using var s = typeof(KernelModule).Assembly.GetManifestResourceStream("FitLM.Backends.Cuda.Kernels." + file)
            ?? throw new FitLMException($"the CUDA kernel source {file} is missing from the assembly");
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }
}
