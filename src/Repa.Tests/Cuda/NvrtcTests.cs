using System.Text.RegularExpressions;
using NUnit.Framework;
using Repa.Kernels.Cuda;

namespace Repa.Tests;

/// <summary>
/// The compile checks of the CUDA kernels, without a GPU: NVRTC compiles every kernels/*.cu for compute_80 and
/// compute_90 without a single warning, ptxas assembles the PTX for sm_80 and sm_90 without spills, and the checked-in
/// register table (docs/notes/kernels-ptxas.md) is current. NVRTC and ptxas are required (scripts/install-cuda-tools.sh,
/// run by ./test.sh): their absence fails these tests.
/// </summary>
[TestFixture, Category("Nvrtc")]
public sealed class NvrtcTests
{
    private static readonly string[] Architectures = ["compute_80", "compute_90"];

    [OneTimeSetUp]
    public void RequireTools()
    {
        try
        {
            _ = KernelCompiler.NvrtcVersion;
        }
        catch (DllNotFoundException e)
        {
            Assert.Fail(e.Message);
        }
        if (!File.Exists(PtxasReport.PtxasPath))
            Assert.Fail($"ptxas was not found at {PtxasReport.PtxasPath}; {PtxasReport.InstallHint}.");
    }

    [Test]
    public void NvrtcIsAtLeast11_8()
    {
        var (major, minor) = KernelCompiler.NvrtcVersion;
        TestContext.Out.WriteLine($"NVRTC {major}.{minor} from {CudaLibraries.BoundPath(CudaLibraries.Nvrtc)}");
        Assert.That(major * 10 + minor, Is.GreaterThanOrEqualTo(118), "PTX ISA 7.8 (sm_90) needs NVRTC 11.8 or newer");
    }

    [Test]
    public void KernelSourcesAreEmbedded()
    {
        Assert.That(KernelCompiler.KernelFiles, Does.Contain("elementwise.cu"));
        Assert.That(KernelCompiler.KernelFiles, Has.None.Contains("/"), "kernels/emu/ is not a kernel source");
        Assert.That(KernelCompiler.ReadSource("common.cuh"), Does.Contain("REPA_KERNEL"));
        var missing = Assert.Throws<FileNotFoundException>(() => KernelCompiler.ReadSource("nope.cu"))!;
        Assert.That(missing.Message, Does.Contain("kernels/nope.cu").And.Contain("elementwise.cu"));
    }

    /// <summary>Every kernel compiles warning-free, and its kernels are exactly the REPA_KERNEL(name) registrations of
    /// its source (the emulator finds kernels by those names).</summary>
    [Test]
    public void EveryKernelCompilesWithoutWarnings([ValueSource(nameof(Architectures))] string architecture)
    {
        var compiler = new KernelCompiler();
        foreach (var file in KernelCompiler.KernelFiles)
        {
            var kernel = compiler.Compile(file, architecture);
            TestContext.Out.WriteLine($"{file} {architecture}: {kernel.EntryPoints.Count} kernels, " +
                (kernel.FromCache ? "cached" : $"{kernel.CompileTime.TotalSeconds:F2} s in NVRTC"));
            Assert.That(kernel.Log, Is.Empty, $"NVRTC's log for {file} on {architecture}");
            Assert.That(kernel.Ptx, Does.Contain($".target sm_{architecture[^2..]}"));
            string source = KernelCompiler.ReadSource(file);
            var registered = Regex.Matches(source, @"^REPA_KERNEL\((\w+)\);", RegexOptions.Multiline).Select(m => m.Groups[1].Value);
            var global = Regex.Matches(source, @"extern ""C"" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(").Select(m => m.Groups[1].Value);
            Assert.That(kernel.EntryPoints, Is.Not.Empty, file);
            Assert.That(kernel.EntryPoints, Is.EquivalentTo(registered), $"{file}: every kernel is followed by REPA_KERNEL(name);");
            Assert.That(kernel.EntryPoints, Is.EquivalentTo(global), $"{file}: every kernel is extern \"C\" __global__ (unmangled)");
        }
    }

    /// <summary>ptxas reports every kernel for sm_80 and sm_90, none spills, ptxas has no warning, and the checked-in
    /// table is what `ptxas-report` makes today.</summary>
    [Test]
    public void PtxasTableIsCurrentAndNothingSpills()
    {
        var (table, entries, warnings) = PtxasReport.Generate(new KernelCompiler());
        Assert.That(warnings, Is.Empty);
        Assert.That(entries.Where(e => e.Spills).Select(e => $"{e.File}: {e.Kernel} on {e.Target}"), Is.Empty, "kernels that spill");
        Assert.That(entries.Select(e => e.Target).Distinct(), Is.EquivalentTo(new[] { "sm_80", "sm_90" }));
        Assert.That(entries.Where(e => e.Kernel == "sum_columns_f32").Select(e => e.SharedBytes), Is.All.EqualTo(8 * 33 * 4),
            "static shared memory of the column sum: float[8][33]");

        string path = Path.Combine(RepositoryRoot(), PtxasReport.TablePath);
        Assert.That(File.Exists(path), Is.True, $"{PtxasReport.TablePath} is missing; generate it with `{PtxasReport.Command}`");
        string checkedIn = File.ReadAllText(path);
        string tools = Regex.Match(table, @"NVRTC [\d.]+ .*?ptxas \([^)]*\)").Value;
        if (!checkedIn.Contains(tools, StringComparison.Ordinal))
            Assert.Ignore($"{PtxasReport.TablePath} was made with other tool versions than this machine's ({tools}); register counts differ between versions, so only the spill check ran (CI compares the table).");
        Assert.That(checkedIn, Is.EqualTo(table), $"{PtxasReport.TablePath} is stale; regenerate it with `{PtxasReport.Command}`");
    }

