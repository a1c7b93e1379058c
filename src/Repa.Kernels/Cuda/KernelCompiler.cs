using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Repa.Kernels.Cuda.Native;

namespace Repa.Kernels.Cuda;

/// <summary>Choices that change the generated code (and so the cache key).</summary>
public sealed record KernelCompileOptions
{
    /// <summary>The defaults: no line info, IEEE maths (no --use_fast_math).</summary>
    public static KernelCompileOptions Default { get; } = new();

    /// <summary>-lineinfo: source lines in the PTX for profilers (off by default).</summary>
    public bool LineInfo { get; init; }

    /// <summary>--use_fast_math: approximate division, sqrt and transcendentals, flush denormals (off by default).</summary>
    public bool FastMath { get; init; }
}

/// <summary>The result of compiling one kernel source for one architecture.</summary>
public sealed class CompiledKernel
{
    internal CompiledKernel(string file, string architecture, string ptx, byte[]? cubin, string log,
        IReadOnlyList<string> options, bool fromCache, TimeSpan compileTime)
    {
        File = file;
        Architecture = architecture;
        Ptx = ptx;
        Cubin = cubin;
        Log = log;
        Options = options;
        FromCache = fromCache;
        CompileTime = compileTime;
        EntryPoints = KernelCompiler.EntryPoints(ptx);
    }

    /// <summary>The source under kernels/, e.g. "elementwise.cu".</summary>
    public string File { get; }

    /// <summary>compute_XX (PTX only) or sm_XX (PTX and a cubin).</summary>
    public string Architecture { get; }

    /// <summary>The PTX (what cuModuleLoadData takes, once NUL-terminated).</summary>
    public string Ptx { get; }

    /// <summary>The cubin for an sm_XX architecture; null for compute_XX.</summary>
    public byte[]? Cubin { get; }

    /// <summary>NVRTC's program log: empty for a clean compile, else its warnings.</summary>
    public string Log { get; }

    /// <summary>The NVRTC options used.</summary>
    public IReadOnlyList<string> Options { get; }

    /// <summary>The kernels (.entry names) in the PTX, in order.</summary>
    public IReadOnlyList<string> EntryPoints { get; }

    /// <summary>True when the PTX came from the disk cache.</summary>
    public bool FromCache { get; }

    /// <summary>Time spent in NVRTC (zero when cached).</summary>
    public TimeSpan CompileTime { get; }
}

/// <summary>
/// Compiles the kernel sources embedded in Repa.Kernels (kernels/**/*.cu, *.cuh, *.h as manifest resources
/// "kernels/&lt;path&gt;") with NVRTC, resolving #include "x.cuh" from the same resources, and caches the PTX on disk
/// keyed by the SHA-256 of (sources, options, NVRTC version): a kernel is compiled once per machine.
/// </summary>
public sealed partial class KernelCompiler
{
    private const string ResourcePrefix = "kernels/";
    private static readonly Assembly Sources = typeof(KernelCompiler).Assembly;
    private static readonly Lazy<(int Major, int Minor)> Version = new(Nvrtc.Version);

    /// <summary>Compiles with the disk cache in <see cref="DefaultCacheDirectory"/>.</summary>
    public KernelCompiler() : this(DefaultCacheDirectory) { }

    /// <summary>Compiles with the disk cache in <paramref name="cacheDirectory"/>; null turns the cache off.</summary>
    public KernelCompiler(string? cacheDirectory) => CacheDirectory = cacheDirectory;

    /// <summary>$XDG_CACHE_HOME/repa, else ~/.cache/repa (the setup scripts use the same folder).</summary>
    public static string RepaCacheDirectory =>
        Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache"), "repa");

    /// <summary>~/.cache/repa/kernels.</summary>
    public static string DefaultCacheDirectory => Path.Combine(RepaCacheDirectory, "kernels");

    /// <summary>Where compiled PTX is cached, or null for no cache.</summary>
    public string? CacheDirectory { get; }

    /// <summary>The NVRTC version, e.g. (11, 8). Loads NVRTC (DllNotFoundException with what to install if absent).</summary>
    public static (int Major, int Minor) NvrtcVersion => Version.Value;

    /// <summary>The kernel sources: every embedded kernels/*.cu at the top level (the emulator's folder excluded), sorted.</summary>
    public static IReadOnlyList<string> KernelFiles { get; } = Sources.GetManifestResourceNames()
        .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
        .Select(n => n[ResourcePrefix.Length..])
        .Where(n => !n.Contains('/'))
        .Order(StringComparer.Ordinal)
        .ToArray();

