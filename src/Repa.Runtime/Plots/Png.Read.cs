using System.Buffers.Binary;
using System.IO.Compression;

namespace Repa.Runtime.Plots;

/// <summary>A decoded PNG: <see cref="Pixels"/> holds Height rows of Width pixels of Channels interleaved bytes.</summary>
/// <param name="Width">Pixels per row.</param>
/// <param name="Height">Rows.</param>
/// <param name="Channels">1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (a palette image is expanded to 3, or 4 with tRNS).</param>
/// <param name="Pixels">Height x Width x Channels bytes, row-major.</param>
public sealed record PngImage(int Width, int Height, int Channels, byte[] Pixels);

/// <summary>What a PNG's IHDR chunk says (see <see cref="Png.ReadInfo"/>).</summary>
/// <param name="Width">Pixels per row.</param>
/// <param name="Height">Rows.</param>
/// <param name="BitDepth">Bits per sample (or per palette index).</param>
/// <param name="ColorType">0 grey, 2 RGB, 3 palette, 4 grey + alpha, 6 RGBA.</param>
public readonly record struct PngInfo(int Width, int Height, int BitDepth, int ColorType)
{
    /// <summary>Grey or grey + alpha: no colour in the file.</summary>
    public bool IsGrey => ColorType is 0 or 4;
}

public static partial class Png
{
    private const int IhdrEnd = 8 + 8 + 13 + 4;

