using System.Runtime.InteropServices;

namespace Repa.Kernels.Cuda;

/// <summary>
/// Activations, broadcast binary ops, axpby and sums (kernels/elementwise.cu), permutes and strided row copies
/// (kernels/memory.cu). Every member takes float32 or bfloat16 buffers of one dtype, computing in float32; Axpby and
/// Sum also take a bfloat16 input with a float32 output (fp32 master gradients). Permute and CopyRows with beta = 0
/// are bit copies of any dtype.
/// </summary>
public sealed unsafe partial class CudaBackend
{
    public void ActivationForward(Activation activation, DeviceBuffer x, DeviceBuffer y, long n)
    {
        string suffix = ComputeSuffix("activation", x, y);
        OpChecks.Range(x, 0, n);
        OpChecks.Range(y, 0, n);
        if (n == 0) return;
        Enter();
        Launch(Function(ElementwiseKernels, $"{ActivationName(activation)}_forward_{suffix}"), Grid(n), Address(x), Address(y), n);
    }

    public void ActivationBackward(Activation activation, DeviceBuffer x, DeviceBuffer dy, DeviceBuffer dx, long n)
    {
        string suffix = ComputeSuffix("activation backward", x, dy, dx);
        OpChecks.Range(x, 0, n);
        OpChecks.Range(dy, 0, n);
        OpChecks.Range(dx, 0, n);
        if (n == 0) return;
        Enter();
        Launch(Function(ElementwiseKernels, $"{ActivationName(activation)}_backward_{suffix}"), Grid(n),
            Address(x), Address(dy), Address(dx), n);
    }

    private static string ActivationName(Activation activation) => activation switch
    {
        Activation.Gelu => "gelu",
        Activation.Silu => "silu",
        _ => throw new ArgumentOutOfRangeException(nameof(activation), activation, "unknown activation"),
    };

    /// <summary>The kernel suffix (f32, bf16) of buffers that must share a dtype the kernels compute in.</summary>
    private static string ComputeSuffix(string op, params ReadOnlySpan<DeviceBuffer> buffers)
    {
        var dtype = buffers[0].DType;
        foreach (var buffer in buffers)
            if (buffer.DType != dtype)
                throw new ArgumentException($"cuda {op}: buffers of different dtypes ({dtype.Name()} and {buffer.DType.Name()}).");
        return dtype switch
        {
            DType.F32 => "f32",
            DType.BF16 => "bf16",
            _ => throw new NotSupportedException($"cuda: {op} computes in float32 or bfloat16, not {dtype.Name()}."),
        };
    }

    // ---- broadcast binary ops -------------------------------------------------------------------------------------

    /// <summary>The C struct repa::BroadcastLayout of kernels/elementwise.cu (axes innermost first), 128 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct BroadcastLayout
    {
        public const int MaxRank = 6;
        public int Rank;
        public fixed int Size[MaxRank];
        public fixed long StrideA[MaxRank];
        public fixed long StrideB[MaxRank];
    }

    public void Binary(BinaryOp op, DeviceBuffer a, ReadOnlySpan<long> stridesA, DeviceBuffer b, ReadOnlySpan<long> stridesB,
        DeviceBuffer y, ReadOnlySpan<int> shape)
    {
        string suffix = ComputeSuffix("binary", a, b, y);
        int opCode = op switch
        {
            BinaryOp.Add => 0,
            BinaryOp.Sub => 1,
            BinaryOp.Mul => 2,
            _ => throw new ArgumentOutOfRangeException(nameof(op), op, "unknown binary op"),
        };
        var (sizes, sa, sb) = Cpu.BroadcastLayout.MergeAxes(shape, stridesA, stridesB);
        long n = 1;
        foreach (int s in shape)
        {
            if (s < 0) throw new ArgumentException($"binary: shape [{string.Join(", ", shape.ToArray())}] has a negative size.");
            n *= s;
        }
        OpChecks.Range(y, 0, n);
        if (n == 0) return;
        CheckStrided("a", a, sizes, sa);
        CheckStrided("b", b, sizes, sb);
        Enter();
        int rank = sizes.Count;
        if (rank == 0 || (rank == 1 && sa[0] == 1 && sb[0] == 1))
        {
            Launch(Function(ElementwiseKernels, $"binary_same_{suffix}"), Grid(n), opCode, Address(a), Address(b), Address(y), n);
            return;
        }
        if (rank == 2 && sa[0] == sizes[1] && sa[1] == 1 && sb[0] == 0 && sb[1] == 1)
        {
            // [rows, columns] + one row: the bias add.
            Launch(Function(ElementwiseKernels, $"binary_rows_{suffix}"), Grid(n), opCode, Address(a), Address(b), Address(y),
                (long)sizes[0], sizes[1]);
            return;
        }
        // The general case, innermost axes first; axes beyond the kernel's six are walked here, one launch per slice.
        int kernelRank = Math.Min(rank, BroadcastLayout.MaxRank), outerRank = rank - kernelRank;
        var layout = new BroadcastLayout { Rank = kernelRank };
        long slice = 1;
        for (int d = 0; d < kernelRank; d++)
        {
            int axis = rank - 1 - d;
            layout.Size[d] = sizes[axis];
            layout.StrideA[d] = sa[axis];
            layout.StrideB[d] = sb[axis];
            slice *= sizes[axis];
        }
        var function = Function(ElementwiseKernels, $"binary_broadcast_{suffix}");
        long slices = n / slice;
        for (long s = 0; s < slices; s++)
        {
            long offsetA = 0, offsetB = 0, rest = s;
            for (int axis = outerRank - 1; axis >= 0; axis--)
            {
                long coordinate = rest % sizes[axis];
                rest /= sizes[axis];
                offsetA += coordinate * sa[axis];
                offsetB += coordinate * sb[axis];
            }
            Launch(function, Grid(slice), opCode, Address(a, offsetA), Address(b, offsetB), Address(y, s * slice), layout, slice);
        }
    }