    [Test]
    public void CompileErrorsCarryNvrtcsLog()
    {
        var compiler = new KernelCompiler(cacheDirectory: null);
        const string broken = "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* y) { y[0] = undefined_name; }\n";
        var e = Assert.Throws<NvrtcCompileException>(() => compiler.CompileSource("broken.cu", broken, "compute_80"))!;
        Assert.That(e.Message, Does.StartWith("NVRTC could not compile broken.cu for compute_80:"));
        Assert.That(e.Log, Does.Contain("undefined_name").And.Contain("error"));
        Assert.That(e.Call, Is.EqualTo("nvrtcCompileProgram"));
        Assert.That(e.Status, Is.EqualTo("NVRTC_ERROR_COMPILATION"));
    }

    [Test]
    public void WarningsLandInTheLog()
    {
        var compiler = new KernelCompiler(cacheDirectory: null);
        const string noisy = "extern \"C\" __global__ void noisy(float* y) { int unused_value = 3; y[0] = 1.0f; }\n";
        var kernel = compiler.CompileSource("noisy.cu", noisy, "compute_80");
        Assert.That(kernel.Log, Does.Contain("unused_value"));
        Assert.That(kernel.EntryPoints, Is.EqualTo(new[] { "noisy" }));
    }

    /// <summary>The disk cache: a second compile reads the same PTX back; other options are another entry.</summary>
    [Test]
    public void TheDiskCacheIsKeyedBySourceAndOptions()
    {
        string cache = Path.Combine(Path.GetTempPath(), $"repa-kernel-cache-{Guid.NewGuid():N}");
        try
        {
            var compiler = new KernelCompiler(cache);
            const string source = "#include \"common.cuh\"\nextern \"C\" __global__ void half_it(float* y) { y[threadIdx.x] = repa::to_float(repa::from_float<repa::bf16>(y[threadIdx.x] * 0.5f)); }\nREPA_KERNEL(half_it);\n";
            var first = compiler.CompileSource("half_it.cu", source, "compute_80");
            var second = compiler.CompileSource("half_it.cu", source, "compute_80");
            Assert.That(first.FromCache, Is.False);
            Assert.That(second.FromCache, Is.True);
            Assert.That(second.Ptx, Is.EqualTo(first.Ptx));
            Assert.That(Directory.GetFiles(cache, "*.ptx"), Has.Length.EqualTo(1));

            var lines = compiler.CompileSource("half_it.cu", source, "compute_80", new KernelCompileOptions { LineInfo = true });
            Assert.That(lines.FromCache, Is.False, "-lineinfo is part of the key");
            Assert.That(lines.Options, Does.Contain("--generate-line-info"));
            Assert.That(lines.Ptx, Does.Contain(".loc"), "line info in the PTX");
            var other = compiler.CompileSource("half_it.cu", source.Replace("0.5f", "0.25f"), "compute_80");
            Assert.That(other.FromCache, Is.False, "the source is part of the key");
            Assert.That(Directory.GetFiles(cache, "*.ptx"), Has.Length.EqualTo(3));
        }
        finally
        {
            if (Directory.Exists(cache)) Directory.Delete(cache, recursive: true);
        }
    }

    [Test]
    public void DefaultOptionsAreIeeeWithoutLineInfo()
    {
        var options = KernelCompiler.BuildOptions("compute_90");
        Assert.That(options, Is.EqualTo(new[] { "--gpu-architecture=compute_90", "--std=c++17", "--device-as-default-execution-space" }));
        Assert.That(KernelCompiler.BuildOptions("sm_80", new KernelCompileOptions { FastMath = true }), Does.Contain("--use_fast_math"));
        var e = Assert.Throws<ArgumentException>(() => KernelCompiler.BuildOptions("ampere"))!;
        Assert.That(e.Message, Does.Contain("'ampere'").And.Contain("compute_80"));
    }

    /// <summary>A real architecture also yields a cubin (NVRTC 11.1+).</summary>
    [Test]
    public void RealArchitecturesYieldACubin()
    {
        var kernel = new KernelCompiler(cacheDirectory: null).CompileSource("tiny.cu",
            "extern \"C\" __global__ void tiny(float* y) { y[threadIdx.x] = 2.0f; }\n", "sm_80");
        Assert.That(kernel.Cubin, Is.Not.Null);
        Assert.That(kernel.Cubin![..4], Is.EqualTo(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }), "a cubin is an ELF image");
    }

    internal static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Repa.sln")) && Directory.Exists(Path.Combine(dir.FullName, "kernels")))
                return dir.FullName;
        Assert.Fail($"No Repa.sln with a kernels/ folder above {AppContext.BaseDirectory}: the checked-in tables (ptxas, step estimate) need the source tree.");
        return "";
    }
}
