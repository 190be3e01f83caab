using System.Runtime.InteropServices;

namespace FitLM.Backends.Cuda;

/// <summary>
/// One CUDA device: its primary context (made current on the opening thread; use the device from that thread), a
/// stream, loaded modules, buffers, launches and event timing.
/// </summary>
internal sealed unsafe class CudaDevice : IDisposable
{
    private readonly List<nint> _modules = [];
    private nint _context, _stream, _copyStream;

    public int Ordinal { get; }
    public string Name { get; }
    public int Major { get; }
    public int Minor { get; }
    public int Multiprocessors { get; }
    /// <summary>Memory bus width in bits and memory clock in kHz (0 where the driver does not report them).</summary>
    public int BusWidthBits { get; }
    public int MemoryClockKHz { get; }
    public long TotalMemory { get; }
    public nint Stream => _stream;
    /// <summary>
    /// A second stream for host-to-device copies that overlap the kernels on <see cref="Stream"/> (streamed layers). It
    /// does not synchronize with the legacy default stream, so the synchronous copies of a step (logits down,
    /// embeddings up) do not wait for a prefetch in flight.
    /// </summary>
    public nint CopyStream => _copyStream;

    /// <summary>"sm_90" for compute capability 9.0: the architecture NVRTC compiles for.</summary>
    public string Arch => $"sm_{Major}{Minor}";

    /// <summary>Bytes per second the memory interface can move: two transfers per clock (DDR) × bus width.</summary>
    public double TheoreticalBandwidth => 2.0 * MemoryClockKHz * 1000 * BusWidthBits / 8;

    /// <summary>The number of CUDA devices; throws one actionable line when there is no driver or no device.</summary>
    public static int Count()
    {
        CudaLibraries.LoadDriver();
        int r = CudaDriver.cuInit(0);
        if (r == CudaDriver.ErrorNoDevice) throw new FitLMException("no CUDA device: the NVIDIA driver found no GPU");
        CudaDriver.Check(r, "cuInit");
        int count;
        CudaDriver.Check(CudaDriver.cuDeviceGetCount(&count));
        if (count == 0) throw new FitLMException("no CUDA device: the NVIDIA driver found no GPU");
        return count;
    }

    private CudaDevice(int ordinal)
    {
        Ordinal = ordinal;
        int dev;
        CudaDriver.Check(CudaDriver.cuDeviceGet(&dev, ordinal));
        var name = stackalloc byte[256];
        CudaDriver.Check(CudaDriver.cuDeviceGetName(name, 256, dev));
        Name = Marshal.PtrToStringUTF8((nint)name) ?? "?";
        Major = Attribute(dev, CudaDriver.AttrComputeCapabilityMajor);
        Minor = Attribute(dev, CudaDriver.AttrComputeCapabilityMinor);
        Multiprocessors = Attribute(dev, CudaDriver.AttrMultiprocessorCount);
        BusWidthBits = Attribute(dev, CudaDriver.AttrGlobalMemoryBusWidth);
        MemoryClockKHz = Attribute(dev, CudaDriver.AttrMemoryClockRate);
        nuint total;
        CudaDriver.Check(CudaDriver.cuDeviceTotalMem_v2(&total, dev));
        TotalMemory = (long)total;
        nint ctx;
        CudaDriver.Check(CudaDriver.cuDevicePrimaryCtxRetain(&ctx, dev));
        _context = ctx;
        CudaDriver.Check(CudaDriver.cuCtxSetCurrent(ctx));
        nint stream;
        CudaDriver.Check(CudaDriver.cuStreamCreate(&stream, 0));
        _stream = stream;
        CudaDriver.Check(CudaDriver.cuStreamCreate(&stream, CudaDriver.StreamNonBlocking));
        _copyStream = stream;
    }

    /// <summary>Opens device <paramref name="ordinal"/> (cuInit first, through <see cref="Count"/>).</summary>
    public static CudaDevice Open(int ordinal)
    {
        int count = Count();
        if (ordinal < 0 || ordinal >= count) throw new FitLMException($"no CUDA device {ordinal}: this machine has {count}");
        return new CudaDevice(ordinal);
    }

    private static int Attribute(int dev, int attribute)
    {
        int v;
        return CudaDriver.cuDeviceGetAttribute(&v, attribute, dev) == 0 ? v : 0;
    }

    /// <summary>Free device memory now (cuMemGetInfo).</summary>
    public long FreeMemory()
    {
        nuint free, total;
        CudaDriver.Check(CudaDriver.cuMemGetInfo_v2(&free, &total));
        return (long)free;
    }