    /// <summary>Throws unless every element an operand's strides reach lies inside its buffer.</summary>
    private static void CheckStrided(string name, DeviceBuffer buffer, List<int> sizes, List<long> strides)
    {
        long first = 0, last = 0;
        for (int d = 0; d < sizes.Count; d++)
        {
            long reach = (sizes[d] - 1) * strides[d];
            if (reach < 0) first += reach;
            else last += reach;
        }
        if (first < 0 || last >= buffer.Length)
            throw new ArgumentOutOfRangeException(name, $"binary: operand {name}'s strides reach elements [{first}, {last}] outside {buffer}.");
    }

    // ---- axpby, sums ----------------------------------------------------------------------------------------------

    public void Axpby(DeviceBuffer x, DeviceBuffer y, long n, double alpha, double beta)
    {
        string name = MixedName("axpby", x, y);
        OpChecks.Range(x, 0, n);
        OpChecks.Range(y, 0, n);
        if (n == 0) return;
        Enter();
        Launch(Function(ElementwiseKernels, name), Grid(n), Address(x), Address(y), n, (float)alpha, (float)beta);
    }

    /// <summary>"op_f32", "op_bf16" or "op_bf16_f32" (bfloat16 in, float32 out) for an (input, output) pair.</summary>
    private static string MixedName(string op, DeviceBuffer x, DeviceBuffer y) => (x.DType, y.DType) switch
    {
        (DType.F32, DType.F32) => $"{op}_f32",
        (DType.BF16, DType.BF16) => $"{op}_bf16",
        (DType.BF16, DType.F32) => $"{op}_bf16_f32",
        _ => throw new NotSupportedException($"cuda: {op} takes float32 -> float32, bfloat16 -> bfloat16 or bfloat16 -> float32, not {x.DType.Name()} -> {y.DType.Name()}."),
    };

    /// <summary>Rows of the column sum's tile (kernels/elementwise.cu sum_tile_rows; its columns are a warp).</summary>
    private const int SumTileRows = 8;

    public void Sum(DeviceBuffer x, DeviceBuffer y, int outer, int reduce, int inner, double alpha, double beta)
    {
        if (outer < 0 || reduce < 0 || inner < 0)
            throw new ArgumentOutOfRangeException(nameof(outer), $"sum: outer {outer}, reduce {reduce} and inner {inner} must be >= 0.");
        OpChecks.Range(x, 0, (long)outer * reduce * inner);
        OpChecks.Range(y, 0, (long)outer * inner);
        if (outer == 0 || inner == 0) return;
        Enter();
        if (inner == 1)
        {
            // One block per row; a row shorter than the block leaves threads idle, so the block shrinks to fit (a warp
            // at least: the kernel's block_sum works in whole warps).
            int block = Math.Clamp((reduce + 31) / 32 * 32, 32, BlockSize);
            var shape = new LaunchShape((uint)Math.Min(outer, 65535), 1, (uint)block, 1);
            Launch(Function(ElementwiseKernels, MixedName("sum_rows", x, y)), shape, Address(x), Address(y), (long)outer, reduce,
                (float)alpha, (float)beta);
            return;
        }
        var tiles = new LaunchShape((uint)((inner + 31) / 32), (uint)Math.Min(outer, 65535), 32, SumTileRows);
        Launch(Function(ElementwiseKernels, MixedName("sum_columns", x, y)), tiles, Address(x), Address(y), (long)outer, reduce,
            inner, (float)alpha, (float)beta);
    }

