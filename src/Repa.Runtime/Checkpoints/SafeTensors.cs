using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Repa.Autograd;
using Repa.Kernels;

namespace Repa.Runtime.Checkpoints;

/// <summary>The contents of a safetensors file: its string metadata and its tensors in header order.</summary>
public sealed record SafeTensorFile(IReadOnlyDictionary<string, string> Metadata, OrderedDictionary<string, Tensor> Tensors)
    : IDisposable
{
    public Tensor this[string name] => Tensors[name];

    /// <summary>Returns every loaded tensor to its backend's pool.</summary>
    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
    }
}

/// <summary>
/// Hugging Face safetensors I/O: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (padded with spaces
/// to a multiple of 8), then the raw little-endian tensor data, offsets relative to the start of the data section.
/// Writes are atomic (temporary file, flushed, then renamed) so a crash never leaves a half-written checkpoint.
/// </summary>
public static class SafeTensors
{
    private const string MetadataKey = "__metadata__";
    private const int ChunkElements = 1 << 20; // bounds the host staging buffer for large tensors

    // ---- writing ----

    /// <summary>
    /// Writes <paramref name="tensors"/> (sorted by name, ordinal) and optional <paramref name="metadata"/> to
    /// <paramref name="path"/>, replacing any existing file only once the new one is complete on disk.
    /// </summary>
    public static void Write(string path, IReadOnlyList<(string Name, Tensor Tensor)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        RequireLittleEndian();

        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var (name, tensor) in tensors)
        {
            if (string.IsNullOrEmpty(name)) throw new ArgumentException("safetensors: a tensor name is empty.", nameof(tensors));
            if (name == MetadataKey) throw new ArgumentException($"safetensors: the tensor name '{MetadataKey}' is reserved for metadata.", nameof(tensors));
            if (!seen.Add(name)) throw new ArgumentException($"safetensors: the tensor name '{name}' appears twice.", nameof(tensors));
            ArgumentNullException.ThrowIfNull(tensor, $"tensors[{name}]");
            _ = DTypeCode(tensor.DType);
        }

        var ordered = tensors.OrderBy(t => t.Name, StringComparer.Ordinal).ToArray();
        byte[] header = BuildHeader(ordered, metadata);

        string tmp = path + ".tmp";
        try
        {
            using (var stream = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                Span<byte> length = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
                stream.Write(length);
                stream.Write(header);
                foreach (var (_, tensor) in ordered) WriteData(stream, tensor);
                stream.Flush(flushToDisk: true); // the rename must not become visible before the data is durable
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            TryDelete(tmp);
            throw;
        }
    }

