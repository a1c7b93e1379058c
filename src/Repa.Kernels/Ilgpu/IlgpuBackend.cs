using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using ILGPU.Runtime.OpenCL;

namespace Repa.Kernels.Ilgpu;

/// <summary>
/// The ILGPU backend: Repa's ops as ILGPU kernels (C# compiled by ILGPU to PTX or OpenCL C at first use), the fallback
/// for GPUs where the CUDA backend's NVRTC or cuBLAS are missing. It runs on one ILGPU accelerator: a CUDA or OpenCL
/// GPU (<see cref="Create"/>), or ILGPU's CPU accelerator, a slow multi-threaded simulator of a GPU that exists for the
/// tests (<see cref="CreateCpuSimulator"/>). Buffers hold float32 and int32; every op computes in float32 (sums that
/// the interface defines in float64 are float64). Kernels are explicitly grouped; sums are combined in a fixed order
/// (no floating-point atomics), so results are deterministic for a given accelerator. Op families live in partial
/// files next to this one (IlgpuBackend.Gemm.cs, ...); the kernels themselves are static methods of IlgpuKernels.
/// Use one backend from one thread at a time (like a stream).
/// </summary>
public sealed partial class IlgpuBackend : IBackend
{
    private readonly Context context;
    private readonly Accelerator accelerator;
    private long allocations;

    private IlgpuBackend(Context context, Accelerator accelerator, bool simulator)
    {
        this.context = context;
        this.accelerator = accelerator;
        IsSimulator = simulator;
        // GPUs: 256 threads per group, a 16 x 16 thread tile of the GEMM (4 x 4 outputs each), many groups per
        // multiprocessor. The simulator: its (small) groups cost an OS-thread barrier each, so fewer, fatter work items.
        GroupSize = Math.Min(256, accelerator.MaxNumThreadsPerGroup);
        GemmThreads = simulator ? 2 : 16;
        MaxGroups = simulator ? Math.Max(1, accelerator.NumMultiprocessors) : Math.Max(1, accelerator.NumMultiprocessors) * 16;
        Pool = new BufferPool(this);
        Description = $"ilgpu: {accelerator.Name} ({accelerator.AcceleratorType}{(simulator ? " simulator, for tests" : "")}, " +
            $"{accelerator.NumMultiprocessors} multiprocessor(s), {GroupSize} threads per group" +
            (simulator ? ")" : $", {accelerator.MemorySize / (double)(1L << 30):F1} GiB)");
    }