    // ---- permutes, row copies -------------------------------------------------------------------------------------

    /// <summary>The C struct repa::memory::PermuteLayout of kernels/memory.cu (axes innermost first), 80 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct PermuteLayout
    {
        public const int MaxRank = 6;
        public int Rank;
        public fixed int Size[MaxRank];
        public fixed long Stride[MaxRank];
    }

    public void Permute(DeviceBuffer x, DeviceBuffer y, ReadOnlySpan<int> shape, ReadOnlySpan<int> perm, double beta)
    {
        if (x.DType != y.DType) throw new ArgumentException($"permute from {x} to {y}: dtypes differ.");
        var (sizes, strides) = Cpu.PermuteLayout.MergeAxes(shape, perm);
        long n = 1;
        foreach (int s in shape)
        {
            if (s < 0) throw new ArgumentException($"permute: shape [{string.Join(", ", shape.ToArray())}] has a negative size.");
            n *= s;
        }
        OpChecks.Range(x, 0, n);
        OpChecks.Range(y, 0, n);
        if (n == 0) return;
        var function = Function(MemoryKernels, beta == 0 ? $"permute_b{8 * x.DType.SizeInBytes()}" : $"permute_scaled_{ComputeSuffix("permute with beta", x, y)}");
        Enter();
        int rank = sizes.Count, kernelRank = Math.Min(rank, PermuteLayout.MaxRank), outerRank = rank - kernelRank;
        var layout = new PermuteLayout { Rank = kernelRank };
        long slice = 1;
        for (int d = 0; d < kernelRank; d++)
        {
            int axis = rank - 1 - d;
            layout.Size[d] = sizes[axis];
            layout.Stride[d] = strides[axis];
            slice *= sizes[axis];
        }
        long slices = n / slice;
        float beta32 = (float)beta;
        for (long s = 0; s < slices; s++)
        {
            long offsetX = 0, rest = s;
            for (int axis = outerRank - 1; axis >= 0; axis--)
            {
                offsetX += rest % sizes[axis] * strides[axis];
                rest /= sizes[axis];
            }
            if (beta == 0) Launch(function, Grid(slice), Address(x, offsetX), Address(y, s * slice), layout, slice);
            else Launch(function, Grid(slice), Address(x, offsetX), Address(y, s * slice), layout, slice, beta32);
        }
    }

    public void CopyRows(DeviceBuffer source, long sourceOffset, long sourceStride, DeviceBuffer destination,
        long destinationOffset, long destinationStride, int rows, int width, double beta)
    {
        if (source.DType != destination.DType) throw new ArgumentException($"copy rows from {source} to {destination}: dtypes differ.");
        if (rows < 0 || width < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"copy rows: rows {rows} and width {width} must be >= 0.");
        if (rows == 0 || width == 0) return;
        CheckRows("source", source, sourceOffset, sourceStride, rows, width);
        CheckRows("destination", destination, destinationOffset, destinationStride, rows, width);
        var function = Function(MemoryKernels, beta == 0 ? $"copy_rows_b{8 * source.DType.SizeInBytes()}" : $"copy_rows_scaled_{ComputeSuffix("copy rows with beta", source, destination)}");
        Enter();
        var grid = Grid((long)rows * width);
        if (beta == 0)
            Launch(function, grid, Address(source, sourceOffset), sourceStride, Address(destination, destinationOffset), destinationStride, rows, width);
        else
            Launch(function, grid, Address(source, sourceOffset), sourceStride, Address(destination, destinationOffset), destinationStride, rows, width, (float)beta);
    }

    private static void CheckRows(string name, DeviceBuffer buffer, long offset, long stride, int rows, int width)
    {
        long reach = (rows - 1) * stride;
        long first = offset + Math.Min(0, reach), last = offset + Math.Max(0, reach) + width - 1;
        if (first < 0 || last >= buffer.Length)
            throw new ArgumentOutOfRangeException(name, $"copy rows: the {name} rows reach elements [{first}, {last}] outside {buffer}.");
    }
}
