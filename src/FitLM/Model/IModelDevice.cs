namespace FitLM.Model;

/// <summary>
/// An accelerator that holds a model's weights and KV cache in its own memory (Backends/Cuda): what a
/// <see cref="Transformer"/> running on one tells its callers about it. The passes themselves go through the same
/// graph as on the CPU, with the device as the backend (<see cref="IDeviceBackend"/>).
/// </summary>
public interface IModelDevice : IDisposable
{
    /// <summary>One line for the user: the device, and what of the model it holds.</summary>
    string Description { get; }

    /// <summary>Bytes of device memory the weights, KV cache and activations take.</summary>
    long DeviceBytes { get; }

    /// <summary>Weight bytes copied to the device per forward pass (layers streamed from the host); 0 when every layer is resident.</summary>
    long StreamedBytesPerToken { get; }

    /// <summary>Of <see cref="StreamedBytesPerToken"/>, the bytes read from the model file each pass (layers without a pinned host copy: --memory, --stream naive).</summary>
    long FileBytesPerToken { get; }

    /// <summary>Bytes per second the host can copy to the device (what bounds streamed layers), measured now; 0 where it cannot be measured.</summary>
    double HostToDeviceBandwidth();

    /// <summary>Bytes per second the device's memory moves, measured now (read + write of a copy); 0 where it cannot be measured.</summary>
    double MemoryBandwidth();

    /// <summary>
    /// Sequences the device keeps a KV cache for at once: slots [0, Sequences), each of the full context (`fitlm serve
    /// --parallel`). A transformer's single-sequence passes use slot 0.
    /// </summary>
    int Sequences { get; }

    /// <summary>Device bytes of one sequence's KV cache (every layer, the full context).</summary>
    long SequenceKvBytes { get; }
}

/// <summary>
/// The backend of a transformer whose model lives on a device: the weights as the graph addresses them (matrices are
/// the device's handles, norms and biases host vectors it has uploaded) and the operations over its own memory. A pass's
/// KV stores are <see cref="DeviceSequenceKv"/> slots of the device's cache.
/// </summary>
internal interface IDeviceBackend : IForwardBackend, IModelDevice
{
    TransformerWeights Weights { get; }
}
