using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace FitLM.Tensors.Jit;

/// <summary>
/// Kernels whose machine code is generated at load, for instructions .NET 10's intrinsics do not expose
/// (docs/jit.md). Each has the managed kernel it replaces as its fallback and its reference: the generated code
/// runs the same operations in the same order, so results agree bit for bit (tests/FitLM.Tests/Kernels/JitTests.cs).
/// <list type="bullet">
/// <item><see cref="F16Rows"/>: F16 weight rows · float activations (decode). EVEX vcvtph2ps widens 16 halves
/// in one instruction, where <see cref="FloatDot"/>'s managed path needs eight integer operations and a
/// zero-exponent check.</item>
/// <item><see cref="F16ToFloat"/>: an F16 row to float (the batched and prefill paths convert rows once).</item>
/// </list>
/// Generated when first used, on Linux x64 with AVX-512F; FITLM_JIT=0 turns them off. A kernel that fails to
/// generate, map or pass its self-check at load is not used.
/// </summary>
internal static unsafe class GeneratedKernels
{
    /// <summary>FITLM_JIT=0 keeps the managed kernels (also read by the tests to report what ran).</summary>
    internal static readonly bool Enabled = CpuOptions.Default.Jit;

    /// <summary>
    /// Bytes ahead of the halves being converted that the generated F16 row kernel prefetches (0: none): two lines
    /// per 64 halves, 4 KiB ahead (one row of 2048 halves). Measured with FitLM.Bench decode (F16 5632×2048 matrices
    /// from DRAM, best pass) on the 2-core Sapphire Rapids VM: 5-7 GB/s without, 9-13 GB/s at 2-8 KiB.
    /// FITLM_JIT_PREFETCH overrides it (tuning; read by <see cref="CpuOptions"/>).
    /// </summary>
    internal static readonly int PrefetchBytes = CpuOptions.Default.JitPrefetchBytes / 64 * 64;

    /// <summary>The CPU and OS can run the generated kernels (whether or not they are enabled).</summary>
    public static bool IsSupported => ExecutableMemory.IsSupported && Avx512F.IsSupported && Vector512.IsHardwareAccelerated;

    /// <summary>The generated kernels are in use: supported, enabled, generated and self-checked.</summary>
    public static bool IsAvailable => Enabled && Code is not null;

    // ---------------------------------------------------------------- entry points

    /// <summary>
    /// The generated code of <see cref="F16Rows"/>: y[r] = dot(W[r], x[0..n16)) for r in [0, rows), n16 a multiple
    /// of 16. SysV arguments: rdi w, rsi rowBytes, rdx rows, rcx x, r8 n16, r9 y.
    /// </summary>
    internal static delegate* unmanaged[SuppressGCTransition]<byte*, long, long, float*, long, float*, void> F16RowsCode =>
        (delegate* unmanaged[SuppressGCTransition]<byte*, long, long, float*, long, float*, void>)Code!.F16Rows;

    /// <summary>The generated code of <see cref="F16ToFloat"/>: dst[0..n16) = src as float. rdi src, rsi dst, rdx n16.</summary>
    internal static delegate* unmanaged[SuppressGCTransition]<byte*, float*, long, void> F16ToFloatCode =>
        (delegate* unmanaged[SuppressGCTransition]<byte*, float*, long, void>)Code!.F16ToFloat;

    /// <summary>
    /// <see cref="FloatDot"/>'s F16 row kernel (same signature, same result bit for bit as its Vector512 path):
    /// the generated code for the 16-element part of each row, then the remaining elements as the managed kernel
    /// adds them (one rounded product and one rounded sum each).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void F16Rows(byte* w, long rowBytes, int rows, float* x, int n, float* y)
    {
        if (rows <= 0) return;
        int n16 = n & ~15;
        // The calls skip the GC transition (a few instructions instead of a few dozen), so the GC waits for each to
        // return: at most GcChunkRows rows a call (MatMul's decode items are 64 rows; tools may pass a whole matrix).
        for (int r0 = 0; r0 < rows; r0 += GcChunkRows)
            F16RowsCode(w + r0 * rowBytes, rowBytes, Math.Min(GcChunkRows, rows - r0), x, n16, y + r0);
        if (n16 == n) return;
        for (int r = 0; r < rows; r++)
        {
            short* h = (short*)(w + r * rowBytes);
            float s = y[r];
            for (int i = n16; i < n; i++) s += IntDot.F16[(ushort)h[i]] * x[i];
            y[r] = s;
        }
    }