    public DeviceBuffer Allocate(long bytes) => new(bytes);

    public void Upload<T>(DeviceBuffer dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        long bytes = (long)src.Length * sizeof(T);
        if (bytes > dst.Bytes) throw new ArgumentException("upload larger than the buffer");
        fixed (T* p = src) CudaDriver.Check(CudaDriver.cuMemcpyHtoD_v2(dst.Pointer, p, (nuint)bytes));
    }

    public void Download<T>(DeviceBuffer src, Span<T> dst) where T : unmanaged
    {
        long bytes = (long)dst.Length * sizeof(T);
        if (bytes > src.Bytes) throw new ArgumentException("download larger than the buffer");
        fixed (T* p = dst) CudaDriver.Check(CudaDriver.cuMemcpyDtoH_v2(p, src.Pointer, (nuint)bytes));
    }

    /// <summary>Copies host bytes to a device address (inside a buffer the caller sized).</summary>
    public static void UploadTo<T>(ulong dst, ReadOnlySpan<T> src) where T : unmanaged
    {
        fixed (T* p = src) CudaDriver.Check(CudaDriver.cuMemcpyHtoD_v2(dst, p, (nuint)((long)src.Length * sizeof(T))));
    }

    /// <summary>Copies from a device address into host memory, after the work queued before it (the copy waits for the stream).</summary>
    public static void DownloadFrom<T>(ulong src, Span<T> dst) where T : unmanaged
    {
        fixed (T* p = dst) CudaDriver.Check(CudaDriver.cuMemcpyDtoH_v2(p, src, (nuint)((long)dst.Length * sizeof(T))));
    }

    /// <summary>Makes this device's context current on the calling thread (a model may be driven from another thread than the one that opened it).</summary>
    public void MakeCurrent() => CudaDriver.Check(CudaDriver.cuCtxSetCurrent(_context));

    /// <summary>
    /// Starts recording what is queued on the stream as a CUDA graph (<see cref="EndCapture"/>): replaying it launches the
    /// same kernels with the same arguments at the cost of one launch (the decode step; kernels read what changes from
    /// device memory). Nothing runs while capturing.
    /// </summary>
    public void BeginCapture() => CudaDriver.Check(CudaDriver.cuStreamBeginCapture_v2(_stream, CudaDriver.CaptureModeRelaxed));

    /// <summary>Ends the recording <see cref="BeginCapture"/> started and instantiates it; nothing of it has run.</summary>
    public CudaGraph EndCapture()
    {
        nint graph = 0;
        int r = CudaDriver.cuStreamEndCapture(_stream, &graph);
        if (r != 0 && graph == 0) CudaDriver.Check(r, "cuStreamEndCapture");
        try
        {
            nint exec;
            CudaDriver.Check(CudaDriver.cuGraphInstantiateWithFlags(&exec, graph, 0));
            return new CudaGraph(exec, _stream);
        }
        finally { _ = CudaDriver.cuGraphDestroy(graph); }
    }

    /// <summary>Ends a recording and keeps nothing of it (a pass that failed while it was recorded).</summary>
    public void CancelCapture()
    {
        nint graph = 0;
        _ = CudaDriver.cuStreamEndCapture(_stream, &graph); // the capture may already be invalid: what it held is dropped either way
        if (graph != 0) _ = CudaDriver.cuGraphDestroy(graph);
    }

    /// <summary>Device-to-device copy (the card's bandwidth yardstick, and cache flushing between timed launches).</summary>
    public void Copy(DeviceBuffer dst, DeviceBuffer src, long bytes) =>
        CudaDriver.Check(CudaDriver.cuMemcpyDtoD_v2(dst.Pointer, src.Pointer, (nuint)bytes));

    /// <summary>
    /// The card's measured memory bandwidth, read + write bytes per second of a device-to-device copy of
    /// <paramref name="bytes"/> (median of 5, after one warm-up): the yardstick the kernels' speeds are given against.
    /// </summary>
    public double CopyBandwidth(long bytes = 1L << 30)
    {
        using var a = Allocate(bytes);
        using var b = Allocate(bytes);
        Copy(b, a, bytes);
        Synchronize();
        var times = new List<float>();
        for (int i = 0; i < 5; i++) times.Add(Time(() => Copy(b, a, bytes)));
        times.Sort();
        return 2.0 * bytes / (times[2] * 1e-3);
    }

