using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.Loader;
using System.Security;
using System.Xml.Linq;
using NUnit.Framework;
using Repa.Kernels;
using Repa.Kernels.Cpu;
using Repa.Runtime.Models;
using Repa.Runtime.Sampling;

namespace Repa.Tests;

/// <summary>
/// The NuGet packages. Packs Repa.Kernels, Repa.Autograd and Repa.Runtime (the outputs this test run has already
/// built, so packing only zips them) into a temporary folder feed, checks their metadata and contents, builds and runs
/// a throwaway console app that takes Repa.Runtime from that feed, and checks that GPU kernel sources are packed and
/// embedded.
/// </summary>
[TestFixture, Category("Packaging")]
public sealed class PackagingTests
{
#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif
    private static readonly string[] Packed = ["Repa.Kernels", "Repa.Autograd", "Repa.Runtime"];
    private static readonly string[] KernelExtensions = [".cu", ".cuh", ".h"];
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromMinutes(4);

    private string root = "", work = "", feed = "", version = "";

    [OneTimeSetUp]
    public void PackIntoTemporaryFeed()
    {
        root = RepositoryRoot();
        version = DeclaredVersion(root);
        work = Directory.CreateTempSubdirectory("repa-packaging-").FullName;
        feed = Path.Combine(work, "feed");
        // --no-build: pack what this test run built (same configuration) instead of building again.
        Run(root, "pack", "Repa.sln", "-c", Configuration, "--no-build", "--nologo", "--disable-build-servers", "-o", feed);
    }

    [OneTimeTearDown]
    public void RemoveTemporaryFiles()
    {
        if (work.Length > 0 && Directory.Exists(work)) Directory.Delete(work, recursive: true);
    }

    [Test]
    public void OnlyTheThreeLibrariesArePacked()
    {
        var ids = Directory.GetFiles(feed, "*.nupkg").Select(Path.GetFileName).Order(StringComparer.Ordinal);
        Assert.That(ids, Is.EqualTo(Packed.Order(StringComparer.Ordinal).Select(id => $"{id}.{version}.nupkg")),
            "tests and benchmarks must not be packed");
        Assert.That(version, Does.Match(@"^0\.\d+\.\d+"), "the packages are 0.x");
    }

