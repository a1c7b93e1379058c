using Repa.Kernels.Cuda;

namespace Repa.Bench;

/// <summary>
/// `ptxas-report [FILE]`: compiles every kernels/*.cu with NVRTC for compute_80 and compute_90, assembles the PTX with
/// ptxas for sm_80 and sm_90 and prints the registers/spills/shared-memory table, or writes it to FILE
/// (docs/notes/kernels-ptxas.md, which the Nvrtc tests compare). Exit code 1 when a kernel spills or a tool warns.
/// </summary>
internal static class PtxasReportCommand
{
    public static int Run(string[] args)
    {
        if (args.Length > 1)
        {
            Console.Error.WriteLine("usage: ptxas-report [FILE] (e.g. ptxas-report " + PtxasReport.TablePath + ")");
            return 2;
        }
        var (table, entries, warnings) = PtxasReport.Generate(new KernelCompiler());
        if (args.Length == 1) File.WriteAllText(args[0], table);
        else Console.Write(table);
        foreach (var w in warnings) Console.Error.WriteLine(w);
        var spills = entries.Where(e => e.Spills).ToArray();
        foreach (var e in spills) Console.Error.WriteLine($"{e.File}: {e.Kernel} spills on {e.Target} ({e.SpillStoreBytes} bytes stored, {e.SpillLoadBytes} loaded).");
        if (args.Length == 1) Console.Error.WriteLine($"ptxas-report: wrote {entries.Count} rows to {args[0]}.");
        return spills.Length > 0 || warnings.Count > 0 ? 1 : 0;
    }
}
