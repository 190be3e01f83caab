namespace FitLM.Formats;

/// <summary>Metadata value types as numbered in the GGUF specification.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One metadata value. Scalars are boxed in <see cref="Value"/>; arrays hold a typed .NET array
/// (string[], float[], int[], ... or GgufValue[] for nested arrays) with <see cref="ElementType"/>.
/// </summary>
public sealed class GgufValue
{
    public GgufValueType Type { get; }
    public GgufValueType ElementType { get; }
    public object Value { get; }

    public GgufValue(GgufValueType type, object value, GgufValueType elementType = GgufValueType.UInt8)
    {
        Type = type;
        Value = value;
        ElementType = elementType;
    }

    public static GgufValue Of(string s) => new(GgufValueType.String, s);
    public static GgufValue Of(uint v) => new(GgufValueType.UInt32, v);
    public static GgufValue Of(int v) => new(GgufValueType.Int32, v);
    public static GgufValue Of(float v) => new(GgufValueType.Float32, v);
    public static GgufValue Of(bool v) => new(GgufValueType.Bool, v);
    public static GgufValue Of(string[] v) => new(GgufValueType.Array, v, GgufValueType.String);
    public static GgufValue Of(float[] v) => new(GgufValueType.Array, v, GgufValueType.Float32);
    public static GgufValue Of(int[] v) => new(GgufValueType.Array, v, GgufValueType.Int32);

    public bool IsInteger => Type is GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.UInt16 or
        GgufValueType.Int16 or GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.UInt64 or GgufValueType.Int64;

    public long AsInt64() => Value switch
    {
        byte b => b, sbyte sb => sb, ushort us => us, short s => s, uint ui => ui, int i => i,
        ulong ul => ul > long.MaxValue ? throw new FitLMException($"metadata value {ul} is too large") : (long)ul,
        long l => l,
        bool bo => bo ? 1 : 0,
        _ => throw new FitLMException($"metadata value of type {Type} is not an integer"),
    };

    public double AsDouble() => Value switch
    {
        float f => f, double d => d,
        _ when IsInteger => AsInt64(),
        _ => throw new FitLMException($"metadata value of type {Type} is not a number"),
    };

    public bool AsBool() => Value switch
    {
        bool b => b,
        _ when IsInteger => AsInt64() != 0,
        _ => throw new FitLMException($"metadata value of type {Type} is not a bool"),
    };

    public string AsString() => Value as string ?? throw new FitLMException($"metadata value of type {Type} is not a string");

    public string[] AsStringArray() => Value as string[] ?? throw new FitLMException("metadata value is not a string array");

    public float[] AsFloatArray() => Value switch
    {
        float[] f => f,
        double[] d => Array.ConvertAll(d, x => (float)x),
        _ => throw new FitLMException("metadata value is not a float array"),
    };

    /// <summary>An integer array of any integer element type, widened to int.</summary>
    public int[] AsInt32Array() => Value switch
    {
        int[] i => i,
        uint[] u => Array.ConvertAll(u, x => (int)x),
        byte[] b => Array.ConvertAll(b, x => (int)x),
        sbyte[] sb => Array.ConvertAll(sb, x => (int)x),
        short[] s => Array.ConvertAll(s, x => (int)x),
        ushort[] us => Array.ConvertAll(us, x => (int)x),
        long[] l => Array.ConvertAll(l, x => (int)x),
        ulong[] ul => Array.ConvertAll(ul, x => (int)x),
        _ => throw new FitLMException("metadata value is not an integer array"),
    };

    /// <summary>A bool array, or an integer array read as flags (non-zero: true).</summary>
    public bool[] AsBoolArray() => Value is bool[] b ? b : Array.ConvertAll(AsInt32Array(), x => x != 0);

    public int ArrayLength => Value is Array a ? a.Length : 0;

    public override string ToString() => Value switch
    {
        string s => s.Length > 60 ? s[..57] + "..." : s,
        Array a => $"[{ElementType} x {a.Length}]",
        _ => Convert.ToString(Value, System.Globalization.CultureInfo.InvariantCulture) ?? "",
    };
}
