namespace DotQuant.Engine.Diagnostics;

/// <summary>A failure the user can act on (bad input, missing file, unsupported model).
/// Carries a stable <c>DQ0xxx</c> code; the CLI prints it on one line and exits with 1.</summary>
public class DotQuantException : Exception
{
    public string Code { get; }
    public string? File { get; }

    public DotQuantException(string code, string message, string? file = null, Exception? inner = null)
        : base(message, inner)
    {
        Code = code;
        File = file;
    }

    public override string ToString() => File is null ? $"{Code}: {Message}" : $"{File}: {Code}: {Message}";
}