    /// <summary>An event for ordering work between the two streams (no timing).</summary>
    public static nint CreateEvent()
    {
        nint e;
        CudaDriver.Check(CudaDriver.cuEventCreate(&e, CudaDriver.EventDisableTiming));
        return e;
    }

    /// <summary>Work queued on <paramref name="stream"/> after this waits until the last <paramref name="e"/> recorded before this call has happened.</summary>
    public static void Wait(nint stream, nint e) => CudaDriver.Check(CudaDriver.cuStreamWaitEvent(stream, e, 0));

    public static void Record(nint e, nint stream) => CudaDriver.Check(CudaDriver.cuEventRecord(e, stream));

    /// <summary>Blocks the calling thread until what was queued before the last record of <paramref name="e"/> has run.</summary>
    public static void WaitOnHost(nint e) => CudaDriver.Check(CudaDriver.cuEventSynchronize(e));

    public static void DestroyEvent(nint e) => _ = CudaDriver.cuEventDestroy_v2(e);

    /// <summary>Queues a copy of <paramref name="bytes"/> from <paramref name="offset"/> of pinned host memory to the device on <paramref name="stream"/>; returns at once.</summary>
    public static void CopyAsync(ulong dst, PinnedBuffer src, long bytes, nint stream, long offset = 0)
    {
        if (offset + bytes > src.Bytes) throw new ArgumentException("copy larger than the pinned buffer");
        CudaDriver.Check(CudaDriver.cuMemcpyHtoDAsync_v2(dst, (byte*)src.Pointer + offset, (nuint)bytes, stream));
    }

    /// <summary>Copies device bytes into pinned memory after the work queued on the compute stream, and waits for them.</summary>
    public void Download(PinnedBuffer dst, ulong src, long bytes)
    {
        if (bytes > dst.Bytes) throw new ArgumentException("copy past the pinned buffer");
        CudaDriver.Check(CudaDriver.cuMemcpyDtoHAsync_v2((void*)dst.Pointer, src, (nuint)bytes, _stream));
        Synchronize();
    }

    /// <summary>
    /// Host-to-device bandwidth from pinned memory, bytes per second (a copy of <paramref name="bytes"/>, median of 5
    /// after one warm-up): the bound of a step that streams layers.
    /// </summary>
    public double HostToDeviceBandwidth(long bytes = 256L << 20)
    {
        using var host = new PinnedBuffer(bytes);
        using var dev = Allocate(bytes);
        nint stream = _stream;
        CopyAsync(dev.Pointer, host, bytes, stream);
        Synchronize();
        var times = new List<float>();
        for (int i = 0; i < 5; i++) times.Add(Time(() => CopyAsync(dev.Pointer, host, bytes, stream)));
        times.Sort();
        return bytes / (times[2] * 1e-3);
    }

    /// <summary>Loads a CUBIN; the module lives as long as the device.</summary>
    public nint LoadModule(byte[] cubin)
    {
        nint module;
        fixed (byte* p = cubin) CudaDriver.Check(CudaDriver.cuModuleLoadData(&module, p));
        _modules.Add(module);
        return module;
    }

    public static nint Function(nint module, string name)
    {
        var bytes = Nvrtc.Utf8Z(name);
        nint f;
        fixed (byte* p = bytes) CudaDriver.Check(CudaDriver.cuModuleGetFunction(&f, module, p));
        return f;
    }

    /// <summary>
    /// Launches as programmatic dependent launches (Hopper and later; see common.cuh's pdl_release and pdl_wait): each
    /// kernel may start while the previous one in the stream finishes, and waits for it before touching what it wrote.
    /// Only for work whose kernels are all this project's (each one waits before it reads what an earlier kernel
    /// wrote) and whose weights no copy rewrites during a step: <see cref="CudaBackend"/> turns it on where every layer
    /// is resident. Off by default.
    /// </summary>
    public bool Programmatic
    {
        get => _programmatic;
        set => _programmatic = value && Major >= 9;
    }

    private bool _programmatic;

    /// <summary>Launches on this device's stream; <paramref name="args"/> point at each kernel parameter's value.</summary>
    public void Launch(nint function, uint gridX, uint blockX, uint sharedBytes, void** args) => Launch(function, gridX, 1, blockX, sharedBytes, args);

