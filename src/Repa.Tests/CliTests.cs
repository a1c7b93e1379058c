using NUnit.Framework;
using Repa.Runtime;

namespace Repa.Tests;

/// <summary>The command line: help, the smoke run, and one clear sentence with exit code 2 for bad input.</summary>
[TestFixture]
public class CliTests
{
    private static (int code, string stdout, string stderr) Run(params string[] args) => CliRun.Run(args);

    [Test]
    public void HelpListsTheCommands()
    {
        var (code, stdout, _) = Run("--help");
        Assert.That(code, Is.EqualTo(0));
        Assert.That(stdout, Does.Contain("smoke").And.Contain("--threads"));
    }

    [Test]
    public void SmokeRunLowersTheLossAndAllocatesNothingAfterTheFirstStep()
    {
        var (code, stdout, stderr) = Run("smoke", "--steps", "3", "--threads", "1");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("step   3/3").And.Contain("GFLOP/s").And.Contain(", 0 after it."));
        var m = System.Text.RegularExpressions.Regex.Match(stdout, @"smoke: loss ([0-9.]+) -> ([0-9.]+)");
        Assert.That(m.Success, Is.True, stdout);
        Assert.That(double.Parse(m.Groups[2].Value), Is.LessThan(double.Parse(m.Groups[1].Value)), "SGD should lower the loss");
    }

    [TestCase(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    [TestCase(new[] { "smoke", "--steps", "zero" }, "--steps must be an integer >= 1, got 'zero'")]
    [TestCase(new[] { "smoke", "--steps" }, "option --steps needs a value")]
    [TestCase(new[] { "smoke", "--bogus", "1" }, "unknown option --bogus")]
    public void BadInputEndsInOneSentence(string[] args, string message)
    {
        var (code, stdout, stderr) = Run(args);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stdout, Is.Empty);
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1));
        Assert.That(stderr, Does.Contain(message));
    }
}
