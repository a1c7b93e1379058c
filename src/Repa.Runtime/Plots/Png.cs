using System.Buffers.Binary;
using System.IO.Compression;

namespace Repa.Runtime.Plots;

/// <summary>
/// A minimal 8-bit RGB PNG writer (no palette, no interlace), so plots need no image library; the reader is in
/// Png.Read.cs.
/// </summary>
public static partial class Png
{
    private static readonly byte[] Signature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    private static readonly uint[] CrcTable = BuildCrcTable();

    private static uint[] BuildCrcTable()
    {
        var table = new uint[256];
        for (uint n = 0; n < 256; n++)
        {
            uint c = n;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[n] = c;
        }
        return table;
    }

    /// <summary>The PNG/zlib CRC-32 (reflected, polynomial 0xEDB88320) over the bytes; exposed so tests can verify chunks.</summary>
    public static uint Crc32(ReadOnlySpan<byte> data, uint crc = 0)
    {
        uint c = ~crc;
        foreach (byte b in data) c = CrcTable[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }

    /// <summary>Writes row-major RGB pixels (3 bytes each, width*height*3 in all) as a PNG, atomically.</summary>
    public static void Write(string path, int width, int height, ReadOnlySpan<byte> rgb)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"png: size must be positive, got {width}x{height}.");
        long expected = (long)width * height * 3;
        if (rgb.Length != expected) throw new ArgumentException($"png: expected {expected} bytes for {width}x{height} RGB, got {rgb.Length}.", nameof(rgb));

        using var file = new MemoryStream();
        file.Write(Signature);

        Span<byte> ihdr = stackalloc byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr[4..], height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // colour type: truecolour RGB
        ihdr[10] = 0; // compression: deflate
        ihdr[11] = 0; // filter method 0
        ihdr[12] = 0; // no interlace
        WriteChunk(file, "IHDR"u8, ihdr);

        using var idat = new MemoryStream();
        using (var z = new ZLibStream(idat, CompressionLevel.Optimal, leaveOpen: true))
        {
            int stride = width * 3;
            for (int y = 0; y < height; y++)
            {
                z.WriteByte(0); // filter type None: plots are flat colour areas, deflate does well without prediction
                z.Write(rgb.Slice(y * stride, stride));
            }
        }
        WriteChunk(file, "IDAT"u8, idat.GetBuffer().AsSpan(0, (int)idat.Length));
        WriteChunk(file, "IEND"u8, []);

        // Write next to the target and move over it, so a reader never sees a half-written image.
        string full = Path.GetFullPath(path);
        string? dir = Path.GetDirectoryName(full);
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        string temp = full + "." + Environment.ProcessId + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
        try
        {
            File.WriteAllBytes(temp, file.GetBuffer().AsSpan(0, (int)file.Length));
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { }
            throw;
        }
    }

    private static void WriteChunk(Stream s, ReadOnlySpan<byte> type, ReadOnlySpan<byte> data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        s.Write(word);
        s.Write(type);
        s.Write(data);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32(data, Crc32(type)));
        s.Write(word);
    }
}
