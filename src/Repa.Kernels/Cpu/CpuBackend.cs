using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Repa.Kernels.Cpu;

/// <summary>
/// The managed CPU backend: fp32 and fp64, Vector512 where the processor has it (Vector256 otherwise), spread over
/// threads. It is the default without a GPU and the reference every other backend is held against. Op families live in
/// partial files next to this one (CpuBackend.Elementwise.cs, ...); fp32/fp64 share one generic implementation each.
/// </summary>
public sealed unsafe partial class CpuBackend : IBackend
{
    private long allocations;

    public CpuBackend(int threads = 0)
    {
        Threads = threads > 0 ? threads : Environment.ProcessorCount;
        Pool = new BufferPool(this);
    }

    /// <summary>A process-wide CPU backend using every core.</summary>
    public static CpuBackend Default { get; } = new();

    public string Name => "cpu";

    public int Threads { get; }

    public string Description =>
        $"cpu: {Threads} thread(s), {SimdDescription}";

    /// <summary>Widest SIMD the kernels use on this processor.</summary>
    public static string SimdDescription =>
        Vector512.IsHardwareAccelerated ? "Vector512 (AVX-512)" : Vector256.IsHardwareAccelerated ? "Vector256 (AVX2)" : "scalar";

    public BufferPool Pool { get; }

    public long AllocationCount => Interlocked.Read(ref allocations);

    public bool Supports(DType dtype) => dtype is DType.F32 or DType.F64 or DType.I32;

    public DeviceBuffer Allocate(DType dtype, long length)
    {
        if (!Supports(dtype)) throw new NotSupportedException($"cpu backend does not compute in {dtype.Name()}; use float32 or float64.");
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "buffer length must be >= 0");
        Interlocked.Increment(ref allocations);
        return new CpuBuffer(this, dtype, length);
    }

    internal static CpuBuffer Host(DeviceBuffer buffer) =>
        buffer as CpuBuffer ?? throw new ArgumentException($"{buffer} does not belong to the cpu backend.");

    public void Upload<T>(ReadOnlySpan<T> source, DeviceBuffer destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(destination, offset, source.Length, sizeof(T));
        source.CopyTo(new Span<T>((byte*)Host(destination).Pointer + offset * sizeof(T), source.Length));
    }

    public void Download<T>(DeviceBuffer source, Span<T> destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(source, offset, destination.Length, sizeof(T));
        new ReadOnlySpan<T>((byte*)Host(source).Pointer + offset * sizeof(T), destination.Length).CopyTo(destination);
    }

    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count)
    {
        if (source.DType != destination.DType) throw new ArgumentException($"copy from {source} to {destination}: dtypes differ.");
        OpChecks.Range(source, sourceOffset, count);
        OpChecks.Range(destination, destinationOffset, count);
        int size = source.DType.SizeInBytes();
        Buffer.MemoryCopy((byte*)Host(source).Pointer + sourceOffset * size, (byte*)Host(destination).Pointer + destinationOffset * size,
            (destination.Length - destinationOffset) * size, count * size);
    }

    public void Fill(DeviceBuffer destination, long offset, long count, double value)
    {
        OpChecks.Range(destination, offset, count);
        var host = Host(destination);
        switch (destination.DType)
        {
            case DType.F32: new Span<float>(host.Ptr<float>() + offset, checked((int)count)).Fill((float)value); break;
            case DType.F64: new Span<double>(host.Ptr<double>() + offset, checked((int)count)).Fill(value); break;
            case DType.I32: new Span<int>(host.Ptr<int>() + offset, checked((int)count)).Fill((int)value); break;
            default: throw Unsupported(destination.DType);
        }
    }

    public void Convert(DeviceBuffer source, DeviceBuffer destination, long count)
    {
        OpChecks.Range(source, 0, count);
        OpChecks.Range(destination, 0, count);
        var s = Host(source);
        var d = Host(destination);
        int n = checked((int)count);
        switch (source.DType, destination.DType)
        {
            case (DType.F32, DType.F64): TensorPrimitivesConvert(new ReadOnlySpan<float>(s.Pointer, n), new Span<double>(d.Pointer, n)); break;
            case (DType.F64, DType.F32): TensorPrimitivesConvert(new ReadOnlySpan<double>(s.Pointer, n), new Span<float>(d.Pointer, n)); break;
            case (DType.I32, DType.F32): TensorPrimitivesConvert(new ReadOnlySpan<int>(s.Pointer, n), new Span<float>(d.Pointer, n)); break;
            case (DType.I32, DType.F64): TensorPrimitivesConvert(new ReadOnlySpan<int>(s.Pointer, n), new Span<double>(d.Pointer, n)); break;
            default:
                if (source.DType == destination.DType) { Copy(source, 0, destination, 0, count); break; }
                throw new NotSupportedException($"cpu: no conversion from {source.DType.Name()} to {destination.DType.Name()}.");
        }
    }

    private static void TensorPrimitivesConvert<TFrom, TTo>(ReadOnlySpan<TFrom> from, Span<TTo> to)
        where TFrom : unmanaged, INumberBase<TFrom> where TTo : unmanaged, INumberBase<TTo>
    {
        for (int i = 0; i < from.Length; i++) to[i] = TTo.CreateTruncating(from[i]);
    }

    public void Synchronize() { }

    /// <summary>Nothing to record on the CPU: the graph runs the body at every launch.</summary>
    public IDeviceGraph Capture(Action body) => new RerunGraph(body);

    internal static NotSupportedException Unsupported(DType dtype) =>
        new($"cpu: this op computes in float32 or float64, not {dtype.Name()}.");

    public void Dispose() => Pool.Dispose();
}
