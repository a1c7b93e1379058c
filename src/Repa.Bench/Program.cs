using BenchmarkDotNet.Running;

namespace Repa.Bench;

public static class Program
{
    /// <summary>
    /// `gemm-report [--quick]`: the quick in-process GEMM report (see GemmReport); `ptxas-report [FILE]`: the kernels'
    /// registers/spills table (see PtxasReportCommand); `estimate [FILE]`: the on-paper H100 step table (see
    /// EstimateCommand); anything else goes to BenchmarkDotNet.
    /// </summary>
    public static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "gemm-report") return GemmReport.Run(args[1..]);
        if (args.Length > 0 && args[0] == "ptxas-report") return PtxasReportCommand.Run(args[1..]);
        if (args.Length > 0 && args[0] == "estimate") return EstimateCommand.Run(args[1..]);
        BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
        return 0;
    }
}
