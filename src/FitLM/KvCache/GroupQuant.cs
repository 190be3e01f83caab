using System.Numerics.Tensors;
using System.Runtime.InteropServices;

namespace FitLM.KvCache;

/// <summary>
/// Asymmetric min-max quantization of a group of up to 32 floats to b ∈ {2, 3, 4} bits, as KIVI and XQuant
/// use it: x ≈ min + scale·q with q = round((x - min) / scale) ∈ [0, 2^b - 1], scale = (max - min) / (2^b - 1).
/// scale and min are stored as float16 (KIVI keeps them in the model's fp16), rounded so the group still spans
/// [min, max]: min rounded down, scale up. So every element's error is at most scale/2 (plus float rounding).
/// A block is [codes: 4·b bytes][scale: f16][min: f16] = 4·b + 4 bytes for 32 elements.
/// Codes: 2 bits four to a byte (element 4i+j in bits 2j of byte i); 4 bits two to a byte (low nibble first);
/// 3 bits as the 2-bit layout of the low bits (8 bytes) followed by one uint32 of the high bits.
/// </summary>
public static class GroupQuant
{
    public const int Size = 32;

    public static int BlockBytes(int bits) => 4 * bits + 4;

    /// <summary>Quantizes x (1..32 elements; the block always has room for 32) into block.</summary>
    public static void Quantize(ReadOnlySpan<float> x, int bits, Span<byte> block)
    {
        int n = x.Length;
        if (n == 0 || n > Size) throw new ArgumentOutOfRangeException(nameof(x));
        float lo = TensorPrimitives.Min(x), hi = TensorPrimitives.Max(x);
        int levels = (1 << bits) - 1;
        Half minH = Down(lo);
        float min = (float)minH;
        Half scaleH = Up((hi - min) / levels);
        float scale = (float)scaleH;
        // Codes packed as they are computed (no scratch: stackalloc is slow in these hot, small methods).
        block.Slice(0, 4 * bits).Clear();
        float inv = scale > 0 ? 1f / scale : 0;
        uint high = 0;
        for (int i = 0; i < n; i++)
        {
            int c = Math.Clamp((int)MathF.Round((x[i] - min) * inv, MidpointRounding.ToEven), 0, levels);
            switch (bits)
            {
                case 2: block[i >> 2] |= (byte)(c << ((i & 3) << 1)); break;
                case 4: block[i >> 1] |= (byte)(c << ((i & 1) << 2)); break;
                case 3:
                    block[i >> 2] |= (byte)((c & 3) << ((i & 3) << 1));
                    high |= (uint)(c >> 2) << i;
                    break;
                default: throw new ArgumentOutOfRangeException(nameof(bits));
            }
        }
        if (bits == 3) MemoryMarshal.Write(block.Slice(8), high);
        MemoryMarshal.Write(block.Slice(4 * bits), scaleH);
        MemoryMarshal.Write(block.Slice(4 * bits + 2), minH);
    }

    /// <summary>The first dst.Length (≤ 32) elements of a block.</summary>
    public static void Dequantize(ReadOnlySpan<byte> block, int bits, Span<float> dst)
    {
        float scale = (float)MemoryMarshal.Read<Half>(block.Slice(4 * bits));
        float min = (float)MemoryMarshal.Read<Half>(block.Slice(4 * bits + 2));
        int n = dst.Length;
        switch (bits)
        {
            case 2:
                for (int i = 0; i < n; i++) dst[i] = (block[i >> 2] >> ((i & 3) << 1) & 3) * scale + min;
                break;
            case 4:
                for (int i = 0; i < n; i++) dst[i] = (block[i >> 1] >> ((i & 1) << 2) & 15) * scale + min;
                break;
            case 3:
                uint high = MemoryMarshal.Read<uint>(block.Slice(8));
                for (int i = 0; i < n; i++) dst[i] = ((block[i >> 2] >> ((i & 3) << 1) & 3) | (int)(high >> i & 1) << 2) * scale + min;
                break;
            default: throw new ArgumentOutOfRangeException(nameof(bits));
        }
    }

    /// <summary>The scale of a block (its error bound is half of it).</summary>
    public static float Scale(ReadOnlySpan<byte> block, int bits) => (float)MemoryMarshal.Read<Half>(block.Slice(4 * bits));

    private static Half Down(float x)
    {
        var h = (Half)x;
        if (Half.IsInfinity(h)) h = x > 0 ? Half.MaxValue : Half.MinValue;
        return (float)h > x ? Half.BitDecrement(h) : h;
    }

    private static Half Up(float x)
    {
        var h = (Half)x;
        if (Half.IsPositiveInfinity(h)) return Half.MaxValue;
        return (float)h < x ? Half.BitIncrement(h) : h;
    }
}
