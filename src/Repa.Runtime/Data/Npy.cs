using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace Repa.Runtime.Data;

/// <summary>The element types this NPY code reads and writes.</summary>
public enum NpyType
{
    UInt8,
    Float16,
    Float32,
    Float64,
}

/// <summary>
/// An n-dimensional array as NPY holds it: element type, C-order shape and the little-endian element bytes.
/// Element counts above 2^31 bytes do not fit (use <see cref="NpzWriter.BeginArray"/> to stream bigger ones).
/// </summary>
public sealed class NpyArray
{
    public NpyArray(NpyType type, int[] shape, byte[] data)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(data);
        if (shape.Any(d => d < 0)) throw new ArgumentException($"NPY shape ({string.Join(", ", shape)}) has a negative dimension.", nameof(shape));
        long bytes = Npy.ElementCount(shape) * Npy.ElementSize(type);
        if (data.Length != bytes)
            throw new ArgumentException($"NPY data has {data.Length} bytes but {type} ({string.Join(", ", shape)}) needs {bytes}.", nameof(data));
        Type = type;
        Shape = shape;
        Data = data;
    }

    public NpyType Type { get; }

    /// <summary>Dimensions in C (row-major) order; empty for a scalar.</summary>
    public int[] Shape { get; }

    /// <summary>The elements, little-endian, row-major.</summary>
    public byte[] Data { get; }

    /// <summary>The number of elements (the product of the shape; 1 for a scalar).</summary>
    public long Count => Npy.ElementCount(Shape);

    /// <summary>Wraps float32 values (copied).</summary>
    public static NpyArray FromFloats(ReadOnlySpan<float> values, params int[] shape)
    {
        var bytes = new byte[values.Length * sizeof(float)];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return new NpyArray(NpyType.Float32, shape, bytes);
    }

    /// <summary>Wraps float64 values (copied).</summary>
    public static NpyArray FromDoubles(ReadOnlySpan<double> values, params int[] shape)
    {
        var bytes = new byte[values.Length * sizeof(double)];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteDoubleLittleEndian(bytes.AsSpan(i * 8), values[i]);
        return new NpyArray(NpyType.Float64, shape, bytes);
    }

    /// <summary>Wraps float16 values (copied).</summary>
    public static NpyArray FromHalves(ReadOnlySpan<Half> values, params int[] shape)
    {
        var bytes = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(i * 2), values[i]);
        return new NpyArray(NpyType.Float16, shape, bytes);
    }

    /// <summary>Wraps uint8 values (copied).</summary>
    public static NpyArray FromBytes(ReadOnlySpan<byte> values, params int[] shape) => new(NpyType.UInt8, shape, values.ToArray());

    /// <summary>The elements converted to float64 (exact for every supported type).</summary>
    public double[] ToDoubles()
    {
        var result = new double[Count];
        var d = Data.AsSpan();
        switch (Type)
        {
            case NpyType.UInt8: for (int i = 0; i < result.Length; i++) result[i] = d[i]; break;
            case NpyType.Float16: for (int i = 0; i < result.Length; i++) result[i] = (double)BinaryPrimitives.ReadHalfLittleEndian(d[(i * 2)..]); break;
            case NpyType.Float32: for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadSingleLittleEndian(d[(i * 4)..]); break;
            default: for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadDoubleLittleEndian(d[(i * 8)..]); break;
        }
        return result;
    }

    /// <summary>The elements converted to float32 (float64 values are rounded to nearest).</summary>
    public float[] ToFloats()
    {
        if (Type != NpyType.Float32) return Array.ConvertAll(ToDoubles(), v => (float)v);
        var result = new float[Count];
        for (int i = 0; i < result.Length; i++) result[i] = BinaryPrimitives.ReadSingleLittleEndian(Data.AsSpan(i * 4));
        return result;
    }
}

/// <summary>
/// NumPy's .npy format (numpy.lib.format): the magic "\x93NUMPY", a version byte pair, the header length (uint16 in
/// version 1.0, uint32 in 2.0 and 3.0), then a Python dict literal such as
/// <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (8, 32, 32), }</c> padded with spaces and a newline so the
/// data starts on a 64-byte boundary, then the raw elements. Reads uint8, float16, float32 and float64 in either byte
/// order, C order only; writes little-endian version 1.0 headers (2.0 when the header outgrows 64 KiB), as numpy.save.
/// </summary>
public static class Npy
{
    private static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Bytes per element of <paramref name="type"/>.</summary>
    public static int ElementSize(NpyType type) => type switch
    {
        NpyType.UInt8 => 1,
        NpyType.Float16 => 2,
        NpyType.Float32 => 4,
        NpyType.Float64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown NPY element type."),
    };

