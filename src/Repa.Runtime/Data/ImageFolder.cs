using System.IO.Enumeration;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Repa.Runtime.Plots;

namespace Repa.Runtime.Data;

/// <summary>
/// The files of one extension under a folder, as REPA's dataset.py and EDM2's dataset_tool.py list them: every file at
/// any depth, named relative to the folder with '/' separators, sorted by ordinal (code point) order, which is
/// Python's sorted(). Index i of a dataset is file i of this list. <see cref="Hash"/> covers names, sizes and times.
/// </summary>
internal sealed class FolderListing
{
    private FolderListing(string folder, string[] files, string hash)
    {
        Folder = folder;
        Files = files;
        Hash = hash;
    }

    public string Folder { get; }
    public string[] Files { get; }
    public string Hash { get; }

    public string FullPath(int i) => Path.Combine(Folder, Files[i]);

    /// <summary>Lists the files ending in <paramref name="extension"/> (any case); other image formats are an error.</summary>
    public static FolderListing List(string folder, string extension)
    {
        string root = Path.GetFullPath(folder);
        var entries = new FileSystemEnumerable<(string Name, long Length, long Ticks)>(root,
            (ref FileSystemEntry e) => (Path.GetRelativePath(root, e.ToFullPath()).Replace('\\', '/'), e.Length, e.LastWriteTimeUtc.UtcTicks),
            new EnumerationOptions { RecurseSubdirectories = true })
        {
            ShouldIncludePredicate = (ref FileSystemEntry e) => !e.IsDirectory,
        };
        var files = new List<(string Name, long Length, long Ticks)>();
        foreach (var entry in entries)
        {
            string ext = Path.GetExtension(entry.Name).ToLowerInvariant();
            if (ext == extension) files.Add(entry);
            else if (ext is ".jpg" or ".jpeg" or ".bmp" or ".gif" or ".webp" or ".tif" or ".tiff")
                throw new InvalidDataException(
                    $"'{Path.Combine(folder, entry.Name)}' is a {ext[1..].ToUpperInvariant()} image, which this reader does not decode; convert the folder to PNG (EDM2's dataset_tool.py convert writes PNGs).");
        }
        files.Sort((a, b) => string.CompareOrdinal(a.Name, b.Name));
        var text = new StringBuilder();
        foreach (var (name, length, ticks) in files) text.Append(name).Append('\0').Append(length).Append('\0').Append(ticks).Append('\n');
        string hash = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..32].ToLowerInvariant();
        return new FolderListing(folder, files.Select(f => f.Name).ToArray(), hash);
    }
}

/// <summary>Shared pieces of the EDM2/REPA folder layouts: dataset.json labels and the image transforms.</summary>
internal static class ImageFolder
{
    /// <summary>EDM2's label file: {"labels": [["00000/img00000000.png", 6], ...]} or {"labels": null}.</summary>
    public const string LabelsFile = "dataset.json";

    /// <summary>
    /// True when a PNG lies in <paramref name="folder"/> or two levels below (EDM2 puts them one level down); stops at
    /// the first, and does not crawl a large unrelated tree passed by mistake.
    /// </summary>
    public static bool HasPng(string folder) =>
        Directory.EnumerateFiles(folder, "*.png", new EnumerationOptions { RecurseSubdirectories = true, MaxRecursionDepth = 2, MatchCasing = MatchCasing.CaseInsensitive })
            .Any();

