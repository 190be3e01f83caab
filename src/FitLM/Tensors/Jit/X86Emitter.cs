namespace FitLM.Tensors.Jit;

/// <summary>The 64-bit general-purpose registers, numbered as the instruction encoding numbers them.</summary>
internal enum Reg64
{
    Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi,
    R8, R9, R10, R11, R12, R13, R14, R15,
}

/// <summary>Condition codes of jcc (the low nibble of 0F 8x).</summary>
internal enum Cond
{
    Below = 0x2, AboveOrEqual = 0x3, Equal = 0x4, NotEqual = 0x5, BelowOrEqual = 0x6, Above = 0x7,
    Less = 0xC, GreaterOrEqual = 0xD, LessOrEqual = 0xE, Greater = 0xF,
}

/// <summary>A memory operand [base + index·scale + disp] (no index: <see cref="Index"/> null).</summary>
internal readonly record struct Mem(Reg64 Base, Reg64? Index = null, int Scale = 1, int Disp = 0)
{
    public static Mem At(Reg64 b, int disp = 0) => new(b, null, 1, disp);
    public static Mem At(Reg64 b, Reg64 index, int scale, int disp = 0) => new(b, index, scale, disp);
}

/// <summary>A jump target; bound once with <see cref="X86Emitter.Bind"/>.</summary>
internal readonly record struct Label(int Id);

/// <summary>
/// A small x86-64 assembler for exactly the instructions FitLM's generated kernels use (see docs/jit.md):
/// a few GPR instructions for loops (REX-encoded), and AVX-512 vector instructions in their EVEX encoding
/// (Intel SDM vol. 2, §2.7: the 4-byte 62 prefix, disp8·N compressed displacements), which also reaches
/// zmm16–zmm31. Vector registers are given by number 0–31 (zmm, or ymm/xmm where the instruction says so).
/// Jumps always take a 32-bit displacement (patched when the label is bound or at <see cref="ToArray"/>).
/// Each encoding is tested against the bytes GNU as produces (tests/FitLM.Tests/Kernels/JitTests.cs).
/// </summary>
internal sealed class X86Emitter
{
    private readonly List<byte> _code = new(1024);
    private readonly List<int> _labels = [];
    private readonly List<(int At, int Label)> _fixups = [];

    public int Length => _code.Count;

    public byte[] ToArray()
    {
        foreach (var (at, label) in _fixups)
        {
            int target = _labels[label];
            if (target < 0) throw new InvalidOperationException($"label {label} is not bound");
            int rel = target - (at + 4);
            for (int i = 0; i < 4; i++) _code[at + i] = (byte)(rel >> (8 * i));
        }
        return [.. _code];
    }

    // ---------------------------------------------------------------- labels and jumps

    public Label NewLabel()
    {
        _labels.Add(-1);
        return new Label(_labels.Count - 1);
    }

    public void Bind(Label l)
    {
        if (_labels[l.Id] >= 0) throw new InvalidOperationException($"label {l.Id} bound twice");
        _labels[l.Id] = _code.Count;
    }

    /// <summary>Pads with multi-byte nops to a multiple of <paramref name="alignment"/> (loop heads).</summary>
    public void Align(int alignment)
    {
        int pad = (alignment - _code.Count % alignment) % alignment;
        while (pad > 0)
        {
            // The SDM's recommended nop forms: 90; 66 90; 0F 1F 00; 0F 1F 40 00; 0F 1F 44 00 00; 66 0F 1F 44 00 00.
            int k = Math.Min(pad, 6);
            byte[] nop = k switch
            {
                1 => [0x90],
                2 => [0x66, 0x90],
                3 => [0x0F, 0x1F, 0x00],
                4 => [0x0F, 0x1F, 0x40, 0x00],
                5 => [0x0F, 0x1F, 0x44, 0x00, 0x00],
                _ => [0x66, 0x0F, 0x1F, 0x44, 0x00, 0x00],
            };
            _code.AddRange(nop);
            pad -= k;
        }
    }

    /// <summary>jcc rel32: 0F 80+cc cd.</summary>
    public void J(Cond cc, Label target)
    {
        Byte(0x0F);
        Byte((byte)(0x80 | (int)cc));
        Rel32(target);
    }

    /// <summary>jmp rel32: E9 cd.</summary>
    public void Jmp(Label target)
    {
        Byte(0xE9);
        Rel32(target);
    }

    private void Rel32(Label target)
    {
        _fixups.Add((_code.Count, target.Id));
        Int32(0);
    }

