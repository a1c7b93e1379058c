using System.Globalization;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Reports;
using BenchmarkDotNet.Running;
using Repa.Kernels;
using Repa.Kernels.Cpu;

namespace Repa.Bench;

/// <summary>A benchmark class that knows how much work each of its methods does, for the throughput columns.</summary>
public interface IWork
{
    /// <summary>Floating-point operations and bytes moved by one call of <paramref name="method"/>.</summary>
    (double flops, double bytes) Work(string method);
}

/// <summary>GFLOP/s or GB/s from the median time: instantiates the benchmark with the case's parameters and asks it.</summary>
public sealed class ThroughputColumn(bool flops) : IColumn
{
    public string Id => flops ? "GFLOPs" : "GBps";
    public string ColumnName => flops ? "GFLOP/s" : "GB/s";
    public bool AlwaysShow => true;
    public ColumnCategory Category => ColumnCategory.Custom;
    public int PriorityInCategory => flops ? 0 : 1;
    public bool IsNumeric => true;
    public UnitType UnitType => UnitType.Dimensionless;
    public string Legend => flops ? "billions of floating-point operations per second at the median time" : "gigabytes moved per second at the median time";
    public bool IsDefault(Summary summary, BenchmarkCase benchmarkCase) => false;
    public bool IsAvailable(Summary summary) => true;
    public string GetValue(Summary summary, BenchmarkCase benchmarkCase) => GetValue(summary, benchmarkCase, SummaryStyle.Default);

    public string GetValue(Summary summary, BenchmarkCase benchmarkCase, SummaryStyle style)
    {
        var report = summary[benchmarkCase];
        if (report?.ResultStatistics is not { } stats) return "-";
        if (Activator.CreateInstance(benchmarkCase.Descriptor.Type) is not IWork work) return "-";
        foreach (var p in benchmarkCase.Parameters.Items)
            benchmarkCase.Descriptor.Type.GetProperty(p.Name)?.SetValue(work, p.Value);
        var (f, b) = work.Work(benchmarkCase.Descriptor.WorkloadMethod.Name);
        double amount = flops ? f : b;
        return amount <= 0 ? "-" : (amount / stats.Median).ToString("F1", CultureInfo.InvariantCulture); // per ns = G per s
    }
}

public sealed class ThroughputConfig : ManualConfig
{
    public ThroughputConfig()
    {
        AddColumn(new ThroughputColumn(flops: true), new ThroughputColumn(flops: false));
    }
}

/// <summary>
/// Every CPU kernel at the shapes of a SiT-S/2 block on a 32x32 latent (T = 256, D = 384, 6 heads of 64), batch 16,
/// fp32, forward and backward, on all cores. Work: FLOPs for GEMM-like kernels, bytes read + written for the rest.
/// </summary>
[Config(typeof(ThroughputConfig))]
public class OpBenchmarks : IWork, IDisposable
{
    private const int Batch = 16, Tokens = 256, Dim = 384, Heads = 6, HeadDim = 64;
    private const int Rows = Batch * Tokens;
    private readonly CpuBackend be = new();
    private DeviceBuffer x = null!, y = null!, dy = null!, dx = null!, shift = null!, scale = null!, dshift = null!, dscale = null!;
    private DeviceBuffer mean = null!, rstd = null!, qkv = null!, dqkv = null!, att = null!, datt = null!, lse = null!, loss = null!, dloss = null!;
    private DeviceBuffer hidden = null!, dhidden = null!;

    private DeviceBuffer Random(long n, int seed)
    {
        var rng = new Random(seed);
        var data = new float[n];
        for (long i = 0; i < n; i++) data[i] = (float)(rng.NextDouble() * 2 - 1);
        var b = be.Allocate(DType.F32, n);
        be.Upload<float>(data, b);
        return b;
    }

