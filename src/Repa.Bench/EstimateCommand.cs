using Repa.Runtime.Training;

namespace Repa.Bench;

/// <summary>
/// `estimate [FILE]`: one SiT-XL/2 + REPA training step at batch 256 through the real trainer on the counting backend,
/// priced for an H100 (see StepEstimate); prints the markdown or writes it to FILE (docs/notes/cuda-estimate.md, which
/// the tests compare).
/// </summary>
internal static class EstimateCommand
{
    public static int Run(string[] args)
    {
        if (args.Length > 1)
        {
            Console.Error.WriteLine("usage: estimate [FILE] (e.g. estimate " + StepEstimate.TablePath + ")");
            return 2;
        }
        var estimate = StepEstimate.Run();
        string table = estimate.Markdown();
        if (args.Length == 1) File.WriteAllText(args[0], table);
        else Console.Write(table);
        foreach (var trace in estimate.Traces)
            Console.Error.WriteLine($"estimate ({trace.Name}, --mixed-precision {trace.Setting}): {1e3 * estimate.StepSeconds(trace):F1} ms per step, {100 * estimate.Mfu(trace):F1}% MFU.");
        if (args.Length == 1) Console.Error.WriteLine($"estimate: wrote {args[0]}.");
        return 0;
    }
}