    // ---------------------------------------------------------------- general-purpose instructions

    /// <summary>ret: C3.</summary>
    public void Ret() => Byte(0xC3);

    /// <summary>vzeroupper: C5 F8 77 (VEX.128.0F.WIG 77).</summary>
    public void Vzeroupper()
    {
        Byte(0xC5);
        Byte(0xF8);
        Byte(0x77);
    }

    /// <summary>mov r64, r64: REX.W 89 /r.</summary>
    public void Mov(Reg64 dst, Reg64 src) => RegReg(0x89, src, dst);

    /// <summary>add r64, r64: REX.W 01 /r.</summary>
    public void Add(Reg64 dst, Reg64 src) => RegReg(0x01, src, dst);

    /// <summary>sub r64, r64: REX.W 29 /r.</summary>
    public void Sub(Reg64 dst, Reg64 src) => RegReg(0x29, src, dst);

    /// <summary>cmp r64, r64 (flags of dst − src): REX.W 39 /r.</summary>
    public void Cmp(Reg64 dst, Reg64 src) => RegReg(0x39, src, dst);

    /// <summary>test r64, r64: REX.W 85 /r.</summary>
    public void Test(Reg64 a, Reg64 b) => RegReg(0x85, b, a);

    /// <summary>xor r32, r32 (zeroes the whole 64-bit register): 31 /r, REX only for r8–r15.</summary>
    public void Xor32(Reg64 dst, Reg64 src)
    {
        int r = (int)src, b = (int)dst;
        if (r >= 8 || b >= 8) Byte((byte)(0x40 | ((r >> 3) << 2) | (b >> 3)));
        Byte(0x31);
        Byte((byte)(0xC0 | ((r & 7) << 3) | (b & 7)));
    }

    /// <summary>add r64, imm: REX.W 83 /0 ib or REX.W 81 /0 id.</summary>
    public void Add(Reg64 dst, int imm) => RegImm(0, dst, imm);

    /// <summary>sub r64, imm: REX.W 83 /5 ib or REX.W 81 /5 id.</summary>
    public void Sub(Reg64 dst, int imm) => RegImm(5, dst, imm);

    /// <summary>and r64, imm (sign-extended): REX.W 83 /4 ib or REX.W 81 /4 id.</summary>
    public void And(Reg64 dst, int imm) => RegImm(4, dst, imm);

    /// <summary>cmp r64, imm: REX.W 83 /7 ib or REX.W 81 /7 id.</summary>
    public void Cmp(Reg64 dst, int imm) => RegImm(7, dst, imm);

    /// <summary>shl r64, imm8: REX.W C1 /4 ib.</summary>
    public void Shl(Reg64 dst, byte count)
    {
        Rex(true, 0, null, dst);
        Byte(0xC1);
        Byte((byte)(0xC0 | (4 << 3) | ((int)dst & 7)));
        Byte(count);
    }

    /// <summary>dec r64: REX.W FF /1.</summary>
    public void Dec(Reg64 dst)
    {
        Rex(true, 0, null, dst);
        Byte(0xFF);
        Byte((byte)(0xC0 | (1 << 3) | ((int)dst & 7)));
    }

    /// <summary>lea r64, m: REX.W 8D /r.</summary>
    public void Lea(Reg64 dst, Mem m)
    {
        Rex(true, (int)dst, m.Index, m.Base);
        Byte(0x8D);
        ModRm((int)dst, m, 1);
    }

    /// <summary>prefetcht0 m8: 0F 18 /1.</summary>
    public void Prefetcht0(Mem m)
    {
        if ((int)m.Base >= 8 || (m.Index is { } i && (int)i >= 8)) Rex(false, 0, m.Index, m.Base);
        Byte(0x0F);
        Byte(0x18);
        ModRm(1, m, 1);
    }

    private void RegReg(byte opcode, Reg64 reg, Reg64 rm)
    {
        Rex(true, (int)reg, null, rm);
        Byte(opcode);
        Byte((byte)(0xC0 | (((int)reg & 7) << 3) | ((int)rm & 7)));
    }

    private void RegImm(int ext, Reg64 dst, int imm)
    {
        Rex(true, 0, null, dst);
        bool small = imm is >= sbyte.MinValue and <= sbyte.MaxValue;
        Byte(small ? (byte)0x83 : (byte)0x81);
        Byte((byte)(0xC0 | (ext << 3) | ((int)dst & 7)));
        if (small) Byte((byte)imm);
        else Int32(imm);
    }

