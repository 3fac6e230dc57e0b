namespace DotQuant.Tool.Packaging;

/// <summary>Several files read as one stream: how a model folder is cut into fragment packages
/// and how the fragments are split back into files.</summary>
sealed class ConcatenatedStream(IReadOnlyList<string> files) : Stream
{
    int _index = -1;
    Stream? _current;

    public override int Read(byte[] buffer, int offset, int count)
    {
        while (true)
        {
            if (_current is null)
            {
                if (++_index >= files.Count) return 0;
                _current = File.OpenRead(files[_index]);
            }
            int n = _current.Read(buffer, offset, count);
            if (n > 0) return n;
            _current.Dispose();
            _current = null;
        }
    }

    /// <summary>Copies exactly <paramref name="count"/> bytes (an early end of input is an error).</summary>
    public static void CopyExactly(Stream from, Stream to, long count)
    {
        var buffer = new byte[1 << 20];
        while (count > 0)
        {
            int n = from.Read(buffer, 0, (int)Math.Min(buffer.Length, count));
            if (n == 0) throw new EndOfStreamException();
            to.Write(buffer, 0, n);
            count -= n;
        }
    }

    protected override void Dispose(bool disposing)
    {
        _current?.Dispose();
        base.Dispose(disposing);
    }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