    private static byte[] BuildHeader((string Name, Tensor Tensor)[] ordered, IReadOnlyDictionary<string, string>? metadata)
    {
        var json = new MemoryStream();
        // Relaxed escaping keeps non-ASCII names readable; the output is still valid JSON.
        using (var w = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject(MetadataKey);
                foreach (var (k, v) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                    w.WriteString(k, v ?? throw new ArgumentException($"safetensors: metadata '{k}' has a null value.", nameof(metadata)));
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, tensor) in ordered)
            {
                long bytes = tensor.Count * tensor.DType.SizeInBytes();
                w.WriteStartObject(name);
                w.WriteString("dtype", DTypeCode(tensor.DType));
                w.WriteStartArray("shape");
                foreach (int s in tensor.Shape) w.WriteNumberValue(s);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int padded = (int)((json.Length + 7) / 8 * 8); // keeps the data section 8-byte aligned
        while (json.Length < padded) json.WriteByte((byte)' ');
        return json.ToArray();
    }

    private static void WriteData(FileStream stream, Tensor tensor)
    {
        switch (tensor.DType)
        {
            case DType.F32: WriteChunks<float>(stream, tensor); break;
            case DType.F64: WriteChunks<double>(stream, tensor); break;
            case DType.I32: WriteChunks<int>(stream, tensor); break;
            case DType.BF16 or DType.F16: WriteChunks<ushort>(stream, tensor); break; // raw 16-bit patterns
            default: throw new ArgumentException($"safetensors: cannot write {tensor.Describe()}.");
        }
    }

    private static void WriteChunks<T>(FileStream stream, Tensor tensor) where T : unmanaged
    {
        var chunk = new T[(int)Math.Min(tensor.Count, ChunkElements)];
        for (long start = 0; start < tensor.Count; start += chunk.Length)
        {
            var span = chunk.AsSpan(0, (int)Math.Min(chunk.Length, tensor.Count - start));
            tensor.Backend.Download<T>(tensor.Buffer, span, start);
            stream.Write(MemoryMarshal.AsBytes(span));
        }
    }

    private static string DTypeCode(DType dtype) => dtype switch
    {
        DType.F32 => "F32",
        DType.F64 => "F64",
        DType.I32 => "I32",
        DType.BF16 => "BF16",
        DType.F16 => "F16",
        _ => throw new ArgumentException($"safetensors: cannot write dtype {dtype}."),
    };

    private static void TryDelete(string file)
    {
        try { File.Delete(file); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    // ---- reading ----

    private sealed record Entry(string Name, string DType, int[] Shape, long Begin, long End);

    /// <summary>
    /// Reads a safetensors file into tensors on <paramref name="backend"/> that belong to no tape. F32, F64 and I32
    /// load as they are; I64 loads as I32 when every value fits; BF16 and F16 load as F32. Malformed files throw
    /// <see cref="InvalidDataException"/> naming the file and the problem.
    /// </summary>
    public static SafeTensorFile Read(string path, IBackend backend)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(backend);
        RequireLittleEndian();
        if (!File.Exists(path)) throw Bad(path, "does not exist");

        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        long fileLength = RandomAccess.GetLength(handle);
        if (fileLength < 8) throw Bad(path, $"is truncated: it has {fileLength} bytes, fewer than the 8-byte header length");

        Span<byte> lengthBytes = stackalloc byte[8];
        ReadExactly(handle, lengthBytes, 0);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > (ulong)(fileLength - 8))
            throw Bad(path, $"declares a {headerLength}-byte header but only {fileLength - 8} bytes follow the header length");
        if (headerLength > int.MaxValue) throw Bad(path, $"declares a {headerLength}-byte header, too large to parse");

        var header = new byte[(int)headerLength];
        ReadExactly(handle, header, 8);
        long dataStart = 8 + (long)headerLength;
        long dataLength = fileLength - dataStart;

        var (metadata, entries) = ParseHeader(path, header);
        CheckLayout(path, entries, dataLength);

        var tensors = new OrderedDictionary<string, Tensor>(StringComparer.Ordinal);
        try
        {
            foreach (var e in entries)
            {
                var t = Load(path, handle, dataStart, e, backend);
                t.Persistent().Name = e.Name; // loaded tensors are plain data that outlive any tape
                tensors.Add(e.Name, t);
            }
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
        return new SafeTensorFile(metadata, tensors);
    }

    private static (Dictionary<string, string>, List<Entry>) ParseHeader(string path, byte[] header)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header);
        }
        catch (JsonException ex)
        {
            throw Bad(path, $"has a header that is not valid JSON (error at line {ex.LineNumber + 1}, byte {ex.BytePositionInLine})");
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw Bad(path, $"has a header that is a JSON {doc.RootElement.ValueKind}, not an object");

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var entries = new List<Entry>();
            var names = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!names.Add(prop.Name)) throw Bad(path, $"names '{prop.Name}' twice in its header");
                if (prop.Name == MetadataKey)
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw Bad(path, $"has a '{MetadataKey}' that is not a JSON object");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"has metadata '{m.Name}' whose value is not a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                entries.Add(ParseEntry(path, prop));
            }
            return (metadata, entries);
        }
    }

    private static Entry ParseEntry(string path, JsonProperty prop)
    {
        string n = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw Bad(path, $"describes tensor '{n}' with a JSON {v.ValueKind}, not an object");

        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String)
            throw Bad(path, $"gives tensor '{n}' no string 'dtype'");
        string dtype = dt.GetString()!;
        if (ElementSize(dtype) == 0)
            throw Bad(path, $"gives tensor '{n}' the unknown or unsupported dtype '{dtype}' (expected F32, F64, I32, I64, BF16 or F16)");

        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array)
            throw Bad(path, $"gives tensor '{n}' no 'shape' array");
        var shape = new int[sh.GetArrayLength()];
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt32(out int s) || s < 0)
                throw Bad(path, $"gives tensor '{n}' a shape entry {d.GetRawText()} that is not a non-negative 32-bit integer");
            shape[i++] = s;
        }

        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad(path, $"gives tensor '{n}' no 'data_offsets' pair");
        long[] o = new long[2];
        for (int k = 0; k < 2; k++)
        {
            var e = off[k];
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt64(out o[k]) || o[k] < 0)
                throw Bad(path, $"gives tensor '{n}' a data offset {e.GetRawText()} that is not a non-negative integer");
        }
        if (o[1] < o[0]) throw Bad(path, $"gives tensor '{n}' data offsets [{o[0]}, {o[1]}] that end before they begin");
        return new Entry(n, dtype, shape, o[0], o[1]);
    }

    /// <summary>Every tensor must span exactly shape*dtype bytes, and together they must tile the data section.</summary>
    private static void CheckLayout(string path, List<Entry> entries, long dataLength)
    {
        foreach (var e in entries)
        {
            long count = 1;
            foreach (int s in e.Shape)
                count = s == 0 || count <= long.MaxValue / 16 / s ? count * s : throw Bad(path, $"gives tensor '{e.Name}' a shape {Shapes.Format(e.Shape)} that is too large");
            long expected = count * ElementSize(e.DType);
            if (e.End - e.Begin != expected)
                throw Bad(path, $"gives tensor '{e.Name}' ({e.DType}{Shapes.Format(e.Shape)}, {expected} bytes) data offsets [{e.Begin}, {e.End}] that span {e.End - e.Begin} bytes instead");
            if (e.End > dataLength)
                throw Bad(path, $"is truncated: tensor '{e.Name}' ends at data offset {e.End} but the data section has only {dataLength} bytes");
        }
        long cursor = 0;
        foreach (var e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin < cursor) throw Bad(path, $"has tensor '{e.Name}' at data offsets [{e.Begin}, {e.End}] overlapping the tensor before it (which ends at {cursor})");
            if (e.Begin > cursor) throw Bad(path, $"has a gap of {e.Begin - cursor} unused bytes before tensor '{e.Name}' at data offset {e.Begin}");
            cursor = e.End;
        }
        if (cursor != dataLength)
            throw Bad(path, $"has {dataLength - cursor} bytes after the last tensor, which ends at data offset {cursor}");
    }

    private static int ElementSize(string dtype) => dtype switch
    {
        "F32" or "I32" => 4,
        "F64" or "I64" => 8,
        "BF16" or "F16" => 2,
        _ => 0,
    };

    private static Tensor Load(string path, SafeFileHandle handle, long dataStart, Entry e, IBackend backend)
    {
        long count = Shapes.Count(e.Shape);
        if (count > Array.MaxLength) throw Bad(path, $"has tensor '{e.Name}' with {count} elements, more than one host array can stage");
        int n = (int)count;
        long at = dataStart + e.Begin;
        switch (e.DType)
        {
            case "F32": return Tensor.FromArray(backend, ReadArray<float>(handle, at, n), e.Shape);
            case "F64": return Tensor.FromArray(backend, ReadArray<double>(handle, at, n), e.Shape);
            case "I32": return Tensor.FromArray(backend, ReadArray<int>(handle, at, n), e.Shape);
            case "I64":
            {
                // PyTorch labels and ids are int64; Repa indexes with int32, so narrow only when nothing is lost.
                var wide = ReadArray<long>(handle, at, n);
                var narrow = new int[n];
                for (int i = 0; i < n; i++)
                {
                    if (wide[i] is < int.MinValue or > int.MaxValue)
                        throw Bad(path, $"has I64 tensor '{e.Name}' whose element {i} ({wide[i]}) does not fit in int32");
                    narrow[i] = (int)wide[i];
                }
                return Tensor.FromArray(backend, narrow, e.Shape);
            }
            case "BF16":
            {
                var raw = ReadArray<ushort>(handle, at, n);
                var f = new float[n];
                for (int i = 0; i < n; i++) f[i] = BitConverter.Int32BitsToSingle(raw[i] << 16); // bf16 = top half of fp32
                return Tensor.FromArray(backend, f, e.Shape);
            }
            case "F16":
            {
                var raw = ReadArray<Half>(handle, at, n);
                var f = new float[n];
                for (int i = 0; i < n; i++) f[i] = (float)raw[i];
                return Tensor.FromArray(backend, f, e.Shape);
            }
            default: throw Bad(path, $"gives tensor '{e.Name}' the unsupported dtype '{e.DType}'");
        }
    }

    private static T[] ReadArray<T>(SafeFileHandle handle, long fileOffset, int count) where T : unmanaged
    {
        var result = new T[count];
        int size = Marshal.SizeOf<T>();
        // Chunks keep each byte span under int.MaxValue for tensors larger than 2 GB.
        for (int start = 0; start < count; start += ChunkElements)
        {
            int len = Math.Min(ChunkElements, count - start);
            ReadExactly(handle, MemoryMarshal.AsBytes(result.AsSpan(start, len)), fileOffset + (long)start * size);
        }
        return result;
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> destination, long fileOffset)
    {
        while (destination.Length > 0)
        {
            int read = RandomAccess.Read(handle, destination, fileOffset);
            if (read == 0) throw new EndOfStreamException("the file ended early"); // lengths were checked; only a concurrent truncation gets here
            destination = destination[read..];
            fileOffset += read;
        }
    }

    private static InvalidDataException Bad(string path, string what) => new($"Safetensors file '{path}' {what}.");

    private static void RequireLittleEndian()
    {
        // The format is little-endian and tensors are copied as raw memory.
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors I/O needs a little-endian machine.");
    }
}