    private void Rex(bool w, int reg, Reg64? index, Reg64 rmOrBase)
    {
        int x = index is { } i ? ((int)i >> 3) & 1 : 0;
        Byte((byte)(0x40 | (w ? 8 : 0) | (((reg >> 3) & 1) << 2) | (x << 1) | (((int)rmOrBase >> 3) & 1)));
    }

    // ---------------------------------------------------------------- AVX-512 (EVEX) instructions

    private const int Map0F = 1, Map0F38 = 2, Map0F3A = 3;
    private const int PpNone = 0, Pp66 = 1, PpF3 = 2;
    private const int L128 = 0, L512 = 2;

    /// <summary>vcvtph2ps zmm, ymmword [m]: 16 halves → 16 floats (EVEX.512.66.0F38.W0 13 /r, tuple HVM: N = 32).</summary>
    public void Vcvtph2ps(int zdst, Mem src) => EvexMem(Map0F38, Pp66, false, L512, zdst, 0, src, 0x13, 32);

    /// <summary>vcvtph2ps zmm, ymm.</summary>
    public void Vcvtph2ps(int zdst, int ysrc) => EvexReg(Map0F38, Pp66, false, L512, zdst, 0, ysrc, 0x13);

    /// <summary>vfmadd231ps zmm1, zmm2, zmm3: zmm1 = zmm2·zmm3 + zmm1, one rounding (EVEX.512.66.0F38.W0 B8 /r).</summary>
    public void Vfmadd231ps(int dst, int a, int b) => EvexReg(Map0F38, Pp66, false, L512, dst, a, b, 0xB8);

    /// <summary>vfmadd231ps zmm1, zmm2, zmmword [m] (tuple FV: N = 64).</summary>
    public void Vfmadd231ps(int dst, int a, Mem b) => EvexMem(Map0F38, Pp66, false, L512, dst, a, b, 0xB8, 64);

    /// <summary>vaddps zmm1, zmm2, zmm3 (EVEX.512.0F.W0 58 /r).</summary>
    public void Vaddps(int dst, int a, int b) => EvexReg(Map0F, PpNone, false, L512, dst, a, b, 0x58);

    /// <summary>vpxord zmm1, zmm2, zmm3 (EVEX.512.66.0F.W0 EF /r); vpxord z, z, z zeroes z.</summary>
    public void Vpxord(int dst, int a, int b) => EvexReg(Map0F, Pp66, false, L512, dst, a, b, 0xEF);

    /// <summary>vmovups zmm, zmmword [m] (EVEX.512.0F.W0 10 /r, N = 64).</summary>
    public void Vmovups(int zdst, Mem src) => EvexMem(Map0F, PpNone, false, L512, zdst, 0, src, 0x10, 64);

    /// <summary>vmovups zmmword [m], zmm (EVEX.512.0F.W0 11 /r, N = 64).</summary>
    public void Vmovups(Mem dst, int zsrc) => EvexMem(Map0F, PpNone, false, L512, zsrc, 0, dst, 0x11, 64);

    /// <summary>vmovdqu8 zmm, zmmword [m] (EVEX.512.F2.0F.W0 6F /r, N = 64).</summary>
    public void Vmovdqu8(int zdst, Mem src) => EvexMem(Map0F, 3, false, L512, zdst, 0, src, 0x6F, 64);

    /// <summary>vmovss dword [m], xmm (EVEX.LLIG.F3.0F.W0 11 /r, tuple T1S: N = 4).</summary>
    public void Vmovss(Mem dst, int xsrc) => EvexMem(Map0F, PpF3, false, L128, xsrc, 0, dst, 0x11, 4);

    /// <summary>vpermilps zmm1, zmm2, imm8: within each 128-bit lane (EVEX.512.66.0F3A.W0 04 /r ib).</summary>
    public void Vpermilps(int dst, int src, byte imm)
    {
        EvexReg(Map0F3A, Pp66, false, L512, dst, 0, src, 0x04);
        Byte(imm);
    }

    /// <summary>vshuff32x4 zmm1, zmm2, zmm3, imm8: 128-bit lanes (EVEX.512.66.0F3A.W0 23 /r ib).</summary>
    public void Vshuff32x4(int dst, int a, int b, byte imm)
    {
        EvexReg(Map0F3A, Pp66, false, L512, dst, a, b, 0x23);
        Byte(imm);
    }

