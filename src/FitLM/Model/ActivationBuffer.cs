namespace FitLM.Model;

/// <summary>
/// Activations of a forward pass where a backend keeps them: host arrays for the CPU, device memory for an
/// accelerator. The graph only hands them from one operation of <see cref="IForwardBackend"/> to the next; what is
/// inside is the backend's business, so the graph never assumes managed memory.
/// </summary>
internal abstract class ActivationBuffer
{
    /// <summary>Floats the buffer holds.</summary>
    public abstract int Length { get; }
}

/// <summary>The CPU backend's buffer: a managed array, which its kernels read and write in place.</summary>
internal sealed class HostBuffer(int length) : ActivationBuffer
{
    public float[] Data { get; } = length == 0 ? [] : new float[length];
    public override int Length => Data.Length;
}
