using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Kernels.Ilgpu;
using Repa.Tests.Cuda;

namespace Repa.Tests.Ilgpu;

/// <summary>
/// The ILGPU backend against the CPU backend, member by member, on ILGPU's CPU accelerator (a simulated GPU with groups
/// of 4 threads and real barriers, so shared-memory staging and group reductions are exercised): forward and backward,
/// accumulating into non-zero gradients, absent inputs, on the awkward shapes of the CUDA suite (its case tables are
/// shared) in float32 through <see cref="BackendEquivalence"/>.
/// </summary>
[TestFixture, Category("Ilgpu"), NonParallelizable]
public sealed partial class IlgpuBackendTests
{
    private IlgpuBackend ilgpu = null!;
    private CpuBackend cpu = null!;
    private BackendEquivalence eq = null!;

    private static readonly float F32Epsilon = MathF.Pow(2, -23);

    /// <summary>fp32 results of another summation order: relative, plus absolute for values that cancel.</summary>
    private static readonly Tolerance F32Sums = Tolerance.Close(2e-5, 2e-5);

    [OneTimeSetUp]
    public void Open()
    {
        ilgpu = IlgpuBackend.CreateCpuSimulator();
        cpu = new CpuBackend(2);
    }

    [SetUp]
    public void NewHarness() => eq = new BackendEquivalence(ilgpu, cpu);

    [TearDown]
    public void FreeBuffers() => eq.Dispose();

    [OneTimeTearDown]
    public void Close()
    {
        ilgpu?.Dispose();
        cpu?.Dispose();
    }

    // ---- device, memory -------------------------------------------------------------------------------------------

    [Test]
    public void DescribesItsDeviceAndDtypes()
    {
        Assert.That(ilgpu.Name, Is.EqualTo("ilgpu"));
        Assert.That(ilgpu.IsSimulator, Is.True);
        Assert.That(ilgpu.Description, Does.StartWith("ilgpu: ").And.Contain("simulator, for tests"));
        Assert.That(ilgpu.Supports(DType.F32) && ilgpu.Supports(DType.I32), Is.True);
        Assert.That(ilgpu.Supports(DType.F64) || ilgpu.Supports(DType.BF16), Is.False, "float64 is storage only");
        Assert.Throws<NotSupportedException>(() => ilgpu.Allocate(DType.BF16, 4));
        TestContext.Out.WriteLine(ilgpu.Description);
    }

    [Test]
    public void MemoryRoundTripsAndRefusesForeignBuffers()
    {
        float[] values = [1.5f, -2.25f, float.NaN, float.PositiveInfinity, 3e-39f, -0f, 65504f, 7];
        using var f32 = ilgpu.Allocate(DType.F32, 11);
        ilgpu.Upload<float>(values, f32, 3);
        var back = new float[8];
        ilgpu.Download<float>(f32, back, 3);
        Assert.That(back.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(values.Select(BitConverter.SingleToInt32Bits)));
        using var i32 = ilgpu.Allocate(DType.I32, 4);
        ilgpu.Upload<int>([int.MinValue, -1, 0, int.MaxValue], i32);
        var ints = new int[4];
        ilgpu.Download<int>(i32, ints);
        Assert.That(ints, Is.EqualTo(new[] { int.MinValue, -1, 0, int.MaxValue }));
        using (var empty = ilgpu.Allocate(DType.F32, 0))
        {
            ilgpu.Upload<float>([], empty);
            ilgpu.Fill(empty, 0, 0, 1);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.Upload<float>(values, f32, 4), "past the end");
        Assert.Throws<ArgumentException>(() => ilgpu.Upload<double>([1.0], f32), "element size");
        using var host = cpu.Allocate(DType.F32, 4);
        var e = Assert.Throws<ArgumentException>(() => ilgpu.Copy(host, 0, f32, 0, 4))!;
        Assert.That(e.Message, Does.Contain("does not belong to this ilgpu backend"));
        Assert.Throws<NotSupportedException>(() => ilgpu.Convert(f32, i32, 4));
    }

    [Test]
    public void CopyAndFillMatchTheCpu([Values(DType.F32, DType.I32, DType.F64)] DType dtype) => MemberCases.CopyAndFill(eq, dtype);

    [Test]
    public void ConversionsMatchTheCpu()
    {
        var ints = eq.Ints(16777217, -16777219, int.MaxValue, int.MinValue, 0, -7, 123456789);
        var floats = eq.Values(DType.F32, new float[7]);
        var doubles = eq.Values(DType.F64, new float[7]);
        var wide = eq.Values(DType.F64, new float[37]);
        var narrow = eq.Values(DType.F32, new float[37]);
        var f32 = eq.Random(DType.F32, 37, scale: 1e5);
        eq.Run((be, on) =>
        {
            be.Convert(on(ints), on(floats), 7);
            be.Convert(on(ints), on(doubles), 7);
            be.Convert(on(f32), on(wide), 37);
            be.Convert(on(wide), on(narrow), 37);
        });
        eq.AssertClose(floats, Tolerance.Bits, "int32 -> float32 rounds to nearest even");
        eq.AssertClose(doubles, Tolerance.Bits, "int32 -> float64");
        eq.AssertClose(wide, Tolerance.Bits, "float32 -> float64");
        eq.AssertClose(narrow, Tolerance.Bits, "float64 -> float32");
    }

