using NUnit.Framework;
using Repa.Runtime;

namespace Repa.Tests;

[TestFixture]
public class ProgressBarTests
{
    [Test]
    public void BarFillsInProportionAndClamps()
    {
        Assert.That(ProgressBar.Bar(0, 10, 10), Is.EqualTo("[..........]   0%"));
        Assert.That(ProgressBar.Bar(7, 20, 10), Is.EqualTo("[###.......]  35%"));
        Assert.That(ProgressBar.Bar(20, 20, 10), Is.EqualTo("[##########] 100%"));
        Assert.That(ProgressBar.Bar(25, 20, 10), Is.EqualTo("[##########] 100%"), "overshoot clamps");
        Assert.That(ProgressBar.Bar(0, 0, 4), Is.EqualTo("[....]   0%"), "an empty job does not divide by zero");
    }

    [Test]
    public void EtaExtrapolatesTheAverageRate()
    {
        Assert.That(ProgressBar.Eta(TimeSpan.FromSeconds(30), 10, 40), Is.EqualTo("0:01:30"));
        Assert.That(ProgressBar.Eta(TimeSpan.FromHours(1), 1, 3), Is.EqualTo("2:00:00"));
        Assert.That(ProgressBar.Eta(TimeSpan.FromSeconds(5), 0, 3), Is.EqualTo("--:--:--"));
        Assert.That(ProgressBar.Eta(TimeSpan.FromSeconds(5), 3, 3), Is.EqualTo("0:00:00"));
    }
}
