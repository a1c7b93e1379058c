namespace Repa.Runtime.Sampling;

/// <summary>Pixel-space samples as 8-bit images, the way REPA's generate.py turns decoded samples into PNG/npz bytes.</summary>
public static class SampleImages
{
    /// <summary>
    /// NCHW samples in [-1, 1] to uint8 NHWC (the layout of ADM's .npz arr_0): in float32, as generate.py,
    /// value = clamp(255 (x + 1) / 2, 0, 255) truncated towards zero; NaN becomes 0.
    /// </summary>
    public static byte[] ToNhwcBytes(ReadOnlySpan<double> samples, int count, int channels, int height, int width)
    {
        if (count < 0 || channels < 1 || height < 1 || width < 1)
            throw new ArgumentException($"images: bad shape [{count}, {channels}, {height}, {width}].");
        long plane = (long)height * width, per = plane * channels;
        if (samples.Length != count * per)
            throw new ArgumentException($"images: {samples.Length} values are not {count} samples of {channels}x{height}x{width}.", nameof(samples));
        var bytes = new byte[samples.Length];
        for (long n = 0; n < count; n++)
            for (long c = 0; c < channels; c++)
                for (long p = 0; p < plane; p++)
                    bytes[n * per + p * channels + c] = ToByte(samples[(int)(n * per + c * plane + p)]);
        return bytes;
    }

    /// <summary>One value: the sampler's float64 output is first rounded to float32 (generate.py's .to(torch.float32)).</summary>
    public static byte ToByte(double value)
    {
        float x = (float)value;
        float scaled = 255f * ((x + 1f) / 2f);
        if (float.IsNaN(scaled)) return 0;
        return (byte)Math.Clamp(scaled, 0f, 255f);
    }
}
