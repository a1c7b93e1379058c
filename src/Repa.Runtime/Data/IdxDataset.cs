using System.Buffers.Binary;
using System.IO.Compression;

namespace Repa.Runtime.Data;

/// <summary>
/// A labelled single-channel image dataset in IDX format (MNIST, Fashion-MNIST): an images file
/// (big-endian magic 0x00000803 = unsigned bytes with 3 dimensions, then count, height, width as big-endian u32,
/// then the pixels row-major) and a labels file (magic 0x00000801, then count, then one byte per image).
/// Either file may be gzip-compressed; compression is detected by the gzip magic 1f 8b, not by the file name.
/// The whole dataset is held in memory as bytes (Fashion-MNIST train is 47 MB) and is immutable, so
/// <see cref="FillBatch"/> may be called from several threads at once.
/// </summary>
public sealed class IdxDataset
{
    /// <summary>Where the Debian package dataset-fashion-mnist installs its files.</summary>
    public const string DefaultFashionMnistFolder = "/usr/share/datasets/fashion-mnist";

    private const int ImagesMagic = 0x00000803;
    private const int LabelsMagic = 0x00000801;
    private const int HeaderDimBytes = 4;

    private readonly byte[] _pixels;
    private readonly byte[] _labels;

    private IdxDataset(string imagesPath, string labelsPath, byte[] pixels, byte[] labels, int count, int height,
        int width, int numClasses)
    {
        ImagesPath = imagesPath;
        LabelsPath = labelsPath;
        _pixels = pixels;
        _labels = labels;
        Count = count;
        Height = height;
        Width = width;
        NumClasses = numClasses;
    }

    public string ImagesPath { get; }
    public string LabelsPath { get; }

    /// <summary>Number of images (equal to the number of labels).</summary>
    public int Count { get; }

    /// <summary>Always 1: IDX image files are greyscale.</summary>
    public int Channels => 1;

    public int Height { get; }
    public int Width { get; }

    /// <summary>The largest label plus one (10 for MNIST and Fashion-MNIST).</summary>
    public int NumClasses { get; }

    /// <summary>The raw pixels (0 = black, 255 = white) of image <paramref name="i"/>, row-major, Height x Width.</summary>
    public ReadOnlySpan<byte> Image(int i)
    {
        CheckIndex(i);
        int size = Height * Width;
        return new ReadOnlySpan<byte>(_pixels, i * size, size);
    }

    /// <summary>The class label of image <paramref name="i"/>, in [0, NumClasses).</summary>
    public int Label(int i)
    {
        CheckIndex(i);
        return _labels[i];
    }

    /// <summary>
    /// Writes the images and labels at <paramref name="indices"/> as a batch: <paramref name="images"/> receives
    /// [N, 1, padTo, padTo] floats (N = indices.Length), each pixel x scaled to x / 127.5 - 1 so black is -1 and white
    /// is +1; the Height x Width image is centred in the padTo x padTo square (top/left margin (padTo - size) / 2,
    /// any odd extra pixel at the bottom/right) and the margin is -1, i.e. black like the image background.
    /// Fashion-MNIST's 28x28 padded to 32 gets a 2-pixel border, so patch sizes 2, 4 and 8 divide the image.
    /// <paramref name="labels"/> receives the N labels.
    /// </summary>
    public void FillBatch(ReadOnlySpan<int> indices, Span<float> images, Span<int> labels, int padTo)
    {
        if (padTo < Height || padTo < Width)
            throw new InvalidDataException(
                $"IDX dataset '{ImagesPath}' has {Height}x{Width} images, larger than the requested padded size {padTo}; choose an image size of at least {Math.Max(Height, Width)}.");
        int n = indices.Length;
        long plane = (long)padTo * padTo;
        if (images.Length != n * plane)
            throw new ArgumentException(
                $"IdxDataset.FillBatch: images has {images.Length} floats but [{n}, 1, {padTo}, {padTo}] needs {n * plane}.", nameof(images));
        if (labels.Length != n)
            throw new ArgumentException($"IdxDataset.FillBatch: labels has {labels.Length} entries but there are {n} indices.", nameof(labels));
        foreach (int i in indices) CheckIndex(i);

        images.Fill(-1f);
        int top = (padTo - Height) / 2, left = (padTo - Width) / 2, size = Height * Width;
        var scale = TrainingData.PixelToUnit;
        for (int b = 0; b < n; b++)
        {
            int i = indices[b];
            labels[b] = _labels[i];
            var src = new ReadOnlySpan<byte>(_pixels, i * size, size);
            var dst = images.Slice((int)(b * plane), (int)plane);
            for (int y = 0; y < Height; y++)
            {
                var row = src.Slice(y * Width, Width);
                var outRow = dst.Slice((top + y) * padTo + left, Width);
                for (int x = 0; x < row.Length; x++) outRow[x] = scale[row[x]];
            }
        }
    }

