using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;

namespace Repa.Tests.Cuda;

/// <summary>
/// How close a candidate backend's result must be to the reference's: |candidate - reference| &lt;= Absolute +
/// Relative * |reference| with NaN exactly where the reference has NaN, or (Exact) the same bits.
/// </summary>
internal readonly record struct Tolerance(double Relative, double Absolute, bool Exact = false)
{
    /// <summary>Bit-identical values: copies, conversions, permutes, single IEEE operations.</summary>
    public static Tolerance Bits => new(0, 0, Exact: true);

    public static Tolerance Close(double relative, double absolute = 0) => new(relative, absolute);

    public override string ToString() => Exact ? "bit-exact" : $"|d| <= {Absolute:G3} + {Relative:G3} |ref|";
}

/// <summary>
/// The same values on the reference backend and on the candidate. A bfloat16 or float16 candidate buffer is paired with
/// a float32 reference buffer holding exactly its values (the CPU backend computes in float32); the reference's
/// results are rounded the way the candidate stores them before comparing.
/// </summary>
internal sealed class BufferPair(DeviceBuffer reference, DeviceBuffer candidate) : IDisposable
{
    public DeviceBuffer Reference { get; } = reference;
    public DeviceBuffer Candidate { get; } = candidate;
    public DType DType => Candidate.DType;
    public long Length => Candidate.Length;

    /// <summary>This pair's buffer on <paramref name="backend"/>.</summary>
    public DeviceBuffer On(IBackend backend) =>
        ReferenceEquals(backend, Candidate.Backend) ? Candidate
        : ReferenceEquals(backend, Reference.Backend) ? Reference
        : throw new ArgumentException($"{backend.Name} holds neither buffer of this pair.");

    public void Dispose()
    {
        Reference.Dispose();
        Candidate.Dispose();
    }
}

/// <summary>
/// The equivalence harness of the device backends: runs one IBackend call on a reference backend (the CPU backend) and
/// on a candidate (CUDA, emulated or real) with the same inputs, and compares what each wrote. Inputs come from Philox
/// (a fresh stream per buffer), so every test is deterministic. Reusable by every op family: make the inputs with
/// <see cref="Random"/> / <see cref="Values"/>, call <see cref="Run"/> with a lambda that receives the backend and a
/// function mapping each pair to that backend's buffer, and <see cref="AssertClose"/> the outputs.
/// </summary>
internal sealed class BackendEquivalence(IBackend candidate, IBackend reference, ulong seed = 5) : IDisposable
{
    private readonly List<BufferPair> pairs = [];
    private ulong stream;

    public IBackend Candidate { get; } = candidate;
    public IBackend Reference { get; } = reference;

    /// <summary>The dtype the reference computes in for a candidate dtype (float32 for the 16-bit types).</summary>
    public static DType ReferenceType(DType dtype) => dtype is DType.BF16 or DType.F16 ? DType.F32 : dtype;

    /// <summary>Normal(0, scale) values, rounded to <paramref name="dtype"/> (the same values on both sides).</summary>
    public BufferPair Random(DType dtype, long length, double scale = 1.0)
    {
        var values = new float[length];
        Philox.Normal(seed, ++stream, 0, values);
        for (int i = 0; i < values.Length; i++) values[i] = (float)(values[i] * scale);
        return Values(dtype, values);
    }

    /// <summary><paramref name="length"/> copies of <paramref name="value"/> (e.g. NaN, to see that beta = 0 never reads).</summary>
    public BufferPair Full(DType dtype, long length, float value) => Values(dtype, Enumerable.Repeat(value, checked((int)length)).ToArray());