    /// <summary>The product of the dimensions (1 for a scalar).</summary>
    public static long ElementCount(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (int d in shape) n *= d;
        return n;
    }

    /// <summary>Reads a whole .npy file. Throws <see cref="FileNotFoundException"/> or <see cref="InvalidDataException"/> naming the file.</summary>
    public static NpyArray Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"NPY file '{path}' was not found.", path);
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses .npy bytes; <paramref name="source"/> names them in error messages.</summary>
    public static NpyArray Parse(ReadOnlySpan<byte> bytes, string source)
    {
        var (type, shape, swap, dataStart) = ParseHeader(bytes, source);
        long size = ElementCount(shape) * ElementSize(type);
        long actual = bytes.Length - dataStart;
        if (actual != size)
            throw new InvalidDataException(
                $"NPY file '{source}' holds {actual} data bytes but its header declares {Describe(type, shape)} ({size} bytes); the file is truncated or damaged.");
        if (size > Array.MaxLength)
            throw new InvalidDataException($"NPY file '{source}' holds {size} bytes, more than one array can hold.");
        var data = bytes.Slice(dataStart, (int)size).ToArray();
        if (swap) SwapBytes(data, ElementSize(type));
        return new NpyArray(type, shape, data);
    }

    /// <summary>
    /// The element type and shape of a .npy file from its header alone (reads at most the header's bytes), for probing
    /// a folder of large files cheaply.
    /// </summary>
    public static (NpyType Type, int[] Shape) ReadHeader(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"NPY file '{path}' was not found.", path);
        using var f = File.OpenRead(path);
        var prefix = new byte[12];
        int got = f.ReadAtLeast(prefix, prefix.Length, throwOnEndOfStream: false);
        int headerLength = got >= 10 && prefix[6] == 1 ? BinaryPrimitives.ReadUInt16LittleEndian(prefix.AsSpan(8)) + 10
            : got >= 12 ? (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(prefix.AsSpan(8)) + 12L, 1 << 24) : got;
        var header = new byte[Math.Max(headerLength, got)];
        prefix.AsSpan(0, got).CopyTo(header);
        int more = f.ReadAtLeast(header.AsSpan(got), header.Length - got, throwOnEndOfStream: false);
        var (type, shape, _, _) = ParseHeader(header.AsSpan(0, got + more), path);
        return (type, shape);
    }

    /// <summary>Writes an array as a .npy file, atomically (temp file, then rename).</summary>
    public static void Write(string path, NpyArray array)
    {
        ArgumentNullException.ThrowIfNull(array);
        string full = Path.GetFullPath(path);
        string? dir = Path.GetDirectoryName(full);
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        string temp = $"{full}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var f = File.Create(temp))
            {
                f.Write(Header(array.Type, array.Shape));
                f.Write(array.Data);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>The .npy bytes of an array (header and data).</summary>
    public static byte[] Encode(NpyArray array)
    {
        ArgumentNullException.ThrowIfNull(array);
        var header = Header(array.Type, array.Shape);
        var bytes = new byte[header.Length + array.Data.Length];
        header.CopyTo(bytes, 0);
        array.Data.CopyTo(bytes, header.Length);
        return bytes;
    }

    /// <summary>
    /// The header numpy.save writes for a C-order little-endian array: version 1.0 unless the dict needs more than
    /// 65535 bytes (then 2.0), padded with spaces and ended by a newline so the data starts on a 64-byte boundary.
    /// </summary>
    public static byte[] Header(NpyType type, ReadOnlySpan<int> shape)
    {
        string dims = shape.Length switch
        {
            0 => "()",
            1 => $"({shape[0]},)",
            _ => "(" + string.Join(", ", shape.ToArray()) + ")",
        };
        string dict = $"{{'descr': '{Descr(type)}', 'fortran_order': False, 'shape': {dims}, }}";
        int total = (10 + dict.Length + 1 + 63) / 64 * 64;
        int version = total - 10 <= ushort.MaxValue ? 1 : 2;
        int prefix = version == 1 ? 10 : 12;
        if (version == 2) total = (prefix + dict.Length + 1 + 63) / 64 * 64;
        var bytes = new byte[total];
        Magic.CopyTo(bytes, 0);
        bytes[6] = (byte)version;
        bytes[7] = 0;
        int headerLength = total - prefix;
        if (version == 1) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(8), (ushort)headerLength);
        else BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), (uint)headerLength);
        Encoding.ASCII.GetBytes(dict, bytes.AsSpan(prefix));
        bytes.AsSpan(prefix + dict.Length, total - prefix - dict.Length - 1).Fill((byte)' ');
        bytes[^1] = (byte)'\n';
        return bytes;
    }

    private static string Descr(NpyType type) => type switch
    {
        NpyType.UInt8 => "|u1",
        NpyType.Float16 => "<f2",
        NpyType.Float32 => "<f4",
        NpyType.Float64 => "<f8",
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown NPY element type."),
    };

    internal static string Describe(NpyType type, ReadOnlySpan<int> shape) =>
        $"{type.ToString().ToLowerInvariant()} ({string.Join(", ", shape.ToArray())})";

    private static void SwapBytes(Span<byte> data, int size)
    {
        if (size == 1) return;
        for (int i = 0; i < data.Length; i += size) data.Slice(i, size).Reverse();
    }

    // Validates magic, version and the dict; returns the data offset.
    private static (NpyType Type, int[] Shape, bool Swap, int DataStart) ParseHeader(ReadOnlySpan<byte> bytes, string source)
    {
        if (bytes.Length < 10 || !bytes[..6].SequenceEqual(Magic))
            throw new InvalidDataException($"NPY file '{source}' does not start with the NPY magic \\x93NUMPY; it is not a .npy file (write it with numpy.save).");
        int major = bytes[6];
        if (major is not (1 or 2 or 3))
            throw new InvalidDataException($"NPY file '{source}' has format version {major}.{bytes[7]}; only versions 1.0, 2.0 and 3.0 are read.");
        int prefix = major == 1 ? 10 : 12;
        if (bytes.Length < prefix)
            throw new InvalidDataException($"NPY file '{source}' is truncated inside its header; the file is damaged.");
        long headerLength = major == 1 ? BinaryPrimitives.ReadUInt16LittleEndian(bytes[8..]) : BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]);
        if (prefix + headerLength > bytes.Length)
            throw new InvalidDataException($"NPY file '{source}' declares a {headerLength}-byte header but is only {bytes.Length} bytes long; the file is truncated.");
        string dict = (major == 3 ? Encoding.UTF8 : Encoding.Latin1).GetString(bytes.Slice(prefix, (int)headerLength)).Trim();
        string descr = DictValue(dict, "descr", source);
        string fortran = DictValue(dict, "fortran_order", source);
        string shapeText = DictValue(dict, "shape", source);
        string Bad(string what) => $"NPY file '{source}' has a bad header ({what}): {dict}";

        if (descr.Length < 3 || descr[0] != '\'' || descr[^1] != '\'') throw new InvalidDataException(Bad("descr is not a type string"));
        descr = descr[1..^1];
        char order = descr[0] is '<' or '>' or '|' or '=' ? descr[0] : '=';
        string code = order == descr[0] ? descr[1..] : descr;
        NpyType type = code switch
        {
            "u1" or "B" => NpyType.UInt8,
            "f2" or "e" => NpyType.Float16,
            "f4" or "f" => NpyType.Float32,
            "f8" or "d" => NpyType.Float64,
            _ => throw new InvalidDataException(
                $"NPY file '{source}' holds elements of type '{descr}'; only uint8, float16, float32 and float64 are read (convert it with numpy's astype)."),
        };
        bool swap = order == '>' && type != NpyType.UInt8 && BitConverter.IsLittleEndian;

        if (fortran == "True")
            throw new InvalidDataException($"NPY file '{source}' is in Fortran order; save it in C order (numpy.ascontiguousarray) and try again.");
        if (fortran != "False") throw new InvalidDataException(Bad("fortran_order is neither True nor False"));

        if (shapeText.Length < 2 || shapeText[0] != '(' || shapeText[^1] != ')') throw new InvalidDataException(Bad("shape is not a tuple"));
        var parts = shapeText[1..^1].Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var shape = new int[parts.Length];
        long count = 1;
        for (int i = 0; i < parts.Length; i++)
        {
            string p = parts[i].TrimEnd('L'); // Python 2 wrote longs as 8L
            if (!int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out shape[i]))
                throw new InvalidDataException(Bad($"dimension '{parts[i]}' is not a non-negative integer below 2^31"));
            count *= shape[i];
            if (count > Array.MaxLength) throw new InvalidDataException(Bad("the shape holds more elements than one array can"));
        }
        return (type, shape, swap, prefix + (int)headerLength);
    }

    // The text of one value in the header's dict literal: a quoted string, True/False, or a parenthesised tuple.
    private static string DictValue(string dict, string key, string source)
    {
        int k = dict.IndexOf($"'{key}'", StringComparison.Ordinal);
        if (k < 0) k = dict.IndexOf($"\"{key}\"", StringComparison.Ordinal);
        if (k < 0) throw new InvalidDataException($"NPY file '{source}' has a bad header (no '{key}' key): {dict}");
        int colon = dict.IndexOf(':', k + key.Length + 2);
        if (colon < 0) throw new InvalidDataException($"NPY file '{source}' has a bad header (no value for '{key}'): {dict}");
        int start = colon + 1;
        while (start < dict.Length && dict[start] == ' ') start++;
        if (start >= dict.Length) throw new InvalidDataException($"NPY file '{source}' has a bad header (no value for '{key}'): {dict}");
        int end = dict[start] switch
        {
            '(' => dict.IndexOf(')', start) + 1,
            '\'' or '"' => dict.IndexOf(dict[start], start + 1) + 1,
            _ => dict.IndexOfAny([',', '}'], start),
        };
        if (end <= start) throw new InvalidDataException($"NPY file '{source}' has a bad header (unterminated value for '{key}'): {dict}");
        return dict[start..end].Trim();
    }
}

