using System.Runtime.InteropServices;

namespace Repa.Kernels.Cpu;

/// <summary>Host memory, 64-byte aligned so Vector512 loads of aligned rows never split a cache line.</summary>
public sealed unsafe class CpuBuffer : DeviceBuffer
{
    private void* pointer;

    internal CpuBuffer(CpuBackend backend, DType dtype, long length) : base(backend, dtype, length)
    {
        pointer = NativeMemory.AlignedAlloc((nuint)Math.Max(SizeInBytes, 64), 64);
        if (pointer == null) throw new OutOfMemoryException($"cpu: could not allocate {SizeInBytes} bytes for {dtype.Name()}[{length}]");
    }

    ~CpuBuffer() => Release();

    public void* Pointer => pointer != null ? pointer : throw new ObjectDisposedException(ToString());

    public T* Ptr<T>() where T : unmanaged => (T*)Pointer;

    public Span<T> AsSpan<T>() where T : unmanaged => new(Pointer, checked((int)(SizeInBytes / sizeof(T))));

    protected override void Release()
    {
        if (pointer == null) return;
        NativeMemory.AlignedFree(pointer);
        pointer = null;
    }
}
