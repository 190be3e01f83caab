using FitLM.Model;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// A matrix of a unit that moves between resident and streamed: the model graph keeps this one object for the
/// whole run, and each multiply goes to wherever the bytes are now, memory (the same kernel over the same bytes
/// as <see cref="ResidentMatrix"/>, one indirection more) or a stream slot.
/// </summary>
internal sealed unsafe class MovableMatrix(StreamingWeights owner, TensorDesc t, StreamUnit unit, long offsetInSlot) : IMatrix
{
    // Set while the unit is resident; changed only between forward passes.
    private ResidentMatrix? _memory;

    public string Name => t.Name;
    public int Rows => t.Rows;
    public int Cols => t.RowLength;
    public GgmlType Type => t.Type;
    public TensorDesc Tensor => t;
    public bool IsResident => _memory != null;

    internal void MoveTo(ResidentMatrix? memory) => _memory = memory;

    public void Multiply(ReadOnlySpan<float> x, Span<float> y, int n)
    {
        if (_memory is { } m)
        {
            m.Multiply(x, y, n);
            return;
        }
        if (unit.RowsOnly) throw new InvalidOperationException($"'{t.Name}' is streamed by rows only");
        byte* p = owner.Acquire(unit.Index) + offsetInSlot;
        MatMul.MatMulBatch(t.Type, p, GgmlTypes.RowBytes(t.Type, t.RowLength), t.Rows, t.RowLength, x, y, n);
    }

    public void ReadRow(int row, Span<float> dst)
    {
        if (_memory is { } m) m.ReadRow(row, dst);
        else owner.ReadRow(t, row, dst);
    }

    public void ReadRows(int first, int count, Span<float> dst)
    {
        if (_memory != null || unit.RowsOnly || (uint)first > (uint)t.Rows || count < 0 || first + count > t.Rows)
        {
            for (int i = 0; i < count; i++) ReadRow(first + i, dst.Slice(i * Cols, Cols));
            return;
        }
        // Training reads every row of a matrix in turn: one unit read (then memory), not one read per row.
        long rowBytes = GgmlTypes.RowBytes(t.Type, t.RowLength);
        byte* p = owner.Acquire(unit.Index) + offsetInSlot;
        for (int i = 0; i < count; i++)
            Dequantize.Row(t.Type, new ReadOnlySpan<byte>(p + (first + i) * rowBytes, (int)rowBytes), dst.Slice(i * Cols, Cols));
    }
}
