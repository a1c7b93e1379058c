namespace Repa.Kernels.Cpu;

/// <summary>
/// Index maths for a broadcast binary op over a contiguous output: adjacent axes that both inputs traverse the same way
/// are merged, leaving rows of a contiguous (stride 1) or broadcast (stride 0) inner axis.
/// </summary>
internal sealed class BroadcastLayout
{
    private readonly int[] outer;      // leading (merged) axis sizes
    private readonly long[] outerA, outerB;

    private BroadcastLayout(int[] outer, long[] outerA, long[] outerB, int inner, long innerA, long innerB)
    {
        this.outer = outer;
        this.outerA = outerA;
        this.outerB = outerB;
        Inner = inner;
        InnerStrideA = innerA;
        InnerStrideB = innerB;
        Rows = 1;
        foreach (int s in outer) Rows *= s;
    }

    public long Rows { get; }
    public int Inner { get; }
    public long InnerStrideA { get; }
    public long InnerStrideB { get; }

    public static BroadcastLayout Create(ReadOnlySpan<int> shape, ReadOnlySpan<long> stridesA, ReadOnlySpan<long> stridesB)
    {
        var (sizes, sa, sb) = MergeAxes(shape, stridesA, stridesB);
        if (sizes.Count == 0) return new BroadcastLayout([], [], [], 1, 0, 0);
        int n = sizes.Count - 1;
        if (sa[n] > 1 || sb[n] > 1)
        {
            // The innermost axis is strided (not contiguous, not broadcast): fall back to rows of one element.
            return new BroadcastLayout([.. sizes], [.. sa], [.. sb], 1, 0, 0);
        }
        return new BroadcastLayout([.. sizes[..n]], [.. sa[..n]], [.. sb[..n]], sizes[n], sa[n], sb[n]);
    }

    /// <summary>
    /// The broadcast's axes, outermost first, with unit axes dropped and adjacent axes merged where both inputs traverse
    /// them as one (the output is contiguous, so it always does). Shared by every backend.
    /// </summary>
    public static (List<int> Sizes, List<long> StridesA, List<long> StridesB) MergeAxes(ReadOnlySpan<int> shape,
        ReadOnlySpan<long> stridesA, ReadOnlySpan<long> stridesB)
    {
        if (stridesA.Length != shape.Length || stridesB.Length != shape.Length)
            throw new ArgumentException($"broadcast: {shape.Length} axes but {stridesA.Length} and {stridesB.Length} strides.");
        var sizes = new List<int>();
        var sa = new List<long>();
        var sb = new List<long>();
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == 1) continue; // a unit axis never moves either pointer
            int last = sizes.Count - 1;
            if (last >= 0 && sa[last] == stridesA[i] * shape[i] && sb[last] == stridesB[i] * shape[i])
            {
                sizes[last] *= shape[i];
                sa[last] = stridesA[i];
                sb[last] = stridesB[i];
                continue;
            }
            sizes.Add(shape[i]);
            sa.Add(stridesA[i]);
            sb.Add(stridesB[i]);
        }
        return (sizes, sa, sb);
    }

    public void RowOffsets(long row, out long offsetA, out long offsetB)
    {
        offsetA = 0;
        offsetB = 0;
        for (int d = outer.Length - 1; d >= 0; d--)
        {
            long i = row % outer[d];
            row /= outer[d];
            offsetA += i * outerA[d];
            offsetB += i * outerB[d];
        }
    }
}

/// <summary>Index maths for a permutation: the output is written row by row; axes that stay adjacent are merged.</summary>
internal sealed class PermuteLayout
{
    private readonly int[] outer;        // output axis sizes except the last
    private readonly long[] outerStride; // source strides of those axes

    private PermuteLayout(int[] outer, long[] outerStride, int inner, long innerStride)
    {
        this.outer = outer;
        this.outerStride = outerStride;
        Inner = inner;
        InnerSourceStride = innerStride;
        Rows = 1;
        foreach (int s in outer) Rows *= s;
    }

    public long Rows { get; }
    public int Inner { get; }
    public long InnerSourceStride { get; }

    public static PermuteLayout Create(ReadOnlySpan<int> shape, ReadOnlySpan<int> perm)
    {
        var (sizes, strides) = MergeAxes(shape, perm);
        if (sizes.Count == 0) return new PermuteLayout([], [], 1, 1);
        int n = sizes.Count - 1;
        return new PermuteLayout([.. sizes[..n]], [.. strides[..n]], sizes[n], strides[n]);
    }

    /// <summary>
    /// The output's axes, outermost first, each with its source stride; unit axes are dropped and output axes that stay
    /// adjacent in the source are merged. Validates <paramref name="perm"/>. Shared by every backend.
    /// </summary>
    public static (List<int> Sizes, List<long> SourceStrides) MergeAxes(ReadOnlySpan<int> shape, ReadOnlySpan<int> perm)
    {
        int rank = shape.Length;
        if (perm.Length != rank) throw new ArgumentException($"permute: {rank} axes but a permutation of {perm.Length}.");
        var seen = new bool[rank];
        foreach (int p in perm)
        {
            if (p < 0 || p >= rank || seen[p]) throw new ArgumentException($"permute: [{string.Join(", ", perm.ToArray())}] is not a permutation of {rank} axes.");
            seen[p] = true;
        }
        var srcStride = new long[rank];
        long s = 1;
        for (int d = rank - 1; d >= 0; d--) { srcStride[d] = s; s *= shape[d]; }
        var sizes = new List<int>();
        var strides = new List<long>();
        foreach (int p in perm)
        {
            if (shape[p] == 1) continue;
            int last = sizes.Count - 1;
            if (last >= 0 && strides[last] == srcStride[p] * shape[p])
            {
                sizes[last] *= shape[p];
                strides[last] = srcStride[p];
                continue;
            }
            sizes.Add(shape[p]);
            strides.Add(srcStride[p]);
        }
        return (sizes, strides);
    }

    public long SourceOffset(long row)
    {
        long offset = 0;
        for (int d = outer.Length - 1; d >= 0; d--)
        {
            offset += row % outer[d] * outerStride[d];
            row /= outer[d];
        }
        return offset;
    }
}
