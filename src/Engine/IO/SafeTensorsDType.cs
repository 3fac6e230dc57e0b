using TorchSharp;

namespace DotQuant.Engine.IO;

/// <summary>The safetensors dtypes the engine reads and writes, with their torch equivalents.</summary>
public enum SafeTensorsDType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL }

public static class SafeTensorsDTypes
{
    public static bool TryParse(string text, out SafeTensorsDType dtype) => text switch
    {
        "F64" => Set(SafeTensorsDType.F64, out dtype),
        "F32" => Set(SafeTensorsDType.F32, out dtype),
        "F16" => Set(SafeTensorsDType.F16, out dtype),
        "BF16" => Set(SafeTensorsDType.BF16, out dtype),
        "I64" => Set(SafeTensorsDType.I64, out dtype),
        "I32" => Set(SafeTensorsDType.I32, out dtype),
        "I16" => Set(SafeTensorsDType.I16, out dtype),
        "I8" => Set(SafeTensorsDType.I8, out dtype),
        "U8" => Set(SafeTensorsDType.U8, out dtype),
        "BOOL" => Set(SafeTensorsDType.BOOL, out dtype),
        _ => Set(default, out dtype) && false,
    };

    static bool Set(SafeTensorsDType value, out SafeTensorsDType dtype) { dtype = value; return true; }

    public static int ByteSize(this SafeTensorsDType d) => d switch
    {
        SafeTensorsDType.F64 or SafeTensorsDType.I64 => 8,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 => 2,
        _ => 1,
    };

    public static string Name(this SafeTensorsDType d) => d.ToString();

    public static torch.ScalarType ToTorch(this SafeTensorsDType d) => d switch
    {
        SafeTensorsDType.F64 => torch.ScalarType.Float64,
        SafeTensorsDType.F32 => torch.ScalarType.Float32,
        SafeTensorsDType.F16 => torch.ScalarType.Float16,
        SafeTensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafeTensorsDType.I64 => torch.ScalarType.Int64,
        SafeTensorsDType.I32 => torch.ScalarType.Int32,
        SafeTensorsDType.I16 => torch.ScalarType.Int16,
        SafeTensorsDType.I8 => torch.ScalarType.Int8,
        SafeTensorsDType.U8 => torch.ScalarType.Byte,
        SafeTensorsDType.BOOL => torch.ScalarType.Bool,
        _ => throw new ArgumentOutOfRangeException(nameof(d)),
    };

    public static SafeTensorsDType FromTorch(torch.ScalarType t) => t switch
    {
        torch.ScalarType.Float64 => SafeTensorsDType.F64,
        torch.ScalarType.Float32 => SafeTensorsDType.F32,
        torch.ScalarType.Float16 => SafeTensorsDType.F16,
        torch.ScalarType.BFloat16 => SafeTensorsDType.BF16,
        torch.ScalarType.Int64 => SafeTensorsDType.I64,
        torch.ScalarType.Int32 => SafeTensorsDType.I32,
        torch.ScalarType.Int16 => SafeTensorsDType.I16,
        torch.ScalarType.Int8 => SafeTensorsDType.I8,
        torch.ScalarType.Byte => SafeTensorsDType.U8,
        torch.ScalarType.Bool => SafeTensorsDType.BOOL,
        _ => throw new ArgumentException($"safetensors has no dtype for torch {t}"),
    };
}