    /// <summary>
    /// Loads an images file and its labels file (each raw or gzip-compressed). Throws
    /// <see cref="FileNotFoundException"/> for a missing file and <see cref="InvalidDataException"/> for a file that
    /// is not a valid IDX file of the expected kind, is truncated, or disagrees with the other on the image count.
    /// </summary>
    public static IdxDataset Load(string imagesPath, string labelsPath)
    {
        ArgumentNullException.ThrowIfNull(imagesPath);
        ArgumentNullException.ThrowIfNull(labelsPath);

        byte[] img = ReadMaybeGzip(imagesPath);
        var (pixels, dims) = Parse(imagesPath, img, ImagesMagic, 3);
        int count = dims[0], height = dims[1], width = dims[2];
        if (height == 0 || width == 0)
            throw new InvalidDataException($"IDX image file '{imagesPath}' declares {height}x{width} images, which hold no pixels; {Replace(imagesPath)}.");

        byte[] lab = ReadMaybeGzip(labelsPath);
        var (labels, labelDims) = Parse(labelsPath, lab, LabelsMagic, 1);
        if (labelDims[0] != count)
            throw new InvalidDataException(
                $"IDX label file '{labelsPath}' has {labelDims[0]} labels but image file '{imagesPath}' has {count} images; pass the labels file that belongs to these images.");

        int max = -1;
        foreach (byte l in labels) if (l > max) max = l;
        return new IdxDataset(imagesPath, labelsPath, pixels, labels, count, height, width, max + 1);
    }

    /// <summary>
    /// Loads the standard MNIST-style file names from <paramref name="folder"/>: train-images-idx3-ubyte and
    /// train-labels-idx1-ubyte when <paramref name="train"/> is true, else t10k-images-idx3-ubyte and
    /// t10k-labels-idx1-ubyte, each with or without a .gz suffix (the uncompressed file is preferred when both exist).
    /// </summary>
    public static IdxDataset LoadFolder(string folder, bool train)
    {
        ArgumentNullException.ThrowIfNull(folder);
        string prefix = train ? "train" : "t10k";
        return Load(FindFile(folder, $"{prefix}-images-idx3-ubyte"), FindFile(folder, $"{prefix}-labels-idx1-ubyte"));
    }

    // ---- helpers ----

    private void CheckIndex(int i)
    {
        if ((uint)i >= (uint)Count)
            throw new ArgumentOutOfRangeException(nameof(i), i, $"IdxDataset: index {i} is outside [0, {Count}).");
    }

    private static string FindFile(string folder, string name)
    {
        string raw = Path.Combine(folder, name), gz = raw + ".gz";
        if (File.Exists(raw)) return raw;
        if (File.Exists(gz)) return gz;
        throw new FileNotFoundException($"IDX file '{raw}' (or '{gz}') was not found; {Obtain(raw)}.", gz);
    }

