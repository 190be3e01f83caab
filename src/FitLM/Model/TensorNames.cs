namespace FitLM.Model;

/// <summary>llama.cpp's tensor naming as the graph, the planner and the weight providers all read it.</summary>
public static class TensorNames
{
    /// <summary>The block a tensor belongs to ("blk.N.…"), or -1 for tensors outside the blocks (embeddings, output, norms).</summary>
    public static int LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int dot = name.IndexOf('.', 4);
        return dot > 4 && int.TryParse(name.AsSpan(4, dot - 4), out int l) ? l : -1;
    }

    /// <summary>Whether <paramref name="name"/> is a stack of routed experts (blk.N.ffn_{gate,up,down}_exps.weight).</summary>
    public static bool IsExpertStack(string name) =>
        name.EndsWith(".ffn_gate_exps.weight", StringComparison.Ordinal) ||
        name.EndsWith(".ffn_up_exps.weight", StringComparison.Ordinal) ||
        name.EndsWith(".ffn_down_exps.weight", StringComparison.Ordinal);
}
