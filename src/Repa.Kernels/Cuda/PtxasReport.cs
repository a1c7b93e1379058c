using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Repa.Kernels.Cuda;

/// <summary>What ptxas reported for one kernel on one real architecture.</summary>
internal sealed record PtxasEntry(string File, string Kernel, string Target, int Registers, int SharedBytes, int StackBytes,
    int SpillStoreBytes, int SpillLoadBytes)
{
    public bool Spills => SpillStoreBytes > 0 || SpillLoadBytes > 0;
}

/// <summary>
/// Assembles the PTX of every kernel source with ptxas (CUDA 11.8's, put in ~/.cache/repa/cuda/bin by
/// scripts/install-cuda-tools.sh) for sm_80 and sm_90, and renders registers, spills and shared memory per kernel as
/// the markdown table checked in as docs/notes/kernels-ptxas.md. Offline tooling for the tests and `ptxas-report`.
/// </summary>
internal static partial class PtxasReport
{
    /// <summary>(virtual architecture NVRTC compiles for, real architecture ptxas assembles for).</summary>
    public static readonly (string Virtual, string Real)[] Targets = [("compute_80", "sm_80"), ("compute_90", "sm_90")];

    /// <summary>Where the table lives, relative to the repository root.</summary>
    public const string TablePath = "docs/notes/kernels-ptxas.md";

    /// <summary>The command that regenerates the table (run at the repository root).</summary>
    public const string Command = "dotnet run --project src/Repa.Bench -c Release -- ptxas-report " + TablePath;

    public const string InstallHint = "run scripts/install-cuda-tools.sh (it installs NVRTC and puts ptxas in ~/.cache/repa/cuda/bin)";

    /// <summary>~/.cache/repa/cuda/bin/ptxas, where the setup puts it.</summary>
    public static string PtxasPath => Path.Combine(KernelCompiler.RepaCacheDirectory, "cuda", "bin", OperatingSystem.IsWindows() ? "ptxas.exe" : "ptxas");

    /// <summary>ptxas's release line, e.g. "release 11.8, V11.8.89".</summary>
    public static string PtxasVersion()
    {
        var (code, output) = RunPtxas(["--version"]);
        var match = ReleasePattern().Match(output);
        if (code != 0 || !match.Success) throw new InvalidOperationException($"{PtxasPath} --version did not report a release (exit code {code}).");
        return match.Groups[1].Value;
    }

    [GeneratedRegex(@"(release \d+\.\d+, V[\d.]+)")]
    private static partial Regex ReleasePattern();

