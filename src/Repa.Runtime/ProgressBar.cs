using System.Globalization;

namespace Repa.Runtime;

/// <summary>The text progress bar every long job prints (target encoding, training, sampling): bar, count, rate, ETA.</summary>
public static class ProgressBar
{
    /// <summary>"[#######.............]  35%" for <paramref name="done"/> of <paramref name="total"/>.</summary>
    public static string Bar(long done, long total, int width = 20)
    {
        long clamped = Math.Clamp(done, 0, Math.Max(total, 1));
        int filled = (int)(width * clamped / Math.Max(total, 1));
        return $"[{new string('#', filled)}{new string('.', width - filled)}] {100 * clamped / Math.Max(total, 1),3}%";
    }

    /// <summary>Time left at the average rate so far, as h:mm:ss ("--:--:--" before the first unit is done).</summary>
    public static string Eta(TimeSpan elapsed, long done, long total)
    {
        if (done <= 0) return "--:--:--";
        double seconds = elapsed.TotalSeconds / done * Math.Max(total - done, 0);
        return TimeSpan.FromSeconds(Math.Round(seconds)).ToString(@"h\:mm\:ss", CultureInfo.InvariantCulture);
    }
}
