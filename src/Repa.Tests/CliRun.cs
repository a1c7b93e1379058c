using NUnit.Framework;

namespace Repa.Tests;

/// <summary>Runs the Repa.Runtime command line in process and captures what it prints.</summary>
internal static class CliRun
{
    public static (int Code, string Stdout, string Stderr) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Repa.Runtime.Cli.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>The command fails with exit code 2 and one line on stderr that contains <paramref name="message"/>.</summary>
    public static void AssertOneSentenceError(string[] args, string message)
    {
        var (code, stdout, stderr) = Run(args);
        Assert.That(code, Is.EqualTo(2), stdout);
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), "one sentence, no stack trace");
        Assert.That(stderr, Does.Contain(message));
    }
}
