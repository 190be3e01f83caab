using FitLM.Tensors;
using FitLM.Tensors.Jit;
using Xunit;
using Xunit.Abstractions;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The kernels generated at load (src/FitLM/Tensors/Jit, docs/jit.md): the emitter's encodings against the bytes
/// GNU as (binutils 2.42) assembles for the same instructions, the W^X executable pages, and the generated F16
/// kernels against the managed Vector512 kernel they replace (bit for bit: same operations, same order) and the
/// scalar reference (within the float tolerance the other float kernels are held to). The generated-code tests
/// are skipped, with the reason printed, where the machine cannot run them (not Linux x64, no AVX-512F, or
/// FITLM_JIT=0).
/// </summary>
public unsafe class JitTests(ITestOutputHelper output)
{
    // ---------------------------------------------------------------- encodings

    /// <summary>Assembly (Intel syntax, as objdump prints it), the bytes as assembles, and the emitter call.</summary>
    private static readonly (string Asm, string Hex, Action<X86Emitter> Emit)[] Encodings =
    [
        // vcvtph2ps: EVEX.512.66.0F38.W0 13 /r, disp8·32
        ("vcvtph2ps zmm4, ymmword ptr [rdi+rax*2]", "62 f2 7d 48 13 24 47", e => e.Vcvtph2ps(4, Mem.At(Reg64.Rdi, Reg64.Rax, 2))),
        ("vcvtph2ps zmm7, ymmword ptr [rdi+rax*2+96]", "62 f2 7d 48 13 7c 47 03", e => e.Vcvtph2ps(7, Mem.At(Reg64.Rdi, Reg64.Rax, 2, 96))),
        ("vcvtph2ps zmm17, ymmword ptr [r13+0]", "62 c2 7d 48 13 4d 00", e => e.Vcvtph2ps(17, Mem.At(Reg64.R13))),
        ("vcvtph2ps zmm31, ymmword ptr [r12+r11*8+40]", "62 02 7d 48 13 bc dc 28 00 00 00", e => e.Vcvtph2ps(31, Mem.At(Reg64.R12, Reg64.R11, 8, 40))),
        ("vcvtph2ps zmm1, ymm18", "62 b2 7d 48 13 ca", e => e.Vcvtph2ps(1, 18)),
        ("vcvtph2ps zmm20, ymm3", "62 e2 7d 48 13 e3", e => e.Vcvtph2ps(20, 3)),
        // vfmadd231ps: EVEX.512.66.0F38.W0 B8 /r, disp8·64
        ("vfmadd231ps zmm0, zmm4, zmmword ptr [rcx+rax*4]", "62 f2 5d 48 b8 04 81", e => e.Vfmadd231ps(0, 4, Mem.At(Reg64.Rcx, Reg64.Rax, 4))),
        ("vfmadd231ps zmm3, zmm7, zmmword ptr [rcx+rax*4+192]", "62 f2 45 48 b8 5c 81 03", e => e.Vfmadd231ps(3, 7, Mem.At(Reg64.Rcx, Reg64.Rax, 4, 192))),
        ("vfmadd231ps zmm16, zmm25, zmmword ptr [rsp+8192]", "62 e2 35 40 b8 84 24 00 20 00 00", e => e.Vfmadd231ps(16, 25, Mem.At(Reg64.Rsp, 8192))),
        ("vfmadd231ps zmm9, zmm30, zmm21", "62 32 0d 40 b8 cd", e => e.Vfmadd231ps(9, 30, 21)),
        // vaddps, vpxord
        ("vaddps zmm0, zmm0, zmm1", "62 f1 7c 48 58 c1", e => e.Vaddps(0, 0, 1)),
        ("vaddps zmm29, zmm14, zmm19", "62 21 0c 48 58 eb", e => e.Vaddps(29, 14, 19)),
        ("vpxord zmm2, zmm2, zmm2", "62 f1 6d 48 ef d2", e => e.Vpxord(2, 2, 2)),
        ("vpxord zmm24, zmm24, zmm24", "62 01 3d 40 ef c0", e => e.Vpxord(24, 24, 24)),
        // moves
        ("vmovups zmm5, zmmword ptr [rbp-64]", "62 f1 7c 48 10 6d ff", e => e.Vmovups(5, Mem.At(Reg64.Rbp, -64))),
        ("vmovups zmmword ptr [rsi+rax*4+128], zmm3", "62 f1 7c 48 11 5c 86 02", e => e.Vmovups(Mem.At(Reg64.Rsi, Reg64.Rax, 4, 128), 3)),
        ("vmovups zmmword ptr [r9+r10*4-8256], zmm23", "62 81 7c 48 11 bc 91 c0 df ff ff", e => e.Vmovups(Mem.At(Reg64.R9, Reg64.R10, 4, -8256), 23)),
        ("vmovdqu8 zmm6, zmmword ptr [rdx+64]", "62 f1 7f 48 6f 72 01", e => e.Vmovdqu8(6, Mem.At(Reg64.Rdx, 64))),
        ("{evex} vmovss dword ptr [r9], xmm0", "62 d1 7e 08 11 01", e => e.Vmovss(Mem.At(Reg64.R9), 0)),
        ("vmovss dword ptr [rax+12], xmm17", "62 e1 7e 08 11 48 03", e => e.Vmovss(Mem.At(Reg64.Rax, 12), 17)),
        // shuffles
        ("vpermilps zmm1, zmm0, 0xb1", "62 f3 7d 48 04 c8 b1", e => e.Vpermilps(1, 0, 0xB1)),
        ("vpermilps zmm22, zmm9, 0x4e", "62 c3 7d 48 04 f1 4e", e => e.Vpermilps(22, 9, 0x4E)),
        ("vshuff32x4 zmm1, zmm0, zmm0, 0xb1", "62 f3 7d 48 23 c8 b1", e => e.Vshuff32x4(1, 0, 0, 0xB1)),
        ("vshuff32x4 zmm27, zmm12, zmm18, 0x4e", "62 23 1d 48 23 da 4e", e => e.Vshuff32x4(27, 12, 18, 0x4E)),
        // dot-product instructions
        ("vpdpbusd zmm0, zmm1, zmm2", "62 f2 75 48 50 c2", e => e.Vpdpbusd(0, 1, 2)),
        ("vpdpbusd zmm20, zmm5, zmmword ptr [r8+rax*1+128]", "62 c2 55 48 50 64 00 02", e => e.Vpdpbusd(20, 5, Mem.At(Reg64.R8, Reg64.Rax, 1, 128))),
        ("vdpbf16ps zmm3, zmm4, zmm29", "62 92 5e 48 52 dd", e => e.Vdpbf16ps(3, 4, 29)),
        // the rest
        ("vzeroupper", "c5 f8 77", e => e.Vzeroupper()),
        ("ret", "c3", e => e.Ret()),
        ("mov r10, r8", "4d 89 c2", e => e.Mov(Reg64.R10, Reg64.R8)),
        ("mov rax, rdi", "48 89 f8", e => e.Mov(Reg64.Rax, Reg64.Rdi)),
        ("add rdi, rsi", "48 01 f7", e => e.Add(Reg64.Rdi, Reg64.Rsi)),
        ("add r9, 4", "49 83 c1 04", e => e.Add(Reg64.R9, 4)),
        ("add rax, 64", "48 83 c0 40", e => e.Add(Reg64.Rax, 64)),
        ("add rcx, 1000", "48 81 c1 e8 03 00 00", e => e.Add(Reg64.Rcx, 1000)),
        ("sub rdx, 1", "48 83 ea 01", e => e.Sub(Reg64.Rdx, 1)),
        ("sub r11, rbx", "49 29 db", e => e.Sub(Reg64.R11, Reg64.Rbx)),
        ("and r10, -64", "49 83 e2 c0", e => e.And(Reg64.R10, -64)),
        ("cmp rax, r10", "4c 39 d0", e => e.Cmp(Reg64.Rax, Reg64.R10)),
        ("cmp r14, 300", "49 81 fe 2c 01 00 00", e => e.Cmp(Reg64.R14, 300)),
        ("test rdx, rdx", "48 85 d2", e => e.Test(Reg64.Rdx, Reg64.Rdx)),
        ("xor eax, eax", "31 c0", e => e.Xor32(Reg64.Rax, Reg64.Rax)),
        ("xor r11d, r11d", "45 31 db", e => e.Xor32(Reg64.R11, Reg64.R11)),
        ("shl rax, 3", "48 c1 e0 03", e => e.Shl(Reg64.Rax, 3)),
        ("dec rdx", "48 ff ca", e => e.Dec(Reg64.Rdx)),
        ("dec r12", "49 ff cc", e => e.Dec(Reg64.R12)),
        ("lea rax, [rdi+rsi*2+16]", "48 8d 44 77 10", e => e.Lea(Reg64.Rax, Mem.At(Reg64.Rdi, Reg64.Rsi, 2, 16))),
        ("lea r13, [r13+0]", "4d 8d 6d 00", e => e.Lea(Reg64.R13, Mem.At(Reg64.R13))),
        ("prefetcht0 byte ptr [rdi+512]", "0f 18 8f 00 02 00 00", e => e.Prefetcht0(Mem.At(Reg64.Rdi, 512))),
        ("prefetcht0 byte ptr [r8+rax*2]", "41 0f 18 0c 40", e => e.Prefetcht0(Mem.At(Reg64.R8, Reg64.Rax, 2))),
    ];