    /// <summary>
    /// The label of each listed file from the folder's dataset.json, or null when it says "labels": null (unlabelled).
    /// Every listed file needs a label and every label must name a listed file.
    /// </summary>
    public static int[]? ReadLabels(FolderListing listing, string what)
    {
        string json = Path.Combine(listing.Folder, LabelsFile);
        if (!File.Exists(json))
            throw new FileNotFoundException(
                $"{what} '{listing.Folder}' has no {LabelsFile}; write one as {{\"labels\": [[\"00000/img00000000.png\", 0], ...]}} (or {{\"labels\": null}} for unlabelled images), as EDM2's dataset_tool.py does.", json);
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(json)); }
        catch (JsonException e) { throw new InvalidDataException($"'{json}' is not valid JSON ({e.Message.TrimEnd('.')}); rewrite it as {{\"labels\": [[file, label], ...]}}.", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("labels", out var labels))
                throw new InvalidDataException($"'{json}' has no \"labels\" entry; it should read {{\"labels\": [[file, label], ...]}} or {{\"labels\": null}}.");
            if (labels.ValueKind == JsonValueKind.Null) return null;
            if (labels.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"'{json}': \"labels\" must be a list of [file, label] pairs or null, not {labels.ValueKind.ToString().ToLowerInvariant()}.");
            var byName = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var pair in labels.EnumerateArray())
            {
                if (pair.ValueKind != JsonValueKind.Array || pair.GetArrayLength() != 2 || pair[0].ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"'{json}': every label entry must be a [file, label] pair, but one is {pair.GetRawText()}.");
                string name = pair[0].GetString()!.Replace('\\', '/');
                if (pair[1].ValueKind != JsonValueKind.Number || !pair[1].TryGetInt32(out int label) || label < 0)
                    throw new InvalidDataException($"'{json}': the label of '{name}' is {pair[1].GetRawText()}, not a non-negative integer class.");
                byName[name] = label;
            }
            var result = new int[listing.Files.Length];
            for (int i = 0; i < result.Length; i++)
                if (!byName.Remove(listing.Files[i], out result[i]))
                    throw new InvalidDataException($"'{listing.FullPath(i)}' has no label in '{json}'; add it, or remove the file.");
            if (byName.Count > 0)
                throw new FileNotFoundException(
                    $"'{json}' labels {byName.Count} file(s) missing from '{listing.Folder}', e.g. '{byName.Keys.Order(StringComparer.Ordinal).First()}'; restore them or rebuild the folder.");
            return result;
        }
    }

    /// <summary>
    /// f of every index, run on the thread pool (file reads and decoding); the first failure is rethrown as itself, not
    /// wrapped, so the CLI still reports it in one sentence.
    /// </summary>
    public static T[] Map<T>(ReadOnlySpan<int> indices, Func<int, T> f)
    {
        var idx = indices.ToArray();
        var result = new T[idx.Length];
        try
        {
            Parallel.For(0, idx.Length, b => result[b] = f(idx[b]));
        }
        catch (AggregateException e) when (e.InnerExceptions.Count > 0)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
        }
        return result;
    }

    /// <summary>The number of classes (largest label + 1) and the labels to train with (all 0 when unlabelled).</summary>
    public static (int NumClasses, int[] Labels) Classes(int[]? labels, int count) =>
        labels == null ? (1, new int[count]) : (labels.Length == 0 ? 1 : labels.Max() + 1, labels);

    /// <summary>1 for grey PNGs (grey or grey + alpha), 3 for colour (RGB, RGBA, palette).</summary>
    public static int ChannelsOf(PngInfo info) => info.IsGrey ? 1 : 3;

    /// <summary>
    /// The image's pixels with <paramref name="channels"/> interleaved channels: alpha is dropped (not composited, as
    /// PIL's convert('RGB')), grey is replicated into RGB; a colour image where grey is expected is an error.
    /// </summary>
    public static byte[] ToChannels(PngImage image, int channels, string file)
    {
        int c = image.Channels, n = image.Width * image.Height;
        if (c == channels) return image.Pixels;
        bool grey = c <= 2;
        if (channels == 1 && !grey)
            throw new InvalidDataException($"'{file}' is a colour image but this dataset is grey (its first image is); store all images in one format.");
        var result = new byte[(long)n * channels];
        var p = image.Pixels;
        for (int i = 0; i < n; i++)
        {
            if (grey)
                for (int k = 0; k < channels; k++) result[i * channels + k] = p[i * c];
            else
                for (int k = 0; k < 3; k++) result[i * 3 + k] = p[i * c + k];
        }
        return result;
    }

    /// <summary>Interleaved pixels [H, W, C] to planes [C, H, W].</summary>
    public static void ToPlanes(ReadOnlySpan<byte> hwc, int width, int height, int channels, Span<byte> chw)
    {
        int plane = width * height;
        for (int i = 0; i < plane; i++)
            for (int c = 0; c < channels; c++)
                chw[c * plane + i] = hwc[i * channels + c];
    }

    /// <summary>
    /// Centre crop to a square and area (box) resize to <paramref name="size"/>, into planes [C, size, size]. The crop
    /// keeps side = min(W, H) pixels starting at ((W - side) / 2, (H - side) / 2) (EDM2's center-crop offsets). Each
    /// output pixel is the mean of the source area it covers, pixels cut by its border weighted by the part inside
    /// (computed exactly in integers, rounded half up); equal sizes copy, so nothing is resampled then.
    /// </summary>
    public static void CropResize(ReadOnlySpan<byte> hwc, int width, int height, int channels, int size, Span<byte> chw)
    {
        int side = Math.Min(width, height), top = (height - side) / 2, left = (width - side) / 2;
        var (first, weights) = AreaWeights(side, size);
        long norm = (long)side * side; // the weights of one output pixel sum to side per axis
        int plane = size * size;
        for (int c = 0; c < channels; c++)
        for (int oy = 0; oy < size; oy++)
        for (int ox = 0; ox < size; ox++)
        {
            long sum = 0;
            var wy = weights[oy];
            var wx = weights[ox];
            for (int j = 0; j < wy.Length; j++)
            {
                int row = (top + first[oy] + j) * width + left + first[ox];
                long acc = 0;
                for (int i = 0; i < wx.Length; i++) acc += wx[i] * (long)hwc[(row + i) * channels + c];
                sum += wy[j] * acc;
            }
            chw[c * plane + oy * size + ox] = (byte)((2 * sum + norm) / (2 * norm));
        }
    }

    // Output pixel o covers [o * side, (o + 1) * side) and source pixel i covers [i * size, (i + 1) * size), in units of
    // 1 / size of a source pixel: the integer overlap is i's weight in o. The weights of o sum to side.
    private static (int[] First, int[][] Weights) AreaWeights(int side, int size)
    {
        var first = new int[size];
        var weights = new int[size][];
        for (int o = 0; o < size; o++)
        {
            long lo = (long)o * side, hi = (long)(o + 1) * side;
            int i0 = (int)(lo / size), i1 = (int)((hi - 1) / size);
            first[o] = i0;
            weights[o] = new int[i1 - i0 + 1];
            for (int i = i0; i <= i1; i++)
                weights[o][i - i0] = (int)(Math.Min(hi, (long)(i + 1) * size) - Math.Max(lo, (long)i * size));
        }
        return (first, weights);
    }
}

