using System.Runtime.CompilerServices;

namespace DotQuant.Tests;

/// <summary>Test processes run pipelines in-process: they ask for the same kernels the tool does
/// (Torch/Numerics), before any test loads libtorch, so in-process and tool runs compare bit for bit.</summary>
static class NumericsPolicy
{
    [ModuleInitializer]
    internal static void Apply() => DotQuant.Engine.Torch.Numerics.Apply();
}