    /// <summary>
    /// Reads a non-interlaced PNG: 8-bit grey, grey + alpha, RGB and RGBA, and grey or palette images of 1, 2, 4 or 8 bits
    /// (grey levels below 8 bits are scaled to 0..255 as the PNG spec says; palette indices are looked up, with the tRNS
    /// alphas when present). All five row filters; zlib through <see cref="ZLibStream"/>; every chunk's CRC is checked.
    /// Throws <see cref="FileNotFoundException"/> or <see cref="InvalidDataException"/> naming the file.
    /// </summary>
    public static PngImage Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"PNG file '{path}' was not found.", path);
        return Decode(File.ReadAllBytes(path), path);
    }

    /// <summary>The image size and format from the signature and IHDR alone (reads 33 bytes).</summary>
    public static PngInfo ReadInfo(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"PNG file '{path}' was not found.", path);
        var head = new byte[IhdrEnd];
        int got;
        using (var f = File.OpenRead(path)) got = f.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        CheckSignature(head.AsSpan(0, got), path);
        if (got < IhdrEnd) throw Bad(path, "it ends inside its IHDR chunk");
        return ParseIhdr(head.AsSpan(8), path);
    }

    /// <summary>Decodes PNG bytes; <paramref name="source"/> names them in error messages.</summary>
    public static PngImage Decode(ReadOnlySpan<byte> bytes, string source)
    {
        CheckSignature(bytes, source);
        int pos = 8;
        PngInfo? info = null;
        byte[]? palette = null, alphas = null;
        using var idat = new MemoryStream();
        bool ended = false;
        while (!ended)
        {
            if (pos + 12 > bytes.Length) throw Bad(source, "it ends before its IEND chunk (the file is truncated)");
            uint length = BinaryPrimitives.ReadUInt32BigEndian(bytes[pos..]);
            if (length > int.MaxValue || pos + 12 + (long)length > bytes.Length)
                throw Bad(source, $"chunk at byte {pos} declares {length} bytes, past the end of the file (the file is truncated)");
            var type = bytes.Slice(pos + 4, 4);
            var data = bytes.Slice(pos + 8, (int)length);
            uint crc = BinaryPrimitives.ReadUInt32BigEndian(bytes[(pos + 8 + (int)length)..]);
            string name = System.Text.Encoding.ASCII.GetString(type);
            if (Crc32(data, Crc32(type)) != crc) throw Bad(source, $"the CRC of its {name} chunk is wrong (the file is damaged)");
            int chunk = pos;
            pos += 12 + (int)length;
            if (info == null && name != "IHDR") throw Bad(source, $"its first chunk is {name}, not IHDR");
            switch (name)
            {
                case "IHDR":
                    if (info != null) throw Bad(source, "it has two IHDR chunks");
                    if (length != 13) throw Bad(source, $"its IHDR chunk has {length} bytes instead of 13");
                    info = ParseIhdr(bytes.Slice(chunk, 8 + 13), source);
                    break;
                case "PLTE":
                    if (length % 3 != 0 || length == 0 || length > 768) throw Bad(source, $"its PLTE chunk has {length} bytes, not 3 to 768 in steps of 3");
                    palette = data.ToArray();
                    break;
                case "tRNS":
                    if (info!.Value.ColorType == 3) alphas = data.ToArray(); // grey/RGB colour keys are ignored: alpha is dropped anyway
                    break;
                case "IDAT":
                    idat.Write(data);
                    break;
                case "IEND":
                    ended = true;
                    break;
                default:
                    if (char.IsUpper(name[0])) throw Bad(source, $"it has the critical chunk {name}, which this reader does not know");
                    break; // ancillary chunks (text, gamma, ...) carry nothing the pixels need
            }
        }
        var ihdr = info!.Value;
        if (ihdr.ColorType == 3 && palette == null) throw Bad(source, "it is a palette image without a PLTE chunk");
        if (idat.Length == 0) throw Bad(source, "it has no IDAT chunk");

        int samples = ihdr.ColorType switch { 0 => 1, 2 => 3, 3 => 1, 4 => 2, _ => 4 };
        int bits = samples * ihdr.BitDepth;
        int stride = (int)(((long)ihdr.Width * bits + 7) / 8);
        int bpp = Math.Max(1, bits / 8);
        long rawLength = (long)ihdr.Height * (stride + 1);
        if (rawLength > Array.MaxLength) throw Bad(source, $"its {ihdr.Width}x{ihdr.Height} pixels do not fit in memory");
        var raw = new byte[rawLength];
        idat.Position = 0;
        int read;
        try
        {
            using var z = new ZLibStream(idat, CompressionMode.Decompress);
            read = z.ReadAtLeast(raw, raw.Length, throwOnEndOfStream: false);
        }
        catch (InvalidDataException e)
        {
            throw Bad(source, $"its image data is not valid zlib ({e.Message.TrimEnd('.')})");
        }
        if (read < raw.Length) throw Bad(source, $"its image data holds {read} of the {raw.Length} bytes that {ihdr.Width}x{ihdr.Height} pixels need (the file is truncated)");

        Unfilter(raw, ihdr.Height, stride, bpp, source);
        return Expand(raw, ihdr, samples, stride, palette, alphas, source);
    }

    private static void CheckSignature(ReadOnlySpan<byte> bytes, string source)
    {
        if (bytes.Length < 8 || !bytes[..8].SequenceEqual(Signature))
            throw new InvalidDataException($"'{source}' is not a PNG file (it does not start with the PNG signature).");
    }

    // bytes: the chunk's length and type (8 bytes) then its 13 data bytes.
    private static PngInfo ParseIhdr(ReadOnlySpan<byte> bytes, string source)
    {
        if (!bytes.Slice(4, 4).SequenceEqual("IHDR"u8)) throw Bad(source, "its first chunk is not IHDR");
        var d = bytes.Slice(8, 13);
        uint width = BinaryPrimitives.ReadUInt32BigEndian(d), height = BinaryPrimitives.ReadUInt32BigEndian(d[4..]);
        int depth = d[8], colorType = d[9];
        if (width == 0 || height == 0 || width > int.MaxValue || height > int.MaxValue) throw Bad(source, $"it declares a {width}x{height} image");
        bool valid = colorType switch
        {
            0 => depth is 1 or 2 or 4 or 8 or 16,
            3 => depth is 1 or 2 or 4 or 8,
            2 or 4 or 6 => depth is 8 or 16,
            _ => false,
        };
        if (!valid) throw Bad(source, $"colour type {colorType} with bit depth {depth} is not a valid PNG format");
        if (depth == 16) throw Bad(source, "it has 16 bits per sample; only 8-bit images (and 1/2/4-bit grey or palette) are read, so convert it to 8 bits");
        if (d[10] != 0 || d[11] != 0) throw Bad(source, $"compression method {d[10]} / filter method {d[11]} are not PNG's 0 / 0");
        if (d[12] != 0) throw Bad(source, "it is interlaced (Adam7); save it without interlacing");
        return new PngInfo((int)width, (int)height, depth, colorType);
    }

    private static InvalidDataException Bad(string source, string why) => new($"PNG file '{source}' cannot be read: {why}.");

    /// <summary>Undoes the per-row filters in place (each row: a filter byte, then stride bytes).</summary>
    private static void Unfilter(byte[] raw, int height, int stride, int bpp, string source)
    {
        for (int y = 0; y < height; y++)
        {
            int start = y * (stride + 1);
            byte filter = raw[start];
            var row = raw.AsSpan(start + 1, stride);
            // The row above after unfiltering; zeros above the first row.
            var up = y > 0 ? raw.AsSpan(start - stride, stride) : default;
            switch (filter)
            {
                case 0:
                    break;
                case 1: // Sub
                    for (int i = bpp; i < stride; i++) row[i] += row[i - bpp];
                    break;
                case 2: // Up
                    if (y > 0) for (int i = 0; i < stride; i++) row[i] += up[i];
                    break;
                case 3: // Average
                    for (int i = 0; i < stride; i++)
                    {
                        int left = i >= bpp ? row[i - bpp] : 0, above = y > 0 ? up[i] : 0;
                        row[i] += (byte)((left + above) >> 1);
                    }
                    break;
                case 4: // Paeth
                    for (int i = 0; i < stride; i++)
                    {
                        int a = i >= bpp ? row[i - bpp] : 0, b = y > 0 ? up[i] : 0, c = i >= bpp && y > 0 ? up[i - bpp] : 0;
                        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                        row[i] += (byte)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
                    }
                    break;
                default:
                    throw Bad(source, $"row {y} has filter type {filter}; PNG defines 0 to 4 (the file is damaged)");
            }
        }
    }

    private static PngImage Expand(byte[] raw, PngInfo info, int samples, int stride, byte[]? palette, byte[]? alphas, string source)
    {
        int w = info.Width, h = info.Height, depth = info.BitDepth;
        if (depth == 8 && info.ColorType != 3)
        {
            var pixels = new byte[(long)w * h * samples];
            for (int y = 0; y < h; y++) raw.AsSpan(y * (stride + 1) + 1, stride).CopyTo(pixels.AsSpan(y * stride));
            return new PngImage(w, h, samples, pixels);
        }
        // One sample per pixel: grey or a palette index, packed 1, 2, 4 or 8 bits each, most significant bits first.
        int mask = (1 << depth) - 1, greyScale = 255 / mask;
        bool paletteImage = info.ColorType == 3;
        int channels = paletteImage ? (alphas != null ? 4 : 3) : 1;
        int entries = palette != null ? palette.Length / 3 : 0;
        var result = new byte[(long)w * h * channels];
        for (int y = 0; y < h; y++)
        {
            var row = raw.AsSpan(y * (stride + 1) + 1, stride);
            for (int x = 0; x < w; x++)
            {
                int bit = x * depth;
                int v = (row[bit >> 3] >> (8 - depth - (bit & 7))) & mask;
                long o = ((long)y * w + x) * channels;
                if (!paletteImage)
                {
                    result[o] = (byte)(v * greyScale);
                    continue;
                }
                if (v >= entries) throw Bad(source, $"pixel ({x}, {y}) uses palette entry {v} but the palette has {entries}");
                result[o] = palette![3 * v];
                result[o + 1] = palette[3 * v + 1];
                result[o + 2] = palette[3 * v + 2];
                if (channels == 4) result[o + 3] = v < alphas!.Length ? alphas[v] : (byte)255;
            }
        }
        return new PngImage(w, h, channels, result);
    }
}
