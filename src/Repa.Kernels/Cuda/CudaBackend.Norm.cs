namespace Repa.Kernels.Cuda;

/// <summary>
/// LayerNorm fused with its affine and the adaLN modulation, and the adaLN gated residual (kernels/norm.cu). Activations
/// (x, y, shift, scale, gate and their gradients) are float32 or bfloat16; weight, bias, their gradients, mean and rstd
/// are float32 either way (master weights and statistics). Backward members accumulate, as on the CPU.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    internal const string NormKernels = "norm.cu";

    /// <summary>Warps per block of the warp-per-row kernels (norm, loss).</summary>
    private const int RowWarps = 8;

    public void LayerNormForward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? shift, DeviceBuffer? scale,
        DeviceBuffer y, DeviceBuffer mean, DeviceBuffer rstd, int rows, int dim, int rowsPerGroup, double eps)
    {
        bool grouped = shift != null || scale != null;
        OpChecks.NormSizes("cuda", "layer_norm", rows, dim, rowsPerGroup, grouped);
        string suffix = ComputeSuffix("layer_norm", Present(x, shift, scale, y));
        long n = (long)rows * dim, groupElements = grouped ? (long)(rows / rowsPerGroup) * dim : 0;
        OpChecks.Range(x, 0, n);
        OpChecks.Range(y, 0, n);
        RequireF32("layer_norm", mean, rows);
        RequireF32("layer_norm", rstd, rows);
        RequireF32OrNull("layer_norm", weight, dim);
        RequireF32OrNull("layer_norm", bias, dim);
        if (shift != null) OpChecks.Range(shift, 0, groupElements);
        if (scale != null) OpChecks.Range(scale, 0, groupElements);
        if (rows == 0) return;
        Enter();
        Launch(Function(NormKernels, $"layer_norm_forward_{suffix}"), WarpPerRow(rows),
            Address(x), AddressOrNull(weight), AddressOrNull(bias), AddressOrNull(shift), AddressOrNull(scale),
            Address(y), Address(mean), Address(rstd), (long)rows, dim, Math.Max(rowsPerGroup, 1), (float)eps);
    }

    public void LayerNormBackward(DeviceBuffer x, DeviceBuffer? weight, DeviceBuffer? bias, DeviceBuffer? scale,
        DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer dy,
        DeviceBuffer? dx, DeviceBuffer? dweight, DeviceBuffer? dbias, DeviceBuffer? dshift, DeviceBuffer? dscale,
        int rows, int dim, int rowsPerGroup)
    {
        bool grouped = scale != null || dshift != null || dscale != null;
        OpChecks.NormSizes("cuda", "layer_norm backward", rows, dim, rowsPerGroup, grouped);
        string suffix = ComputeSuffix("layer_norm backward", Present(x, scale, dy, dx, dshift, dscale));
        long n = (long)rows * dim, groupElements = grouped ? (long)(rows / rowsPerGroup) * dim : 0;
        OpChecks.Range(x, 0, n);
        OpChecks.Range(dy, 0, n);
        if (dx != null) OpChecks.Range(dx, 0, n);
        RequireF32("layer_norm backward", mean, rows);
        RequireF32("layer_norm backward", rstd, rows);
        RequireF32OrNull("layer_norm backward", weight, dim);
        RequireF32OrNull("layer_norm backward", bias, dim);
        RequireF32OrNull("layer_norm backward", dweight, dim);
        RequireF32OrNull("layer_norm backward", dbias, dim);
        foreach (var g in new[] { scale, dshift, dscale })
            if (g != null) OpChecks.Range(g, 0, groupElements);
        bool parameters = dweight != null || dbias != null || dshift != null || dscale != null;
        if (rows == 0 || (dx == null && !parameters)) return;
        Enter();
        int group = Math.Max(rowsPerGroup, 1);
        if (dx != null)
            Launch(Function(NormKernels, $"layer_norm_backward_input_{suffix}"), WarpPerRow(rows),
                Address(x), AddressOrNull(weight), AddressOrNull(scale), Address(mean), Address(rstd), Address(dy), Address(dx),
                (long)rows, dim, group);
        if (!parameters) return;

        // Column tiles of 32 x 8 threads over chunks of rows. dshift/dscale are accumulated by the block owning the
        // chunk, so a chunk must then be exactly one modulation group; otherwise chunks are sized to fill the device.
        int tiles = (dim + 31) / 32;
        int rowsPerChunk = dshift != null || dscale != null
            ? group
            : (int)Math.Max(1, (rows + ParameterChunks(rows, tiles) - 1) / ParameterChunks(rows, tiles));
        int chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        DeviceBuffer? partialWeight = dweight != null ? Pool.Rent(DType.F32, (long)chunks * dim) : null;
        DeviceBuffer? partialBias = dbias != null ? Pool.Rent(DType.F32, (long)chunks * dim) : null;
        try
        {
            Launch(Function(NormKernels, $"layer_norm_backward_params_{suffix}"),
                new LaunchShape((uint)tiles, (uint)Math.Min(chunks, 65535), 32, SumTileRows),
                Address(x), AddressOrNull(weight), AddressOrNull(bias), AddressOrNull(scale), Address(mean), Address(rstd), Address(dy),
                AddressOrNull(partialWeight), AddressOrNull(partialBias), AddressOrNull(dshift), AddressOrNull(dscale),
                (long)rows, dim, group, rowsPerChunk);
            // Fold the per-chunk partials in chunk order (deterministic): dweight += sum over chunks.
            if (partialWeight != null) Sum(partialWeight, dweight!, 1, chunks, dim, 1, 1);
            if (partialBias != null) Sum(partialBias, dbias!, 1, chunks, dim, 1, 1);
        }
        finally
        {
            if (partialWeight != null) Pool.Return(partialWeight);
            if (partialBias != null) Pool.Return(partialBias);
        }
    }

    /// <summary>Chunks for the parameter gradients: about eight blocks per multiprocessor, never more than the rows.</summary>
    private long ParameterChunks(int rows, int tiles) => Math.Clamp(8L * MultiprocessorCount / tiles, 1, Math.Max(rows, 1));

    public void GatedResidualForward(DeviceBuffer x, DeviceBuffer y, DeviceBuffer gate, DeviceBuffer output, int rows, int dim, int rowsPerGroup)
    {
        OpChecks.NormSizes("cuda", "gated_residual", rows, dim, rowsPerGroup, grouped: true);
        string suffix = ComputeSuffix("gated_residual", x, y, gate, output);
        long n = (long)rows * dim;
        OpChecks.Range(x, 0, n);
        OpChecks.Range(y, 0, n);
        OpChecks.Range(output, 0, n);
        OpChecks.Range(gate, 0, (long)(rows / rowsPerGroup) * dim);
        if (rows == 0) return;
        Enter();
        // One block per row (grid-stride over rows), the block no wider than the row.
        var shape = new LaunchShape((uint)Math.Min(rows, 65535), 1, (uint)Math.Clamp((dim + 31) / 32 * 32, 32, BlockSize), 1);
        Launch(Function(NormKernels, $"gated_residual_forward_{suffix}"), shape,
            Address(x), Address(y), Address(gate), Address(output), (long)rows, dim, rowsPerGroup);
    }

    public void GatedResidualBackward(DeviceBuffer y, DeviceBuffer gate, DeviceBuffer dout, DeviceBuffer? dx, DeviceBuffer? dy, DeviceBuffer? dgate,
        int rows, int dim, int rowsPerGroup)
    {
        OpChecks.NormSizes("cuda", "gated_residual backward", rows, dim, rowsPerGroup, grouped: true);
        string suffix = ComputeSuffix("gated_residual backward", Present(y, gate, dout, dx, dy, dgate));
        long n = (long)rows * dim, groupElements = (long)(rows / rowsPerGroup) * dim;
        OpChecks.Range(y, 0, n);
        OpChecks.Range(dout, 0, n);
        OpChecks.Range(gate, 0, groupElements);
        if (dx != null) OpChecks.Range(dx, 0, n);
        if (dy != null) OpChecks.Range(dy, 0, n);
        if (dgate != null) OpChecks.Range(dgate, 0, groupElements);
        if (rows == 0 || (dx == null && dy == null && dgate == null)) return;
        Enter();
        int groups = rows / rowsPerGroup;
        var shape = new LaunchShape((uint)((dim + 31) / 32), (uint)Math.Min(groups, 65535), 32, SumTileRows);
        Launch(Function(NormKernels, $"gated_residual_backward_{suffix}"), shape,
            Address(y), Address(gate), Address(dout), AddressOrNull(dx), AddressOrNull(dy), AddressOrNull(dgate), (long)rows, dim, rowsPerGroup);
    }

    // ---- shared by the norm, loss and embedding families ------------------------------------------------------------

    /// <summary>A warp per row: blocks of <see cref="RowWarps"/> warps, enough of them for the rows (grid-stride beyond).</summary>
    private LaunchShape WarpPerRow(long rows) =>
        new((uint)Math.Clamp((rows + RowWarps - 1) / RowWarps, 1, (long)MultiprocessorCount * 32), 1, 32 * RowWarps, 1);

    /// <summary>The device address, or 0 (the kernels' null: absent, or not requested).</summary>
    private ulong AddressOrNull(DeviceBuffer? buffer) => buffer == null ? 0 : Address(buffer);

    /// <summary>The buffers that are not null, for a dtype check.</summary>
    private static DeviceBuffer[] Present(params DeviceBuffer?[] buffers) => [.. buffers.Where(b => b != null).Select(b => b!)];

    /// <summary>Throws unless <paramref name="buffer"/> is float32 with at least <paramref name="count"/> elements.</summary>
    private static void RequireF32(string op, DeviceBuffer buffer, long count)
    {
        if (buffer.DType != DType.F32)
            throw new ArgumentException($"cuda {op}: {buffer} must be float32 (statistics, losses, parameters and their gradients are).");
        OpChecks.Range(buffer, 0, count);
    }

    private static void RequireF32OrNull(string op, DeviceBuffer? buffer, long count)
    {
        if (buffer != null) RequireF32(op, buffer, count);
    }
}
