using FitLM.Model;

namespace FitLM.Tests.Model;

/// <summary>Greedy decoding with the KV cache, one token at a time, as the reference files' greedy ids were made.</summary>
internal static class GreedyContinuation
{
    /// <summary>
    /// <paramref name="count"/> greedy ids after a prompt of <paramref name="promptLength"/> tokens already run,
    /// starting from its last position's logits (overwritten).
    /// </summary>
    public static List<int> Ids(Transformer transformer, float[] lastLogits, int promptLength, int count)
    {
        var ids = new List<int>(count);
        for (int i = 0; i < count; i++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(lastLogits);
            ids.Add(next);
            transformer.Forward([next], promptLength + i, lastLogits, 0);
        }
        return ids;
    }
}