/// <summary>
/// A folder of PNGs with EDM2's dataset.json, trained in pixel space: grey (if the first image is grey or grey + alpha)
/// or RGB (colour and palette images; alpha is dropped), each image centre-cropped to a square and area-resized to
/// Size x Size (see <see cref="ImageFolder.CropResize"/>; default Size: the first image's cropped side, so an EDM2 folder of
/// square images is used as is), then scaled b / 127.5 - 1 to [-1, 1]. The encoder sees the same Size x Size bytes.
/// Images are decoded when a batch asks for them, in parallel.
/// </summary>
public sealed class ImageFolderData : TrainingData
{
    private readonly FolderListing listing;
    private readonly int[] labels;
    private readonly PngInfo first;

    /// <summary>Opens <paramref name="folder"/>; <paramref name="imageSize"/> 0 keeps the first image's cropped side.</summary>
    public ImageFolderData(string folder, int imageSize = 0)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"image folder '{folder}' does not exist.");
        if (imageSize < 0) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "the image size must be positive (0: the images' own).");
        listing = FolderListing.List(folder, ".png");
        if (listing.Files.Length == 0) throw new InvalidDataException($"image folder '{folder}' holds no .png files.");
        var read = ImageFolder.ReadLabels(listing, "image folder");
        (NumClasses, labels) = ImageFolder.Classes(read, listing.Files.Length);
        Conditional = read != null;
        first = Png.ReadInfo(listing.FullPath(0));
        Channels = ImageFolder.ChannelsOf(first);
        Size = imageSize > 0 ? imageSize : Math.Min(first.Width, first.Height);
    }

    /// <summary>The folder holding the PNGs and dataset.json.</summary>
    public string Folder => listing.Folder;

    /// <summary>False when dataset.json says "labels": null.</summary>
    public bool Conditional { get; }

    public override int Count => listing.Files.Length;
    public override int Channels { get; }
    public override int Size { get; }
    public override int NumClasses { get; }
    public override string Identity => string.Join("|", "png-folder", Path.GetFullPath(Folder), listing.Hash, Count, Channels, "crop-area", Size);

    public override string Description =>
        $"PNG folder {Folder} ({Count} {(Channels == 1 ? "grey" : "RGB")} images, the first {first.Width}x{first.Height}, centre-cropped and area-resized to {Size}x{Size}, " +
        (Conditional ? $"{NumClasses} classes)" : "unlabelled)");

    public override int ImageChannels => Channels;
    public override int ImageHeight => Size;
    public override int ImageWidth => Size;

    /// <summary>The file of example <paramref name="i"/>.</summary>
    public string FilePath(int i) => listing.FullPath(i);

    protected override void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labelsOut, ulong seed, ulong step)
    {
        var images = Load(indices);
        var unit = PixelToUnit;
        int per = Channels * Size * Size;
        for (int b = 0; b < images.Length; b++)
        {
            labelsOut[b] = labels[indices[b]];
            var dst = inputs.Slice(b * per, per);
            for (int k = 0; k < per; k++) dst[k] = unit[images[b][k]];
        }
    }

    protected override void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> images)
    {
        var loaded = Load(indices);
        int per = Channels * Size * Size;
        for (int b = 0; b < loaded.Length; b++) loaded[b].CopyTo(images.Slice(b * per, per));
    }

    // Decodes, crops and resizes the images of a batch on the thread pool; planes [C, Size, Size] each.
    private byte[][] Load(ReadOnlySpan<int> indices)
    {
        return ImageFolder.Map(indices, i =>
        {
            string file = listing.FullPath(i);
            var png = Png.Read(file);
            var pixels = ImageFolder.ToChannels(png, Channels, file);
            var planes = new byte[Channels * Size * Size];
            ImageFolder.CropResize(pixels, png.Width, png.Height, Channels, Size, planes);
            return planes;
        });
    }
}