    public static IEnumerable<object[]> EncodingNames() => Encodings.Select(c => new object[] { c.Asm });

    [Theory]
    [MemberData(nameof(EncodingNames))]
    public void Emitter_EncodesAsGnuAs(string asm)
    {
        var (_, hex, emit) = Encodings.Single(c => c.Asm == asm);
        var e = new X86Emitter();
        emit(e);
        Assert.Equal(hex, string.Join(" ", e.ToArray().Select(b => b.ToString("x2"))));
    }

    [Fact]
    public void Emitter_PatchesJumpsBothWays()
    {
        var e = new X86Emitter();
        Label back = e.NewLabel(), forward = e.NewLabel();
        e.Bind(back);
        e.Ret();                          // 0: c3
        e.J(Cond.NotEqual, back);         // 1: jne 0     -> 0f 85 f9 ff ff ff (0 - 7 = -7)
        e.Jmp(forward);                   // 7: jmp 13    -> e9 01 00 00 00   (13 - 12 = 1)
        e.Ret();                          // 12: c3
        e.Bind(forward);
        e.J(Cond.Below, forward);         // 13: jb 13    -> 0f 82 fa ff ff ff (13 - 19 = -6)
        Assert.Equal("c3 0f 85 f9 ff ff ff e9 01 00 00 00 c3 0f 82 fa ff ff ff",
            string.Join(" ", e.ToArray().Select(b => b.ToString("x2"))));
    }

