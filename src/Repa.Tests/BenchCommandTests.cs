using System.Text.Json;
using NUnit.Framework;

namespace Repa.Tests;

/// <summary>`bench`: timed steps on synthetic data, and figures that agree with each other.</summary>
[TestFixture]
public class BenchCommandTests
{
    [Test]
    public void BenchTimesStepsAndReportsConsistentFigures()
    {
        string file = Path.Combine(Path.GetTempPath(), "repa-bench-" + Guid.NewGuid().ToString("N"), "bench.json");
        try
        {
            var (code, stdout, stderr) = CliRun.Run("bench", "--device", "cpu", "--threads", "1", "--config", "SiT-T/4", "--batch", "2",
                "--z-dim", "8", "--steps", "3", "--warmup", "1", "--out", file);
            Assert.That(code, Is.EqualTo(0), stderr);
            Assert.That(stdout, Does.Contain("(warm-up)").And.Contain("median").And.Contain("MFU").And.Contain("peak memory"));
            using var json = JsonDocument.Parse(File.ReadAllText(file));
            var root = json.RootElement;
            var times = root.GetProperty("StepSeconds").EnumerateArray().Select(e => e.GetDouble()).ToArray();
            Assert.That(times, Has.Length.EqualTo(3), "the timed steps only");
            double median = root.GetProperty("MedianSeconds").GetDouble();
            Assert.That(median, Is.EqualTo(times.Order().ElementAt(1)));
            Assert.That(root.GetProperty("ImagesPerSecond").GetDouble(), Is.EqualTo(2 / median).Within(1e-9).Percent);
            Assert.That(root.GetProperty("Precision").GetString(), Is.EqualTo("fp32"));
            Assert.That(root.GetProperty("Parameters").GetInt64(), Is.GreaterThan(4_000_000));
            Assert.That(root.GetProperty("ModelTflops").GetDouble(), Is.GreaterThan(0));
            double mfu = root.GetProperty("Mfu").GetDouble();
            Assert.That(mfu, Is.EqualTo(root.GetProperty("ModelTflops").GetDouble() * 1000 / root.GetProperty("PeakGflops").GetDouble()).Within(1e-9).Percent);
            // The pool holds at least the parameters, their gradients and AdamW's two moments in fp32.
            Assert.That(root.GetProperty("PeakMemoryBytes").GetInt64(), Is.GreaterThan(4 * 4 * root.GetProperty("Parameters").GetInt64()));
        }
        finally
        {
            if (Directory.Exists(Path.GetDirectoryName(file)!)) Directory.Delete(Path.GetDirectoryName(file)!, true);
        }
    }

    [TestCase(new[] { "bench", "--config", "SiT-Q/2" }, "--config must be one of")]
    [TestCase(new[] { "bench", "--device", "cpu", "--mixed-precision", "bf16" }, "use --mixed-precision no")]
    [TestCase(new[] { "bench", "--steps", "0" }, "--steps")]
    [TestCase(new[] { "bench", "--device", "cpu", "--config", "SiT-T/4", "--image-size", "30" }, "30")]
    public void BadBenchInputEndsInOneSentence(string[] args, string message) => CliRun.AssertOneSentenceError(args, message);
}
