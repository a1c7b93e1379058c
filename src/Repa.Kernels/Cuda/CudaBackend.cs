using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Repa.Kernels.Cuda.Native;

namespace Repa.Kernels.Cuda;

/// <summary>
/// The CUDA backend: one context and one stream on one device, cuBLAS for the GEMMs and the kernels of kernels/*.cu
/// (compiled by NVRTC once per process for the device's architecture, loaded per context with cuModuleLoadData). It runs
/// unchanged against the real driver (<see cref="Create"/>) or the CPU emulator librepa_cuda_emu.so
/// (<see cref="CreateEmulated"/>), which exports the same C entry points. Op families live in partial files next to
/// this one (CudaBackend.Gemm.cs, CudaBackend.Elementwise.cs, ...). Buffers hold every <see cref="DType"/>; the ops
/// compute in float32 and bfloat16 (float32 accumulation), float16 is storage for Upload/Download/Copy/Fill/Convert
/// only, and float64 is that plus the samplers' state (<see cref="FlowStep"/>, the one op computing in it). Use one backend from one thread at a time (like a CUDA stream).
/// </summary>
public sealed unsafe partial class CudaBackend : IBackend
{
    /// <summary>The kernel source files the backend loads (embedded kernels/*.cu).</summary>
    internal const string ElementwiseKernels = "elementwise.cu";
    internal const string MemoryKernels = "memory.cu";

    // NVRTC output is per process and architecture; modules and functions are per context.
    private static readonly ConcurrentDictionary<(string File, string Architecture), Lazy<CompiledKernel>> Compiled = new();
    private static readonly KernelCompiler Compiler = new();

    // The context current on this thread, by backend (a reference, so a destroyed context's handle value being reused
    // by a new context can never look current).
    [ThreadStatic] private static CudaBackend? current;

    private readonly nint context;
    private readonly nint stream;
    private readonly nint cublas;
    private readonly CudaBuffer? cublasWorkspace;
    private volatile bool capturing;
    private readonly Lock gate = new();
    private readonly Dictionary<string, nint> modules = [];
    private readonly Dictionary<string, nint> functions = [];
    private long allocations;
    private volatile bool disposed;