    [Fact]
    public void Emitter_RejectsUnboundLabelsAndBadOperands()
    {
        var e = new X86Emitter();
        e.Jmp(e.NewLabel());
        Assert.Throws<InvalidOperationException>(() => e.ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => new X86Emitter().Vaddps(32, 0, 0));
        Assert.Throws<ArgumentException>(() => new X86Emitter().Vmovups(0, Mem.At(Reg64.Rax, Reg64.Rsp, 1)));
    }

    [Fact]
    public void Emitter_AlignsWithNops()
    {
        var e = new X86Emitter();
        e.Ret();
        e.Align(16);
        Assert.Equal(16, e.Length);
        e.Align(16);
        Assert.Equal(16, e.Length);
    }

    // ---------------------------------------------------------------- executable memory

    [Fact]
    public void ExecutableMemory_IsReadExecuteNotWritable_AndRuns()
    {
        if (!ExecutableMemory.IsSupported) { output.WriteLine("skipped: executable memory needs Linux x64"); return; }
        var e = new X86Emitter();
        e.Mov(Reg64.Rax, Reg64.Rdi); // rax = a + b
        e.Add(Reg64.Rax, Reg64.Rsi);
        e.Ret();
        using var code = ExecutableMemory.TryCreate(e.ToArray());
        Assert.NotNull(code);
        long start = (long)code.Pointer;
        Assert.Equal(0, start % Environment.SystemPageSize);
        string perms = MappingPermissions(start);
        Assert.Equal("r-xp", perms); // W^X: executable, never writable
        var add = (delegate* unmanaged<long, long, long>)code.Pointer;
        Assert.Equal(42, add(40, 2));
        code.Dispose(); // unmapped: /proc/self/maps cannot show it, another thread may map the same address at once
        Assert.Throws<ObjectDisposedException>(() => (long)code.Pointer);
    }

    [Fact]
    public void GeneratedKernels_PagesAreNotWritable()
    {
        if (GeneratedKernels.Unavailable is { } why) { output.WriteLine($"skipped: {why}"); return; }
        delegate* unmanaged[SuppressGCTransition]<byte*, long, long, float*, long, float*, void> f = GeneratedKernels.F16RowsCode;
        Assert.Equal("r-xp", MappingPermissions((long)f));
    }

