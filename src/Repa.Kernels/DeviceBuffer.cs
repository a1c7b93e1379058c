namespace Repa.Kernels;

/// <summary>A block of device memory owned by a backend. Length is in elements of <see cref="DType"/>.</summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(IBackend backend, DType dtype, long length)
    {
        Backend = backend;
        DType = dtype;
        Length = length;
    }

    public IBackend Backend { get; }
    public DType DType { get; }
    public long Length { get; }
    public long SizeInBytes => Length * DType.SizeInBytes();
    public bool IsDisposed { get; private set; }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Release();
        GC.SuppressFinalize(this);
    }

    protected abstract void Release();

    public override string ToString() => $"{Backend.Name} buffer {DType.Name()}[{Length}]";
}