    /// <summary>
    /// Opens the first CUDA or OpenCL accelerator that ILGPU finds (CUDA first, then the one with the most memory).
    /// </summary>
    /// <exception cref="NotSupportedException">ILGPU finds no GPU; the message is one sentence. With
    /// <paramref name="preferGpu"/> false the CPU simulator is opened instead of throwing.</exception>
    public static IlgpuBackend Create(bool preferGpu = true)
    {
        var context = Context.Create(builder => builder.Cuda().OpenCL().Math(MathMode.Default).Optimize(OptimizationLevel.O1));
        try
        {
            var device = FindGpu(context);
            if (device == null)
            {
                if (preferGpu)
                    throw new NotSupportedException("ILGPU found no CUDA or OpenCL GPU on this machine (its CPU accelerator is a simulator for tests only).");
                context.Dispose();
                return CreateCpuSimulator();
            }
            return new IlgpuBackend(context, device.CreateAccelerator(context), simulator: false);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>A one-line description of the GPU that <see cref="Create"/> would open, or null with the reason.</summary>
    public static string? ProbeGpu(out string reason)
    {
        try
        {
            using var context = Context.Create(builder => builder.Cuda().OpenCL());
            var device = FindGpu(context);
            reason = device == null ? "ILGPU found no CUDA or OpenCL GPU" : $"ILGPU found {device.Name} ({device.AcceleratorType})";
            return device?.Name;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            reason = $"ILGPU could not list accelerators ({e.Message.TrimEnd('.')})";
            return null;
        }
    }

    private static Device? FindGpu(Context context) =>
        context.Devices.Where(d => d.AcceleratorType is AcceleratorType.Cuda or AcceleratorType.OpenCL)
            .OrderBy(d => d.AcceleratorType == AcceleratorType.Cuda ? 0 : 1).ThenByDescending(d => d.MemorySize).FirstOrDefault();

    /// <summary>
    /// Opens ILGPU's CPU accelerator as a small simulated GPU: groups of <paramref name="threadsPerGroup"/> threads
    /// (a power of two, 2 to 16) on <paramref name="multiprocessors"/> simulated multiprocessors, every thread an OS thread,
    /// every group barrier a real one. Very slow; it exists so the kernels (barriers and shared memory included) can be
    /// tested without a GPU.
    /// </summary>
    public static IlgpuBackend CreateCpuSimulator(int threadsPerGroup = 4, int multiprocessors = 2)
    {
        if (threadsPerGroup is < 2 or > 16 || (threadsPerGroup & (threadsPerGroup - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(threadsPerGroup), threadsPerGroup, "the simulator's groups have 2, 4, 8 or 16 threads.");
        var context = Context.Create(builder => builder.CPU().Math(MathMode.Default).Optimize(OptimizationLevel.O1));
        try
        {
            var device = new CPUDevice(threadsPerGroup, 1, Math.Max(1, multiprocessors));
            return new IlgpuBackend(context, device.CreateCPUAccelerator(context, CPUAcceleratorMode.Parallel), simulator: true);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    public string Name => "ilgpu";

    public string Description { get; }

    /// <summary>Whether this is ILGPU's CPU accelerator (the test simulator) rather than a GPU.</summary>
    public bool IsSimulator { get; }

    /// <summary>Threads per group of the 1-D kernels.</summary>
    internal int GroupSize { get; }

    /// <summary>The GEMM's group is GemmThreads x GemmThreads threads, each computing 4 x 4 outputs.</summary>
    internal int GemmThreads { get; }

    /// <summary>Most groups a grid-stride kernel launches.</summary>
    internal int MaxGroups { get; }

    public BufferPool Pool { get; }

    public long AllocationCount => Interlocked.Read(ref allocations);

    public bool Supports(DType dtype) => dtype is DType.F32 or DType.I32;

    /// <summary>float64 is storage only (Upload, Download, Copy, Fill, Convert), for reading results back exactly.</summary>
    private static bool Holds(DType dtype) => dtype is DType.F32 or DType.I32 or DType.F64;

    public DeviceBuffer Allocate(DType dtype, long length)
    {
        if (!Holds(dtype)) throw new NotSupportedException($"ilgpu backend does not hold {dtype.Name()}; use float32 (float64 is storage only, int32 for ids).");
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "buffer length must be >= 0");
        Interlocked.Increment(ref allocations);
        accelerator.Bind();
        return new IlgpuBuffer(this, dtype, length, accelerator.Allocate1D<byte>(Math.Max(length * dtype.SizeInBytes(), 4)));
    }

    internal IlgpuBuffer Own(DeviceBuffer buffer)
    {
        if (buffer is IlgpuBuffer own && ReferenceEquals(own.Backend, this)) return own;
        throw new ArgumentException($"{buffer} does not belong to this ilgpu backend.");
    }

    /// <summary>The float32 view of a buffer of this backend.</summary>
    internal ArrayView<float> F(DeviceBuffer buffer)
    {
        var own = Own(buffer);
        if (own.DType != DType.F32) throw Unsupported(own.DType);
        return own.Elements<float>();
    }

    /// <summary>The float32 view, or an empty one for an absent (null) buffer; kernels test its length.</summary>
    internal ArrayView<float> FOrEmpty(DeviceBuffer? buffer) => buffer == null ? default : F(buffer);

    internal ArrayView<int> I(DeviceBuffer buffer)
    {
        var own = Own(buffer);
        if (own.DType != DType.I32) throw new ArgumentException($"ilgpu: {buffer} is not int32.");
        return own.Elements<int>();
    }

    public void Upload<T>(ReadOnlySpan<T> source, DeviceBuffer destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(destination, offset, source.Length, System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        if (source.IsEmpty) return;
        accelerator.Bind();
        accelerator.Synchronize();
        Own(destination).Elements<T>().SubView(offset, source.Length).CopyFromCPU(source);
    }

    public void Download<T>(DeviceBuffer source, Span<T> destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(source, offset, destination.Length, System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        if (destination.IsEmpty) return;
        accelerator.Bind();
        accelerator.Synchronize();
        Own(source).Elements<T>().SubView(offset, destination.Length).CopyToCPU(destination);
    }

    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count)
    {
        if (source.DType != destination.DType) throw new ArgumentException($"copy from {source} to {destination}: dtypes differ.");
        int size = source.DType.SizeInBytes();
        OpChecks.Range(source, sourceOffset, count, size);
        OpChecks.Range(destination, destinationOffset, count, size);
        if (count == 0) return;
        // Moved as 32-bit words (a float64 is two).
        int words = size / 4;
        sourceOffset *= words;
        destinationOffset *= words;
        count *= words;
        var from = Own(source).Elements<int>().SubView(sourceOffset, count);
        var to = Own(destination).Elements<int>().SubView(destinationOffset, count);
        bool overlap = ReferenceEquals(source, destination) && Math.Abs(sourceOffset - destinationOffset) < count;
        if (!overlap)
        {
            Launch1D(count, IlgpuKernels.CopyBits, from, to);
            return;
        }
        // memmove semantics for overlapping ranges of one buffer: through a temporary.
        using var temp = Scratch<int>(count);
        Launch1D(count, IlgpuKernels.CopyBits, from, temp.View.AsContiguous());
        Launch1D(count, IlgpuKernels.CopyBits, temp.View.AsContiguous(), to);
        accelerator.Synchronize();
    }

    public void Fill(DeviceBuffer destination, long offset, long count, double value)
    {
        OpChecks.Range(destination, offset, count);
        if (count == 0) return;
        if (destination.DType == DType.F64)
        {
            Launch1D(count, IlgpuKernels.FillLongBits, Own(destination).Elements<long>().SubView(offset, count), BitConverter.DoubleToInt64Bits(value));
            return;
        }
        int bits = destination.DType switch
        {
            DType.F32 => BitConverter.SingleToInt32Bits((float)value),
            DType.I32 => (int)value,
            _ => throw Unsupported(destination.DType),
        };
        var view = Own(destination).Elements<int>().SubView(offset, count);
        Launch1D(count, IlgpuKernels.FillBits, view, bits);
    }

    public void Convert(DeviceBuffer source, DeviceBuffer destination, long count)
    {
        OpChecks.Range(source, 0, count);
        OpChecks.Range(destination, 0, count);
        if (source.DType == destination.DType)
        {
            Copy(source, 0, destination, 0, count);
            return;
        }
        if (count == 0) return;
        var from = Own(source);
        var to = Own(destination);
        switch (source.DType, destination.DType)
        {
            case (DType.I32, DType.F32): Launch1D(count, IlgpuKernels.IntToFloat, from.Elements<int>().SubView(0, count), to.Elements<float>()); break;
            case (DType.I32, DType.F64): Launch1D(count, IlgpuKernels.IntToDouble, from.Elements<int>().SubView(0, count), to.Elements<double>()); break;
            case (DType.F32, DType.F64): Launch1D(count, IlgpuKernels.FloatToDouble, from.Elements<float>().SubView(0, count), to.Elements<double>()); break;
            case (DType.F64, DType.F32): Launch1D(count, IlgpuKernels.DoubleToFloat, from.Elements<double>().SubView(0, count), to.Elements<float>()); break;
            default: throw new NotSupportedException($"ilgpu: no conversion from {source.DType.Name()} to {destination.DType.Name()}.");
        }
    }

    /// <summary>ILGPU has no graph capture: the body runs again at every launch (as on the CPU), the same device work.</summary>
    public IDeviceGraph Capture(Action body) => new RerunGraph(body);

    public void Synchronize()
    {
        accelerator.Bind();
        accelerator.Synchronize();
    }

    internal static NotSupportedException Unsupported(DType dtype) =>
        new($"ilgpu: this op computes in float32, not {dtype.Name()}.");

    public void Dispose()
    {
        Pool.Dispose();
        accelerator.Dispose();
        context.Dispose();
    }
}

/// <summary>Device memory of an <see cref="IlgpuBackend"/>: a byte buffer viewed as the element type.</summary>
public sealed class IlgpuBuffer : DeviceBuffer
{
    private MemoryBuffer1D<byte, Stride1D.Dense>? memory;

    internal IlgpuBuffer(IlgpuBackend backend, DType dtype, long length, MemoryBuffer1D<byte, Stride1D.Dense> memory)
        : base(backend, dtype, length) => this.memory = memory;

    /// <summary>The first Length elements as <typeparamref name="T"/> (whose size must be the dtype's).</summary>
    internal ArrayView<T> Elements<T>() where T : unmanaged
    {
        var bytes = memory ?? throw new ObjectDisposedException(ToString());
        return bytes.View.AsContiguous().SubView(0, SizeInBytes).Cast<T>();
    }

    protected override void Release()
    {
        memory?.Dispose();
        memory = null;
    }
}