    private const int GcChunkRows = 256;

    /// <summary>n halves at src → float at dst, exactly (every finite half, subnormals included).</summary>
    internal static void F16ToFloat(byte* src, float* dst, int n)
    {
        int n16 = n & ~15;
        for (int i = 0; i < n16; i += GcChunkRows * 4096)
            F16ToFloatCode(src + 2L * i, dst + i, Math.Min(GcChunkRows * 4096, n16 - i));
        short* h = (short*)src;
        for (int i = n16; i < n; i++) dst[i] = IntDot.F16[(ushort)h[i]];
    }

    // ---------------------------------------------------------------- generation

    private sealed class Kernels
    {
        public required ExecutableMemory Memory;
        public required nint F16Rows;
        public required nint F16ToFloat;
    }

    private static Kernels? Code => s_code.Value;

    private static readonly Lazy<Kernels?> s_code = new(Generate);

    /// <summary>Why the generated kernels are not in use (null when they are), for the tests' output.</summary>
    public static string? Unavailable => !Enabled ? "FITLM_JIT=0"
        : !ExecutableMemory.IsSupported ? "not Linux x64"
        : !Avx512F.IsSupported || !Vector512.IsHardwareAccelerated ? "the CPU has no AVX-512F"
        : Code is null ? "generation or its self-check failed" : null;

    private static Kernels? Generate()
    {
        if (!Enabled || !IsSupported) return null;
        var e = new X86Emitter();
        int rowsAt = e.Length;
        EmitF16Rows(e);
        e.Align(64);
        int toFloatAt = e.Length;
        EmitF16ToFloat(e);
        var memory = ExecutableMemory.TryCreate(e.ToArray());
        if (memory is null) return null;
        var k = new Kernels { Memory = memory, F16Rows = (nint)(memory.Pointer + rowsAt), F16ToFloat = (nint)(memory.Pointer + toFloatAt) };
        if (!SelfCheck(k))
        {
            memory.Dispose();
            return null;
        }
        return k;
    }

    /// <summary>Runs each kernel once on a small input against the managed conversion; a mismatch disables them.</summary>
    private static bool SelfCheck(Kernels k)
    {
        const int n = 80, rows = 3;
        var h = stackalloc ushort[n * rows];
        var x = stackalloc float[n];
        var f = stackalloc float[n * rows];
        var y = stackalloc float[rows];
        for (int i = 0; i < n * rows; i++) h[i] = (ushort)(i * 2654435761u >> 17 & 0xBFFF); // finite halves of either sign
        for (int i = 0; i < n; i++) x[i] = 1f / (i + 1);
        ((delegate* unmanaged[SuppressGCTransition]<byte*, float*, long, void>)k.F16ToFloat)((byte*)h, f, n * rows);
        for (int i = 0; i < n * rows; i++)
            if (f[i] != IntDot.F16[h[i]]) return false;
        ((delegate* unmanaged[SuppressGCTransition]<byte*, long, long, float*, long, float*, void>)k.F16Rows)((byte*)h, 2 * n, rows, x, n, y);
        for (int r = 0; r < rows; r++)
        {
            float expect = FloatDot.Dot(GgmlType.F16, (byte*)(h + r * n), x, n, FloatDot.Isa.Vector512, generated: false);
            if (BitConverter.SingleToInt32Bits(y[r]) != BitConverter.SingleToInt32Bits(expect)) return false;
        }
        return true;
    }

