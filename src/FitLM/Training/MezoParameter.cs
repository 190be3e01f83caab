using System.Runtime.InteropServices;
using FitLM.Tensors;
using FitLM.Weights;

namespace FitLM.Training;

/// <summary>
/// A block of numbers MeZO moves in place: an array of floats (a LoRA factor, a norm vector) or the bytes of a
/// resident F32/F16/BF16 matrix. <see cref="Memory"/> is how the elements are held; <see cref="Rounding"/> the type
/// every value is rounded to after a move (the tensor's type in its file), so that what is in memory is always what
/// a checkpoint writes and a resume reads back.
/// </summary>
internal abstract class MezoParameter(string name, long length, GgmlType memory, GgmlType rounding)
{
    public string Name { get; } = name;
    /// <summary>Elements.</summary>
    public long Length { get; } = length;
    /// <summary>The type the elements are held in (F32, F16 or BF16).</summary>
    public GgmlType Memory { get; } = memory;
    /// <summary>The type values are rounded to after every move (F32: exact float arithmetic).</summary>
    public GgmlType Rounding { get; } = rounding;
    /// <summary>Bytes of a float held in <see cref="Memory"/>.</summary>
    public int ElementBytes => Memory == GgmlType.F32 ? 4 : 2;

    /// <summary>The bytes of elements [<paramref name="first"/>, first + <paramref name="count"/>), writable.</summary>
    public abstract Span<byte> Bytes(long first, int count);

    public static bool IsFloatType(GgmlType t) => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;
}

/// <summary>An array of floats moved in place (LoRA's A and B; a model's norm weights and biases).</summary>
internal sealed class ArrayParameter(string name, float[] values, GgmlType rounding = GgmlType.F32)
    : MezoParameter(name, values.Length, GgmlType.F32, rounding)
{
    public float[] Values { get; } = values;
    public override Span<byte> Bytes(long first, int count) => MemoryMarshal.AsBytes(Values.AsSpan((int)first, count));
}

/// <summary>A resident matrix moved in place in its own type.</summary>
internal sealed class MatrixParameter(ResidentMatrix matrix)
    : MezoParameter(matrix.Name, (long)matrix.Rows * matrix.Cols, matrix.Type, matrix.Type)
{
    public ResidentMatrix Matrix { get; } = matrix;
    public override Span<byte> Bytes(long first, int count) => Matrix.WritableBytes(first * ElementBytes, count * ElementBytes);
}