    private CudaBackend(int deviceIndex)
    {
        IsEmulated = CudaLibraries.IsEmulated;
        int count = 0, device = 0, major = 0, minor = 0, multiprocessors = 0;
        Check(CudaDriver.cuInit(0));
        Check(CudaDriver.cuDeviceGetCount(&count));
        if (deviceIndex < 0 || deviceIndex >= count)
            throw new ArgumentOutOfRangeException(nameof(deviceIndex), deviceIndex, $"CUDA device {deviceIndex} does not exist; the driver reports {count} device(s).");
        Check(CudaDriver.cuDeviceGet(&device, deviceIndex));
        byte* name = stackalloc byte[256];
        Check(CudaDriver.cuDeviceGetName(name, 256, device));
        DeviceName = Marshal.PtrToStringUTF8((nint)name) ?? $"device {deviceIndex}";
        Check(CudaDriver.cuDeviceGetAttribute(&major, CudaDriver.AttributeComputeCapabilityMajor, device));
        Check(CudaDriver.cuDeviceGetAttribute(&minor, CudaDriver.AttributeComputeCapabilityMinor, device));
        Check(CudaDriver.cuDeviceGetAttribute(&multiprocessors, CudaDriver.AttributeMultiprocessorCount, device));
        nuint bytes = 0;
        Check(CudaDriver.cuDeviceTotalMem_v2(&bytes, device));
        ComputeCapability = major * 10 + minor;
        if (ComputeCapability < CudaLibraries.MinimumComputeCapability)
            throw new NotSupportedException($"{DeviceName} has compute capability {major}.{minor} and Repa's kernels need 8.0 (Ampere) or newer.");
        DeviceIndex = deviceIndex;
        MultiprocessorCount = Math.Max(1, multiprocessors);
        TotalMemory = (long)bytes;
        // PTX for the newest virtual architecture the device runs; the driver JIT-compiles it for the exact chip.
        Architecture = ComputeCapability >= 90 ? "compute_90" : "compute_80";

        nint ctx = 0, s = 0, handle = 0;
        Check(CudaDriver.cuCtxCreate_v2(&ctx, 0, device));
        context = ctx;
        current = this;
        try
        {
            // Every copy, fill, kernel and GEMM goes to this one stream (the *Async forms), so they run in order and a
            // capture of the stream records all of them.
            Check(CudaDriver.cuStreamCreate(&s, 0));
            stream = s;
            Cublas.Check(Cublas.cublasCreate_v2(&handle));
            cublas = handle;
            Cublas.Check(Cublas.cublasSetStream_v2(cublas, stream));
            // Our own workspace (set after SetStream, which resets it): cuBLAS then allocates nothing inside a call,
            // which is what makes its GEMMs capturable. 32 MiB is NVIDIA's recommendation for Hopper (4 MiB before).
            long workspaceBytes = IsEmulated ? 4096 : 32L << 20;
            ulong workspace = 0;
            Check(CudaDriver.cuMemAlloc_v2(&workspace, (nuint)workspaceBytes));
            cublasWorkspace = new CudaBuffer(this, DType.I32, workspaceBytes / 4, workspace);
            Cublas.Check(Cublas.cublasSetWorkspace_v2(cublas, workspace, (nuint)workspaceBytes));
        }
        catch
        {
            if (handle != 0) Cublas.cublasDestroy_v2(handle);
            if (s != 0) CudaDriver.cuStreamDestroy_v2(s);
            CudaDriver.cuCtxDestroy_v2(ctx);
            current = null;
            throw;
        }
        Pool = new BufferPool(this);
        Description = IsEmulated
            ? $"cuda: CUDA emulator (CPU), {MultiprocessorCount} worker thread(s), compute capability {major}.{minor}, kernels {Architecture}"
            : $"cuda: {DeviceName} (compute capability {major}.{minor}, {MultiprocessorCount} SMs, {TotalMemory / (double)(1L << 30):F1} GiB), kernels {Architecture}";
    }

    /// <summary>
    /// Opens CUDA device <paramref name="deviceIndex"/> through the NVIDIA driver (libcuda.so.1) and cuBLAS.
    /// </summary>
    /// <exception cref="NotSupportedException">No driver, cuBLAS or NVRTC, no device, or a device older than compute
    /// capability 8.0; the message is one sentence saying which.</exception>
    /// <exception cref="InvalidOperationException">This process already bound the CUDA library names to the emulator.</exception>
    public static CudaBackend Create(int deviceIndex = 0)
    {
        if (CudaLibraries.IsEmulated)
            throw new InvalidOperationException("This process already uses the CUDA emulator; a real device can only be opened in a process that never chose the emulator.");
        if (!CudaLibraries.TryLoad(CudaLibraries.Driver, out _, out string failure))
            throw new NotSupportedException($"CUDA is unavailable: {failure}.");
        return Open(deviceIndex);
    }

    /// <summary>
    /// Opens the emulated device of <paramref name="emulatorLibrary"/> (librepa_cuda_emu.so): the kernels run on the CPU
    /// behind the same driver-API and cuBLAS entry points, and everything after this call is the code path of a GPU.
    /// </summary>
    /// <exception cref="FileNotFoundException">The library does not exist.</exception>
    /// <exception cref="InvalidOperationException">This process already bound the real CUDA libraries.</exception>
    public static CudaBackend CreateEmulated(string emulatorLibrary)
    {
        CudaLibraries.UseEmulator(emulatorLibrary);
        if (!CudaLibraries.TryLoad(CudaLibraries.Driver, out _, out string failure))
            throw new NotSupportedException(failure);
        return Open(0);
    }