    /// <summary>A launch of a two-dimensional grid (attention: heads × rows; KIVI: tiles × KV heads).</summary>
    public void Launch(nint function, uint gridX, uint gridY, uint blockX, uint sharedBytes, void** args)
    {
        if (!_programmatic)
        {
            CudaDriver.Check(CudaDriver.cuLaunchKernel(function, gridX, gridY, 1, blockX, 1, 1, sharedBytes, _stream, args, null));
            return;
        }
        var attribute = new CudaDriver.LaunchAttribute { Id = CudaDriver.LaunchAttributeProgrammaticStreamSerialization, Value = 1 };
        var config = new CudaDriver.LaunchConfig
        {
            GridX = gridX, GridY = gridY, GridZ = 1, BlockX = blockX, BlockY = 1, BlockZ = 1, SharedBytes = sharedBytes,
            Stream = _stream, Attributes = &attribute, AttributeCount = 1,
        };
        CudaDriver.Check(CudaDriver.cuLaunchKernelEx(&config, function, args, null));
    }

    public void Synchronize() => CudaDriver.Check(CudaDriver.cuStreamSynchronize(_stream));

    /// <summary>Milliseconds the GPU spent on what <paramref name="body"/> queues on the stream (events around it).</summary>
    public float Time(Action body)
    {
        nint start, end;
        CudaDriver.Check(CudaDriver.cuEventCreate(&start, 0));
        CudaDriver.Check(CudaDriver.cuEventCreate(&end, 0));
        try
        {
            CudaDriver.Check(CudaDriver.cuEventRecord(start, _stream));
            body();
            CudaDriver.Check(CudaDriver.cuEventRecord(end, _stream));
            CudaDriver.Check(CudaDriver.cuEventSynchronize(end));
            float ms;
            CudaDriver.Check(CudaDriver.cuEventElapsedTime(&ms, start, end));
            return ms;
        }
        finally
        {
            _ = CudaDriver.cuEventDestroy_v2(start);
            _ = CudaDriver.cuEventDestroy_v2(end);
        }
    }

    public void Dispose()
    {
        if (_context == 0) return;
        foreach (nint m in _modules) _ = CudaDriver.cuModuleUnload(m);
        _modules.Clear();
        if (_stream != 0) _ = CudaDriver.cuStreamDestroy_v2(_stream);
        if (_copyStream != 0) _ = CudaDriver.cuStreamDestroy_v2(_copyStream);
        _stream = _copyStream = 0;
        int dev;
        if (CudaDriver.cuDeviceGet(&dev, Ordinal) == 0) _ = CudaDriver.cuDevicePrimaryCtxRelease_v2(dev);
        _context = 0;
    }
}

/// <summary>An instantiated CUDA graph (<see cref="CudaDevice.EndCapture"/>), launched on the stream it was captured from.</summary>
internal sealed class CudaGraph(nint exec, nint stream) : IDisposable
{
    private nint _exec = exec;

    public void Launch() => CudaDriver.Check(CudaDriver.cuGraphLaunch(_exec, stream));

    public void Dispose()
    {
        if (_exec != 0) _ = CudaDriver.cuGraphExecDestroy(_exec);
        _exec = 0;
    }
}

/// <summary>Page-locked host memory (cuMemHostAlloc): what a copy engine reads at full speed, and asynchronously.</summary>
internal sealed unsafe class PinnedBuffer : IDisposable
{
    public nint Pointer { get; private set; }
    public long Bytes { get; }

    public PinnedBuffer(long bytes)
    {
        void* p;
        CudaDriver.Check(CudaDriver.cuMemHostAlloc(&p, (nuint)Math.Max(1, bytes), 0));
        Pointer = (nint)p;
        Bytes = bytes;
    }

    /// <summary>The whole buffer as Memory (what several threads fill at once: WeightBlock.WriteTo); blocks are under 2 GiB.</summary>
    public Memory<byte> Memory => (_manager ??= new Manager(this)).Memory;

    private Manager? _manager;

    private sealed class Manager(PinnedBuffer buffer) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => buffer.Slice(0, checked((int)buffer.Bytes));
        public override System.Buffers.MemoryHandle Pin(int elementIndex = 0) => new((byte*)buffer.Pointer + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }

    /// <summary>Bytes [offset, offset + length) of the buffer.</summary>
    public Span<byte> Slice(long offset, int length)
    {
        if (offset < 0 || length < 0 || offset + length > Bytes) throw new ArgumentOutOfRangeException(nameof(offset));
        return new Span<byte>((byte*)Pointer + offset, length);
    }

    public void Dispose()
    {
        if (Pointer == 0) return;
        _ = CudaDriver.cuMemFreeHost((void*)Pointer);
        Pointer = 0;
    }
}
