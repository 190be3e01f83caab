using System.Runtime.InteropServices;

namespace FitLM.KvCache;

/// <summary>
/// Fixed-size pages of unmanaged memory for KV stores, handed out on demand and returned when a sequence ends
/// (PagedAttention's block allocator). Many sequences may share one pool; pages are reused before the pool
/// grows. The pool grows by slabs of several pages and keeps them until <see cref="Trim"/> or disposal, so a
/// steady workload stops allocating. Rent and Return are thread-safe; nothing managed is allocated per page.
/// </summary>
public sealed unsafe class KvPagePool : IDisposable
{
    public int PageBytes { get; }
    public int PagesPerSlab { get; }

    private byte*[] _slabs = new byte*[64];
    private int _slabCount;
    private int[] _free = new int[256];
    private int _freeCount;
    private int _inUse;
    private readonly object _lock = new();

    /// <param name="pageBytes">Bytes per page (rounded up to 64 for aligned vector access).</param>
    /// <param name="slabBytes">About how much memory one growth step adds (at least one page).</param>
    public KvPagePool(int pageBytes, int slabBytes = 1 << 20)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(pageBytes);
        PageBytes = Round(pageBytes);
        PagesPerSlab = Math.Max(1, slabBytes / PageBytes);
    }

    /// <summary>Page sizes are multiples of 64 bytes, so every page starts on a cache line.</summary>
    public static int Round(int pageBytes) => (pageBytes + 63) & ~63;

    /// <summary>Pages handed out and not yet returned.</summary>
    public int PagesInUse => Volatile.Read(ref _inUse);
    /// <summary>Pages the pool holds (in use or free).</summary>
    public int PagesReserved => Volatile.Read(ref _slabCount) * PagesPerSlab;
    public long BytesReserved => (long)PagesReserved * PageBytes;
    public long BytesInUse => (long)PagesInUse * PageBytes;

    /// <summary>A page id; its memory (contents undefined) is at <see cref="Page"/>.</summary>
    public int Rent()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_slabs.Length == 0, this);
            if (_freeCount == 0) Grow();
            _inUse++;
            return _free[--_freeCount];
        }
    }

    public void Return(int page)
    {
        lock (_lock)
        {
            if ((uint)page >= (uint)(_slabCount * PagesPerSlab)) throw new ArgumentOutOfRangeException(nameof(page));
            _free[_freeCount++] = page;
            _inUse--;
        }
    }

    public byte* Page(int page) => Volatile.Read(ref _slabs)[page / PagesPerSlab] + (long)(page % PagesPerSlab) * PageBytes;

    public Span<byte> PageSpan(int page) => new(Page(page), PageBytes);

    private void Grow()
    {
        if (_slabCount == _slabs.Length)
        {
            var bigger = new byte*[_slabs.Length * 2];
            Array.Copy(_slabs, bigger, _slabCount);
            Volatile.Write(ref _slabs, bigger);
        }
        int total = (_slabCount + 1) * PagesPerSlab;
        if (_free.Length < total) Array.Resize(ref _free, Math.Max(total, _free.Length * 2));
        _slabs[_slabCount] = (byte*)NativeMemory.AlignedAlloc((nuint)((long)PagesPerSlab * PageBytes), 64);
        // Hand out the new slab's pages lowest id first.
        for (int i = PagesPerSlab - 1; i >= 0; i--) _free[_freeCount++] = _slabCount * PagesPerSlab + i;
        Volatile.Write(ref _slabCount, _slabCount + 1);
    }

    /// <summary>Frees trailing slabs whose pages are all free (memory goes back to the system).</summary>
    public void Trim()
    {
        lock (_lock)
        {
            while (_slabCount > 0)
            {
                int first = (_slabCount - 1) * PagesPerSlab, freeInSlab = 0;
                for (int i = 0; i < _freeCount; i++) if (_free[i] >= first) freeInSlab++;
                if (freeInSlab < PagesPerSlab) break;
                int w = 0;
                for (int i = 0; i < _freeCount; i++) if (_free[i] < first) _free[w++] = _free[i];
                _freeCount = w;
                NativeMemory.AlignedFree(_slabs[--_slabCount]);
                _slabs[_slabCount] = null;
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            for (int i = 0; i < _slabCount; i++) NativeMemory.AlignedFree(_slabs[i]);
            _slabCount = 0;
            _freeCount = 0;
            _slabs = [];
        }
        GC.SuppressFinalize(this);
    }

    ~KvPagePool() => Dispose();
}
