namespace DotQuant.Runtime;

/// <summary>Every diagnostic code the engine raises. Codes are stable: documented in docs/diagnostics.md.</summary>
public static class ErrorCodes
{
    // Manifest (quant.yaml): always with file, line and column
    public const string ManifestSyntax = "DQ0001";
    public const string ManifestUnknownKey = "DQ0002";
    public const string ManifestType = "DQ0003";
    public const string ManifestValue = "DQ0004";
    public const string ManifestMissing = "DQ0005";
    public const string ManifestCombination = "DQ0006";
    public const string ManifestNotAvailable = "DQ0007";
    public const string ManifestVersion = "DQ0008";

    // Command line
    public const string Usage = "DQ0090";

    // Files and checkpoints
    public const string FileNotFound = "DQ0100";
    public const string SafetensorsTruncated = "DQ0101";
    public const string SafetensorsHeaderLength = "DQ0102";
    public const string SafetensorsHeaderJson = "DQ0103";
    public const string SafetensorsUnknownDtype = "DQ0104";
    public const string SafetensorsShapeMismatch = "DQ0105";
    public const string SafetensorsSpanOutside = "DQ0106";
    public const string SafetensorsSpanOverlap = "DQ0107";
    public const string PickleCheckpoint = "DQ0108";
    public const string ShardIndex = "DQ0109";
    public const string NoCheckpoint = "DQ0110";
    public const string SafetensorsWrite = "DQ0111";
    public const string GgufTruncated = "DQ0112";
    public const string GgufHeader = "DQ0113";
    public const string GgufTensor = "DQ0114";
    public const string GgufUnsupported = "DQ0115";
    public const string GgufWrite = "DQ0116";
    public const string OnnxModel = "DQ0117";
    public const string ImatrixFile = "DQ0118";
    public const string ImatrixMismatch = "DQ0119";

    // Model configuration and weights
    public const string ConfigMissing = "DQ0120";
    public const string ConfigKey = "DQ0121";
    public const string UnsupportedModelType = "DQ0122";
    public const string ConfigInconsistent = "DQ0123";
    public const string WeightMissing = "DQ0124";
    public const string WeightShape = "DQ0125";

    // Tokenizer
    public const string TokenizerMissing = "DQ0130";
    public const string TokenizerMalformed = "DQ0131";
    public const string TokenizerUnsupported = "DQ0132";

    // Evaluation inputs
    public const string EvalData = "DQ0140";
    public const string EvalArgument = "DQ0141";
    public const string NonFinite = "DQ0142";

    // Calibration and solving
    public const string SingularHessian = "DQ0150";
    public const string CalibrationData = "DQ0151";
    public const string OutputWrite = "DQ0152";
    public const string PackageRead = "DQ0153";
    public const string MemoryPlan = "DQ0154";
    public const string DiskFull = "DQ0155";
    public const string CacheMiss = "DQ0160";
    public const string CacheDamaged = "DQ0161";
    public const string QualityGate = "DQ0170";
    public const string Feed = "DQ0196";

    // Distributed runs (--cluster)
    public const string ClusterAddress = "DQ0184";
    public const string ClusterUnreachable = "DQ0185";
    public const string ClusterMismatch = "DQ0186";
    public const string ClusterWorkerLost = "DQ0187";

    public const string Internal = "DQ0900";
}
