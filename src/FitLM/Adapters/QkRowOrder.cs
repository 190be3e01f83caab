using FitLM.Model;

namespace FitLM.Adapters;

/// <summary>
/// The order of Q/K output rows. llama.cpp's converter permutes the q/k rows of a llama-family model for its
/// interleaved RoPE (LlamaModel.permute), and so does convert_lora_to_gguf with lora_B; a Hugging Face folder and a
/// PEFT adapter keep transformers' rotate-half order. FitLM loads each model in its file's order, so an adapter's B
/// rows are converted when the adapter file's order differs from the loaded model's.
/// </summary>
public static class QkRowOrder
{
    /// <summary>Whether the loaded model's q/k rows are in the converter's interleaved order: a GGUF file of a family whose converter permutes them.</summary>
    public static bool IsPermuted(IModelSource source) => source is GgufSource && source.Config.Family.ConverterPermutesQk;

    /// <summary>Heads whose rows split a matrix's outputs for the permutation, or 0 when the matrix is not q/k.</summary>
    public static int HeadsOf(string matrixName, ModelConfig config) =>
        config.Family.FindTensor(matrixName)?.RopeHeads(config) ?? 0;

    /// <summary>
    /// Rotate-half order → interleaved (<paramref name="toInterleaved"/>) or back, of the rows of <paramref name="b"/>
    /// ([rows × rowLength]) split into <paramref name="heads"/> heads. Returns a new array.
    /// </summary>
    public static float[] Convert(float[] b, int rowLength, int heads, bool toInterleaved)
    {
        int rows = b.Length / rowLength;
        if (heads <= 0 || rows % heads != 0 || rows / heads % 2 != 0)
            throw new FitLMException($"cannot reorder {rows} rows into {heads} RoPE heads (the adapter does not fit this model's heads)");
        int headRows = rows / heads, half = headRows / 2;
        var result = new float[b.Length];
        for (int h = 0; h < heads; h++)
            for (int part = 0; part < 2; part++)
                for (int i = 0; i < half; i++)
                {
                    // Within a head, rotate-half row part·half + i is interleaved row 2i + part.
                    int rotateHalf = h * headRows + part * half + i, interleaved = h * headRows + 2 * i + part;
                    int from = toInterleaved ? rotateHalf : interleaved, to = toInterleaved ? interleaved : rotateHalf;
                    Array.Copy(b, (long)from * rowLength, result, (long)to * rowLength, rowLength);
                }
        return result;
    }

    /// <summary>
    /// B of <paramref name="pair"/> with its q/k rows moved from a file's order to the loaded model's (or back, with the
    /// arguments swapped): unchanged when both orders are the same or the matrix is not q/k.
    /// </summary>
    public static float[] Reorder(LoraPair pair, ModelConfig config, bool fromInterleaved, bool toInterleaved)
    {
        int heads = HeadsOf(pair.Name, config);
        if (heads == 0 || fromInterleaved == toInterleaved) return pair.B;
        return Convert(pair.B, pair.Rank, heads, toInterleaved);
    }
}