/// <summary>
/// Writes an .npz archive as numpy.savez does: a zip (entries stored, not compressed, Zip64 when needed) of
/// "NAME.npy" members. Arrays are added whole (<see cref="Add"/>) or streamed (<see cref="BeginArray"/>), e.g. the
/// `sample` command's arr_0, uint8 [N, H, W, 3], for the ADM evaluator. The archive is written to a temp file and
/// renamed over <see cref="Path"/> on <see cref="Dispose"/> only when every array was completed, so a crash never
/// leaves a half-written .npz under the final name.
/// </summary>
public sealed class NpzWriter : IDisposable
{
    private readonly string temp;
    private readonly FileStream file;
    private readonly ZipArchive zip;
    private readonly HashSet<string> names = new(StringComparer.Ordinal);
    private CountingStream? open;
    private bool failed, disposed;

    public NpzWriter(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        string? dir = System.IO.Path.GetDirectoryName(Path);
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        temp = $"{Path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        file = File.Create(temp);
        zip = new ZipArchive(file, ZipArchiveMode.Create, leaveOpen: false);
    }

    /// <summary>The final path of the archive.</summary>
    public string Path { get; }

    /// <summary>Adds a whole array as NAME.npy.</summary>
    public void Add(string name, NpyArray array)
    {
        ArgumentNullException.ThrowIfNull(array);
        using var s = BeginArray(name, array.Type, array.Shape);
        s.Write(array.Data);
    }

