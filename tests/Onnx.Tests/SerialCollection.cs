namespace DotQuant.Onnx.Tests;

/// <summary>Whole runs share one libtorch and TorchSharp's finalizer-freed scalars (see Engine.Tests'
/// SerialCollection): they run one at a time.</summary>
[CollectionDefinition("pipeline", DisableParallelization = true)]
public sealed class PipelineCollection;
