using FitLM.Model;
using System.Numerics.Tensors;
using FitLM.Tensors;

namespace FitLM.Weights;

/// <summary>
/// Measures how well a neuron selector does (`--ffn-recall`): per token and layer, the truly important
/// neurons are computed from the full gate (and up) weights, and counted against the chosen ones. Important
/// means active (gate &gt; 0) for ReLU-gated FFNs; otherwise, with u neurons chosen, the true top u by
/// |act(gate)·up|. Holds every layer's gate (and up) rows as floats and costs a dense gate pass per token, so it
/// is a measurement, not something to run with a tight memory budget.
/// </summary>
public sealed class NeuronAudit
{
    private readonly int _dim, _ffn;
    private readonly FfnActivation _activation;
    private readonly float[][] _gate, _up;
    private readonly float[] _keys;
    private readonly int[] _order;
    private readonly bool[] _chosen;

    public NeuronAudit(IModelSource src)
    {
        var c = src.Config;
        _dim = c.Dim;
        _ffn = c.FfnDim;
        _activation = c.Activation;
        _gate = new float[c.Layers][];
        _up = new float[c.Layers][];
        for (int l = 0; l < c.Layers; l++)
        {
            var bundle = src.Get($"blk.{l}.ffn_bundle.weight");
            _gate[l] = Rows(src, bundle, 0);
            _up[l] = _activation == FfnActivation.Relu ? [] : Rows(src, bundle, 1);
        }
        _keys = new float[_ffn];
        _order = new int[_ffn];
        _chosen = new bool[_ffn];
    }

    /// <summary>Rows first, first+3, ... of a bundle (gate: 0, up: 1) as [ffn × dim] floats.</summary>
    private float[] Rows(IModelSource src, TensorDesc bundle, int first)
    {
        int rowBytes = (int)GgmlTypes.RowBytes(bundle.Type, _dim);
        var raw = new byte[rowBytes];
        var dst = new float[(long)_ffn * _dim];
        for (int i = 0; i < _ffn; i++)
        {
            src.Read(bundle, (3L * i + first) * rowBytes, raw);
            Dequantize.Row(bundle.Type, raw, dst.AsSpan(i * _dim, _dim));
        }
        return dst;
    }

    /// <summary>For one token of one layer: how many neurons truly matter, and how many of those were chosen.</summary>
    public (int Important, int Caught) Check(int layer, ReadOnlySpan<float> x, ReadOnlySpan<int> chosen)
    {
        var gate = _gate[layer];
        int important = 0, caught = 0;
        foreach (int i in chosen) _chosen[i] = true;
        if (_activation == FfnActivation.Relu)
        {
            for (int i = 0; i < _ffn; i++)
                if (TensorPrimitives.Dot(gate.AsSpan(i * _dim, _dim), x) > 0)
                {
                    important++;
                    if (_chosen[i]) caught++;
                }
        }
        else
        {
            var up = _up[layer];
            for (int i = 0; i < _ffn; i++)
            {
                float g = TensorPrimitives.Dot(gate.AsSpan(i * _dim, _dim), x), u = TensorPrimitives.Dot(up.AsSpan(i * _dim, _dim), x);
                _keys[i] = -MathF.Abs(Activations.Apply(g, _activation) * u);
                _order[i] = i;
            }
            _keys.AsSpan().Sort(_order.AsSpan());
            important = chosen.Length;
            for (int r = 0; r < important; r++) if (_chosen[_order[r]]) caught++;
        }
        foreach (int i in chosen) _chosen[i] = false;
        return (important, caught);
    }
}
