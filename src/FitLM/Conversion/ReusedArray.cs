namespace FitLM.Conversion;

/// <summary>Scratch arrays a converter reuses from tensor to tensor, grown when a larger tensor needs more.</summary>
internal static class ReusedArray
{
    /// <summary><paramref name="array"/>, replaced by a larger one when it holds fewer than <paramref name="length"/> elements.</summary>
    public static T[] AtLeast<T>(ref T[] array, long length)
    {
        if (length > Array.MaxLength) throw new FitLMException($"a tensor piece of {length:N0} elements is more than one array holds; it is too large to convert in one piece");
        if (array.Length < length) array = new T[length];
        return array;
    }
}
