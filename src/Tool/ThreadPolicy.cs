using System.Globalization;
using DotQuant.Engine.Torch;

namespace DotQuant.Tool;

/// <summary>How many OpenMP threads libtorch starts and how they wait. By default they spin at every
/// barrier, which is right for a process that owns the cores and ruinous when two share them: the
/// column loop's thousands of small operations then spend their time spinning against each other
/// (measured: two GPTQ runs of llama-tiny on the 2 cores took 116 s each, 3.9× a lone run, with the
/// factorization 50× slower; with passive waiting 43 s each, and a lone run is unchanged). So the tool
/// asks for passive waiting unless the user set OMP_WAIT_POLICY. The team size defaults to the CPUs
/// .NET sees, which honours the process's affinity and a container's CPU quota (libgomp only honours
/// the affinity: under a 2-CPU quota on a 64-core host it would start 64 threads); --threads and
/// OMP_NUM_THREADS still win. Both must be in the C environment before libtorch (and its libgomp, which
/// reads them once when loaded) is (see ProcessEnvironment).</summary>
static class ThreadPolicy
{
    public const string Variable = "OMP_WAIT_POLICY";
    public const string TeamVariable = "OMP_NUM_THREADS";

    public static void Apply()
    {
        ProcessEnvironment.SetIfUnset(Variable, "PASSIVE");
        ProcessEnvironment.SetIfUnset(TeamVariable, Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture));
    }
}