    private static CudaBackend Open(int deviceIndex)
    {
        // Fail here, in one sentence, rather than at the first GEMM or kernel.
        if (!CudaLibraries.TryLoad(CudaLibraries.Cublas, out _, out string missing))
            throw new NotSupportedException($"CUDA is unavailable: {missing}.");
        try
        {
            _ = KernelCompiler.NvrtcVersion;
        }
        catch (DllNotFoundException e)
        {
            throw new NotSupportedException($"CUDA is unavailable: {e.Message}", e);
        }
        try
        {
            return new CudaBackend(deviceIndex);
        }
        catch (CudaException e) when (e.Call == "cuInit")
        {
            throw new NotSupportedException($"CUDA is unavailable: the NVIDIA driver failed to initialise ({e.Status}).", e);
        }
    }

    public string Name => "cuda";

    /// <summary>"cuda: &lt;device&gt; (compute capability, SMs, memory), kernels compute_XX", or the emulator's.</summary>
    public string Description { get; }

    /// <summary>The driver's name for the device.</summary>
    public string DeviceName { get; }

    /// <summary>The device ordinal.</summary>
    public int DeviceIndex { get; }

    /// <summary>Compute capability as major * 10 + minor (80 for the emulator unless REPA_EMU_CC says otherwise).</summary>
    public int ComputeCapability { get; }

    /// <summary>The virtual architecture the kernels are compiled for: compute_90 on sm_9x and newer, else compute_80.</summary>
    public string Architecture { get; }

    /// <summary>Streaming multiprocessors (the emulator's worker threads).</summary>
    public int MultiprocessorCount { get; }

    /// <summary>Device memory in bytes.</summary>
    public long TotalMemory { get; }

    /// <summary>True when this backend runs on the CPU emulator.</summary>
    public bool IsEmulated { get; }

    public BufferPool Pool { get; }

    public long AllocationCount => Interlocked.Read(ref allocations);

    /// <summary>float32 and bfloat16 (fp32 accumulation), and int32 for ids and copies. float16 and float64 buffers can
    /// be allocated, filled, copied and converted; only the sampler step computes in float64 (its state), so float64
    /// is not a dtype to build tensors of ops in.</summary>
    public bool Supports(DType dtype) => dtype is DType.F32 or DType.BF16 or DType.I32;

    // ---- context, errors ------------------------------------------------------------------------------------------