    [GlobalSetup]
    public void Setup()
    {
        x = Random(Rows * Dim, 1); y = Random(Rows * Dim, 2); dy = Random(Rows * Dim, 3); dx = Random(Rows * Dim, 4);
        shift = Random(Batch * Dim, 5); scale = Random(Batch * Dim, 6); dshift = Random(Batch * Dim, 7); dscale = Random(Batch * Dim, 8);
        mean = Random(Rows, 9); rstd = Random(Rows, 10);
        qkv = Random(Rows * 3 * Dim, 11); dqkv = Random(Rows * 3 * Dim, 12); att = Random(Rows * Dim, 13); datt = Random(Rows * Dim, 14);
        lse = Random(Batch * Heads * Tokens, 15); loss = Random(Batch, 16); dloss = Random(Batch, 17);
        hidden = Random(Rows * 4 * Dim, 18); dhidden = Random(Rows * 4 * Dim, 19);
        be.LayerNormForward(x, null, null, shift, scale, y, mean, rstd, Rows, Dim, Tokens, 1e-6);
        be.AttentionForward(qkv, att, lse, Batch, Tokens, Heads, HeadDim, 0.125);
    }

    public (double flops, double bytes) Work(string method)
    {
        const double act = (double)Rows * Dim * 4, wide = act * 4;
        double attention = 4.0 * Batch * Heads * Tokens * Tokens * HeadDim;
        return method switch
        {
            nameof(LayerNormModulateForward) => (0, 2 * act),
            nameof(LayerNormModulateBackward) => (0, 3 * act),
            nameof(GatedResidualForward) => (0, 3 * act),
            nameof(GatedResidualBackward) => (0, 5 * act),
            nameof(GeluForward) => (0, 2 * wide),
            nameof(GeluBackward) => (0, 3 * wide),
            nameof(AttentionForward) => (attention, 0),
            nameof(AttentionBackward) => (2.5 * attention, 0), // recompute QK^T + four products
            nameof(CosineLossForward) => (0, 2 * act),
            nameof(CosineLossBackward) => (0, 4 * act),
            nameof(MseForward) => (0, 2 * act),
            nameof(QkvLinearForward) => (2.0 * Rows * Dim * 3 * Dim, 0),
            _ => (0, 0),
        };
    }

    [Benchmark] public void LayerNormModulateForward() => be.LayerNormForward(x, null, null, shift, scale, y, mean, rstd, Rows, Dim, Tokens, 1e-6);
    [Benchmark] public void LayerNormModulateBackward() => be.LayerNormBackward(x, null, null, scale, mean, rstd, dy, dx, null, null, dshift, dscale, Rows, Dim, Tokens);
    [Benchmark] public void GatedResidualForward() => be.GatedResidualForward(x, y, scale, dx, Rows, Dim, Tokens);
    [Benchmark] public void GatedResidualBackward() => be.GatedResidualBackward(y, scale, dy, dx, x, dshift, Rows, Dim, Tokens);
    [Benchmark] public void GeluForward() => be.ActivationForward(Activation.Gelu, hidden, dhidden, (long)Rows * 4 * Dim);
    [Benchmark] public void GeluBackward() => be.ActivationBackward(Activation.Gelu, hidden, dhidden, dhidden, (long)Rows * 4 * Dim);
    [Benchmark] public void AttentionForward() => be.AttentionForward(qkv, att, lse, Batch, Tokens, Heads, HeadDim, 0.125);
    [Benchmark] public void AttentionBackward() => be.AttentionBackward(qkv, att, datt, lse, dqkv, Batch, Tokens, Heads, HeadDim, 0.125);
    [Benchmark] public void CosineLossForward() => be.CosineAlignmentForward(x, y, loss, Batch, Tokens, Dim, 1e-12);
    [Benchmark] public void CosineLossBackward() => be.CosineAlignmentBackward(x, y, dloss, dx, null, Batch, Tokens, Dim, 1e-12);
    [Benchmark] public void MseForward() => be.MseForward(x, y, loss, Batch, (long)Tokens * Dim);
    [Benchmark] public void QkvLinearForward() => be.Gemm(false, true, Rows, 3 * Dim, Dim, 1, x, 0, Dim, 0, qkv, 0, Dim, 0, 0, dqkv, 0, 3 * Dim, 0);

    public void Dispose() => be.Dispose();
}