    /// <summary>vpdpbusd zmm1, zmm2, zmm3: u8×s8 groups of 4 → i32, accumulated (EVEX.512.66.0F38.W0 50 /r).</summary>
    public void Vpdpbusd(int dst, int a, int b) => EvexReg(Map0F38, Pp66, false, L512, dst, a, b, 0x50);

    /// <summary>vpdpbusd zmm1, zmm2, zmmword [m] (N = 64).</summary>
    public void Vpdpbusd(int dst, int a, Mem b) => EvexMem(Map0F38, Pp66, false, L512, dst, a, b, 0x50, 64);

    /// <summary>vdpbf16ps zmm1, zmm2, zmm3: bf16 pairs → float, accumulated (EVEX.512.F3.0F38.W0 52 /r).</summary>
    public void Vdpbf16ps(int dst, int a, int b) => EvexReg(Map0F38, PpF3, false, L512, dst, a, b, 0x52);

    private void EvexReg(int map, int pp, bool w, int ll, int reg, int vvvv, int rm, byte opcode)
    {
        CheckVector(reg); CheckVector(vvvv); CheckVector(rm);
        // P0: R X B R' 0 0 m m (R, X, B, R' inverted); a register rm uses B for bit 3 and X for bit 4.
        Byte(0x62);
        Byte((byte)((Inv(reg >> 3) << 7) | (Inv(rm >> 4) << 6) | (Inv(rm >> 3) << 5) | (Inv(reg >> 4) << 4) | map));
        Evex12(pp, w, ll, vvvv);
        Byte(opcode);
        Byte((byte)(0xC0 | ((reg & 7) << 3) | (rm & 7)));
    }

    private void EvexMem(int map, int pp, bool w, int ll, int reg, int vvvv, Mem m, byte opcode, int n)
    {
        CheckVector(reg); CheckVector(vvvv);
        int x = m.Index is { } i ? (int)i >> 3 : 0;
        Byte(0x62);
        Byte((byte)((Inv(reg >> 3) << 7) | (Inv(x) << 6) | (Inv((int)m.Base >> 3) << 5) | (Inv(reg >> 4) << 4) | map));
        Evex12(pp, w, ll, vvvv);
        Byte(opcode);
        ModRm(reg, m, n);
    }

    /// <summary>P1 (W vvvv 1 pp) and P2 (z L'L b V' aaa), no masking, rounding or broadcast.</summary>
    private void Evex12(int pp, bool w, int ll, int vvvv)
    {
        Byte((byte)((w ? 0x80 : 0) | ((~vvvv & 15) << 3) | 0x04 | pp));
        Byte((byte)((ll << 5) | (Inv(vvvv >> 4) << 3)));
    }

    private static int Inv(int bit) => ~bit & 1;

    private static void CheckVector(int r)
    {
        if ((uint)r > 31) throw new ArgumentOutOfRangeException(nameof(r), r, "vector registers are 0..31");
    }

    /// <summary>ModRM, SIB and displacement for a memory operand; disp8 is scaled by n (EVEX disp8·N, n = 1 otherwise).</summary>
    private void ModRm(int reg, Mem m, int n)
    {
        int b = (int)m.Base & 7;
        bool sib = m.Index is not null || b == 4; // rsp/r12 as a base need a SIB byte
        int mod = m.Disp == 0 && b != 5 ? 0 // rbp/r13 with mod 00 would mean rip-relative / no base
            : m.Disp % n == 0 && m.Disp / n is >= sbyte.MinValue and <= sbyte.MaxValue ? 1 : 2;
        Byte((byte)((mod << 6) | ((reg & 7) << 3) | (sib ? 4 : b)));
        if (sib)
        {
            int index = 4; // none
            if (m.Index is { } i)
            {
                if (i == Reg64.Rsp) throw new ArgumentException("rsp cannot be an index");
                index = (int)i & 7;
            }
            int ss = m.Scale switch { 1 => 0, 2 => 1, 4 => 2, 8 => 3, _ => throw new ArgumentException($"scale {m.Scale}") };
            Byte((byte)((ss << 6) | (index << 3) | b));
        }
        if (mod == 1) Byte((byte)(sbyte)(m.Disp / n));
        else if (mod == 2) Int32(m.Disp);
    }

    private void Byte(byte b) => _code.Add(b);

    private void Int32(int v)
    {
        for (int i = 0; i < 4; i++) _code.Add((byte)(v >> (8 * i)));
    }
}