    [Test]
    public void ThePoolRecyclesBuffers()
    {
        long before = ilgpu.AllocationCount;
        var first = ilgpu.Pool.Rent(DType.F32, 1000);
        ilgpu.Pool.Return(first);
        Assert.That(ilgpu.Pool.Rent(DType.F32, 1000), Is.SameAs(first));
        Assert.That(ilgpu.AllocationCount, Is.EqualTo(before + 1));
        ilgpu.Pool.Return(first);
        ilgpu.Pool.Trim();
        Assert.That(first.IsDisposed, Is.True);
    }

    [Test]
    public void EveryMemberIsImplemented()
    {
        // Every IBackend member is a real method of the class except LinearWeightBackward, the interface's documented
        // composition (the dW GEMM and the bias column sum).
        var implemented = typeof(IlgpuBackend).GetInterfaceMap(typeof(IBackend)).TargetMethods;
        var own = implemented.Where(m => m.DeclaringType == typeof(IlgpuBackend)).Select(m => m.Name).ToHashSet();
        var composed = implemented.Where(m => m.DeclaringType != typeof(IlgpuBackend)).Select(m => m.Name).ToArray();
        Assert.That(composed, Is.EquivalentTo(new[] { "LinearWeightBackward" }));
        Assert.That(own, Does.Contain("AttentionBackward").And.Contain("DiffusionVlbBackward").And.Contain("AdamWStep"));
    }

    // ---- element-wise ---------------------------------------------------------------------------------------------

    [Test]
    public void ActivationsMatchTheCpu([Values] Activation activation, [Values(1, 1000, 4099)] int n)
    {
        var x = eq.Random(DType.F32, n, scale: 3);
        var y = eq.Full(DType.F32, n, float.NaN);
        var dy = eq.Random(DType.F32, n);
        var dx = eq.Random(DType.F32, n);
        eq.Run((be, on) =>
        {
            be.ActivationForward(activation, on(x), on(y), n);
            be.ActivationBackward(activation, on(x), on(dy), on(dx), n);
        });
        // tanh through exp here, the CPU's own fast tanh/exp there: a few float32 ulps.
        var tolerance = Tolerance.Close(32 * F32Epsilon, 1e-5);
        eq.AssertClose(y, tolerance, $"{activation} forward");
        eq.AssertClose(dx, tolerance, $"{activation} backward (accumulated)");
    }

    [Test]
    public void BinaryOpsMatchTheCpuExactly([Values] BinaryOp op) => MemberCases.BinaryOps(eq, op, DType.F32);

    [Test]
    public void AxpbyAndSumsMatchTheCpu([Values(0.0, 1.0, -0.75)] double beta)
    {
        var x = eq.Random(DType.F32, 777);
        var y = beta == 0 ? eq.Full(DType.F32, 777, float.NaN) : eq.Random(DType.F32, 777);
        eq.Run((be, on) => be.Axpby(on(x), on(y), 777, 1.25, beta));
        eq.AssertClose(y, Tolerance.Close(2 * F32Epsilon, 1e-7), $"axpby beta {beta}");
        foreach (var (outer, reduce, inner) in CudaBackendTests.SumCases)
        {
            var sx = eq.Random(DType.F32, (long)outer * reduce * inner);
            var sy = beta == 0 ? eq.Full(DType.F32, (long)outer * inner, float.NaN) : eq.Random(DType.F32, (long)outer * inner);
            eq.Run((be, on) => be.Sum(on(sx), on(sy), outer, reduce, inner, 0.5, beta));
            eq.AssertClose(sy, Tolerance.Close(8 * F32Epsilon, 4 * F32Epsilon * Math.Sqrt(reduce + 1)), $"sum [{outer}, {reduce}, {inner}], beta {beta}");
        }
    }

    [Test]
    public void PermutesMatchTheCpu([Values(DType.F32, DType.I32)] DType dtype, [Values(0.0, 1.0, 0.5)] double beta) =>
        MemberCases.Permutes(eq, dtype, beta);

    [Test]
    public void CopyRowsMatchesTheCpu([Values(DType.F32, DType.I32)] DType dtype, [Values(0.0, 1.0, 2.0)] double beta) =>
        MemberCases.CopyRows(eq, dtype, beta);

