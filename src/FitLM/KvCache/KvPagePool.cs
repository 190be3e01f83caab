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
    private int _slabCount;     // slots used, freed ones included
    private int _liveSlabs;     // slots holding memory
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
    public int PagesReserved => Volatile.Read(ref _liveSlabs) * PagesPerSlab;
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
        for (int s = 0; s < _slabCount; s++)
            if (_slabs[s] == null)
            {
                Allocate(s);
                return;
            }
        if (_slabCount == _slabs.Length)
        {
            var bigger = new byte*[_slabs.Length * 2];
            Array.Copy(_slabs, bigger, _slabCount);
            Volatile.Write(ref _slabs, bigger);
        }
        int total = (_slabCount + 1) * PagesPerSlab;
        if (_free.Length < total) Array.Resize(ref _free, Math.Max(total, _free.Length * 2));
        Allocate(_slabCount);
        Volatile.Write(ref _slabCount, _slabCount + 1);
    }

    /// <summary>Allocates slab slot s (new, or one <see cref="Trim"/> freed) and puts its pages on the free list.</summary>
    private void Allocate(int s)
    {
        _slabs[s] = (byte*)NativeMemory.AlignedAlloc((nuint)((long)PagesPerSlab * PageBytes), 64);
        _liveSlabs++;
        // Hand out the new slab's pages lowest id first.
        for (int i = PagesPerSlab - 1; i >= 0; i--) _free[_freeCount++] = s * PagesPerSlab + i;
    }

    /// <summary>
    /// Frees every slab whose pages are all free (memory goes back to the system), wherever it lies: a store
    /// converted layer by layer returns pages spread over the pool, and the slabs they empty must go back while the
    /// conversion runs, not only those at the end. A freed slab's slot is reused by the next growth.
    /// </summary>
    public void Trim()
    {
        lock (_lock)
        {
            if (_freeCount < PagesPerSlab) return;
            var freeInSlab = new int[_slabCount];
            for (int i = 0; i < _freeCount; i++) freeInSlab[_free[i] / PagesPerSlab]++;
            int w = 0;
            for (int i = 0; i < _freeCount; i++) if (freeInSlab[_free[i] / PagesPerSlab] < PagesPerSlab) _free[w++] = _free[i];
            _freeCount = w;
            for (int s = 0; s < _slabCount; s++)
            {
                if (freeInSlab[s] < PagesPerSlab) continue;
                NativeMemory.AlignedFree(_slabs[s]);
                _slabs[s] = null;
                _liveSlabs--;
            }
            while (_slabCount > 0 && _slabs[_slabCount - 1] == null) _slabCount--;
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            for (int i = 0; i < _slabCount; i++) NativeMemory.AlignedFree(_slabs[i]);
            _slabCount = 0;
            _liveSlabs = 0;
            _freeCount = 0;
            _slabs = [];
        }
        GC.SuppressFinalize(this);
    }

    ~KvPagePool() => Dispose();
}