    /// <summary>The permissions /proc/self/maps lists for the mapping that contains address.</summary>
    private static string MappingPermissions(long address)
    {
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var range = parts[0].Split('-');
            long lo = Convert.ToInt64(range[0], 16), hi = Convert.ToInt64(range[1], 16);
            if (address >= lo && address < hi) return parts[1];
        }
        throw new InvalidOperationException($"{address:x} is not mapped");
    }

    // ---------------------------------------------------------------- generated F16 kernels

    /// <summary>Where the CPU and OS can run them and FITLM_JIT is not 0, generation and its self-check succeed.</summary>
    [Fact]
    public void GeneratedKernels_AreAvailable_WhereSupported()
    {
        output.WriteLine(GeneratedKernels.Unavailable is { } why ? $"managed kernels: {why}" : "generated F16 kernels in use");
        if (!GeneratedKernels.IsSupported || !GeneratedKernels.Enabled) return;
        Assert.True(GeneratedKernels.IsAvailable, GeneratedKernels.Unavailable);
    }

    /// <summary>
    /// Rows of random halves (a spread of magnitudes, a few zeros and subnormals) times random x, for lengths around
    /// every unroll boundary (16 and 64 halves) and row counts that are not multiples of anything; row stride with
    /// padding. Generated = managed Vector512 bit for bit; both within 1e-5·Σ|w·x| of the exact (double) dot, the
    /// tolerance of the other float kernels (float accumulation of up to a few thousand products, relative to the
    /// sum of magnitudes).
    /// </summary>
    [Fact]
    public void GeneratedF16Rows_MatchManagedBitForBit_AndScalarWithinTolerance()
    {
        if (GeneratedKernels.Unavailable is { } why) { output.WriteLine($"skipped: {why}"); return; }
        var rng = new Random(14);
        foreach (int n in new[] { 1, 7, 15, 16, 17, 32, 48, 63, 64, 65, 79, 80, 127, 128, 129, 1000, 2048, 4099 })
            foreach (int rows in new[] { 1, 2, 3, 5, 17, 64, 67, 300 })
            {
                int stride = n + rng.Next(3) * 8; // halves per row, padded
                var h = RandomHalves(rows * stride, rng);
                var x = Gaussian(n, n * 100 + rows);
                var yGen = new float[rows];
                var yMan = new float[rows];
                fixed (ushort* ph = h)
                fixed (float* px = x, pg = yGen, pm = yMan)
                {
                    FloatDot.Kernel(GgmlType.F16, FloatDot.Isa.Vector512)((byte*)ph, 2L * stride, rows, px, n, pg);
                    FloatDot.Kernel(GgmlType.F16, FloatDot.Isa.Vector512, generated: false)((byte*)ph, 2L * stride, rows, px, n, pm);
                }
                for (int r = 0; r < rows; r++)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(yGen[r]) == BitConverter.SingleToInt32Bits(yMan[r]),
                        $"n={n} rows={rows} row {r}: generated {yGen[r]:R} vs managed {yMan[r]:R}");
                    var wd = new float[n];
                    for (int i = 0; i < n; i++) wd[i] = (float)BitConverter.UInt16BitsToHalf(h[r * stride + i]);
                    var (exact, absSum) = ExactDot(wd, x);
                    Assert.True(Math.Abs(yGen[r] - exact) <= 1e-5 * absSum + 1e-30, $"n={n} rows={rows} row {r}: {yGen[r]} vs exact {exact}");
                }
            }
    }

    /// <summary>Every finite half (zeros, subnormals, the largest) as weights, in rows of 1024: generated = managed, bit for bit.</summary>
    [Fact]
    public void GeneratedF16Rows_EveryFiniteHalf_MatchesManaged()
    {
        if (GeneratedKernels.Unavailable is { } why) { output.WriteLine($"skipped: {why}"); return; }
        var finite = Enumerable.Range(0, 65536).Where(i => (i & 0x7C00) != 0x7C00).Select(i => (ushort)i).ToArray();
        const int n = 1024;
        int rows = finite.Length / n;
        var x = Gaussian(n, 7, 1e-3f); // small x keeps 65504·x finite and the sums away from overflow
        var yGen = new float[rows];
        var yMan = new float[rows];
        fixed (ushort* ph = finite)
        fixed (float* px = x, pg = yGen, pm = yMan)
        {
            FloatDot.Kernel(GgmlType.F16, FloatDot.Isa.Vector512)((byte*)ph, 2 * n, rows, px, n, pg);
            FloatDot.Kernel(GgmlType.F16, FloatDot.Isa.Vector512, generated: false)((byte*)ph, 2 * n, rows, px, n, pm);
        }
        for (int r = 0; r < rows; r++)
            Assert.True(BitConverter.SingleToInt32Bits(yGen[r]) == BitConverter.SingleToInt32Bits(yMan[r]), $"row {r}: {yGen[r]:R} vs {yMan[r]:R}");
    }

    [Fact]
    public void GeneratedF16ToFloat_IsExactForEveryFiniteHalf_AnyLength()
    {
        if (GeneratedKernels.Unavailable is { } why) { output.WriteLine($"skipped: {why}"); return; }
        var h = new ushort[65536];
        for (int i = 0; i < h.Length; i++) h[i] = (ushort)i;
        var f = new float[h.Length];
        var managed = new float[h.Length];
        fixed (ushort* ph = h)
        fixed (float* pf = f, pm = managed)
        {
            FloatDot.ToFloat(GgmlType.F16, (byte*)ph, pf, h.Length, FloatDot.Isa.Vector512);
            FloatDot.ToFloat(GgmlType.F16, (byte*)ph, pm, h.Length, FloatDot.Isa.Vector512, generated: false);
        }
        for (int i = 0; i < h.Length; i++)
        {
            if ((i & 0x7C00) == 0x7C00) continue; // inf/NaN: weights never hold them
            uint expect = BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf((ushort)i));
            Assert.Equal(expect, BitConverter.SingleToUInt32Bits(f[i]));
            Assert.Equal(expect, BitConverter.SingleToUInt32Bits(managed[i])); // the managed Vector512 path, no longer the default here
        }
        // Lengths around the 16- and 64-element steps: nothing written past n.
        foreach (int n in new[] { 1, 15, 16, 17, 63, 64, 65, 130 })
        {
            var dst = new float[n + 16];
            Array.Fill(dst, -1f);
            fixed (ushort* ph = h)
            fixed (float* pd = dst)
                FloatDot.ToFloat(GgmlType.F16, (byte*)(ph + 0x3C00), pd, n, FloatDot.Isa.Vector512);
            for (int i = 0; i < n; i++) Assert.Equal((float)BitConverter.UInt16BitsToHalf((ushort)(0x3C00 + i)), dst[i]);
            for (int i = n; i < dst.Length; i++) Assert.Equal(-1f, dst[i]);
        }
    }

    /// <summary>The decode product through MatMul (worker pool, chunks of rows) equals the managed kernel's, bit for bit.</summary>
    [Fact]
    public void MatVec_F16_WithGeneratedKernel_MatchesManaged()
    {
        if (GeneratedKernels.Unavailable is { } why) { output.WriteLine($"skipped: {why}"); return; }
        const int rows = 301, cols = 1024 + 48;
        var rng = new Random(3);
        var h = RandomHalves(rows * cols, rng);
        var x = Gaussian(cols, 5);
        var y = new float[rows];
        var expect = new float[rows];
        fixed (ushort* ph = h)
        fixed (float* px = x, pe = expect)
        {
            MatMul.MatVec(GgmlType.F16, (byte*)ph, 2 * cols, rows, cols, x, y, IntDot.Best, FloatDot.Isa.Vector512);
            FloatDot.Kernel(GgmlType.F16, FloatDot.Isa.Vector512, generated: false)((byte*)ph, 2 * cols, rows, px, cols, pe);
        }
        for (int r = 0; r < rows; r++) Assert.Equal(BitConverter.SingleToInt32Bits(expect[r]), BitConverter.SingleToInt32Bits(y[r]));
    }

    /// <summary>Weight-like halves: magnitudes over 1e-6 .. 10 (so some subnormal halves), either sign, some exact zeros.</summary>
    private static ushort[] RandomHalves(int count, Random rng)
    {
        var h = new ushort[count];
        for (int i = 0; i < count; i++)
        {
            int kind = rng.Next(64);
            h[i] = kind == 0 ? (ushort)(rng.Next(2) << 15)                              // ±0
                : kind == 1 ? (ushort)((rng.Next(2) << 15) | rng.Next(1, 0x400))         // subnormal
                : HalfBits((float)((rng.Next(2) * 2 - 1) * Math.Pow(10, -6 + 7 * rng.NextDouble())));
        }
        return h;
    }
}
