namespace FitLM.Backends.Cuda;

/// <summary>Device memory from cuMemAlloc: a pointer and its size; freed on dispose (in its device's context).</summary>
internal sealed unsafe class DeviceBuffer : IDisposable
{
    public ulong Pointer { get; private set; }
    public long Bytes { get; }

    internal DeviceBuffer(long bytes)
    {
        ulong p;
        CudaDriver.Check(CudaDriver.cuMemAlloc_v2(&p, (nuint)Math.Max(1, bytes)));
        Pointer = p;
        Bytes = bytes;
    }

    public void Dispose()
    {
        if (Pointer == 0) return;
        _ = CudaDriver.cuMemFree_v2(Pointer); // nothing useful to do with a failure while freeing
        Pointer = 0;
    }
}