    [TestCase("Repa.Kernels")]
    [TestCase("Repa.Autograd")]
    [TestCase("Repa.Runtime")]
    public void PackageCarriesMetadataReadmeAndDocumentation(string id)
    {
        using var zip = OpenPackage(id);
        var meta = Nuspec(zip, id);
        Assert.That(Text(meta, "id"), Is.EqualTo(id));
        Assert.That(Text(meta, "version"), Is.EqualTo(version));
        Assert.That(Text(meta, "authors"), Is.EqualTo("Repa contributors"));
        Assert.That(Text(meta, "description"), Is.Not.Empty);
        Assert.That(Text(meta, "tags"), Does.Contain("repa").And.Contain("diffusion"));
        var license = meta.Elements().Single(e => e.Name.LocalName == "license");
        Assert.That((string?)license.Attribute("type"), Is.EqualTo("expression"));
        Assert.That(license.Value, Is.EqualTo("MIT"));
        Assert.That(File.ReadAllText(Path.Combine(root, "LICENSE")), Does.StartWith("MIT License"));
        Assert.That(Text(meta, "readme"), Is.EqualTo("README.md"));
        Assert.That(ReadAll(zip, "README.md"), Is.EqualTo(File.ReadAllBytes(Path.Combine(root, "README.md"))));
        var repository = meta.Elements().SingleOrDefault(e => e.Name.LocalName == "repository");
        Assert.That((string?)repository?.Attribute("url"), Is.Null, "no repository URL until there is a real one");

        ReadAll(zip, $"lib/net10.0/{id}.dll"); // throws when absent
        var docs = ReadXml(zip, $"lib/net10.0/{id}.xml");
        Assert.That(docs.Root!.Element("assembly")!.Element("name")!.Value, Is.EqualTo(id));
        Assert.That(docs.Root.Element("members")!.Elements("member").Count(), Is.GreaterThan(20),
            "the XML documentation of the public API ships next to the dll");
        Assert.That(zip.Entries.Where(e => e.FullName.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase)), Is.Empty,
            "model files come through package dependencies, never copied into ours");
    }

    [Test]
    public void DependenciesFlowWithTheRightAssets()
    {
        Dictionary<string, (string Version, string Exclude)> Dependencies(string id)
        {
            using var zip = OpenPackage(id);
            var group = Nuspec(zip, id).Elements().Single(e => e.Name.LocalName == "dependencies")
                .Elements().Single(e => e.Name.LocalName == "group");
            Assert.That((string?)group.Attribute("targetFramework"), Is.EqualTo("net10.0"));
            return group.Elements().ToDictionary(d => (string)d.Attribute("id")!,
                d => ((string)d.Attribute("version")!, (string?)d.Attribute("exclude") ?? ""));
        }

        var kernels = Dependencies("Repa.Kernels");
        Assert.That(kernels.Keys, Is.EquivalentTo(new[] { "System.Numerics.Tensors", "ILGPU" }));
        var autograd = Dependencies("Repa.Autograd");
        Assert.That(autograd.Keys, Is.EquivalentTo(new[] { "Repa.Kernels" }));
        Assert.That(autograd["Repa.Kernels"].Version, Is.EqualTo(version));
        var runtime = Dependencies("Repa.Runtime");
        Assert.That(runtime.Keys, Is.EquivalentTo(new[]
            { "Repa.Autograd", "Microsoft.ML.OnnxRuntime", "Microsoft.ML.DnnImageFeaturizer.ResNet18" }));
        Assert.That(runtime["Repa.Autograd"].Version, Is.EqualTo(version));
        // ResNet-18: only its build props (they copy ResNet18.onnx to bin/), none of ML.NET's assemblies.
        var resnet = runtime["Microsoft.ML.DnnImageFeaturizer.ResNet18"];
        Assert.That(resnet.Version, Is.EqualTo(Runtime.Encoders.OnnxEncoder.ResNet18Version));
        var excluded = resnet.Exclude.Split(',', StringSplitOptions.TrimEntries);
        Assert.That(excluded, Does.Contain("Compile").And.Contain("Runtime").And.Not.Contain("Build"));
    }

    [Test]
    public void ConsumerBuildsAndRunsAgainstTheFeed()
    {
        var run = BuildAndRunConsumer("consumer", DocProgram("first-program"));

        string line = CheckLine(run.Output, "REPA-CONSUMER ");
        // The packaged SiT-T/2 has the parameters of ours and the shapes of its config; reloaded from its checkpoint
        // into a differently seeded model it gives bit-identical outputs; ResNet18.onnx sits in the consumer's bin/
        // and ONNX Runtime's native library loads there (stage 3 of a 64 px image: 4x4 tokens of 256 channels).
        var tiny = SiTConfig.Tiny;
        long parameters;
        using (var reference = new SiT(new CpuBackend(1), DType.F32, tiny, seed: 1)) parameters = reference.ParameterCount;
        Assert.That(line, Is.EqualTo(
            $"REPA-CONSUMER params={parameters} output=[2, {tiny.InChannels}, {tiny.InputSize}, {tiny.InputSize}] " +
            $"projection=[2, {tiny.Tokens}, {tiny.ZDims[0]}] reload=identical resnet18=bin encoder=16x256"));
        Assert.That(Directory.Exists(Path.Combine(work, "packages", "repa.runtime", version)), Is.True,
            "Repa.Runtime came from the temporary feed, not from an older copy in the machine's cache");
    }

    [Test]
    public void SamplingExampleOfTheDocsSamplesACheckpoint()
    {
        TrainerTests.Data(); // the checkpoint is trained on Fashion-MNIST; ignored when it is not installed
        string checkpoint = Path.Combine(work, "run");
        var error = new StringWriter();
        Assert.That(Runtime.Cli.Run(["train", "--config", "SiT-T/2", "--steps", "2", "--batch", "4", "--encoder", "none", "--proj-coeff", "0",
            "--lr", "1e-3", "--out", checkpoint, "--sample-grid", "false"], TextWriter.Null, error), Is.EqualTo(0), error.ToString());

        var run = BuildAndRunConsumer("sampler", DocProgram("sampling-example"), checkpoint);

        // The same call in this process (the consumer's "auto" device is the CPU with all cores, as "cpu" here).
        using var generator = ImageGenerator.Load(checkpoint, "cpu");
        int[] labels = ImageGenerator.RepeatEach([0, 3, 7], 2);
        var samples = generator.Generate(labels, 7, new GenerationOptions { Steps = 10, CfgScale = 1.8, GuidanceHigh = 0.7 });
        byte[] pixels = samples.ToImages();
        string grid = Path.Combine(work, "sampler", "grid.png");
        Assert.That(run.Output, Does.Contain("SiT-T/2, sit objective, on cpu: ").And.Contain("(auto chose the CPU: CUDA is unavailable: ")
            .And.Contain("note: after 2 steps the EMA (decay 0.9999) is still 100% the initial model").And.Contain("step 10/10"));
        Assert.That(CheckLine(run.Output, "REPA-SAMPLES "), Is.EqualTo(
            $"REPA-SAMPLES n=6 shape=[6, 1, 32, 32] rows=T-shirt/top|Dress|Sneaker weights=raw sum={pixels.Sum(b => (long)b)} grid={grid}"));

        // grid.png: a title line, three rows of two 64 px cells (32 px images enlarged twice) holding exactly those pixels.
        var png = PlotTests.Decode(grid);
        int left = 8 + 2 * ("T-shirt/top".Length * 6 - 1) + 8, top = 8 + 7 + 8;
        Assert.That(png.Height, Is.EqualTo(top + 3 * 64 + 2 * 2 + 8));
        for (int i = 0; i < 6; i++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++)
                {
                    byte v = pixels[i * 1024 + y / 2 * 32 + x / 2];
                    var pixel = png.At(left + i % 2 * 66 + x, top + i / 2 * 66 + y);
                    if (pixel != (v, v, v)) Assert.Fail($"image {i} pixel ({x}, {y}) is {pixel} in the consumer's grid, {v} in-process");
                }
        Assert.That(ImageGeneratorTests.ReadNpz(Path.Combine(work, "sampler", "samples.npz"))["arr_0"].Data, Is.EqualTo(pixels));
    }

    [Test]
    public void KernelSourcesArePackedAndEmbedded()
    {
        string kernels = Path.Combine(root, "kernels");
        if (Directory.Exists(kernels))
        {
            // The real kernels: the packed package and the assembly this test run loaded.
            using var zip = OpenPackage("Repa.Kernels");
            var resources = typeof(Kernels.IBackend).Assembly;
            AssertKernelSources(kernels, zip, name => resources.GetManifestResourceStream(name));
            return;
        }

        // No kernels yet: pack a copy of Repa.Kernels next to a kernels/ folder of probe files.
        string copy = Path.Combine(work, "kernel-copy");
        foreach (string file in new[] { "Directory.Build.props", "Directory.Build.targets", "README.md", "global.json" })
            CopyInto(Path.Combine(root, file), Path.Combine(copy, file));
        string project = Path.Combine(root, "src", "Repa.Kernels");
        foreach (string file in Directory.EnumerateFiles(project, "*", SearchOption.AllDirectories))
        {
            string relative = Path.GetRelativePath(project, file);
            if (relative.Split(Path.DirectorySeparatorChar)[0] is "bin" or "obj") continue;
            CopyInto(file, Path.Combine(copy, "src", "Repa.Kernels", relative));
        }
        string probes = Path.Combine(copy, "kernels");
        Write(Path.Combine(probes, "common.cuh"), "#pragma once\n#define REPA_PROBE_BLOCK 128\n");
        Write(Path.Combine(probes, "attention", "probe.cu"),
            "#include \"../common.cuh\"\nextern \"C\" __global__ void probe(float* x) { x[threadIdx.x] = REPA_PROBE_BLOCK; }\n");
        Write(Path.Combine(probes, "attention", "probe.h"), "#pragma once\nstruct ProbeArgs { int n; };\n");
        Write(Path.Combine(probes, "notes.txt"), "not a kernel source: neither packed nor embedded\n");
        string copyFeed = Path.Combine(copy, "feed");
        Run(copy, "pack", Path.Combine("src", "Repa.Kernels", "Repa.Kernels.csproj"), "-c", "Release", "--nologo",
            "--disable-build-servers", "-p:NuGetAudit=false", "-o", copyFeed);

        using (var zip = ZipFile.OpenRead(Path.Combine(copyFeed, $"Repa.Kernels.{version}.nupkg")))
        {
            var context = new AssemblyLoadContext("repa-kernel-probe", isCollectible: true);
            try
            {
                string dll = Path.Combine(copy, "src", "Repa.Kernels", "bin", "Release", "net10.0", "Repa.Kernels.dll");
                using var image = new MemoryStream(File.ReadAllBytes(dll));
                var assembly = context.LoadFromStream(image);
                AssertKernelSources(probes, zip, name => assembly.GetManifestResourceStream(name));
                Assert.That(assembly.GetManifestResourceNames().Where(n => n.StartsWith("kernels/", StringComparison.Ordinal)),
                    Is.EquivalentTo(new[] { "kernels/common.cuh", "kernels/attention/probe.cu", "kernels/attention/probe.h" }));
            }
            finally
            {
                context.Unload();
            }
            Assert.That(zip.GetEntry("contentFiles/any/any/kernels/notes.txt"), Is.Null);
        }
    }

    // ---- kernel sources ----

    /// <summary>Every .cu/.cuh/.h under <paramref name="kernels"/> is, byte for byte, a contentFiles entry of the package
    /// (build action None, not copied to the output) and a manifest resource "kernels/relative/path".</summary>
    private static void AssertKernelSources(string kernels, ZipArchive zip, Func<string, Stream?> resource)
    {
        var all = Directory.EnumerateFiles(kernels, "*", SearchOption.AllDirectories)
            .Where(f => KernelExtensions.Contains(Path.GetExtension(f), StringComparer.OrdinalIgnoreCase)).ToList();
        // kernels/emu/ is the CPU emulator the tests build: not device code, so neither packed nor embedded.
        bool Emulator(string file) => Path.GetRelativePath(kernels, file).Replace('\\', '/').StartsWith("emu/", StringComparison.Ordinal);
        var sources = all.Where(f => !Emulator(f)).ToList();
        foreach (string file in all.Where(Emulator))
        {
            string relative = Path.GetRelativePath(kernels, file).Replace('\\', '/');
            Assert.That(zip.GetEntry($"contentFiles/any/any/kernels/{relative}"), Is.Null, $"{relative} is not packed");
            Assert.That(resource($"kernels/{relative}"), Is.Null, $"{relative} is not embedded");
        }
        Assert.That(sources, Is.Not.Empty, $"{kernels} holds no .cu/.cuh/.h file");
        var id = "Repa.Kernels";
        var contentFiles = Nuspec(zip, id).Elements().Single(e => e.Name.LocalName == "contentFiles").Elements().ToList();
        foreach (string file in sources)
        {
            string relative = Path.GetRelativePath(kernels, file).Replace('\\', '/');
            byte[] expected = File.ReadAllBytes(file);
            Assert.That(ReadAll(zip, $"contentFiles/any/any/kernels/{relative}"), Is.EqualTo(expected), relative);
            var entry = contentFiles.SingleOrDefault(f => (string?)f.Attribute("include") == $"any/any/kernels/{relative}");
            Assert.That(entry, Is.Not.Null, $"nuspec contentFiles entry for {relative}");
            Assert.That((string?)entry!.Attribute("buildAction"), Is.EqualTo("None"));
            Assert.That((string?)entry.Attribute("copyToOutput"), Is.EqualTo("false"));
            using var stream = resource($"kernels/{relative}") ?? throw new AssertionException($"no manifest resource kernels/{relative}");
            using var bytes = new MemoryStream();
            stream.CopyTo(bytes);
            Assert.That(bytes.ToArray(), Is.EqualTo(expected), $"resource kernels/{relative}");
        }
        string props = System.Text.Encoding.UTF8.GetString(ReadAll(zip, "buildTransitive/Repa.Kernels.props"));
        Assert.That(props, Does.Contain("RepaKernelSourceDirectory").And.Contain("contentFiles/any/any/kernels/"));
    }

    // ---- the consumer ----

    /// <summary>
    /// The C# program of docs/embedding.md between &lt;!-- packaging-test: NAME --&gt; and &lt;!-- /packaging-test: NAME --&gt;
    /// (the one fenced csharp block there), so the page shows exactly what is compiled and run.
    /// </summary>
    private string DocProgram(string name)
    {
        string page = Path.Combine(root, "docs", "embedding.md");
        string text = File.ReadAllText(page).ReplaceLineEndings("\n");
        string begin = $"<!-- packaging-test: {name} -->", end = $"<!-- /packaging-test: {name} -->";
        int from = text.IndexOf(begin, StringComparison.Ordinal), to = text.IndexOf(end, StringComparison.Ordinal);
        if (from < 0 || to < from) throw new AssertionException($"{page} has no '{begin}' ... '{end}' section.");
        string section = text[(from + begin.Length)..to];
        const string fence = "```csharp\n";
        int open = section.IndexOf(fence, StringComparison.Ordinal), close = section.LastIndexOf("```", StringComparison.Ordinal);
        if (open < 0 || close <= open) throw new AssertionException($"the '{name}' section of {page} holds no ```csharp block.");
        return section[(open + fence.Length)..close];
    }

    /// <summary>
    /// Writes a console app with <paramref name="program"/> as Program.cs that takes Repa.Runtime from the temporary feed,
    /// restores (ignoring the test when offline with a cache that lacks a package), builds, and runs it with
    /// <paramref name="args"/> in its folder.
    /// </summary>
    private CommandResult BuildAndRunConsumer(string name, string program, params string[] args)
    {
        string app = Path.Combine(work, name);
        string packages = Path.Combine(work, "packages");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "nuget.config"), ConsumerNugetConfig(packages));
        File.WriteAllText(Path.Combine(app, "Consumer.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
                <!-- Offline, nuget.org is unreachable (NU1801, a warning with ignore-failed-sources) and has no
                     vulnerability data to audit; the packages then come from the machine's cache. -->
                <WarningsNotAsErrors>$(WarningsNotAsErrors);NU1801</WarningsNotAsErrors>
                <NuGetAudit>false</NuGetAudit>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Repa.Runtime" Version="{version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "Program.cs"), program);

        var restore = Run(app, allowFailure: true, "restore", "--nologo", "--disable-build-servers", "--ignore-failed-sources");
        if (restore.ExitCode != 0 && restore.Output.Contains("NU1801", StringComparison.Ordinal))
            Assert.Ignore("The consumer's restore could not reach a package source and the machine's package cache " +
                          "lacks a package it needs: " + FirstLines(restore.Output, "error"));
        Assert.That(restore.ExitCode, Is.EqualTo(0), restore.Output);
        if (restore.Output.Contains("NU1801", StringComparison.Ordinal))
            TestContext.Out.WriteLine("nuget.org was unreachable; the consumer restored from the feed and the machine's package cache.");
        Run(app, "build", "-c", "Release", "--no-restore", "--nologo", "--disable-build-servers");
        return Run(app, ["run", "-c", "Release", "--no-build", "--", .. args]);
    }

    /// <summary>The one output line that starts with <paramref name="prefix"/>.</summary>
    private static string CheckLine(string output, string prefix) =>
        output.Split('\n').Select(l => l.Trim()).SingleOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal))
        ?? throw new AssertionException($"the consumer printed no '{prefix}' line:\n" + output);

    /// <summary>
    /// Sources: the temporary feed (the only source of Repa.*), the machine's package cache as a local feed and the
    /// machine's own sources (nuget.org); the cache is also a fallback folder so ONNX Runtime is used in place, not
    /// extracted again. Packages go to a fresh folder so a Repa.* of the same version from an earlier run can't be used.
    /// </summary>
    private string ConsumerNugetConfig(string packages)
    {
        string cache = MachinePackageCache();
        var sources = new List<(string Key, string Value)> { ("repa-feed", feed), ("machine-cache", cache) };
        sources.AddRange(MachineSources().Where(s => s.Key is not ("repa-feed" or "machine-cache")));
        static string X(string s) => SecurityElement.Escape(s);
        return $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <config><add key="globalPackagesFolder" value="{X(packages)}" /></config>
              <packageSources>
                <clear />
            {string.Concat(sources.Select(s => $"    <add key=\"{X(s.Key)}\" value=\"{X(s.Value)}\" />\n"))}  </packageSources>
              <fallbackPackageFolders>
                <clear />
                <add key="machine-cache" value="{X(cache)}" />
              </fallbackPackageFolders>
              <packageSourceMapping>
                <clear />
                <packageSource key="repa-feed"><package pattern="Repa.*" /></packageSource>
            {string.Concat(sources.Skip(1).Select(s => $"    <packageSource key=\"{X(s.Key)}\"><package pattern=\"*\" /></packageSource>\n"))}  </packageSourceMapping>
            </configuration>
            """;
    }

    private static string MachinePackageCache()
    {
        string? configured = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        return string.IsNullOrEmpty(configured)
            ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages")
            : configured;
    }

    /// <summary>The package sources of the user's NuGet.Config (nuget.org when it has none).</summary>
    private static List<(string Key, string Value)> MachineSources()
    {
        string config = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "NuGet", "NuGet.Config");
        var sources = new List<(string, string)>();
        if (File.Exists(config))
        {
            var adds = XDocument.Load(config).Root?.Element("packageSources")?.Elements("add") ?? [];
            foreach (var add in adds)
                if ((string?)add.Attribute("key") is { } key && (string?)add.Attribute("value") is { } value)
                    sources.Add((key, value));
        }
        if (sources.Count == 0) sources.Add(("nuget.org", "https://api.nuget.org/v3/index.json"));
        return sources;
    }

    // ---- helpers ----

    private ZipArchive OpenPackage(string id) => ZipFile.OpenRead(Path.Combine(feed, $"{id}.{version}.nupkg"));

    private static XElement Nuspec(ZipArchive zip, string id) =>
        ReadXml(zip, $"{id}.nuspec").Root!
            .Elements().Single(e => e.Name.LocalName == "metadata");

    private static string Text(XElement metadata, string name) =>
        metadata.Elements().SingleOrDefault(e => e.Name.LocalName == name)?.Value
        ?? throw new AssertionException($"the nuspec has no <{name}>");

    private static byte[] ReadAll(ZipArchive zip, string entryName)
    {
        var entry = zip.GetEntry(entryName)
            ?? throw new AssertionException($"the package has no {entryName}; it has: {string.Join(", ", zip.Entries.Select(e => e.FullName))}");
        using var stream = entry.Open();
        using var bytes = new MemoryStream();
        stream.CopyTo(bytes);
        return bytes.ToArray();
    }

    // XDocument.Load, unlike Parse of decoded text, accepts the byte-order mark NuGet writes.
    private static XDocument ReadXml(ZipArchive zip, string entryName) => XDocument.Load(new MemoryStream(ReadAll(zip, entryName)));

    private static void CopyInto(string source, string destination)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
        File.Copy(source, destination);
    }

    private static void Write(string path, string text)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllText(path, text);
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Repa.sln")) && File.Exists(Path.Combine(dir.FullName, "Directory.Build.props")))
                return dir.FullName;
        Assert.Ignore($"The packaging tests need the source tree; no Repa.sln above {AppContext.BaseDirectory}.");
        return "";
    }

    /// <summary>The one package version, VersionPrefix in Directory.Build.props.</summary>
    private static string DeclaredVersion(string root)
    {
        var props = XDocument.Load(Path.Combine(root, "Directory.Build.props"));
        return props.Descendants("VersionPrefix").Single().Value.Trim();
    }

    private static string FirstLines(string output, string containing) =>
        string.Join(" | ", output.Split('\n').Select(l => l.Trim()).Where(l => l.Contains(containing, StringComparison.Ordinal)).Distinct().Take(4));

    private sealed record CommandResult(int ExitCode, string Output);

    private static CommandResult Run(string directory, params string[] args) => Run(directory, allowFailure: false, args);

    /// <summary>Runs the dotnet CLI that runs these tests, stdout and stderr together; fails the test on a non-zero
    /// exit unless <paramref name="allowFailure"/>, and on a timeout.</summary>
    private static CommandResult Run(string directory, bool allowFailure, params string[] args)
    {
        var info = new ProcessStartInfo(DotnetExecutable())
        {
            WorkingDirectory = directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args) info.ArgumentList.Add(a);
        // The test host inherits MSBuild settings from the `dotnet test` that started it; a nested build must find its own.
        foreach (string key in info.Environment.Keys.Where(k => k.StartsWith("MSBUILD", StringComparison.OrdinalIgnoreCase)).ToList())
            info.Environment.Remove(key);
        info.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        info.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        info.Environment["DOTNET_NOLOGO"] = "1";
        info.Environment["DOTNET_CLI_UI_LANGUAGE"] = "en";

        using var process = new Process { StartInfo = info };
        var output = new System.Text.StringBuilder();
        process.OutputDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(CommandTimeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"dotnet {string.Join(' ', args)} did not finish within {CommandTimeout.TotalMinutes} minutes in {directory}:\n{output}");
        }
        process.WaitForExit(); // drains the output
        string text;
        lock (output) text = output.ToString();
        if (!allowFailure && process.ExitCode != 0)
            Assert.Fail($"dotnet {string.Join(' ', args)} exited with {process.ExitCode} in {directory}:\n{text}");
        return new CommandResult(process.ExitCode, text);
    }

    private static string DotnetExecutable()
    {
        // The CLI sets DOTNET_HOST_PATH for the processes it starts; otherwise the dotnet on PATH.
        string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        return !string.IsNullOrEmpty(host) && File.Exists(host) ? host : "dotnet";
    }
}