    /// <summary>
    /// Assembles one compiled kernel source for <paramref name="target"/> (sm_XX) with -v and returns one entry per
    /// kernel, in the PTX's order; <paramref name="warnings"/> collects ptxas's warning lines (expected: none).
    /// </summary>
    public static IReadOnlyList<PtxasEntry> Analyse(CompiledKernel kernel, string target, out IReadOnlyList<string> warnings)
    {
        string work = Path.Combine(Path.GetTempPath(), $"repa-ptxas-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(work);
        try
        {
            string ptx = Path.Combine(work, Path.GetFileNameWithoutExtension(kernel.File) + ".ptx");
            File.WriteAllText(ptx, kernel.Ptx);
            var (code, output) = RunPtxas(["-v", "--warn-on-spills", $"--gpu-name={target}", "--output-file", Path.Combine(work, "out.cubin"), ptx]);
            if (code != 0)
                throw new InvalidOperationException($"ptxas could not assemble {kernel.File} for {target} (exit code {code}):{Environment.NewLine}{output.TrimEnd()}");
            warnings = output.Split('\n').Select(l => l.TrimEnd()).Where(l => l.Contains("warning", StringComparison.OrdinalIgnoreCase)).ToArray();
            return Parse(kernel, target, output);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static List<PtxasEntry> Parse(CompiledKernel kernel, string target, string output)
    {
        var entries = new List<PtxasEntry>();
        string? current = null;
        int stack = 0, spillStores = 0, spillLoads = 0;
        foreach (var raw in output.Split('\n'))
        {
            string line = raw.Trim();
            if (EntryLine().Match(line) is { Success: true } entry)
            {
                current = entry.Groups[1].Value;
                stack = spillStores = spillLoads = 0;
            }
            else if (current != null && FrameLine().Match(line) is { Success: true } frame)
            {
                stack = Int(frame.Groups[1]);
                spillStores = Int(frame.Groups[2]);
                spillLoads = Int(frame.Groups[3]);
            }
            else if (current != null && UsedLine().Match(line) is { Success: true } used)
            {
                var smem = SmemPart().Match(line);
                entries.Add(new PtxasEntry(kernel.File, current, target, Int(used.Groups[1]), smem.Success ? Int(smem.Groups[1]) : 0,
                    stack, spillStores, spillLoads));
                current = null;
            }
        }
        var missing = kernel.EntryPoints.Except(entries.Select(e => e.Kernel)).ToArray();
        if (missing.Length > 0)
            throw new InvalidOperationException($"ptxas -v reported nothing for {string.Join(", ", missing)} of {kernel.File} on {target}:{Environment.NewLine}{output.TrimEnd()}");
        // Rows in source order (NVRTC emits the entries in reverse).
        string source = KernelCompiler.KernelFiles.Contains(kernel.File) ? KernelCompiler.ReadSource(kernel.File) : "";
        var ptxOrder = kernel.EntryPoints.ToList();
        return entries.OrderBy(e => SourcePosition(source, e.Kernel)).ThenBy(e => ptxOrder.IndexOf(e.Kernel)).ToList();
    }

    private static int SourcePosition(string source, string kernel)
    {
        var match = Regex.Match(source, $@"__global__\s+void\s+{Regex.Escape(kernel)}\s*\(");
        return match.Success ? match.Index : int.MaxValue;
    }

    private static int Int(Group g) => int.Parse(g.Value, CultureInfo.InvariantCulture);

    [GeneratedRegex(@"Compiling entry function '([^']+)' for '")]
    private static partial Regex EntryLine();

    [GeneratedRegex(@"^(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")]
    private static partial Regex FrameLine();

    [GeneratedRegex(@"Used (\d+) registers")]
    private static partial Regex UsedLine();

    [GeneratedRegex(@"(\d+) bytes smem")]
    private static partial Regex SmemPart();

    /// <summary>Compiles every kernel source for both targets (through <paramref name="compiler"/>'s cache), runs ptxas
    /// on each and renders the table. Throws with NVRTC's log if a source has warnings or errors.</summary>
    public static (string Table, IReadOnlyList<PtxasEntry> Entries, IReadOnlyList<string> Warnings) Generate(KernelCompiler compiler)
    {
        var entries = new List<PtxasEntry>();
        var warnings = new List<string>();
        foreach (var file in KernelCompiler.KernelFiles)
            foreach (var (virtualArch, realArch) in Targets)
            {
                var compiled = compiler.Compile(file, virtualArch);
                if (compiled.Log.Length > 0) warnings.Add($"NVRTC on {file} for {virtualArch}: {compiled.Log.Trim()}");
                entries.AddRange(Analyse(compiled, realArch, out var ptxasWarnings));
                warnings.AddRange(ptxasWarnings.Select(w => $"ptxas on {file} for {realArch}: {w}"));
            }
        return (Render(entries), entries, warnings);
    }

    /// <summary>The markdown table: one row per kernel, the two targets side by side.</summary>
    public static string Render(IReadOnlyList<PtxasEntry> entries)
    {
        var (major, minor) = KernelCompiler.NvrtcVersion;
        var text = new StringBuilder();
        text.Append("# Kernels: registers, spills and shared memory (ptxas)\n\n");
        text.Append($"Generated by `{Command}` from the PTX that NVRTC {major}.{minor} makes for ");
        text.Append(string.Join(" / ", Targets.Select(t => t.Virtual)));
        text.Append($" (default options), assembled by ptxas ({PtxasVersion()}) for {string.Join(" / ", Targets.Select(t => t.Real))}. ");
        text.Append("The `Nvrtc` tests regenerate it and fail when this file is stale or when any kernel spills. ");
        text.Append("regs: registers per thread; smem: static shared memory in bytes; stack: stack frame in bytes; ");
        text.Append("spills: spill stores / loads in bytes.\n\n");
        text.Append("| file | kernel |");
        foreach (var (_, real) in Targets) text.Append($" {real} regs | {real} smem | {real} stack | {real} spills |");
        text.Append('\n').Append("| --- | --- |");
        foreach (var _ in Targets) text.Append(" ---: | ---: | ---: | ---: |");
        text.Append('\n');
        var byKernel = entries.GroupBy(e => (e.File, e.Kernel));
        foreach (var group in byKernel)
        {
            text.Append($"| {group.Key.File} | {group.Key.Kernel} |");
            foreach (var (_, real) in Targets)
            {
                var e = group.SingleOrDefault(x => x.Target == real);
                text.Append(e == null ? " - | - | - | - |" : $" {e.Registers} | {e.SharedBytes} | {e.StackBytes} | {e.SpillStoreBytes} / {e.SpillLoadBytes} |");
            }
            text.Append('\n');
        }
        return text.ToString();
    }

    private static (int Code, string Output) RunPtxas(IEnumerable<string> arguments)
    {
        if (!File.Exists(PtxasPath)) throw new FileNotFoundException($"ptxas was not found at {PtxasPath}; {InstallHint}.", PtxasPath);
        var start = new ProcessStartInfo(PtxasPath) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{PtxasPath} did not start.");
        var error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + error.Result);
    }
}
