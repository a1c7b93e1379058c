namespace Repa.Kernels;

/// <summary>
/// The argument checks every backend shares (one copy of each rule and its sentence). A backend calls them before
/// touching memory, so a bad call fails with one clear sentence instead of reading or writing out of bounds.
/// </summary>
public static class OpChecks
{
    /// <summary>A host span of <paramref name="count"/> elements of <paramref name="elementSize"/> bytes fits
    /// <paramref name="buffer"/> from <paramref name="offset"/> on, and the element size is the buffer's.</summary>
    public static void Range(DeviceBuffer buffer, long offset, long count, int elementSize)
    {
        if (elementSize != buffer.DType.SizeInBytes())
            throw new ArgumentException($"element size {elementSize} does not match {buffer}.");
        Range(buffer, offset, count);
    }

    /// <summary>Elements [offset, offset + count) lie inside <paramref name="buffer"/>.</summary>
    public static void Range(DeviceBuffer buffer, long offset, long count)
    {
        if (offset < 0 || count < 0 || offset + count > buffer.Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [{offset}, {offset + count}) is outside {buffer}.");
    }

    /// <summary>The three GEMM operands share a dtype.</summary>
    public static void GemmTypes(DeviceBuffer a, DeviceBuffer b, DeviceBuffer c)
    {
        if (a.DType != b.DType || a.DType != c.DType)
            throw new ArgumentException($"gemm: operand dtypes differ ({a.DType.Name()}, {b.DType.Name()}, {c.DType.Name()}).");
    }

    /// <summary>
    /// Every element a batched GEMM reads or writes lies inside its buffer, leading dimensions cover the rows, and C is
    /// not shared between batch items (for backends that write device memory without bounds checks).
    /// </summary>
    public static void GemmExtents(string backend, bool transA, bool transB, int m, int n, int k, double alpha,
        DeviceBuffer a, long offsetA, int lda, long strideA, DeviceBuffer b, long offsetB, int ldb, long strideB,
        DeviceBuffer c, long offsetC, int ldc, long strideC, int batch)
    {
        if (m < 0 || n < 0 || k < 0 || batch < 0)
            throw new ArgumentOutOfRangeException(nameof(m), $"{backend} gemm: sizes must be >= 0 (m {m}, n {n}, k {k}, batch {batch}).");
        if (m == 0 || n == 0 || batch == 0) return;
        if (batch > 1 && strideC == 0)
            throw new ArgumentException($"{backend} gemm: C has stride 0 over a batch of {batch}, so the items would overwrite each other.");
        Operand("C", c, offsetC, ldc, strideC, m, n);
        if (k == 0 || alpha == 0) return; // neither operand is read
        Operand("A", a, offsetA, lda, strideA, transA ? k : m, transA ? m : k);
        Operand("B", b, offsetB, ldb, strideB, transB ? n : k, transB ? k : n);

        void Operand(string name, DeviceBuffer buffer, long offset, int ld, long stride, int rows, int cols)
        {
            if (ld < cols)
                throw new ArgumentOutOfRangeException(nameof(ld), $"{backend} gemm: the leading dimension {ld} of {name} is smaller than its {cols} columns.");
            long last = offset + (batch - 1) * Math.Max(stride, 0) + (long)(rows - 1) * ld + cols;
            if (offset < 0 || stride < 0 || last > buffer.Length)
                throw new ArgumentOutOfRangeException(name, $"{backend} gemm: {name} (offset {offset}, {batch} x [{rows}, {cols}], ld {ld}, stride {stride}) reaches element {last}, outside {buffer}.");
        }
    }

    /// <summary>LayerNorm / gated-residual sizes: rows &gt;= 0, dim &gt;= 1, and (grouped) rowsPerGroup divides rows.</summary>
    public static void NormSizes(string backend, string op, int rows, int dim, int rowsPerGroup, bool grouped)
    {
        if (rows < 0 || dim < 1)
            throw new ArgumentOutOfRangeException(nameof(rows), $"{backend} {op}: rows {rows} must be >= 0 and dim {dim} >= 1.");
        if (grouped && (rowsPerGroup < 1 || rows % rowsPerGroup != 0))
            throw new ArgumentOutOfRangeException(nameof(rowsPerGroup), $"{backend} {op}: rowsPerGroup {rowsPerGroup} must be >= 1 and divide rows {rows}.");
    }

    /// <summary>
    /// Attention sizes are non-negative and every buffer shares qkv's dtype and holds its elements; with
    /// <paramref name="float32Statistics"/> (mixed precision) the log-sum-exp may be float32 beside 16-bit qkv.
    /// </summary>
    public static void Attention(string op, DeviceBuffer qkv, DeviceBuffer output, DeviceBuffer logSumExp,
        DeviceBuffer? dOutput, DeviceBuffer? dQkv, int batch, int tokens, int heads, int headDim, bool float32Statistics = false)
    {
        if (batch < 0 || tokens < 0 || heads < 0 || headDim < 0)
            throw new ArgumentOutOfRangeException(nameof(batch), $"{op}: sizes must be >= 0 (batch {batch}, tokens {tokens}, heads {heads}, head_dim {headDim}).");
        long rows = (long)batch * tokens, d = (long)heads * headDim;
        Need(qkv, rows * 3 * d, "qkv");
        Need(output, rows * d, "output");
        Need(logSumExp, (long)batch * heads * tokens, "logSumExp", float32Statistics);
        if (dOutput != null) Need(dOutput, rows * d, "dOutput");
        if (dQkv != null) Need(dQkv, rows * 3 * d, "dQkv");

        void Need(DeviceBuffer b, long length, string name, bool mayBeFloat32 = false)
        {
            if (b.DType != qkv.DType && !(mayBeFloat32 && b.DType == DType.F32))
                throw new ArgumentException($"{op}: {name} {b} is not {qkv.DType.Name()} like qkv{(mayBeFloat32 ? " (or float32)" : "")}.");
            if (b.Length < length)
                throw new ArgumentException($"{op}: {name} {b} holds fewer than the {length} elements of batch {batch}, tokens {tokens}, heads {heads}, head_dim {headDim}.");
        }
    }

    /// <summary>An optimiser buffer has the step's dtype and holds its n elements.</summary>
    public static void OptimBuffer(string op, DeviceBuffer b, DType dtype, long n)
    {
        if (b.DType != dtype) throw new ArgumentException($"{op}: {b} does not match dtype {dtype.Name()}.");
        if (n < 0 || n > b.Length) throw new ArgumentOutOfRangeException(nameof(n), n, $"{op}: {n} elements do not fit {b}.");
    }

    /// <summary>AdamW's step count is 1-based.</summary>
    public static void AdamWStep(int step)
    {
        if (step < 1) throw new ArgumentOutOfRangeException(nameof(step), step, "adamw: step is 1-based (the count after this update).");
    }

    /// <summary>Embedding ids are int32.</summary>
    public static void EmbeddingIds(DeviceBuffer ids)
    {
        if (ids.DType != DType.I32) throw new ArgumentException($"embedding: ids must be int32, not {ids.DType.Name()}.");
    }

    /// <summary>Every id lies in [0, vocab); the first that does not is named with its position.</summary>
    public static void EmbeddingIdsInRange(ReadOnlySpan<int> ids, int vocab)
    {
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), ids[i], $"embedding: id {ids[i]} at position {i} is out of range for a table of {vocab} rows (valid ids are 0..{vocab - 1}).");
    }
}