    /// <summary>
    /// Starts NAME.npy with the given type and shape and returns a stream for its raw little-endian C-order elements;
    /// dispose it after writing exactly count x element-size bytes (fewer or more is an error that also keeps the
    /// archive from being published).
    /// </summary>
    public Stream BeginArray(string name, NpyType type, int[] shape)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (open is { Closed: false }) throw new InvalidOperationException($"npz '{Path}': finish array '{open.Name}' before starting '{name}'.");
        if (!names.Add(name)) throw new ArgumentException($"npz '{Path}' already holds an array named '{name}'.", nameof(name));
        var entry = zip.CreateEntry(name + ".npy", CompressionLevel.NoCompression);
        var stream = entry.Open();
        stream.Write(Npy.Header(type, shape));
        open = new CountingStream(stream, name, Npy.ElementCount(shape) * Npy.ElementSize(type), this);
        return open;
    }

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        bool complete = !failed && open is not { Closed: false };
        if (open is { Closed: false }) open.Abandon();
        try { zip.Dispose(); }
        catch { complete = false; throw; }
        finally
        {
            file.Dispose();
            if (complete) File.Move(temp, Path, overwrite: true);
            else try { File.Delete(temp); } catch (IOException) { }
        }
    }

    private sealed class CountingStream(Stream inner, string name, long expected, NpzWriter owner) : Stream
    {
        private long written;
        public string Name => name;
        public bool Closed { get; private set; }

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => !Closed;
        public override long Length => written;
        public override long Position { get => written; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (Closed) throw new ObjectDisposedException(name);
            if (written + buffer.Length > expected)
            {
                owner.failed = true;
                throw new ArgumentException($"npz array '{name}' takes {expected} bytes; writing {buffer.Length} more after {written} overflows it.");
            }
            inner.Write(buffer);
            written += buffer.Length;
        }

        public void Abandon()
        {
            Closed = true;
            owner.failed = true;
            inner.Dispose();
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing && !Closed)
            {
                Closed = true;
                inner.Dispose();
                if (written != expected)
                {
                    owner.failed = true;
                    throw new InvalidOperationException($"npz array '{name}' got {written} of its {expected} bytes; the archive will not be written.");
                }
            }
            base.Dispose(disposing);
        }
    }
}