    /// <summary>The given values, rounded to <paramref name="dtype"/> (int32: truncated).</summary>
    public BufferPair Values(DType dtype, params float[] values)
    {
        var pair = new BufferPair(Reference.Allocate(ReferenceType(dtype), values.Length), Candidate.Allocate(dtype, values.Length));
        pairs.Add(pair);
        switch (dtype)
        {
            case DType.F32:
                Reference.Upload<float>(values, pair.Reference);
                Candidate.Upload<float>(values, pair.Candidate);
                break;
            case DType.BF16:
            case DType.F16:
            {
                var bits = values.Select(v => dtype == DType.BF16 ? HalfPrecision.FloatToBf16(v) : HalfPrecision.FloatToF16(v)).ToArray();
                Candidate.Upload<ushort>(bits, pair.Candidate);
                Reference.Upload<float>(bits.Select(b => Widen(dtype, b)).ToArray(), pair.Reference);
                break;
            }
            case DType.F64:
            {
                var wide = values.Select(v => (double)v).ToArray();
                Reference.Upload<double>(wide, pair.Reference);
                Candidate.Upload<double>(wide, pair.Candidate);
                break;
            }
            case DType.I32:
            {
                var ints = values.Select(v => (int)v).ToArray();
                Reference.Upload<int>(ints, pair.Reference);
                Candidate.Upload<int>(ints, pair.Candidate);
                break;
            }
            default: throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null);
        }
        return pair;
    }

    /// <summary>Exact int32 values.</summary>
    public BufferPair Ints(params int[] values)
    {
        var pair = new BufferPair(Reference.Allocate(DType.I32, values.Length), Candidate.Allocate(DType.I32, values.Length));
        pairs.Add(pair);
        Reference.Upload<int>(values, pair.Reference);
        Candidate.Upload<int>(values, pair.Candidate);
        return pair;
    }

    /// <summary>Runs <paramref name="call"/> on the reference, then on the candidate (each gets its own buffers).</summary>
    public void Run(Action<IBackend, Func<BufferPair, DeviceBuffer>> call)
    {
        call(Reference, p => p.Reference);
        call(Candidate, p => p.Candidate);
        Candidate.Synchronize();
    }

    /// <summary>
    /// Rounds the reference copies of <paramref name="outputs"/> to their candidate dtype, as the candidate stored them:
    /// call it between the steps of a chain of bfloat16 ops, so each step is compared from the same inputs.
    /// </summary>
    public void StoreAsCandidate(params BufferPair[] outputs)
    {
        foreach (var pair in outputs)
        {
            if (pair.Reference.DType == pair.DType) continue;
            var rounded = Read(pair.Reference).Select(v => (float)Round(pair.DType, v)).ToArray();
            Reference.Upload<float>(rounded, pair.Reference);
        }
    }

    /// <summary>The candidate's values as float64 (exact for every dtype).</summary>
    public static double[] Read(DeviceBuffer buffer)
    {
        var backend = buffer.Backend;
        int n = checked((int)buffer.Length);
        switch (buffer.DType)
        {
            case DType.F32: { var v = new float[n]; backend.Download<float>(buffer, v); return v.Select(x => (double)x).ToArray(); }
            case DType.F64: { var v = new double[n]; backend.Download<double>(buffer, v); return v; }
            case DType.I32: { var v = new int[n]; backend.Download<int>(buffer, v); return v.Select(x => (double)x).ToArray(); }
            case DType.BF16:
            case DType.F16: { var v = new ushort[n]; backend.Download<ushort>(buffer, v); return v.Select(b => (double)Widen(buffer.DType, b)).ToArray(); }
            default: throw new ArgumentOutOfRangeException(nameof(buffer), buffer.DType, null);
        }
    }

    /// <summary>The raw bits of every element (NaN payloads included), widened to 64 bits.</summary>
    public static ulong[] ReadBits(DeviceBuffer buffer)
    {
        int n = checked((int)buffer.Length);
        switch (buffer.DType.SizeInBytes())
        {
            case 2: { var v = new ushort[n]; buffer.Backend.Download<ushort>(buffer, v); return v.Select(x => (ulong)x).ToArray(); }
            case 4: { var v = new uint[n]; buffer.Backend.Download<uint>(buffer, v); return v.Select(x => (ulong)x).ToArray(); }
            default: { var v = new ulong[n]; buffer.Backend.Download<ulong>(buffer, v); return v; }
        }
    }

    /// <summary>
    /// Asserts that the candidate's buffer holds the reference's values within <paramref name="tolerance"/>. The
    /// reference values are first rounded as the candidate stores them (bfloat16/float16), so a tolerance is about the
    /// computation, not the storage.
    /// </summary>
    public void AssertClose(BufferPair pair, Tolerance tolerance, string what)
    {
        var expected = Read(pair.Reference).Select(v => Round(pair.DType, v)).ToArray();
        var actual = Read(pair.Candidate);
        AssertClose(expected, actual, tolerance, $"{what} ({pair.DType.Name()}[{pair.Length}] on {Candidate.Name})");
    }

    /// <summary>Asserts two arrays agree within <paramref name="tolerance"/>, reporting the worst elements.</summary>
    public static void AssertClose(double[] expected, double[] actual, Tolerance tolerance, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(expected.Length), what);
        var bad = new List<string>();
        int failures = 0;
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            bool ok = tolerance.Exact
                ? BitConverter.DoubleToInt64Bits(e) == BitConverter.DoubleToInt64Bits(a) || (double.IsNaN(e) && double.IsNaN(a))
                : double.IsNaN(e) ? double.IsNaN(a)
                : double.IsInfinity(e) ? e == a
                : Math.Abs(a - e) <= tolerance.Absolute + tolerance.Relative * Math.Abs(e);
            if (!double.IsNaN(e) && !double.IsNaN(a) && !double.IsInfinity(e)) worst = Math.Max(worst, Math.Abs(a - e));
            if (ok) continue;
            if (failures++ < 5) bad.Add($"[{i}] expected {e:R}, got {a:R}");
        }
        Assert.That(failures, Is.Zero, $"{what}: {failures} of {expected.Length} elements differ beyond {tolerance} (worst |d| {worst:G3}): {string.Join("; ", bad)}");
    }

    /// <summary>A float32 value as a dtype stores it.</summary>
    public static double Round(DType dtype, double value) => dtype switch
    {
        DType.BF16 => HalfPrecision.Bf16ToFloat(HalfPrecision.FloatToBf16((float)value)),
        DType.F16 => HalfPrecision.F16ToFloat(HalfPrecision.FloatToF16((float)value)),
        DType.F32 => (float)value,
        _ => value,
    };

    private static float Widen(DType dtype, ushort bits) =>
        dtype == DType.BF16 ? HalfPrecision.Bf16ToFloat(bits) : HalfPrecision.F16ToFloat(bits);

    public void Dispose()
    {
        foreach (var pair in pairs) pair.Dispose();
        pairs.Clear();
    }
}

/// <summary>The emulated CUDA device of the test process (librepa_cuda_emu.so next to the test assembly).</summary>
internal static class EmulatedCuda
{
    public const string FileName = "librepa_cuda_emu.so";

    public static string LibraryPath => Path.Combine(AppContext.BaseDirectory, FileName);

    /// <summary>
    /// Opens a backend on the emulator, failing the test when the library was not built and ignoring it when this process
    /// bound the real driver first (CUDA's libraries are chosen once per process: run the categories apart there).
    /// </summary>
    public static CudaBackend Open()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("The CUDA emulator is built for Linux only.");
        if (!File.Exists(LibraryPath))
            Assert.Fail($"The CUDA emulator {LibraryPath} was not built (building it needs g++ and cmake): run scripts/setup.sh, then build again.");
        if (!CudaLibraries.IsEmulated && CudaLibraries.BoundPath(CudaLibraries.Driver) is { } driver)
            Assert.Ignore($"This test process bound the NVIDIA driver ({driver}) first; run the emulated tests apart: dotnet test --filter Category=EmulatedCuda.");
        return CudaBackend.CreateEmulated(LibraryPath);
    }
}