    /// <summary>Makes this backend's context current on the calling thread (CUDA contexts are per thread).</summary>
    private void Enter()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (ReferenceEquals(current, this)) return;
        Check(CudaDriver.cuCtxSetCurrent(context));
        current = this;
    }

    /// <summary>CudaDriver.Check, plus the emulator's own explanation of the failure when there is one.</summary>
    private static void Check(CudaResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result == CudaResult.Success) return;
        try
        {
            CudaDriver.Check(result, call);
        }
        catch (CudaException e) when (CudaLibraries.IsEmulated && EmulatorError() is { Length: > 0 } detail)
        {
            throw new CudaException(e.Call, e.Status, $"{e.Message.TrimEnd('.')}: {detail.TrimEnd('.')}.");
        }
    }

    private static string? EmulatorError()
    {
        try
        {
            return Marshal.PtrToStringUTF8((nint)EmulatorApi.repaEmuLastError());
        }
        catch (EntryPointNotFoundException)
        {
            return null;
        }
    }

    // ---- buffers --------------------------------------------------------------------------------------------------

    public DeviceBuffer Allocate(DType dtype, long length)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), length, "buffer length must be >= 0");
        long bytes = checked(length * dtype.SizeInBytes());
        Enter();
        ulong pointer = 0;
        if (bytes > 0)
        {
            var result = CudaDriver.cuMemAlloc_v2(&pointer, (nuint)bytes);
            if (result == CudaResult.OutOfMemory && Pool.IdleBytes > 0)
            {
                // As PyTorch's caching allocator: give the idle cached blocks back and try once more.
                Pool.Trim();
                Enter();
                result = CudaDriver.cuMemAlloc_v2(&pointer, (nuint)bytes);
            }
            if (result == CudaResult.OutOfMemory)
                throw new OutOfMemoryException($"cuda: out of device memory allocating {bytes} bytes for {dtype.Name()}[{length}] on {DeviceName}.");
            Check(result, "cuMemAlloc_v2");
        }
        Interlocked.Increment(ref allocations);
        return new CudaBuffer(this, dtype, length, pointer);
    }

    /// <summary>Frees a buffer's memory; a no-op once the backend (and so its context, which owned it) is gone. From a
    /// finalizer (<paramref name="quietly"/>) a failure is ignored: nothing could handle it there.</summary>
    internal void Free(ulong pointer, bool quietly = false)
    {
        if (pointer == 0) return;
        lock (gate)
        {
            if (disposed) return;
            if (quietly)
            {
                if (CudaDriver.cuCtxSetCurrent(context) == CudaResult.Success) CudaDriver.cuMemFree_v2(pointer);
                current = this;
                return;
            }
            Enter();
            Check(CudaDriver.cuMemFree_v2(pointer));
        }
    }

    /// <summary>The buffer as this backend's, or an ArgumentException naming it.</summary>
    internal CudaBuffer Device(DeviceBuffer buffer) =>
        buffer is CudaBuffer cuda && ReferenceEquals(cuda.Backend, this) ? cuda
        : throw new ArgumentException($"{buffer} does not belong to this cuda backend.");

    /// <summary>The device address of element <paramref name="offset"/> of <paramref name="buffer"/>.</summary>
    internal ulong Address(DeviceBuffer buffer, long offset = 0) =>
        Device(buffer).Pointer + (ulong)(offset * buffer.DType.SizeInBytes());


    /// <summary>Copies host memory to the device on the backend's stream and waits for it (the span is managed,
    /// pageable memory: it must not be read after this returns). Refused during a capture.</summary>
    public void Upload<T>(ReadOnlySpan<T> source, DeviceBuffer destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(destination, offset, source.Length, sizeof(T));
        if (source.IsEmpty) return;
        RefuseDuringCapture("Upload", "upload the step's inputs into persistent tensors before the capture");
        Enter();
        fixed (T* p = source)
        {
            Check(CudaDriver.cuMemcpyHtoDAsync_v2(Address(destination, offset), p, (nuint)((long)source.Length * sizeof(T)), stream));
            Check(CudaDriver.cuStreamSynchronize(stream));
        }
    }

    /// <summary>Copies device memory to the host after the work queued before it, and waits. Refused during a capture.</summary>
    public void Download<T>(DeviceBuffer source, Span<T> destination, long offset = 0) where T : unmanaged
    {
        OpChecks.Range(source, offset, destination.Length, sizeof(T));
        if (destination.IsEmpty) return;
        RefuseDuringCapture("Download", "keep the figures in device memory and read them after the graph ran");
        Enter();
        fixed (T* p = destination)
        {
            Check(CudaDriver.cuMemcpyDtoHAsync_v2(p, Address(source, offset), (nuint)((long)destination.Length * sizeof(T)), stream));
            Check(CudaDriver.cuStreamSynchronize(stream));
        }
    }

    /// <summary>The CUstream everything of this backend is queued on (tests check its capture state).</summary>
    internal nint Stream => stream;

    /// <summary>Whether a <see cref="Capture"/> is recording this backend's stream now.</summary>
    public bool IsCapturing => capturing;

    private void RefuseDuringCapture(string member, string advice)
    {
        if (capturing)
            throw new InvalidOperationException($"cuda: {member} during a graph capture would read or write host memory when the graph runs, not now; {advice}.");
    }

    public void Copy(DeviceBuffer source, long sourceOffset, DeviceBuffer destination, long destinationOffset, long count)
    {
        if (source.DType != destination.DType) throw new ArgumentException($"copy from {source} to {destination}: dtypes differ.");
        OpChecks.Range(source, sourceOffset, count);
        OpChecks.Range(destination, destinationOffset, count);
        if (count == 0) return;
        Enter();
        long bytes = count * source.DType.SizeInBytes();
        if (ReferenceEquals(source, destination) && Math.Abs(sourceOffset - destinationOffset) < count)
        {
            // cuMemcpyDtoD does not promise memmove semantics (the CPU backend's Buffer.MemoryCopy does): go through
            // a scratch buffer.
            // a scratch buffer (from the pool: no allocation inside a capture).
            var scratch = Pool.Rent(source.DType, count);
            try
            {
                Check(CudaDriver.cuMemcpyDtoDAsync_v2(Address(scratch), Address(source, sourceOffset), (nuint)bytes, stream));
                Check(CudaDriver.cuMemcpyDtoDAsync_v2(Address(destination, destinationOffset), Address(scratch), (nuint)bytes, stream));
            }
            finally
            {
                Pool.Return(scratch);
            }
            return;
        }
        Check(CudaDriver.cuMemcpyDtoDAsync_v2(Address(destination, destinationOffset), Address(source, sourceOffset), (nuint)bytes, stream));
    }

    /// <summary>Sets elements to <paramref name="value"/> converted as a C# cast would (int32 truncates; bfloat16 and
    /// float16 round the float32 value to nearest even).</summary>
    public void Fill(DeviceBuffer destination, long offset, long count, double value)
    {
        OpChecks.Range(destination, offset, count);
        if (count == 0) return;
        Enter();
        ulong address = Address(destination, offset);
        switch (destination.DType)
        {
            case DType.F32: Check(CudaDriver.cuMemsetD32Async(address, BitConverter.SingleToUInt32Bits((float)value), (nuint)count, stream)); break;
            case DType.I32: Check(CudaDriver.cuMemsetD32Async(address, unchecked((uint)(int)value), (nuint)count, stream)); break;
            case DType.BF16: Launch(Function(MemoryKernels, "fill_b16"), Grid(count), address, count, HalfPrecision.FloatToBf16((float)value)); break;
            case DType.F16: Launch(Function(MemoryKernels, "fill_b16"), Grid(count), address, count, HalfPrecision.FloatToF16((float)value)); break;
            case DType.F64: Launch(Function(MemoryKernels, "fill_b64"), Grid(count), address, count, BitConverter.DoubleToUInt64Bits(value)); break;
            default: throw new NotSupportedException($"cuda: cannot fill {destination.DType.Name()}.");
        }
    }

    /// <summary>
    /// Converts between float32, bfloat16, float16 and float64 (every direction) and from int32 to float32/float64,
    /// rounding to nearest even (a 16-bit result from float64 goes through float32); equal dtypes copy.
    /// </summary>
    public void Convert(DeviceBuffer source, DeviceBuffer destination, long count)
    {
        OpChecks.Range(source, 0, count);
        OpChecks.Range(destination, 0, count);
        if (source.DType == destination.DType)
        {
            Copy(source, 0, destination, 0, count);
            return;
        }
        string from = KernelSuffix(source.DType, "convert"), to = KernelSuffix(destination.DType, "convert");
        if (destination.DType == DType.I32 || (source.DType == DType.I32 && destination.DType is not (DType.F32 or DType.F64)))
            throw new NotSupportedException($"cuda: no conversion from {source.DType.Name()} to {destination.DType.Name()}.");
        if (count == 0) return;
        Enter();
        Launch(Function(MemoryKernels, $"convert_{from}_{to}"), Grid(count), Address(source), Address(destination), count);
    }

    /// <summary>The kernel-name suffix of a dtype: f32, bf16, f16, f64, i32.</summary>
    internal static string KernelSuffix(DType dtype, string op) => dtype switch
    {
        DType.F32 => "f32",
        DType.BF16 => "bf16",
        DType.F16 => "f16",
        DType.F64 => "f64",
        DType.I32 => "i32",
        _ => throw new NotSupportedException($"cuda: {op} does not take {dtype.Name()}."),
    };

    /// <summary>
    /// The IBackend op families this backend does not implement yet (their members throw
    /// <see cref="NotSupportedException"/>): training and sampling need all of them, so ComputeDevice refuses CUDA for
    /// those while this list is not empty.
    /// </summary>
    public static IReadOnlyList<string> MissingOpFamilies { get; } = [];

    private static NotSupportedException NotImplementedYet(string member) =>
        new($"{member} is not implemented on the CUDA backend yet.");

    public void Synchronize()
    {
        RefuseDuringCapture("Synchronize", "synchronise after the graph's launch");
        Enter();
        Check(CudaDriver.cuCtxSynchronize());
    }

    /// <summary>
    /// Records <paramref name="body"/>'s work on the backend's stream into a CUDA graph (stream capture in thread-local mode:
    /// kernels with their arguments by value, async copies and fills, cuBLAS GEMMs), without running it; the graph's
    /// Launch replays it with one cuGraphLaunch. Pool buffers the body rents stay reserved for the graph until it is
    /// disposed. Upload, Download and Synchronize throw during the capture; so does an allocation the pool cannot serve
    /// from its free lists (cuMemAlloc is refused by the driver), so run the body once eagerly first.
    /// </summary>
    public IDeviceGraph Capture(Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (capturing) throw new InvalidOperationException("cuda: a graph capture is already in progress; captures do not nest.");
        Enter();
        Check(CudaDriver.cuStreamSynchronize(stream));
        Pool.BeginCapture();
        nint graph = 0, executable = 0;
        // Thread-local mode: the driver refuses unsafe calls (cuMemAlloc, cuMemFree) made by this thread during the
        // capture, but not those of other threads (global mode would let a finalizer's cuMemFree invalidate it).
        var began = CudaDriver.cuStreamBeginCapture_v2(stream, CudaDriver.StreamCaptureModeThreadLocal);
        if (began != CudaResult.Success)
        {
            Pool.EndCapture().Dispose();
            Check(began, "cuStreamBeginCapture_v2");
        }
        capturing = true;
        try
        {
            body();
        }
        catch
        {
            capturing = false;
            if (CudaDriver.cuStreamEndCapture(stream, &graph) == CudaResult.Success && graph != 0) CudaDriver.cuGraphDestroy(graph);
            Pool.EndCapture().Dispose();
            throw;
        }
        capturing = false;
        var ended = CudaDriver.cuStreamEndCapture(stream, &graph);
        var reservation = Pool.EndCapture();
        var instantiated = ended == CudaResult.Success ? CudaDriver.cuGraphInstantiateWithFlags(&executable, graph, 0) : ended;
        if (instantiated != CudaResult.Success)
        {
            if (graph != 0) CudaDriver.cuGraphDestroy(graph);
            reservation.Dispose();
            Check(instantiated, ended != CudaResult.Success ? "cuStreamEndCapture" : "cuGraphInstantiateWithFlags");
        }
        return new CudaGraph(this, graph, executable, reservation);
    }

    /// <summary>A captured graph of this backend: launched on its stream, destroyed with its reservation.</summary>
    private sealed class CudaGraph(CudaBackend backend, nint graph, nint executable, IDisposable reservation) : IDeviceGraph
    {
        private bool disposed;

        public void Launch()
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            ObjectDisposedException.ThrowIf(backend.disposed, backend);
            if (backend.capturing) throw new InvalidOperationException("cuda: launching a graph inside a capture is not supported.");
            backend.Enter();
            Check(CudaDriver.cuGraphLaunch(executable, backend.stream));
        }

        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            lock (backend.gate)
            {
                if (!backend.disposed)
                {
                    backend.Enter();
                    CudaDriver.cuStreamSynchronize(backend.stream);
                    CudaDriver.cuGraphExecDestroy(executable);
                    CudaDriver.cuGraphDestroy(graph);
                }
            }
            reservation.Dispose();
        }
    }

    // ---- kernels --------------------------------------------------------------------------------------------------

    /// <summary>The PTX of kernels/<paramref name="file"/> for <paramref name="architecture"/>, compiled once per process
    /// (and cached on disk across processes by <see cref="KernelCompiler"/>).</summary>
    internal static CompiledKernel CompiledModule(string file, string architecture) =>
        Compiled.GetOrAdd((file, architecture), key => new Lazy<CompiledKernel>(() => Compiler.Compile(key.File, key.Architecture))).Value;

    /// <summary>The CUfunction <paramref name="name"/> of kernels/<paramref name="file"/>, loading the module on first use.</summary>
    internal nint Function(string file, string name)
    {
        Enter(); // loading a module needs the context current on this thread
        lock (gate)
        {
            if (functions.TryGetValue(name, out nint function)) return function;
            if (!modules.TryGetValue(file, out nint module))
            {
                var compiled = CompiledModule(file, Architecture);
                byte[] image = Encoding.UTF8.GetBytes(compiled.Ptx + "\0");
                fixed (byte* p = image) Check(CudaDriver.cuModuleLoadData(&module, p));
                modules[file] = module;
            }
            var result = CudaDriver.cuModuleGetFunction(&function, module, name);
            if (result == CudaResult.NotFound)
                throw new InvalidOperationException($"kernels/{file} has no kernel named {name}.");
            Check(result, "cuModuleGetFunction");
            functions[name] = function;
            return function;
        }
    }

    /// <summary>Threads per block of the one-dimensional element-wise launches.</summary>
    internal const int BlockSize = 256;

    /// <summary>
    /// A one-dimensional launch for a grid-stride loop over <paramref name="count"/> elements: enough blocks to fill the
    /// device a few times over (more only add scheduling), never more than the elements need.
    /// </summary>
    internal LaunchShape Grid(long count)
    {
        long blocks = Math.Clamp((count + BlockSize - 1) / BlockSize, 1, (long)MultiprocessorCount * 32);
        return new LaunchShape((uint)blocks, 1, BlockSize, 1);
    }

    // ---- lifetime -------------------------------------------------------------------------------------------------

    public void Dispose()
    {
        if (disposed) return;
        Pool.Dispose();
        lock (gate)
        {
            if (disposed) return;
            Enter();
            CudaDriver.cuCtxSynchronize();
            DisposeLt();
            Cublas.cublasDestroy_v2(cublas);
            cublasWorkspace?.Dispose();
            foreach (nint module in modules.Values) CudaDriver.cuModuleUnload(module);
            modules.Clear();
            functions.Clear();
            CudaDriver.cuStreamDestroy_v2(stream);
            // Destroying the context frees every allocation still alive; their buffers' Release then does nothing.
            CudaDriver.cuCtxDestroy_v2(context);
            disposed = true;
            if (ReferenceEquals(current, this)) current = null;
        }
    }

    public override string ToString() => Description;
}