    // ---- GEMM -----------------------------------------------------------------------------------------------------

    private static Tolerance GemmTolerance(int k) => Tolerance.Close(16 * F32Epsilon, 4 * F32Epsilon * k);

    [Test]
    public void GemmMatchesTheCpuForEveryTransposePair([Values] bool transA, [Values] bool transB)
    {
        foreach (var (m, n, k) in CudaBackendTests.GemmSizes.Append((70, 45, 130)))
        {
            int lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 1, ldc = n + 2;
            int rowsA = transA ? k : m, rowsB = transB ? n : k;
            const int offA = 5, offB = 2, offC = 7;
            var a = eq.Random(DType.F32, offA + (long)rowsA * lda);
            var b = eq.Random(DType.F32, offB + (long)rowsB * ldb);
            var c = eq.Random(DType.F32, offC + (long)m * ldc);
            eq.Run((be, on) => be.Gemm(transA, transB, m, n, k, 0.75, on(a), offA, lda, 0, on(b), offB, ldb, 0, -0.5, on(c), offC, ldc, 0));
            eq.AssertClose(c, GemmTolerance(k), $"gemm {(transA ? "T" : "N")}{(transB ? "T" : "N")} {m}x{n}x{k}");
        }
    }

    [Test]
    public void BatchedGemmBroadcastsAndScales()
    {
        const int batch = 3, m = 6, n = 5, k = 7;
        var a = eq.Random(DType.F32, m * k);
        var b = eq.Random(DType.F32, batch * (k * n + 4));
        var c = eq.Full(DType.F32, batch * m * n, float.NaN);
        eq.Run((be, on) => be.Gemm(false, true, m, n, k, 1, on(a), 0, k, 0, on(b), 0, k, k * n + 4, 0, on(c), 0, n, m * n, batch));
        eq.AssertClose(c, GemmTolerance(k), "A broadcast, beta 0 over NaN");
        var c3 = eq.Full(DType.F32, m * n, float.NaN);
        var c4 = eq.Random(DType.F32, m * n);
        eq.Run((be, on) =>
        {
            be.Gemm(false, false, m, n, 0, 1, on(a), 0, 0, 0, on(b), 0, n, 0, 0, on(c3), 0, n, 0);
            be.Gemm(false, false, m, n, k, 0, on(a), 0, k, 0, on(b), 0, n, 0, 2.5, on(c4), 0, n, 0);
        });
        eq.AssertClose(c3, Tolerance.Bits, "k = 0, beta 0");
        eq.AssertClose(c4, Tolerance.Bits, "alpha 0, beta 2.5");
        using var small = ilgpu.Allocate(DType.F32, 12);
        using var out24 = ilgpu.Allocate(DType.F32, 24);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => ilgpu.Gemm(false, false, 4, 4, 4, 1, small, 0, 4, 0, small, 0, 4, 0, 0, out24, 0, 4, 0))!;
        Assert.That(e.Message, Does.Contain("outside"));
        Assert.Throws<ArgumentException>(() => ilgpu.Gemm(false, false, 2, 2, 2, 1, small, 0, 2, 4, small, 0, 2, 4, 0, out24, 0, 2, 0, batch: 2), "C stride 0 with a batch");
    }

    [Test]
    public void LinearLayersMatchTheCpu([Values(null, Activation.Gelu, Activation.Silu)] Activation? activation, [Values] bool withBias)
    {
        foreach (var (rows, inF, outF) in CudaBackendTests.LinearSizes)
        {
            var x = eq.Random(DType.F32, (long)rows * inF);
            var w = eq.Random(DType.F32, (long)outF * inF);
            var b = eq.Random(DType.F32, outF);
            var y = eq.Full(DType.F32, (long)rows * outF, float.NaN);
            var pre = eq.Full(DType.F32, (long)rows * outF, float.NaN);
            var dy = eq.Random(DType.F32, (long)rows * outF);
            var dw = eq.Random(DType.F32, (long)outF * inF);
            var db = eq.Random(DType.F32, outF);
            eq.Run((be, on) =>
            {
                be.LinearForward(on(x), on(w), withBias ? on(b) : null, on(y), activation, activation != null ? on(pre) : null, rows, inF, outF);
                be.LinearWeightBackward(on(dy), on(x), on(dw), on(db), rows, inF, outF);
            });
            var tolerance = Tolerance.Close(64 * F32Epsilon, 8 * F32Epsilon * inF);
            eq.AssertClose(y, tolerance, $"linear {rows}x{inF}->{outF} {activation}, bias {withBias}");
            if (activation != null) eq.AssertClose(pre, tolerance, "pre-activation");
            eq.AssertClose(dw, GemmTolerance(rows), "dW");
            eq.AssertClose(db, GemmTolerance(rows), "db");
        }
    }
}
