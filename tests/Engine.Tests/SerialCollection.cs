namespace DotQuant.Engine.Tests;

/// <summary>Whole-pipeline tests that compare bytes run on their own, not beside other test classes in
/// the same process. TorchSharp frees implicitly converted Scalars from the finalizer thread and passes
/// them to libtorch as raw handles, so a collection triggered by another test thread during a native
/// call can free a Scalar that call is still reading (seen as a libtorch "INTERNAL ASSERT FAILED at
/// Scalar.h" about once in five parallel runs). A run of the tool is one job per process and does not
/// allocate on other threads during the solve.</summary>
[CollectionDefinition("pipeline", DisableParallelization = true)]
public sealed class PipelineCollection;