    private static bool InDefaultFolder(string path)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(path)) ?? "";
        return string.Equals(dir.TrimEnd('/'), DefaultFashionMnistFolder.TrimEnd('/'), StringComparison.Ordinal);
    }

    // What to do about a missing file.
    private static string Obtain(string path) => InDefaultFolder(path)
        ? "install it with: apt-get install dataset-fashion-mnist (or run scripts/install-data.sh)"
        : "check the path, or download the MNIST-style IDX files into that folder";

    // What to do about a damaged file.
    private static string Replace(string path) => InDefaultFolder(path)
        ? "reinstall it with: apt-get install --reinstall dataset-fashion-mnist"
        : "download the file again";

    private static byte[] ReadMaybeGzip(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"IDX file '{path}' was not found; {Obtain(path)}.", path);
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b) return bytes;
        try
        {
            // The gzip trailer holds the uncompressed size mod 2^32, a good capacity hint for files this size.
            int hint = bytes.Length >= 18 ? BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(^4)) : 0;
            using var output = new MemoryStream(hint > 0 ? hint : bytes.Length * 4);
            using (var gz = new GZipStream(new MemoryStream(bytes), CompressionMode.Decompress))
                gz.CopyTo(output);
            return output.Length == output.Capacity ? output.GetBuffer() : output.ToArray();
        }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException or IOException)
        {
            throw new InvalidDataException($"IDX file '{path}' is a damaged gzip file ({LowerFirst(e.Message.TrimEnd('.'))}); {Replace(path)}.", e);
        }
    }

    private static string LowerFirst(string s) => s.Length > 0 ? char.ToLowerInvariant(s[0]) + s[1..] : s;

    // Validates the header and returns the data bytes (exactly product(dims) of them) and the dimensions.
    private static (byte[] Data, int[] Dims) Parse(string path, byte[] bytes, int magic, int rank)
    {
        string kind = magic == ImagesMagic ? "image" : "label";
        if (bytes.Length < 4)
            throw new InvalidDataException($"IDX {kind} file '{path}' is only {bytes.Length} bytes long, too short for an IDX header; {Replace(path)}.");
        int found = BinaryPrimitives.ReadInt32BigEndian(bytes);
        if (found != magic)
        {
            string what = found switch
            {
                ImagesMagic => "it is an IDX image file; pass the images-idx3 file as images and the labels-idx1 file as labels",
                LabelsMagic => "it is an IDX label file; pass the images-idx3 file as images and the labels-idx1 file as labels",
                _ when (found >> 16) == 0 && ((found >> 8) & 0xff) != 0x08 =>
                    $"its element type 0x{(found >> 8) & 0xff:x2} is not unsigned byte (0x08), which is all this loader reads",
                _ => "it is not an IDX file (raw or gzip); check the path",
            };
            throw new InvalidDataException($"IDX {kind} file '{path}' starts with magic 0x{found:x8} instead of 0x{magic:x8}: {what}.");
        }
        int headerBytes = 4 + rank * HeaderDimBytes;
        if (bytes.Length < headerBytes)
            throw new InvalidDataException($"IDX {kind} file '{path}' is truncated inside its header ({bytes.Length} of {headerBytes} bytes); {Replace(path)}.");
        var dims = new int[rank];
        long expected = 1;
        for (int d = 0; d < rank; d++)
        {
            uint v = BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(4 + d * HeaderDimBytes));
            expected *= v;
            if (v > int.MaxValue || expected > Array.MaxLength)
                throw new InvalidDataException($"IDX {kind} file '{path}' declares dimensions too large to hold in memory (dimension {d} is {v}); {Replace(path)}.");
            dims[d] = (int)v;
        }
        long actual = bytes.Length - headerBytes;
        string shape = rank == 3 ? $"{dims[0]} images of {dims[1]}x{dims[2]} pixels" : $"{dims[0]} labels";
        if (actual < expected)
            throw new InvalidDataException(
                $"IDX {kind} file '{path}' is truncated: its header declares {shape} ({expected} bytes) but only {actual} data bytes follow; {Replace(path)}.");
        if (actual > expected)
            throw new InvalidDataException(
                $"IDX {kind} file '{path}' has {actual - expected} unexpected byte(s) after the {shape} ({expected} bytes) its header declares; {Replace(path)}.");
        return (bytes.AsSpan(headerBytes).ToArray(), dims);
    }
}
