using System.Reflection;
using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Cuda;
using static Repa.Autograd.Ops;

namespace Repa.Tests.Cuda;

/// <summary>
/// The CUDA backend against the CPU backend, call by call, through <see cref="BackendEquivalence"/>: memory (upload,
/// download, copy, fill, convert, the pool), the element-wise family, permutes, row copies and the GEMMs, on awkward
/// shapes (odd sizes, one element, broadcast strides, offsets, beta = 0 over NaN, accumulation into non-zero
/// gradients), in float32 and bfloat16; and a few autograd ops end to end. The same tests run on the emulated device
/// (<see cref="EmulatedCudaBackendTests"/>, every CI run) and on a real GPU (<see cref="GpuCudaBackendTests"/>).
/// </summary>
public abstract partial class CudaBackendTests
{
    private CudaBackend? cuda;
    private CpuBackend cpu = null!;
    private BackendEquivalence? equivalence;

    /// <summary>Opens the backend under test (or ignores the fixture with the reason).</summary>
    private protected abstract CudaBackend OpenBackend();

    private protected CudaBackend Cuda => cuda!;
    private protected BackendEquivalence Eq => equivalence!;

    [OneTimeSetUp]
    public void Open()
    {
        cuda = OpenBackend();
        cpu = new CpuBackend(2);
    }

    [SetUp]
    public void NewHarness() => equivalence = new BackendEquivalence(Cuda, cpu);

    [TearDown]
    public void FreeBuffers() => equivalence?.Dispose();

    [OneTimeTearDown]
    public void Close()
    {
        cuda?.Dispose();
        cpu?.Dispose();
    }

    private static readonly float F32Epsilon = MathF.Pow(2, -23);

    // ---- device, memory -------------------------------------------------------------------------------------------

    [Test]
    public void DescribesItsDevice()
    {
        Assert.That(Cuda.Name, Is.EqualTo("cuda"));
        Assert.That(Cuda.ComputeCapability, Is.GreaterThanOrEqualTo(80));
        Assert.That(Cuda.Architecture, Is.EqualTo(Cuda.ComputeCapability >= 90 ? "compute_90" : "compute_80"));
        Assert.That(Cuda.Description, Does.StartWith("cuda: ").And.EndWith($"kernels {Cuda.Architecture}"));
        if (Cuda.IsEmulated)
            Assert.That(Cuda.Description, Does.StartWith("cuda: CUDA emulator (CPU), "));
        else
            Assert.That(Cuda.Description, Does.Contain(Cuda.DeviceName));
        Assert.That(Cuda.Supports(DType.F32) && Cuda.Supports(DType.BF16) && Cuda.Supports(DType.I32), Is.True);
        Assert.That(Cuda.Supports(DType.F64) || Cuda.Supports(DType.F16), Is.False, "float64 and float16 are storage only");
        TestContext.Out.WriteLine(Cuda.Description);
    }

    /// <summary>The structs passed by value to kernels match their C layouts (elementwise.cu, memory.cu).</summary>
    [Test]
    public void KernelParameterStructsHaveTheCLayout()
    {
        Assert.That(System.Runtime.CompilerServices.Unsafe.SizeOf<CudaBackend.BroadcastLayout>(), Is.EqualTo(128));
        Assert.That(System.Runtime.CompilerServices.Unsafe.SizeOf<CudaBackend.PermuteLayout>(), Is.EqualTo(80));
    }