    /// <summary>
    /// F16 rows · x, FloatDot's Vector512 F16 kernel instruction for instruction: four accumulators over 64 halves
    /// a step, then 16 at a time into the first, then (a0 + a1) + (a2 + a3) summed as .NET's Vector512.Sum does
    /// (adjacent pairs, then pairs of pairs within each 128-bit lane, then neighbouring lanes, then halves).
    /// </summary>
    private static void EmitF16Rows(X86Emitter e)
    {
        const Reg64 w = Reg64.Rdi, rowBytes = Reg64.Rsi, rows = Reg64.Rdx, x = Reg64.Rcx, n16 = Reg64.R8, y = Reg64.R9;
        const Reg64 i = Reg64.Rax, n64 = Reg64.R10;
        Label rowLoop = e.NewLabel(), loop64 = e.NewLabel(), tail = e.NewLabel(), loop16 = e.NewLabel(), reduce = e.NewLabel(), done = e.NewLabel();
        e.Test(rows, rows);
        e.J(Cond.LessOrEqual, done);
        e.Mov(n64, n16);
        e.And(n64, -64);
        e.Align(16);
        e.Bind(rowLoop);
        for (int a = 0; a < 4; a++) e.Vpxord(a, a, a);
        e.Xor32(i, i);
        e.Test(n64, n64);
        e.J(Cond.Equal, tail);
        e.Align(16);
        e.Bind(loop64);
        if (PrefetchBytes > 0)
        {
            e.Prefetcht0(Mem.At(w, i, 2, PrefetchBytes));
            e.Prefetcht0(Mem.At(w, i, 2, PrefetchBytes + 64));
        }
        for (int a = 0; a < 4; a++) e.Vcvtph2ps(4 + a, Mem.At(w, i, 2, 32 * a));
        for (int a = 0; a < 4; a++) e.Vfmadd231ps(a, 4 + a, Mem.At(x, i, 4, 64 * a));
        e.Add(i, 64);
        e.Cmp(i, n64);
        e.J(Cond.Below, loop64);
        e.Bind(tail);
        e.Cmp(i, n16);
        e.J(Cond.AboveOrEqual, reduce);
        e.Bind(loop16);
        e.Vcvtph2ps(4, Mem.At(w, i, 2));
        e.Vfmadd231ps(0, 4, Mem.At(x, i, 4));
        e.Add(i, 16);
        e.Cmp(i, n16);
        e.J(Cond.Below, loop16);
        e.Bind(reduce);
        e.Vaddps(0, 0, 1);
        e.Vaddps(2, 2, 3);
        e.Vaddps(0, 0, 2);
        e.Vpermilps(1, 0, 0xB1); // swap neighbours: e0+e1 in both
        e.Vaddps(0, 0, 1);
        e.Vpermilps(1, 0, 0x4E); // swap pairs: the lane's sum in all four
        e.Vaddps(0, 0, 1);
        e.Vshuff32x4(1, 0, 0, 0xB1); // swap neighbouring lanes
        e.Vaddps(0, 0, 1);
        e.Vshuff32x4(1, 0, 0, 0x4E); // swap 256-bit halves
        e.Vaddps(0, 0, 1);
        e.Vmovss(Mem.At(y), 0);
        e.Add(y, 4);
        e.Add(w, rowBytes);
        e.Dec(rows);
        e.J(Cond.NotEqual, rowLoop);
        e.Bind(done);
        e.Vzeroupper();
        e.Ret();
    }

    /// <summary>dst[i] = (float)src[i] for i in [0, n16), 64 then 16 at a time.</summary>
    private static void EmitF16ToFloat(X86Emitter e)
    {
        const Reg64 src = Reg64.Rdi, dst = Reg64.Rsi, n16 = Reg64.Rdx, i = Reg64.Rax, n64 = Reg64.Rcx;
        Label loop64 = e.NewLabel(), tail = e.NewLabel(), loop16 = e.NewLabel(), done = e.NewLabel();
        e.Xor32(i, i);
        e.Mov(n64, n16);
        e.And(n64, -64);
        e.Test(n64, n64);
        e.J(Cond.Equal, tail);
        e.Align(16);
        e.Bind(loop64);
        for (int a = 0; a < 4; a++) e.Vcvtph2ps(a, Mem.At(src, i, 2, 32 * a));
        for (int a = 0; a < 4; a++) e.Vmovups(Mem.At(dst, i, 4, 64 * a), a);
        e.Add(i, 64);
        e.Cmp(i, n64);
        e.J(Cond.Below, loop64);
        e.Bind(tail);
        e.Cmp(i, n16);
        e.J(Cond.AboveOrEqual, done);
        e.Bind(loop16);
        e.Vcvtph2ps(0, Mem.At(src, i, 2));
        e.Vmovups(Mem.At(dst, i, 4), 0);
        e.Add(i, 16);
        e.Cmp(i, n16);
        e.J(Cond.Below, loop16);
        e.Bind(done);
        e.Vzeroupper();
        e.Ret();
    }
}