    /// <summary>The text of an embedded kernel source or header, by its path under kernels/ ("common.cuh").</summary>
    /// <exception cref="FileNotFoundException">No such embedded source.</exception>
    public static string ReadSource(string path)
    {
        using var stream = Sources.GetManifestResourceStream(ResourcePrefix + path)
            ?? throw new FileNotFoundException($"kernels/{path} is not embedded in Repa.Kernels (known: {string.Join(", ", KernelFiles)}).", path);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    /// <summary>The NVRTC options for an architecture: C++17, functions default to __device__, plus the chosen extras.</summary>
    public static IReadOnlyList<string> BuildOptions(string architecture, KernelCompileOptions? options = null)
    {
        options ??= KernelCompileOptions.Default;
        ValidateArchitecture(architecture);
        var list = new List<string> { $"--gpu-architecture={architecture}", "--std=c++17", "--device-as-default-execution-space" };
        if (options.LineInfo) list.Add("--generate-line-info");
        if (options.FastMath) list.Add("--use_fast_math");
        return list;
    }

    /// <summary>
    /// Compiles kernels/<paramref name="file"/> for <paramref name="architecture"/> (compute_80, compute_90: PTX;
    /// sm_80, sm_90: PTX and cubin). Warnings do not fail the compile; they are in <see cref="CompiledKernel.Log"/>.
    /// </summary>
    /// <exception cref="NvrtcCompileException">The source does not compile; the exception carries NVRTC's log.</exception>
    public CompiledKernel Compile(string file, string architecture, KernelCompileOptions? options = null) =>
        CompileSource(file, ReadSource(file), architecture, options);

    /// <summary>Compiles <paramref name="source"/> under the name <paramref name="file"/> (embedded headers resolve as
    /// for the real sources); for tests of the compiler itself.</summary>
    internal CompiledKernel CompileSource(string file, string source, string architecture, KernelCompileOptions? options = null)
    {
        var flags = BuildOptions(architecture, options);
        var headers = IncludedHeaders(source);
        string key = CacheKey(file, source, headers, flags);
        bool real = architecture.StartsWith("sm_", StringComparison.Ordinal);
        if (TryReadCache(key, real, out string? cachedPtx, out byte[]? cachedCubin, out string? cachedLog))
            return new CompiledKernel(file, architecture, cachedPtx!, cachedCubin, cachedLog!, flags, true, TimeSpan.Zero);

        var clock = Stopwatch.StartNew();
        var (ptx, cubin, log) = RunNvrtc(file, architecture, source, headers, flags, real);
        clock.Stop();
        WriteCache(key, ptx, cubin, log);
        return new CompiledKernel(file, architecture, ptx, cubin, log, flags, false, clock.Elapsed);
    }

    /// <summary>The .entry names of a PTX module, in order.</summary>
    public static IReadOnlyList<string> EntryPoints(string ptx) =>
        EntryPattern().Matches(ptx).Select(m => m.Groups[1].Value).ToArray();

    [GeneratedRegex(@"^\s*(?:\.visible\s+)?\.entry\s+([A-Za-z_$][\w$]*)\s*\(", RegexOptions.Multiline)]
    private static partial Regex EntryPattern();

    [GeneratedRegex(@"^\s*#\s*include\s*""([^""]+)""", RegexOptions.Multiline)]
    private static partial Regex IncludePattern();

    private static void ValidateArchitecture(string architecture)
    {
        if (!ArchitecturePattern().IsMatch(architecture))
            throw new ArgumentException($"'{architecture}' is not a GPU architecture NVRTC takes; use compute_XX or sm_XX (e.g. compute_80, sm_90).", nameof(architecture));
    }

    [GeneratedRegex(@"^(compute|sm)_\d{2,3}[a-z]?$")]
    private static partial Regex ArchitecturePattern();

    /// <summary>The embedded headers a source includes with #include "...", transitively, as (include name, text),
    /// sorted by name. Includes of headers that are not embedded are left to NVRTC (and fail there).</summary>
    private static List<(string Name, string Text)> IncludedHeaders(string source)
    {
        var found = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var pending = new Stack<string>();
        pending.Push(source);
        while (pending.Count > 0)
        {
            foreach (Match m in IncludePattern().Matches(pending.Pop()))
            {
                string name = m.Groups[1].Value;
                if (found.ContainsKey(name) || Sources.GetManifestResourceInfo(ResourcePrefix + name) == null) continue;
                string text = ReadSource(name);
                found[name] = text;
                pending.Push(text);
            }
        }
        return found.Select(kv => (kv.Key, kv.Value)).ToList();
    }

    private static string CacheKey(string file, string source, List<(string Name, string Text)> headers, IReadOnlyList<string> flags)
    {
        var text = new StringBuilder();
        var (major, minor) = NvrtcVersion;
        text.Append("repa-kernel-cache 1\nnvrtc ").Append(major).Append('.').Append(minor).Append('\n');
        foreach (var flag in flags) text.Append("option ").Append(flag).Append('\n');
        text.Append("file ").Append(file).Append(' ').Append(source.Length).Append('\n').Append(source);
        foreach (var (name, body) in headers) text.Append("\nheader ").Append(name).Append(' ').Append(body.Length).Append('\n').Append(body);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    private bool TryReadCache(string key, bool real, out string? ptx, out byte[]? cubin, out string? log)
    {
        ptx = null;
        cubin = null;
        log = null;
        if (CacheDirectory == null) return false;
        string stem = Path.Combine(CacheDirectory, key);
        try
        {
            if (!File.Exists(stem + ".ptx") || (real && !File.Exists(stem + ".cubin"))) return false;
            ptx = File.ReadAllText(stem + ".ptx");
            log = File.Exists(stem + ".log") ? File.ReadAllText(stem + ".log") : "";
            if (real) cubin = File.ReadAllBytes(stem + ".cubin");
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // an unreadable cache only costs a compile
        }
    }

    private void WriteCache(string key, string ptx, byte[]? cubin, string log)
    {
        if (CacheDirectory == null) return;
        try
        {
            Directory.CreateDirectory(CacheDirectory);
            string stem = Path.Combine(CacheDirectory, key);
            // The .ptx goes last: its presence marks a complete entry. Each file is written to a temp name and renamed.
            if (log.Length > 0) WriteAtomically(stem + ".log", Encoding.UTF8.GetBytes(log));
            if (cubin != null) WriteAtomically(stem + ".cubin", cubin);
            WriteAtomically(stem + ".ptx", Encoding.UTF8.GetBytes(ptx));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A read-only or full cache folder only means compiling again next time.
        }
    }

    private static void WriteAtomically(string path, byte[] bytes)
    {
        string temp = $"{path}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, path, overwrite: true);
    }

    private static unsafe (string Ptx, byte[]? Cubin, string Log) RunNvrtc(string file, string architecture, string source,
        List<(string Name, string Text)> headers, IReadOnlyList<string> flags, bool real)
    {
        byte** sourceText = Nvrtc.Utf8Array([source, file]);
        byte** headerTexts = Nvrtc.Utf8Array(headers.Select(h => h.Text).ToArray());
        byte** headerNames = Nvrtc.Utf8Array(headers.Select(h => h.Name).ToArray());
        byte** options = Nvrtc.Utf8Array(flags);
        nint program = 0;
        try
        {
            Nvrtc.Check(Nvrtc.nvrtcCreateProgram(&program, sourceText[0], sourceText[1], headers.Count, headerTexts, headerNames));
            var result = Nvrtc.nvrtcCompileProgram(program, flags.Count, options);
            string log = Nvrtc.ProgramLog(program);
            if (result == NvrtcResult.Compilation) throw new NvrtcCompileException(file, architecture, log);
            Nvrtc.Check(result, "nvrtcCompileProgram");
            string ptx = Nvrtc.Ptx(program);
            byte[]? cubin = null;
            if (real)
            {
                nuint size;
                try
                {
                    Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(program, &size));
                }
                catch (EntryPointNotFoundException)
                {
                    throw new ArgumentException($"NVRTC {NvrtcVersion.Major}.{NvrtcVersion.Minor} cannot emit cubins (11.1 and newer can); compile {file} for compute_{architecture[3..]} instead of {architecture}.", nameof(architecture));
                }
                cubin = new byte[(int)size];
                fixed (byte* p = cubin) Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(program, p));
            }
            return (ptx, cubin, log);
        }
        finally
        {
            if (program != 0) Nvrtc.nvrtcDestroyProgram(&program);
            NativeMemory.Free(sourceText);
            NativeMemory.Free(headerTexts);
            NativeMemory.Free(headerNames);
            NativeMemory.Free(options);
        }
    }
}
