using System.Globalization;

namespace DotQuant.Engine.Gguf;

/// <summary>The value types of GGUF metadata (gguf.h numbering).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>One metadata value: a scalar held as its CLR type (byte, sbyte, ushort, short, uint, int,
/// float, bool, string, ulong, long, double) or an array of one scalar type (a CLR array of it).
/// Arrays of arrays are not written by llama.cpp's converters and are refused by the reader.</summary>
public sealed class GgufValue
{
    public GgufValueType Type { get; }
    /// <summary>For arrays, the element type; otherwise equal to <see cref="Type"/>.</summary>
    public GgufValueType ElementType { get; }
    public object Value { get; }

    GgufValue(GgufValueType type, GgufValueType element, object value) { Type = type; ElementType = element; Value = value; }

    public static GgufValue Of(string v) => new(GgufValueType.String, GgufValueType.String, v);
    public static GgufValue Of(uint v) => new(GgufValueType.UInt32, GgufValueType.UInt32, v);
    public static GgufValue Of(int v) => new(GgufValueType.Int32, GgufValueType.Int32, v);
    public static GgufValue Of(float v) => new(GgufValueType.Float32, GgufValueType.Float32, v);
    public static GgufValue Of(bool v) => new(GgufValueType.Bool, GgufValueType.Bool, v);
    public static GgufValue Of(ulong v) => new(GgufValueType.UInt64, GgufValueType.UInt64, v);
    public static GgufValue Of(string[] v) => new(GgufValueType.Array, GgufValueType.String, v);
    public static GgufValue Of(float[] v) => new(GgufValueType.Array, GgufValueType.Float32, v);
    public static GgufValue Of(int[] v) => new(GgufValueType.Array, GgufValueType.Int32, v);

    /// <summary>A scalar of the given type from its CLR value (the reader's constructor).</summary>
    internal static GgufValue Scalar(GgufValueType type, object value) => new(type, type, value);
    internal static GgufValue ArrayOf(GgufValueType element, Array values) => new(GgufValueType.Array, element, values);

    public string AsString() => Value as string ?? throw new InvalidCastException($"GGUF value is {Type}, not a string");

    /// <summary>Any integer type as a long (llama.cpp's own keys mix uint32 and int32).</summary>
    public long AsInteger() => Value switch
    {
        byte b => b, sbyte s => s, ushort u => u, short h => h, uint i => i, int i => i, ulong l => checked((long)l), long l => l,
        _ => throw new InvalidCastException($"GGUF value is {Type}, not an integer"),
    };

    public double AsFloat() => Value switch
    {
        float f => f, double d => d,
        _ => throw new InvalidCastException($"GGUF value is {Type}, not a float"),
    };

    public bool AsBool() => Value is bool b ? b : throw new InvalidCastException($"GGUF value is {Type}, not a bool");

    public T[] AsArray<T>() => Value as T[] ?? throw new InvalidCastException($"GGUF value is {Type} of {ElementType}, not an array of {typeof(T).Name}");

    public override string ToString() => Value switch
    {
        string s => s.Length > 80 ? $"\"{s[..77]}...\"" : $"\"{s}\"",
        Array a => $"[{ElementType} × {a.Length}]",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => Value.ToString() ?? "",
    };
}