    [Test]
    public void MemoryRoundTripsEveryDtypeAtOffsets()
    {
        float[] values = [1.5f, -2.25f, float.NaN, float.PositiveInfinity, 3e-39f, -0f, 65504f, 7];
        using var f32 = Cuda.Allocate(DType.F32, 11);
        Cuda.Upload<float>(values, f32, 3);
        var back = new float[8];
        Cuda.Download<float>(f32, back, 3);
        Assert.That(back.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(values.Select(BitConverter.SingleToInt32Bits)), "float32 bits, NaN and -0 included");

        ushort[] half = [0x3fc0, 0x7fc1, 0xff80, 0x0001, 0x8000];
        foreach (var dtype in new[] { DType.BF16, DType.F16 })
        {
            using var b = Cuda.Allocate(dtype, 6);
            Cuda.Upload<ushort>(half, b, 1);
            var read = new ushort[5];
            Cuda.Download<ushort>(b, read, 1);
            Assert.That(read, Is.EqualTo(half), dtype.Name());
        }
        using var f64 = Cuda.Allocate(DType.F64, 3);
        Cuda.Upload<double>([Math.PI, -1e300, double.Epsilon], f64);
        var d = new double[3];
        Cuda.Download<double>(f64, d);
        Assert.That(d, Is.EqualTo(new[] { Math.PI, -1e300, double.Epsilon }));
        using var i32 = Cuda.Allocate(DType.I32, 4);
        Cuda.Upload<int>([int.MinValue, -1, 0, int.MaxValue], i32);
        var ints = new int[4];
        Cuda.Download<int>(i32, ints);
        Assert.That(ints, Is.EqualTo(new[] { int.MinValue, -1, 0, int.MaxValue }));

        using (var empty = Cuda.Allocate(DType.F32, 0))
        {
            Cuda.Upload<float>([], empty);
            Cuda.Download<float>(empty, Span<float>.Empty);
            Cuda.Fill(empty, 0, 0, 1);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Upload<float>(values, f32, 4), "past the end");
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Download<float>(f32, new float[2], -1));
        Assert.Throws<ArgumentException>(() => Cuda.Upload<double>([1.0], f32), "element size");
        using var host = cpu.Allocate(DType.F32, 4);
        var e = Assert.Throws<ArgumentException>(() => Cuda.Copy(host, 0, f32, 0, 4))!;
        Assert.That(e.Message, Does.Contain("does not belong to this cuda backend"));
    }

    [Test]
    public void CopyAndFillMatchTheCpu([Values(DType.F32, DType.I32, DType.F64, DType.BF16)] DType dtype)
    {
        var source = Eq.Random(dtype, 37, scale: 100);
        var target = Eq.Random(dtype, 41, scale: 100);
        Eq.Run((be, on) =>
        {
            be.Copy(on(source), 3, on(target), 5, 29);
            be.Fill(on(target), 0, 2, -3.75);
            be.Fill(on(target), 39, 1, 1e6 + 0.7);
        });
        Eq.AssertClose(target, Tolerance.Bits, "copy + fill");
        // Overlapping ranges of one buffer move as memmove does, both ways.
        Eq.Run((be, on) =>
        {
            be.Copy(on(source), 0, on(source), 4, 30);
            be.Copy(on(source), 10, on(source), 7, 25);
        });
        Eq.AssertClose(source, Tolerance.Bits, "overlapping copies");
    }

    [Test]
    public void Bf16AndF16FillRoundToNearestEven()
    {
        using var b = Cuda.Allocate(DType.BF16, 5);
        using var h = Cuda.Allocate(DType.F16, 5);
        double value = 1.00390625 + 1e-9; // just above the tie between two bf16 values: rounds up
        Cuda.Fill(b, 1, 3, value);
        Cuda.Fill(h, 0, 5, 1e-7); // an fp16 subnormal
        var bits = BackendEquivalence.ReadBits(b);
        Assert.That(bits[1..4], Is.All.EqualTo((ulong)HalfPrecision.FloatToBf16((float)value)));
        Assert.That(BackendEquivalence.ReadBits(h), Is.All.EqualTo((ulong)HalfPrecision.FloatToF16(1e-7f)));
    }

    [Test]
    public void ConversionsRoundToNearestEvenAsTheHost()
    {
        // Ties, overflow, subnormals, NaN payloads and signs: the values where the rounding decides.
        float[] special =
        [
            0f, -0f, 1f, -1f, 1.00390625f, 1.01171875f, 3.4028235e38f, -3.4028235e38f, 65504f, 65520f, 1e-40f, -1e-45f,
            6e-8f, 3e-8f, 2.9802322e-8f, float.NaN, BitConverter.Int32BitsToSingle(unchecked((int)0xffc00001)),
            BitConverter.Int32BitsToSingle(0x7f800001), float.PositiveInfinity, float.NegativeInfinity, 0.1f, 1234.5678f,
        ];
        var random = new float[1001];
        Philox.Normal(11, 1, 0, random);
        float[] all = [.. special, .. random.Select(v => v * 1000)];
        using var f32 = Upload(all);
        foreach (var (dtype, round) in new (DType, Func<float, ushort>)[] { (DType.BF16, HalfPrecision.FloatToBf16), (DType.F16, HalfPrecision.FloatToF16) })
        {
            using var narrow = Cuda.Allocate(dtype, all.Length);
            Cuda.Convert(f32, narrow, all.Length);
            var expected = all.Select(v => (ulong)round(v)).ToArray();
            Assert.That(BackendEquivalence.ReadBits(narrow), Is.EqualTo(expected), $"float32 -> {dtype.Name()}");
            using var wide = Cuda.Allocate(DType.F32, all.Length);
            Cuda.Convert(narrow, wide, all.Length);
            var widened = expected.Select(b => (ulong)BitConverter.SingleToUInt32Bits(dtype == DType.BF16 ? HalfPrecision.Bf16ToFloat((ushort)b) : HalfPrecision.F16ToFloat((ushort)b)));
            Assert.That(BackendEquivalence.ReadBits(wide), Is.EqualTo(widened.ToArray()), $"{dtype.Name()} -> float32");
            using var f64 = Cuda.Allocate(DType.F64, all.Length);
            Cuda.Convert(narrow, f64, all.Length);
            Assert.That(BackendEquivalence.Read(f64), Is.EqualTo(BackendEquivalence.Read(wide)), $"{dtype.Name()} -> float64 is exact");
        }
        using (var bf = Cuda.Allocate(DType.BF16, all.Length))
        using (var h = Cuda.Allocate(DType.F16, all.Length))
        {
            Cuda.Convert(f32, bf, all.Length);
            Cuda.Convert(bf, h, all.Length);
            var expected = BackendEquivalence.ReadBits(bf).Select(b => (ulong)HalfPrecision.FloatToF16(HalfPrecision.Bf16ToFloat((ushort)b)));
            Assert.That(BackendEquivalence.ReadBits(h), Is.EqualTo(expected.ToArray()), "bfloat16 -> float16 through float32");
        }
    }

    [Test]
    public void WideConversionsMatchTheCpu()
    {
        var f32 = Eq.Random(DType.F32, 333, scale: 1e5);
        var f64 = Eq.Values(DType.F64, new float[333]);
        var ints = Eq.Ints(16777217, -16777219, int.MaxValue, int.MinValue, 0, -7, 123456789);
        var fromInts = Eq.Values(DType.F32, new float[7]);
        var fromInts64 = Eq.Values(DType.F64, new float[7]);
        var back = Eq.Values(DType.F32, new float[333]);
        Eq.Run((be, on) =>
        {
            be.Convert(on(f32), on(f64), 333);
            be.Axpby(on(f32), on(f32), 0, 1, 1); // n = 0: a no-op on both
            be.Convert(on(f64), on(back), 333);
            be.Convert(on(ints), on(fromInts), 7);
            be.Convert(on(ints), on(fromInts64), 7);
        });
        Eq.AssertClose(f64, Tolerance.Bits, "float32 -> float64");
        Eq.AssertClose(back, Tolerance.Bits, "float64 -> float32");
        Eq.AssertClose(fromInts, Tolerance.Bits, "int32 -> float32 rounds to nearest even");
        Eq.AssertClose(fromInts64, Tolerance.Bits, "int32 -> float64");
        using var i32 = Cuda.Allocate(DType.I32, 4);
        using var f = Cuda.Allocate(DType.F32, 4);
        Assert.Throws<NotSupportedException>(() => Cuda.Convert(f, i32, 4));
    }

    [Test]
    public void ThePoolRecyclesDeviceBuffers()
    {
        long before = Cuda.AllocationCount;
        var first = Cuda.Pool.Rent(DType.BF16, 1000);
        Cuda.Pool.Return(first);
        Assert.That(Cuda.Pool.IdleBytes, Is.GreaterThanOrEqualTo(2000));
        var second = Cuda.Pool.Rent(DType.BF16, 1000);
        Assert.That(second, Is.SameAs(first));
        Assert.That(Cuda.AllocationCount, Is.EqualTo(before + 1));
        Cuda.Pool.Return(second);
        Cuda.Pool.Trim();
        Assert.That(second.IsDisposed, Is.True);
        Assert.That(Cuda.Pool.IdleBytes, Is.Zero);
        Assert.Throws<ObjectDisposedException>(() => _ = ((CudaBuffer)second).Pointer);
    }

    /// <summary>CUDA contexts are current per thread: every call makes the backend's current where it runs.</summary>
    [Test]
    public void WorksFromAnyThread()
    {
        using var buffer = Cuda.Allocate(DType.F32, 300);
        var result = new float[300];
        var worker = new Thread(() =>
        {
            Cuda.Fill(buffer, 0, 300, 2);
            Cuda.ActivationForward(Activation.Silu, buffer, buffer, 300);
            Cuda.Download<float>(buffer, result);
        });
        worker.Start();
        worker.Join();
        Assert.That(result, Is.All.EqualTo(2 / (1 + MathF.Exp(-2))).Within(1e-6));
        Cuda.Fill(buffer, 299, 1, -1);
        Cuda.Download<float>(buffer, result);
        Assert.That(result[299], Is.EqualTo(-1));
    }

    // ---- element-wise ---------------------------------------------------------------------------------------------

    [Test]
    public void ActivationsMatchTheCpu([Values] Activation activation, [Values(DType.F32, DType.BF16)] DType dtype, [Values(1, 1000, 4099)] int n)
    {
        var x = Eq.Random(dtype, n, scale: 3);
        var y = Eq.Full(dtype, n, float.NaN);
        var dy = Eq.Random(dtype, n);
        var dx = Eq.Random(dtype, n); // backward accumulates into what is there
        Eq.Run((be, on) =>
        {
            be.ActivationForward(activation, on(x), on(y), n);
            be.ActivationBackward(activation, on(x), on(dy), on(dx), n);
        });
        // The CPU's fp32 tanh/exp are its own approximations: a few float32 ulps; bfloat16 stores round once more.
        var tolerance = dtype == DType.F32 ? Tolerance.Close(32 * F32Epsilon, 1e-5) : Tolerance.Close(1.0 / 128, 1e-5);
        Eq.AssertClose(y, tolerance, $"{activation} forward");
        Eq.AssertClose(dx, tolerance, $"{activation} backward (accumulated)");
    }

    /// <summary>(output shape, a's shape, b's shape): equal shapes, the bias row, scalars, middle broadcasts, one element,
    /// and eight axes that do not merge (more than the kernel's six).</summary>
    private static readonly (int[] Shape, int[] A, int[] B)[] BroadcastCases =
    [
        ([1001], [1001], [1001]),
        ([37, 65], [37, 65], [65]),
        ([37, 65], [65], [37, 65]),
        ([5, 7], [5, 7], [1]),
        ([5, 7], [1], [5, 7]),
        ([3, 4, 5], [3, 1, 5], [1, 4, 5]),
        ([2, 3, 1, 7], [2, 1, 1, 7], [3, 1, 1]),
        ([1], [1], [1]),
        ([2, 3, 2, 3, 2, 3, 2, 3], [2, 1, 2, 1, 2, 1, 2, 1], [1, 3, 1, 3, 1, 3, 1, 3]),
        ([4, 0, 3], [4, 1, 3], [0, 3]),
    ];

    [Test]
    public void BinaryOpsMatchTheCpuExactly([Values] BinaryOp op, [Values(DType.F32, DType.BF16)] DType dtype)
    {
        foreach (var (shape, aShape, bShape) in BroadcastCases)
        {
            var a = Eq.Random(dtype, Shapes.Count(aShape));
            var b = Eq.Random(dtype, Shapes.Count(bShape));
            var y = Eq.Full(dtype, Shapes.Count(shape), float.NaN);
            long[] sa = Shapes.BroadcastStrides(Pad(aShape, shape.Length), shape), sb = Shapes.BroadcastStrides(Pad(bShape, shape.Length), shape);
            Eq.Run((be, on) => be.Binary(op, on(a), sa, on(b), sb, on(y), shape));
            // One IEEE operation in float32 on both sides, rounded once to the storage type.
            Eq.AssertClose(y, Tolerance.Bits, $"{op} {Shapes.Format(aShape)} {Shapes.Format(bShape)} -> {Shapes.Format(shape)}");
        }
    }

    [Test]
    public void BinaryOpsUpdateInPlace([Values(DType.F32, DType.BF16)] DType dtype)
    {
        int[] shape = [9, 13];
        var x = Eq.Random(dtype, 9 * 13);
        var bias = Eq.Random(dtype, 13);
        var other = Eq.Random(dtype, 9 * 13);
        long[] own = Shapes.Strides(shape);
        Eq.Run((be, on) => be.Binary(BinaryOp.Add, on(x), own, on(bias), [0, 1], on(x), shape));
        Eq.AssertClose(x, Tolerance.Bits, "x += bias");
        Eq.StoreAsCandidate(x);
        Eq.Run((be, on) => be.Binary(BinaryOp.Mul, on(other), own, on(x), own, on(x), shape));
        Eq.AssertClose(x, Tolerance.Bits, "x = other * x");
        Eq.StoreAsCandidate(x);
        Eq.Run((be, on) => be.Binary(BinaryOp.Sub, on(x), own, on(other), [0, 0], on(x), shape));
        Eq.AssertClose(x, Tolerance.Bits, "x -= other[0]");
    }

    private static int[] Pad(int[] shape, int rank) => [.. Enumerable.Repeat(1, rank - shape.Length), .. shape];

    [Test]
    public void AxpbyMatchesTheCpu([Values(0.0, 1.0, -0.75)] double beta)
    {
        foreach (var (xType, yType) in new[] { (DType.F32, DType.F32), (DType.BF16, DType.BF16), (DType.BF16, DType.F32) })
        {
            var x = Eq.Random(xType, 777);
            var y = beta == 0 ? Eq.Full(yType, 777, float.NaN) : Eq.Random(yType, 777);
            // The CPU backend computes in one dtype: give it float32 for both sides of the mixed pair.
            Eq.Run((be, on) => be.Axpby(on(x), on(y), 777, 1.25, beta));
            var tolerance = yType == DType.F32 ? Tolerance.Close(2 * F32Epsilon, 1e-7) : Tolerance.Close(1.0 / 128);
            Eq.AssertClose(y, tolerance, $"axpby {xType.Name()} -> {yType.Name()}, beta {beta}");
        }
    }

    /// <summary>(outer, reduce, inner): rows (inner 1) and column tiles, odd sizes, single elements, empty reductions.</summary>
    private static readonly (int Outer, int Reduce, int Inner)[] SumCases =
    [
        (1, 1, 1), (7, 1000, 1), (3, 33, 1), (1, 1, 77), (5, 9, 33), (1, 257, 64), (2, 3, 1000), (4, 0, 5), (3, 0, 1),
    ];

    [Test]
    public void SumsMatchTheCpu([Values(0.0, 1.0)] double beta)
    {
        foreach (var (xType, yType) in new[] { (DType.F32, DType.F32), (DType.BF16, DType.F32), (DType.BF16, DType.BF16) })
            foreach (var (outer, reduce, inner) in SumCases)
            {
                var x = Eq.Random(xType, (long)outer * reduce * inner);
                var y = beta == 0 ? Eq.Full(yType, (long)outer * inner, float.NaN) : Eq.Random(yType, (long)outer * inner);
                Eq.Run((be, on) => be.Sum(on(x), on(y), outer, reduce, inner, 0.5, beta));
                // Summation order differs (a tree on the device, vectors on the CPU): errors grow with sqrt(reduce).
                var tolerance = yType == DType.F32 ? Tolerance.Close(8 * F32Epsilon, 4 * F32Epsilon * Math.Sqrt(reduce + 1)) : Tolerance.Close(1.0 / 128, 1e-6);
                Eq.AssertClose(y, tolerance, $"sum [{outer}, {reduce}, {inner}] {xType.Name()} -> {yType.Name()}, beta {beta}");
            }
    }

    // ---- permutes, row copies -------------------------------------------------------------------------------------

    /// <summary>(x's shape, permutation): transposes, merged axes, unit axes, identity, and seven unmergeable axes.</summary>
    private static readonly (int[] Shape, int[] Perm)[] PermuteCases =
    [
        ([17, 33], [1, 0]),
        ([2, 3, 4, 5], [0, 2, 1, 3]),
        ([2, 3, 4, 5], [3, 1, 0, 2]),
        ([3, 1, 5, 1], [3, 2, 1, 0]),
        ([6, 7], [0, 1]),
        ([1], [0]),
        ([2, 5, 3, 3, 4], [2, 0, 3, 1, 4]),
        ([2, 3, 2, 3, 2, 3, 2], [6, 5, 4, 3, 2, 1, 0]),
        ([4, 0, 2], [2, 1, 0]),
    ];

    [Test]
    public void PermutesMatchTheCpu([Values(DType.F32, DType.BF16, DType.I32, DType.F64)] DType dtype, [Values(0.0, 1.0, 0.5)] double beta)
    {
        if (beta != 0 && dtype is DType.I32 or DType.F64) Assert.Pass("Permute accumulates in float32 and bfloat16 only (the CPU backend: float32/float64).");
        foreach (var (shape, perm) in PermuteCases)
        {
            long n = Shapes.Count(shape);
            var x = Eq.Random(dtype, n, scale: 1000);
            var y = beta == 0 ? Eq.Full(dtype, n, float.NaN) : Eq.Random(dtype, n);
            Eq.Run((be, on) => be.Permute(on(x), on(y), shape, perm, beta));
            // beta * y and + x are rounded separately on both sides (no fused multiply-add): bit-exact.
            Eq.AssertClose(y, Tolerance.Bits, $"permute {Shapes.Format(shape)} by [{string.Join(", ", perm)}], beta {beta}");
        }
    }

    [Test]
    public void PermutesOfBf16CopyEveryBit()
    {
        // Bit copies: NaN payloads and -0 survive.
        ushort[] bits = [0x7fc1, 0xffff, 0x8000, 0x0001, 0x3f80, 0x7f80];
        using var x = Cuda.Allocate(DType.BF16, 6);
        using var y = Cuda.Allocate(DType.BF16, 6);
        Cuda.Upload<ushort>(bits, x);
        Cuda.Permute(x, y, [2, 3], [1, 0], 0);
        Assert.That(BackendEquivalence.ReadBits(y), Is.EqualTo(new ulong[] { 0x7fc1, 0x0001, 0xffff, 0x3f80, 0x8000, 0x7f80 }));
    }

    [Test]
    public void CopyRowsMatchesTheCpu([Values(DType.F32, DType.BF16, DType.I32)] DType dtype, [Values(0.0, 1.0, 2.0)] double beta)
    {
        if (beta != 0 && dtype == DType.I32) Assert.Pass("CopyRows accumulates in float32 and bfloat16 only (the CPU backend: float32/float64).");
        // (source offset, source stride, destination offset, destination stride, rows, width)
        (long, long, long, long, int, int)[] cases = [(0, 5, 0, 5, 7, 5), (3, 11, 2, 17, 7, 5), (1, 0, 4, 9, 6, 9), (10, 3, 0, 1, 1, 1), (0, 40, 0, 40, 1, 40), (5, 4, 6, 4, 0, 3)];
        foreach (var (so, ss, d0, ds, rows, width) in cases)
        {
            var source = Eq.Random(dtype, 100, scale: 100);
            var destination = beta == 0 ? Eq.Full(dtype, 200, float.NaN) : Eq.Random(dtype, 200);
            Eq.Run((be, on) => be.CopyRows(on(source), so, ss, on(destination), d0, ds, rows, width, beta));
            Eq.AssertClose(destination, Tolerance.Bits, $"copy rows ({so}, {ss}) -> ({d0}, {ds}) x {rows} x {width}, beta {beta}");
        }
    }

    // ---- GEMM -----------------------------------------------------------------------------------------------------

    private static readonly (int M, int N, int K)[] GemmSizes = [(1, 1, 1), (7, 5, 3), (33, 17, 65), (1, 40, 9)];

    [Test]
    public void GemmMatchesTheCpuForEveryTransposePair([Values] bool transA, [Values] bool transB,
        [Values(DType.F32, DType.BF16)] DType inputs)
    {
        foreach (var output in inputs == DType.F32 ? new[] { DType.F32 } : [DType.BF16, DType.F32])
            foreach (var (m, n, k) in GemmSizes)
            {
                // Padded leading dimensions and offsets: the operands sit inside larger buffers.
                int lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 1, ldc = n + 2;
                int rowsA = transA ? k : m, rowsB = transB ? n : k;
                const int offA = 5, offB = 2, offC = 7;
                var a = Eq.Random(inputs, offA + (long)rowsA * lda);
                var b = Eq.Random(inputs, offB + (long)rowsB * ldb);
                var c = Eq.Random(output, offC + (long)m * ldc);
                Eq.Run((be, on) => be.Gemm(transA, transB, m, n, k, 0.75, on(a), offA, lda, 0, on(b), offB, ldb, 0, -0.5, on(c), offC, ldc, 0));
                Eq.AssertClose(c, GemmTolerance(output, k), $"gemm {(transA ? "T" : "N")}{(transB ? "T" : "N")} {m}x{n}x{k} {inputs.Name()} -> {output.Name()}");
            }
    }

    /// <summary>Products of bfloat16 values are exact in float32; sums in another order differ by ~sqrt(k) ulps.</summary>
    private static Tolerance GemmTolerance(DType output, int k) =>
        output == DType.F32 ? Tolerance.Close(16 * F32Epsilon, 4 * F32Epsilon * k) : Tolerance.Close(1.0 / 128, 1e-5 * Math.Sqrt(k));

    /// <summary>(rows, in, out): out a multiple of 8 (cuBLASLt's GELU aux), out not (the composed fallback for GELU).</summary>
    private static readonly (int Rows, int In, int Out)[] LinearSizes = [(7, 13, 16), (33, 65, 24), (5, 9, 12), (1, 3, 1)];

    [Test]
    public void LinearForwardMatchesTheCpu([Values(DType.F32, DType.BF16)] DType dtype, [Values] bool withBias,
        [Values(null, Activation.Gelu, Activation.Silu)] Activation? activation)
    {
        foreach (var (rows, inF, outF) in LinearSizes)
        {
            var x = Eq.Random(dtype, (long)rows * inF);
            var w = Eq.Random(dtype, (long)outF * inF);
            var b = Eq.Random(dtype, outF);
            var y = Eq.Full(dtype, (long)rows * outF, float.NaN);
            var pre = Eq.Full(dtype, (long)rows * outF, float.NaN);
            Eq.Run((be, on) => be.LinearForward(on(x), on(w), withBias ? on(b) : null, on(y), activation, activation != null ? on(pre) : null, rows, inF, outF));
            bool fused = activation == null || (activation == Activation.Gelu && outF % 8 == 0);
            Assert.That(Cuda.LastLinearWasFused, Is.EqualTo(fused), $"{rows}x{inF}->{outF} {activation}: cuBLASLt epilogue or composed");
            // The epilogue rounds once (fp32 accumulate + bias + GELU); the composed path rounds after the GEMM and after
            // the bias in bf16: one or two bf16 roundings, plus the activations' own few fp32 ulps.
            var tolerance = dtype == DType.F32 ? Tolerance.Close(64 * F32Epsilon, 8 * F32Epsilon * inF) : Tolerance.Close(1.0 / 64, 2e-3 * Math.Sqrt(inF));
            string what = $"linear {rows}x{inF}->{outF} {dtype.Name()} bias {withBias} {activation}";
            Eq.AssertClose(y, tolerance, what);
            if (activation != null) Eq.AssertClose(pre, tolerance, what + " pre-activation");
        }
    }

    [Test]
    public void LinearWeightBackwardMatchesTheCpu([Values(DType.F32, DType.BF16)] DType inputs, [Values] bool withBias)
    {
        foreach (var output in inputs == DType.F32 ? new[] { DType.F32 } : [DType.BF16, DType.F32])
            foreach (var (rows, inF, outF) in LinearSizes)
            {
                var dy = Eq.Random(inputs, (long)rows * outF);
                var x = Eq.Random(inputs, (long)rows * inF);
                var dw = Eq.Random(output, (long)outF * inF); // accumulated into
                var db = Eq.Random(output, outF);
                Eq.Run((be, on) => be.LinearWeightBackward(on(dy), on(x), on(dw), withBias ? on(db) : null, rows, inF, outF));
                Assert.That(Cuda.LastLinearWasFused, Is.EqualTo(withBias), "BGRADB when there is a bias gradient");
                string what = $"linear backward {rows}x{inF}->{outF} {inputs.Name()} -> {output.Name()}";
                Eq.AssertClose(dw, GemmTolerance(output, rows), what + " dW");
                Eq.AssertClose(db, GemmTolerance(output, rows), what + " db");
            }
    }

    [Test]
    public void BatchedGemmBroadcastsAndScales([Values(DType.F32, DType.BF16)] DType dtype)
    {
        const int batch = 3, m = 6, n = 5, k = 7;
        // A broadcast over the batch (stride 0), B per item with a gap between items, C with beta = 0 over NaN.
        var a = Eq.Random(dtype, m * k);
        var b = Eq.Random(dtype, batch * (k * n + 4));
        var c = Eq.Full(dtype, batch * m * n, float.NaN);
        Eq.Run((be, on) => be.Gemm(false, true, m, n, k, 1, on(a), 0, k, 0, on(b), 0, k, k * n + 4, 0, on(c), 0, n, m * n, batch));
        Eq.AssertClose(c, GemmTolerance(dtype, k), "A broadcast, beta 0 over NaN");

        // B broadcast; beta 1 accumulates into what C holds.
        var a2 = Eq.Random(dtype, batch * k * m);
        var b2 = Eq.Random(dtype, k * n);
        var c2 = Eq.Random(dtype, batch * m * n);
        Eq.Run((be, on) => be.Gemm(true, false, m, n, k, -2, on(a2), 0, m, k * m, on(b2), 0, n, 0, 1, on(c2), 0, n, m * n, batch));
        Eq.AssertClose(c2, GemmTolerance(dtype, k), "B broadcast, beta 1");

        // k = 0 and alpha = 0 read neither operand: C = beta C, and 0 with beta 0 (NaN gone).
        var c3 = Eq.Full(dtype, m * n, float.NaN);
        var c4 = Eq.Random(dtype, m * n);
        var c5 = Eq.Random(dtype, m * n);
        Eq.Run((be, on) =>
        {
            be.Gemm(false, false, m, n, 0, 1, on(a), 0, 0, 0, on(b2), 0, n, 0, 0, on(c3), 0, n, 0);
            be.Gemm(false, false, m, n, 0, 1, on(a), 0, 0, 0, on(b2), 0, n, 0, 2.5, on(c4), 0, n, 0);
            be.Gemm(false, false, m, n, k, 0, on(a), 0, k, 0, on(b2), 0, n, 0, -1, on(c5), 0, n, 0);
        });
        Eq.AssertClose(c3, Tolerance.Bits, "k = 0, beta 0");
        Eq.AssertClose(c4, Tolerance.Bits, "k = 0, beta 2.5");
        Eq.AssertClose(c5, Tolerance.Bits, "alpha 0, beta -1");
    }

    [Test]
    public void GemmRejectsWhatWouldCorruptMemory()
    {
        using var a = Cuda.Allocate(DType.F32, 12);
        using var c = Cuda.Allocate(DType.F32, 24);
        using var bf = Cuda.Allocate(DType.BF16, 12);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Gemm(false, false, 4, 4, 4, 1, a, 0, 4, 0, a, 0, 4, 0, 0, c, 0, 4, 0))!;
        Assert.That(e.Message, Does.Contain("A (offset 0, 1 x [4, 4]").And.Contain("outside"));
        Assert.Throws<ArgumentException>(() => Cuda.Gemm(false, false, 2, 2, 2, 1, a, 0, 2, 4, a, 0, 2, 4, 0, c, 0, 2, 0, batch: 2), "C stride 0 with a batch");
        Assert.Throws<ArgumentException>(() => Cuda.Gemm(false, false, 2, 2, 2, 1, a, 0, 2, 0, bf, 0, 2, 0, 0, c, 0, 2, 0), "mixed inputs");
        Assert.Throws<ArgumentOutOfRangeException>(() => Cuda.Gemm(false, false, 2, 2, 3, 1, a, 0, 2, 0, a, 0, 2, 0, 0, c, 0, 2, 0), "lda < k");
    }

    [Test]
    public void EveryOpFamilyIsOnCuda() => Assert.That(CudaBackend.MissingOpFamilies, Is.Empty);

    // ---- autograd on the backend ----------------------------------------------------------------------------------

    [Test]
    public void AutogradLinearGeluMeanMatchesTheCpu()
    {
        var x = new float[5 * 7];
        var w = new float[3 * 7];
        var b = new float[3];
        Philox.Normal(3, 1, 0, x);
        Philox.Normal(3, 2, 0, w);
        Philox.Normal(3, 3, 0, b);
        var (lossCpu, gradsCpu) = Step(cpu, x, w, b);
        var (lossCuda, gradsCuda) = Step(Cuda, x, w, b);
        Assert.That(lossCuda, Is.EqualTo(lossCpu).Within(1e-4).Percent);
        string[] names = ["x", "weight", "bias"];
        for (int i = 0; i < 3; i++)
            BackendEquivalence.AssertClose(gradsCpu[i], gradsCuda[i], Tolerance.Close(1e-5, 1e-7), $"d loss / d {names[i]}");
    }

    /// <summary>loss = mean(gelu(x W^T + b)) and its gradients, with a non-zero gradient already in x (accumulation).</summary>
    private static (double Loss, double[][] Grads) Step(IBackend backend, float[] x, float[] w, float[] b)
    {
        using var tape = new Tape();
        using var tx = Tensor.FromArray(backend, x, 5, 7).AsParameter("x");
        using var tw = Tensor.FromArray(backend, w, 3, 7).AsParameter("weight");
        using var tb = Tensor.FromArray(backend, b, 3).AsParameter("bias");
        var loss = Mean(Gelu(Linear(tx, tw, tb)));
        tape.Backward(loss);
        double value = loss.Item();
        tape.Reset();
        tape.Backward(Mean(Gelu(Linear(tx, tw, tb)))); // a second step: the leaves' gradients add up
        return (value, [.. new[] { tx, tw, tb }.Select(t => t.Grad!.ToFloatArray().Select(v => (double)v).ToArray())]);
    }

    private CudaBuffer Upload(float[] values)
    {
        var buffer = (CudaBuffer)Cuda.Allocate(DType.F32, values.Length);
        Cuda.Upload<float>(values, buffer);
        return buffer;
    }
}

/// <summary>The equivalence tests on the emulated device (librepa_cuda_emu.so): every CI run.</summary>
[TestFixture, Category("EmulatedCuda"), NonParallelizable]
public sealed class EmulatedCudaBackendTests : CudaBackendTests
{
    private protected override CudaBackend OpenBackend() => EmulatedCuda.Open();
}

/// <summary>The same equivalence tests on a real GPU, when this machine has one (else ignored, saying why).</summary>
[TestFixture, Category("Gpu"), NonParallelizable]
public sealed class GpuCudaBackendTests : CudaBackendTests
{
    private protected override CudaBackend OpenBackend()
    {
        if (CudaLibraries.IsEmulated)
            Assert.Ignore("This test process bound the CUDA emulator first; run the GPU tests apart: dotnet test --filter Category=Gpu.");
        var probe = CudaLibraries.Probe();
        if (!probe.IsAvailable) Assert.Ignore($"no CUDA device: {probe.Message}");
        return CudaBackend.Create();
    }
}
