namespace DotQuant.Runtime;

/// <summary>A failure the user can act on (bad input, missing file, unsupported model).
/// Carries a stable <c>DQ0xxx</c> code; the CLI prints it on one line and exits with 1.</summary>
public class DotQuantException : Exception
{
    public string Code { get; }
    public string? File { get; }
    /// <summary>1-based line and column in <see cref="File"/> (manifests), or 0 when not applicable.</summary>
    public int Line { get; }
    public int Column { get; }

    public DotQuantException(string code, string message, string? file = null, Exception? inner = null, int line = 0, int column = 0)
        : base(message, inner)
    {
        Code = code;
        File = file;
        Line = line;
        Column = column;
    }

    /// <summary>The MSBuild canonical form: <c>file(line,col): error DQ0xxx: message</c>.</summary>
    public string Format() =>
        File is null ? $"error {Code}: {Message}"
        : Line > 0 ? $"{File}({Line},{Column}): error {Code}: {Message}"
        : $"{File}: error {Code}: {Message}";

    public override string ToString() => Format();
}
