namespace Repa.Runtime.Data;

/// <summary>
/// An <see cref="IdxDataset"/> as training data: each grey image centred on a black Size x Size square (zero padding,
/// top/left margin (Size - side) / 2, see <see cref="IdxDataset.FillBatch"/>), scaled to [-1, 1]. Fashion-MNIST's
/// 28 x 28 padded to 32 is divisible by patch sizes 2, 4 and 8. The encoder sees the same padded image as bytes.
/// </summary>
public sealed class IdxTrainingData : TrainingData
{
    private readonly string identity;

    /// <summary>Wraps <paramref name="data"/>, padding to <paramref name="size"/> (at least the images' sides).</summary>
    public IdxTrainingData(IdxDataset data, int size)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (size < data.Height || size < data.Width)
            throw new InvalidDataException(
                $"IDX dataset '{data.ImagesPath}' has {data.Height}x{data.Width} images, larger than the requested padded size {size}; choose an image size of at least {Math.Max(data.Height, data.Width)}.");
        Source = data;
        Size = size;
        var file = new FileInfo(data.ImagesPath);
        identity = string.Join("|", "idx", file.FullName, file.Length, file.LastWriteTimeUtc.Ticks, data.Count, "pad", size);
    }

    /// <summary>The wrapped IDX dataset.</summary>
    public IdxDataset Source { get; }

    public override int Count => Source.Count;
    public override int Channels => 1;
    public override int Size { get; }
    public override int NumClasses => Source.NumClasses;
    public override string Identity => identity;

    public override string Description =>
        $"IDX {Source.ImagesPath} ({Count} grey {Source.Height}x{Source.Width} images centred on a black {Size}x{Size} square, {NumClasses} classes)";

    public override int ImageChannels => 1;
    public override int ImageHeight => Size;
    public override int ImageWidth => Size;

    /// <summary>True when <paramref name="folder"/> holds train-images-idx3-ubyte, raw or .gz.</summary>
    public static bool IsIdxFolder(string folder) =>
        File.Exists(Path.Combine(folder, "train-images-idx3-ubyte")) || File.Exists(Path.Combine(folder, "train-images-idx3-ubyte.gz"));

    protected override void FillBatchCore(ReadOnlySpan<int> indices, Span<float> inputs, Span<int> labels, ulong seed, ulong step) =>
        Source.FillBatch(indices, inputs, labels, Size);

    protected override void FillImagesCore(ReadOnlySpan<int> indices, Span<byte> images)
    {
        images.Clear();
        int h = Source.Height, w = Source.Width, top = (Size - h) / 2, left = (Size - w) / 2, plane = Size * Size;
        for (int b = 0; b < indices.Length; b++)
        {
            var src = Source.Image(indices[b]);
            var dst = images.Slice(b * plane, plane);
            for (int y = 0; y < h; y++) src.Slice(y * w, w).CopyTo(dst.Slice((top + y) * Size + left, w));
        }
    }
}
