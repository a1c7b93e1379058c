namespace Repa.Runtime.Plots;

/// <summary>
/// A labelled grid of sample images as one PNG: an optional title line at the top, then rows of images with each row's
/// label (e.g. its class) at the left, on white. Images smaller than <see cref="MinCell"/> pixels are enlarged by a whole
/// factor (nearest neighbour) so a 32 px sample stays visible; 1-channel images are drawn grey.
/// </summary>
public static class SampleGrid
{
    /// <summary>Border around everything, and the space between the labels and the first column.</summary>
    public const int Margin = 8;

    /// <summary>Pixels between neighbouring images.</summary>
    public const int Gap = 2;

    /// <summary>Images are enlarged by floor(MinCell / size) when that is above 1.</summary>
    public const int MinCell = 64;

    /// <summary>Row labels are drawn at this multiple of the 5x7 font; the title at 1.</summary>
    public const int LabelScale = 2;

    /// <summary>The whole-number enlargement of an image of the given size.</summary>
    public static int Zoom(int height, int width) => Math.Max(1, MinCell / Math.Max(height, width));

    /// <summary>
    /// The grid's size and the top-left corner of its first image, for <paramref name="count"/> images of
    /// <paramref name="height"/> x <paramref name="width"/> in rows of <paramref name="columns"/>.
    /// </summary>
    public static (int Width, int Height, int Left, int Top) Measure(int count, int columns, int height, int width, IReadOnlyList<string> rowLabels, string title)
    {
        ArgumentNullException.ThrowIfNull(rowLabels);
        if (count < 1 || columns < 1 || height < 1 || width < 1)
            throw new ArgumentException($"grid: needs at least one image and column, got {count} images of {height}x{width} in {columns} columns.");
        int rows = (count + columns - 1) / columns;
        int zoom = Zoom(height, width), cellW = width * zoom, cellH = height * zoom;
        int labelWidth = rowLabels.Count == 0 ? 0 : rowLabels.Max(l => Canvas.TextWidth(l ?? "", LabelScale));
        int left = Margin + (labelWidth > 0 ? labelWidth + Margin : 0);
        int top = Margin + (string.IsNullOrEmpty(title) ? 0 : Canvas.TextHeight(1) + Margin);
        int gridW = columns * cellW + (columns - 1) * Gap, gridH = rows * cellH + (rows - 1) * Gap;
        int titleW = string.IsNullOrEmpty(title) ? 0 : Canvas.TextWidth(title, 1);
        return (Math.Max(left + gridW, Margin + titleW) + Margin, top + gridH + Margin, left, top);
    }

    /// <summary>
    /// Writes the grid: <paramref name="nhwc"/> holds <paramref name="count"/> images of height x width x channels
    /// bytes (channels 1 or 3), placed row by row, <paramref name="columns"/> to a row; row r is labelled rowLabels[r]
    /// (fewer labels than rows leave the rest unlabelled).
    /// </summary>
    public static void Save(string path, ReadOnlySpan<byte> nhwc, int count, int height, int width, int channels, int columns,
        IReadOnlyList<string> rowLabels, string title = "")
    {
        if (channels is not (1 or 3)) throw new ArgumentException($"grid: images need 1 or 3 channels, got {channels}.", nameof(channels));
        if (nhwc.Length != (long)count * height * width * channels)
            throw new ArgumentException($"grid: {nhwc.Length} bytes are not {count} images of {height}x{width}x{channels}.", nameof(nhwc));
        var (w, h, left, top) = Measure(count, columns, height, width, rowLabels, title);
        int zoom = Zoom(height, width), cellW = width * zoom, cellH = height * zoom;
        var canvas = new Canvas(w, h);
        (byte, byte, byte) black = (0, 0, 0);
        if (!string.IsNullOrEmpty(title)) canvas.Text(title, Margin, Margin, 1, black);
        int rows = (count + columns - 1) / columns;
        for (int r = 0; r < rows && r < rowLabels.Count; r++)
        {
            string label = rowLabels[r] ?? "";
            int y = top + r * (cellH + Gap) + (cellH - Canvas.TextHeight(LabelScale)) / 2;
            canvas.Text(label, left - Margin - Canvas.TextWidth(label, LabelScale), y, LabelScale, black);
        }
        int per = height * width * channels;
        for (int i = 0; i < count; i++)
        {
            int x0 = left + i % columns * (cellW + Gap), y0 = top + i / columns * (cellH + Gap);
            var image = nhwc.Slice(i * per, per);
            for (int py = 0; py < cellH; py++)
                for (int px = 0; px < cellW; px++)
                {
                    int p = (py / zoom * width + px / zoom) * channels;
                    canvas.Set(x0 + px, y0 + py, channels == 1 ? (image[p], image[p], image[p]) : (image[p], image[p + 1], image[p + 2]));
                }
        }
        Png.Write(path, w, h, canvas.Pixels);
    }
}