/// <summary>Grid and block of a kernel launch (z = 1) and its dynamic shared memory.</summary>
internal readonly record struct LaunchShape(uint GridX, uint GridY, uint BlockX, uint BlockY, uint SharedBytes = 0);

/// <summary>Device memory of a <see cref="CudaBackend"/>: a CUdeviceptr, freed when the buffer is released.</summary>
public sealed class CudaBuffer : DeviceBuffer
{
    private ulong pointer;

    internal CudaBuffer(CudaBackend backend, DType dtype, long length, ulong pointer) : base(backend, dtype, length) =>
        this.pointer = pointer;

    // A buffer nobody disposed gives its memory back when collected (the backend may be gone by then: nothing to do).
    ~CudaBuffer()
    {
        ulong p = Interlocked.Exchange(ref pointer, 0);
        if (p != 0) ((CudaBackend)Backend).Free(p, quietly: true);
    }

    /// <summary>The CUdeviceptr (0 for an empty buffer).</summary>
    public ulong Pointer => IsDisposed ? throw new ObjectDisposedException(ToString()) : pointer;

    protected override void Release()
    {
        ulong p = Interlocked.Exchange(ref pointer, 0);
        if (p != 0) ((CudaBackend)Backend).Free(p);
    }
}

/// <summary>The emulator's own diagnostics, exported by librepa_cuda_emu.so next to the driver API.</summary>
internal static unsafe partial class EmulatorApi
{
    static EmulatorApi() => CudaLibraries.EnsureResolver();

    /// <summary>The message of the last failed call on the calling thread ("" when none).</summary>
    [LibraryImport(CudaLibraries.Driver)] public static partial byte* repaEmuLastError();
}
