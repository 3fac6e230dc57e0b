using System.Globalization;
using DotQuant.Runtime;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Quantizers;
using DotQuant.Engine.Rotation;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace DotQuant.Engine.Manifest;

/// <summary>Parses and validates quant.yaml v1 (DESIGN.md §3). Every diagnostic names the file,
/// line and column of the offending node. The checks are strict on purpose: an unknown key is
/// an error (a typo must not silently fall back to a default).</summary>
public sealed class ManifestParser
{
    readonly string _file;
    readonly string _dir;
    /// <summary>The quantize keys the manifest names (the output format may refuse some).</summary>
    Dictionary<string, YamlNode> _quantizeKeys = new();
    /// <summary>Layer rules' nodes, for diagnostics raised once the output format is known.</summary>
    readonly List<(LayerRule Rule, YamlNode Node)> _ruleNodes = [];

    /// <summary>False for a distributed run's worker: the files are the coordinator's (the worker gets its
    /// model folder and its shard's token ids separately), so only the manifest's settings matter.</summary>
    bool _checkFiles = true;

    ManifestParser(string file)
    {
        _file = Path.GetFullPath(file);
        _dir = Path.GetDirectoryName(_file)!;
    }

    public static QuantManifest Load(string path)
    {
        if (!File.Exists(path))
            throw new DotQuantException(ErrorCodes.FileNotFound, $"manifest not found: {path}", path);
        if (new FileInfo(path).Length > 4L * MaxBytes)
            throw new DotQuantException(ErrorCodes.ManifestSyntax, $"the manifest is {new FileInfo(path).Length:N0} bytes; a quant.yaml is a few hundred (limit {MaxBytes:N0} characters)", path, line: 1, column: 1);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>The settings of a manifest written on another machine (a distributed run's coordinator):
    /// its model, calibration and evaluation files need not exist here.</summary>
    public static QuantManifest ParseSettings(string yaml, string path) => Parse(yaml, path, checkFiles: false);

    public static QuantManifest Parse(string yaml, string path) => Parse(yaml, path, checkFiles: true);

    static QuantManifest Parse(string yaml, string path, bool checkFiles)
    {
        var p = new ManifestParser(path) { _checkFiles = checkFiles };
        p.Guard(yaml);
        var stream = new YamlStream();
        var parser = new Parser(new StringReader(yaml));
        try
        {
            stream.Load(parser);
        }
        catch (YamlException e)
        {
            throw p.Error(ErrorCodes.ManifestSyntax, $"malformed YAML: {Inner(e).Message}", (int)e.Start.Line, (int)e.Start.Column);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException or OverflowException)
        {
            // YamlDotNet's scanner gives up on some malformed input with a state error instead of a
            // YamlException (found by the fuzzer: an unterminated flow sequence): still the manifest's fault.
            var at = parser.Current?.Start;
            throw p.Error(ErrorCodes.ManifestSyntax, "malformed YAML (the parser could not read past this point)", (int)(at?.Line ?? 1), (int)(at?.Column ?? 1));
        }
        if (stream.Documents.Count == 0 || stream.Documents[0].RootNode is not YamlMappingNode root)
            throw p.Error(ErrorCodes.ManifestSyntax, "the manifest must be a YAML mapping (version, model, quantize, ...)", 1, 1);
        return p.Read(root);
    }

    static Exception Inner(YamlException e) => e.InnerException is YamlException i ? Inner(i) : e;

    /// <summary>Limits the YAML parser never checks: it recurses once per nesting level, so a manifest of
    /// a few hundred kilobytes of '[' overflows the stack and kills the process (found by the fuzzer). A
    /// manifest is a small hand-written file; these bounds are far beyond any real one.</summary>
    const int MaxBytes = 1 << 20, MaxFlowDepth = 64, MaxIndent = 256;

    void Guard(string yaml)
    {
        if (yaml.Length > MaxBytes)
            throw Error(ErrorCodes.ManifestSyntax, $"the manifest is {yaml.Length:N0} characters long; a quant.yaml is a few hundred (limit {MaxBytes:N0})", 1, 1);
        int depth = 0, line = 1, column = 0, indent = 0;
        bool lineStart = true, comment = false;
        char quote = '\0';
        foreach (char c in yaml)
        {
            column++;
            if (c == '\n') { line++; column = 0; indent = 0; lineStart = true; comment = false; continue; }
            if (lineStart && c == ' ')
            {
                if (++indent > MaxIndent) throw Error(ErrorCodes.ManifestSyntax, $"indented more than {MaxIndent} columns", line, column);
                continue;
            }
            lineStart = false;
            if (comment) continue;
            if (quote != '\0') { if (c == quote) quote = '\0'; continue; }
            switch (c)
            {
                case '"' or '\'': quote = c; break;
                case '#': comment = true; break;
                case '[' or '{':
                    if (++depth > MaxFlowDepth) throw Error(ErrorCodes.ManifestSyntax, $"nested more than {MaxFlowDepth} levels deep", line, column);
                    break;
                case ']' or '}': depth = Math.Max(0, depth - 1); break;
            }
        }
    }

    QuantManifest Read(YamlMappingNode root)
    {
        var top = Keys(root, "manifest", "version", "model", "calibration", "quantize", "output", "evaluate");
        var versionNode = top.GetValueOrDefault("version") ?? throw Error(ErrorCodes.ManifestVersion, "missing 'version: 1'", root);
        if (Int(versionNode, "version") != 1)
            throw Error(ErrorCodes.ManifestVersion, "unsupported manifest version (this DotQuant reads version 1)", versionNode);

        var (model, package) = ReadModel(top.GetValueOrDefault("model") ?? throw Error(ErrorCodes.ManifestMissing, "missing 'model' (a Hugging Face model folder)", root));
        var quantize = ReadQuantize(top.GetValueOrDefault("quantize") as YamlNode ?? throw Error(ErrorCodes.ManifestMissing, "missing 'quantize' section", root));
        CalibrationSpec? calibration = top.TryGetValue("calibration", out var c) ? ReadCalibration(c) : null;
        if (calibration is null && quantize.NeedsCalibration)
            throw Error(ErrorCodes.ManifestMissing, $"method '{Name(quantize.Method)}' needs a 'calibration' section with 'data'", root);
        var output = ReadOutput(top.GetValueOrDefault("output"), package?.Id ?? model, quantize, root);
        EvaluateSpec? evaluate = top.TryGetValue("evaluate", out var ev) ? ReadEvaluate(ev) : null;
        return new QuantManifest { Path = _file, ModelPath = model, ModelPackage = package, Calibration = calibration, Quantize = quantize, Output = output, Evaluate = evaluate };
    }

    (string Folder, ModelPackageRef? Package) ReadModel(YamlNode node)
    {
        if (node is YamlScalarNode)
        {
            string dir = ResolvePath(Str(node, "model"));
            if (_checkFiles && !Directory.Exists(dir))
                throw Error(ErrorCodes.FileNotFound, $"model folder not found: {dir}", node);
            return (dir, null);
        }
        var m = Keys(node, "model", "package", "version", "source");
        string id = m.TryGetValue("package", out var p) ? Str(p, "model.package") : throw Error(ErrorCodes.ManifestMissing, "model needs 'package' (a NuGet package id) or a folder path", node);
        string version = m.TryGetValue("version", out var v) ? Str(v, "model.version") : throw Error(ErrorCodes.ManifestMissing, "model.package needs 'version'", node);
        string source = m.TryGetValue("source", out var s) ? Str(s, "model.source") : throw Error(ErrorCodes.ManifestMissing, "model.package needs 'source' (a folder feed or an HTTP v3 feed URL)", node);
        if (!source.Contains("://", StringComparison.Ordinal)) source = ResolvePath(source);
        return ("", new ModelPackageRef(id, version, source));
    }

    CalibrationSpec ReadCalibration(YamlNode node)
    {
        var m = Keys(node, "calibration", "data", "samples", "sequence_length", "seed", "stream_dtype");
        var data = m.GetValueOrDefault("data") ?? throw Error(ErrorCodes.ManifestMissing, "calibration needs 'data' (.txt, .jsonl or .ids)", node);
        string path = ResolvePath(Str(data, "calibration.data"));
        if (_checkFiles && !File.Exists(path))
            throw Error(ErrorCodes.CalibrationData, $"calibration data not found: {path}", data);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is not (".txt" or ".jsonl" or ".ids" or ".tokens" or ".raw"))
            throw Error(ErrorCodes.ManifestValue, $"calibration.data must be a .txt, .jsonl or .ids file (got '{ext}')", data);
        int samples = m.TryGetValue("samples", out var s) ? Positive(s, "calibration.samples") : 128;
        int length = m.TryGetValue("sequence_length", out var l) ? Positive(l, "calibration.sequence_length") : 2048;
        long seed = m.TryGetValue("seed", out var sd) ? Long(sd, "calibration.seed") : 0;
        if (length < 2) throw Error(ErrorCodes.ManifestValue, "calibration.sequence_length must be at least 2", l!);
        bool bf16 = m.TryGetValue("stream_dtype", out var sd2) && Enum(sd2, "calibration.stream_dtype", ("fp32", false), ("bf16", true));
        return new CalibrationSpec(path, samples, length, seed) { Bf16Stream = bf16 };
    }

    QuantizeSpec ReadQuantize(YamlNode node)
    {
        var m = Keys(node, "quantize", "method", "hessian", "compensation_aware", "rotate", "bits", "group_size", "symmetric",
            "act_order", "static_groups", "damp", "mse_clip", "outliers", "layers", "grid", "block_size", "alpha", "alpha2", "rescomp_mode",
            "output_adaptive", "rotation", "billm", "imatrix", "grid_importance", "awq");
        _quantizeKeys = m;
        var method = m.TryGetValue("method", out var methodNode)
            ? Enum(methodNode, "quantize.method", ("none", QuantMethod.None), ("rtn", QuantMethod.Rtn), ("gptq", QuantMethod.Gptq), ("gptaq", QuantMethod.Gptaq), ("spqr", QuantMethod.SpQR), ("billm", QuantMethod.BiLLM))
            : QuantMethod.Gptq;
        // The method's record carries its defaults (SpQR's README configuration, BiLLM's 1-bit groups).
        var scheme = QuantScheme.For(method);
        var (unused, why) = scheme.Unused;
        foreach (var key in unused)
            if (m.TryGetValue(key, out var n))
                throw Error(ErrorCodes.ManifestCombination, $"{key} has no effect with method '{scheme.Name}' {why}", n);
        var q = new QuantizeSpec();

        var hessian = m.TryGetValue("hessian", out var hess) ? Enum(hess, "quantize.hessian", ("layer", "layer"), ("output_adaptive", "output_adaptive"), ("imatrix", "imatrix")) : "layer";
        if (hessian == "output_adaptive")
        {
            if (scheme.OutputAdaptiveRefusal is { } refusal) throw Error(ErrorCodes.ManifestCombination, refusal, hess!);
            q = q with { Oac = new OacOptions() };
        }
        if (hessian == "imatrix")
        {
            // llama.cpp's importance weighs the grid search of round-to-nearest; the solvers collect their own Hessians.
            if (scheme is not RtnScheme)
                throw Error(ErrorCodes.ImatrixMismatch, $"hessian: imatrix weighs round-to-nearest's scale search (llama-quantize --imatrix); use method: rtn, not {scheme.Name} (which collects its own Hessian from calibration data)", hess!);
            if (!m.TryGetValue("imatrix", out var im))
                throw Error(ErrorCodes.ManifestValue, "hessian: imatrix needs quantize.imatrix: the importance matrix file (llama-imatrix's, or `dotnet quantize imatrix`'s)", hess!);
            string imPath = ResolvePath(Str(im, "quantize.imatrix"));
            if (_checkFiles && !File.Exists(imPath))
                throw Error(ErrorCodes.FileNotFound, $"importance matrix not found: {imPath}", im);
            q = q with { Imatrix = imPath };
        }
        else if (m.TryGetValue("imatrix", out var stray))
            throw Error(ErrorCodes.ManifestCombination, "quantize.imatrix needs hessian: imatrix", stray);
        if (m.TryGetValue("output_adaptive", out var oacNode))
        {
            if (q.Oac is null) throw Error(ErrorCodes.ManifestCombination, "output_adaptive settings need hessian: output_adaptive", oacNode);
            var om = Keys(oacNode, "quantize.output_adaptive", "fisher", "labels", "schedule", "seed");
            var oo = q.Oac;
            if (om.TryGetValue("fisher", out var fs)) oo = oo with { Fisher = Enum(fs, "output_adaptive.fisher", ("sequence", FisherSample.Sequence), ("token", FisherSample.Token), ("sequence_explicit", FisherSample.SequenceExplicit)) };
            if (om.TryGetValue("labels", out var lb)) oo = oo with { Labels = Enum(lb, "output_adaptive.labels", ("empirical", FisherLabels.Empirical), ("sampled", FisherLabels.Sampled)) };
            if (om.TryGetValue("schedule", out var sc)) oo = oo with { Schedule = Enum(sc, "output_adaptive.schedule", ("sequential", OacSchedule.Sequential), ("sequential_groups", OacSchedule.SequentialGroups), ("once", OacSchedule.Once)) };
            if (om.TryGetValue("seed", out var se)) oo = oo with { Seed = Long(se, "output_adaptive.seed") };
            q = q with { Oac = oo };
        }
        if (m.TryGetValue("rotate", out var rot) && Enum(rot, "quantize.rotate", ("none", false), ("hadamard", true)))
            q = q with { Rotation = new RotationOptions() };
        if (m.TryGetValue("rotation", out var rotNode))
        {
            if (q.Rotation is null) throw Error(ErrorCodes.ManifestCombination, "rotation settings need rotate: hadamard", rotNode);
            var rm2 = Keys(rotNode, "quantize.rotation", "seed", "heads", "down_proj", "subtract_embedding_mean");
            var ro = q.Rotation;
            if (rm2.TryGetValue("seed", out var rs)) ro = ro with { Seed = Long(rs, "rotation.seed") };
            if (rm2.TryGetValue("heads", out var rh)) ro = ro with { Heads = Bool(rh, "rotation.heads") };
            if (rm2.TryGetValue("down_proj", out var rd)) ro = ro with { DownProj = Bool(rd, "rotation.down_proj") };
            if (rm2.TryGetValue("subtract_embedding_mean", out var re)) ro = ro with { SubtractEmbeddingMean = Bool(re, "rotation.subtract_embedding_mean") };
            q = q with { Rotation = ro };
        }
        if (m.TryGetValue("outliers", out var outl))
        {
            if (scheme is not SpqrScheme spqr) throw Error(ErrorCodes.ManifestCombination, "outliers apply to method 'spqr' only", outl);
            var om = Keys(outl, "quantize.outliers", "relative_threshold", "scale_bits", "zero_bits", "group_size");
            var so = spqr.Outliers;
            if (om.TryGetValue("relative_threshold", out var rt))
            {
                string text = Scalar(rt, "outliers.relative_threshold", "a number or 'none'");
                double tau = text is "none" or "inf" ? double.PositiveInfinity : Double(rt, "outliers.relative_threshold");
                if (!(tau > 0)) throw Error(ErrorCodes.ManifestValue, "outliers.relative_threshold must be positive (or 'none')", rt);
                so = so with { OutlierThreshold = tau };
            }
            if (om.TryGetValue("scale_bits", out var sb)) so = so with { ScaleBits = StatBits(sb, "outliers.scale_bits") };
            if (om.TryGetValue("zero_bits", out var zb)) so = so with { ZeroBits = StatBits(zb, "outliers.zero_bits") };
            if (om.TryGetValue("group_size", out var sg2)) so = so with { StatGroupSize = Positive(sg2, "outliers.group_size") };
            scheme = spqr with { Outliers = so };
        }
        if (m.TryGetValue("billm", out var bnode))
        {
            if (scheme is not BillmScheme billm) throw Error(ErrorCodes.ManifestCombination, "billm settings apply to method 'billm' only", bnode);
            var bm = Keys(bnode, "quantize.billm", "metric", "search_on", "max_salient");
            var bo = billm.Binarization;
            if (bm.TryGetValue("metric", out var me)) bo = bo with { Metric = Enum(me, "billm.metric", ("hessian", SalienceMetric.Hessian), ("hessian_inverse_diagonal", SalienceMetric.HessianInverseDiagonal), ("magnitude", SalienceMetric.Magnitude)) };
            if (bm.TryGetValue("search_on", out var so2)) bo = bo with { SearchOnSalience = Enum(so2, "billm.search_on", ("salience", true), ("weights", false)) };
            if (bm.TryGetValue("max_salient", out var ms)) bo = bo with { MaxSalient = Positive(ms, "billm.max_salient") };
            scheme = billm with { Binarization = bo };
        }
        if (m.TryGetValue("compensation_aware", out var ca) && Bool(ca, "quantize.compensation_aware"))
        {
            if (scheme is not GptqScheme gptq)
                throw Error(ErrorCodes.ManifestCombination, $"compensation_aware (ResComp) needs gptq or gptaq, not {scheme.Name}", ca);
            if (q.Oac is not null)
                throw Error(ErrorCodes.ManifestCombination, "compensation_aware (ResComp) is defined on the layer-wise objective; it cannot be combined with hessian: output_adaptive", ca);
            scheme = gptq with { CompensationAware = true };
        }
        if (m.TryGetValue("bits", out var bits)) scheme = scheme with { Bits = Bits(bits, "quantize.bits") };
        if (m.TryGetValue("group_size", out var gs)) scheme = scheme with { GroupSize = GroupSize(gs, "quantize.group_size") };
        if (m.TryGetValue("symmetric", out var sym)) scheme = scheme with { Symmetric = Bool(sym, "quantize.symmetric") };
        if (m.TryGetValue("act_order", out var ao)) scheme = scheme with { ActOrder = Bool(ao, "quantize.act_order") };
        if (m.TryGetValue("static_groups", out var sg)) scheme = scheme with { StaticGroups = Bool(sg, "quantize.static_groups") };
        if (scheme.StaticGroups && scheme.GroupSize == -1)
            throw Error(ErrorCodes.ManifestCombination, "static_groups needs a group_size (not -1)", sg!);
        if (m.TryGetValue("damp", out var damp))
        {
            double d = Double(damp, "quantize.damp");
            if (d < 0 || d > 10) throw Error(ErrorCodes.ManifestValue, "quantize.damp must be in [0, 10] (a fraction of the mean Hessian diagonal; SpQR's README uses 1)", damp);
            scheme = scheme with { Damp = d };
        }
        if (m.TryGetValue("awq", out var awqNode))
        {
            // awq: true (the defaults), awq: false, or awq: { grid, clip, clip_grid, max_shrink, clip_tokens }.
            Awq.AwqOptions? awq;
            if (awqNode is YamlMappingNode)
            {
                var am = Keys(awqNode, "quantize.awq", "grid", "clip", "clip_grid", "max_shrink", "clip_tokens");
                awq = new Awq.AwqOptions();
                if (am.TryGetValue("grid", out var ag)) awq = awq with { Grid = Positive(ag, "awq.grid") };
                if (am.TryGetValue("clip", out var ac)) awq = awq with { Clip = Bool(ac, "awq.clip") };
                if (am.TryGetValue("clip_grid", out var acg)) awq = awq with { ClipGrid = Positive(acg, "awq.clip_grid") };
                if (am.TryGetValue("clip_tokens", out var act)) awq = awq with { ClipTokens = Positive(act, "awq.clip_tokens") };
                if (am.TryGetValue("max_shrink", out var ams))
                {
                    double shrink = Double(ams, "awq.max_shrink");
                    if (shrink is < 0 or >= 1) throw Error(ErrorCodes.ManifestValue, "awq.max_shrink must be in [0, 1) (clipping down to (1 − max_shrink)·amax)", ams);
                    awq = awq with { MaxShrink = shrink };
                }
            }
            else awq = Bool(awqNode, "quantize.awq") ? new Awq.AwqOptions() : null;
            if (awq is not null)
            {
                string? refusal = scheme switch
                {
                    SpqrScheme => "spqr keeps outliers in fp16 and quantizes the rest with its own bilevel statistics; AWQ's scales target a plain group grid",
                    BillmScheme => "billm binarizes with its own salience split; AWQ's scales target a plain group grid",
                    NoneScheme => "method none does not quantize",
                    _ when q.Oac is not null => "hessian: output_adaptive already weighs the solve by the output; combine awq with the layer-wise Hessian",
                    _ when q.Rotation is not null => "rotate: hadamard changes the channels AWQ scales (and down_proj's input is rotated online)",
                    _ when q.Imatrix is not null => "hessian: imatrix is round-to-nearest with llama.cpp's importance; AWQ is round-to-nearest with its own scales: pick one",
                    _ => null,
                };
                if (refusal is not null) throw Error(ErrorCodes.ManifestCombination, $"awq cannot be combined here: {refusal}", awqNode);
                q = q with { Awq = awq };
            }
        }
        if (m.TryGetValue("grid_importance", out var gi) && Bool(gi, "quantize.grid_importance"))
        {
            if (scheme is not GptqScheme)
                throw Error(ErrorCodes.ManifestCombination, $"grid_importance weighs the GPTQ/GPTAQ column loop's GGUF block search with diag(H); method '{scheme.Name}' has none", gi);
            scheme = scheme with { GridImportance = true };
        }
        if (m.TryGetValue("mse_clip", out var mse)) scheme = scheme with { MseClip = Bool(mse, "quantize.mse_clip") };
        if (m.TryGetValue("grid", out var grid))
            scheme = scheme with { Grid = Enum(grid, "quantize.grid", ("gptq", GridConvention.Gptq), ("quarot", GridConvention.QuaRot)) };
        if (m.TryGetValue("block_size", out var bs)) scheme = scheme with { BlockSize = Positive(bs, "quantize.block_size") };
        if (m.TryGetValue("alpha", out var alpha))
        {
            if (scheme is not GptaqScheme gptaq) throw Error(ErrorCodes.ManifestCombination, "alpha (GPTAQ's P scale) applies to method 'gptaq' only", alpha);
            scheme = gptaq with { Alpha = Double(alpha, "quantize.alpha") };
        }
        if (m.TryGetValue("alpha2", out var alpha2))
        {
            if (scheme is not GptqScheme { CompensationAware: true } rc) throw Error(ErrorCodes.ManifestCombination, "alpha2 (ResComp's R scale) needs compensation_aware: true", alpha2);
            scheme = rc with { Alpha2 = Double(alpha2, "quantize.alpha2") };
        }
        if (m.TryGetValue("rescomp_mode", out var rm))
        {
            if (scheme is not GptqScheme { CompensationAware: true } rc) throw Error(ErrorCodes.ManifestCombination, "rescomp_mode needs compensation_aware: true", rm);
            scheme = rc with { ResCompMode = Enum(rm, "quantize.rescomp_mode", ("auto", ResCompMode.Auto), ("org", ResCompMode.Org), ("allw", ResCompMode.AllW)) };
        }
        q = q with { Scheme = scheme };
        if (m.TryGetValue("layers", out var layers)) q = q with { Layers = ReadLayers(layers) };
        return q;
    }

    List<LayerRule> ReadLayers(YamlNode node)
    {
        if (node is not YamlSequenceNode seq) throw Error(ErrorCodes.ManifestType, "quantize.layers must be a list of { match, bits, group_size, skip }", node);
        var rules = new List<LayerRule>();
        foreach (var item in seq)
        {
            var m = Keys(item, "layer rule", "match", "bits", "group_size", "skip", "type");
            var match = m.GetValueOrDefault("match") ?? throw Error(ErrorCodes.ManifestMissing, "a layer rule needs 'match' (a glob on module names)", item);
            string pattern = Str(match, "match");
            int? bits = m.TryGetValue("bits", out var b) ? Bits(b, "bits") : null;
            int? gs = m.TryGetValue("group_size", out var g) ? GroupSize(g, "group_size") : null;
            bool skip = m.TryGetValue("skip", out var s) && Bool(s, "skip");
            if (!skip && (pattern == "lm_head" || pattern.Contains("embed")))
                throw Error(ErrorCodes.ManifestNotAvailable, "quantizing lm_head or embeddings is not supported; they stay in full precision", match);
            Gguf.GgmlType? type = null;
            if (m.TryGetValue("type", out var tn))
            {
                string text = Str(tn, "type");
                type = Gguf.GgufRecipe.ParseTensorType(text)
                    ?? throw Error(ErrorCodes.ManifestValue, $"type '{text}' is not a GGUF tensor type ({string.Join(", ", Gguf.GgufRecipe.TensorTypeNames)})", tn);
            }
            var rule = new LayerRule(pattern, bits, gs, skip, Span(item)) { GgufType = type };
            rules.Add(rule);
            _ruleNodes.Add((rule, item));
        }
        return rules;
    }

    OutputSpec ReadOutput(YamlNode? node, string model, QuantizeSpec q, YamlNode root)
    {
        string defaultName = $"{Path.GetFileName(model.TrimEnd('/', '\\'))}-{Name(q.Method)}-w{q.Bits}";
        if (node is null)
        {
            CheckNotGguf(q, root, null);
            return new OutputSpec(defaultName, OutputFormat.DotQuant, false, null, null, null);
        }
        var m = Keys(node, "output", "name", "format", "embed", "package", "shard_size", "gguf", "onnx");
        var format = m.TryGetValue("format", out var f) ? Enum(f, "output.format", ("dotquant", OutputFormat.DotQuant), ("gptq", OutputFormat.Gptq), ("gguf", OutputFormat.Gguf), ("onnx", OutputFormat.Onnx)) : OutputFormat.DotQuant;
        // A GGUF's type is in its file name (name-type.gguf), not in the folder's default name.
        if (format == OutputFormat.Gguf) defaultName = $"{Path.GetFileName(model.TrimEnd('/', '\\'))}-{Name(q.Method)}";
        string name = m.TryGetValue("name", out var n) ? Str(n, "output.name") : defaultName;
        if (name.Length == 0 || name.IndexOfAny(Path.GetInvalidFileNameChars()) >= 0 || name is "." or "..")
            throw Error(ErrorCodes.ManifestValue, $"output.name '{name}' is not a valid folder name", n!);
        Gguf.GgufRecipe? recipe = null;
        if (format == OutputFormat.Gguf) recipe = ReadGguf(m.GetValueOrDefault("gguf"), q, f!) with { WithImportance = q.Imatrix is not null };
        else CheckNotGguf(q, m.GetValueOrDefault("gguf") ?? root, m.GetValueOrDefault("gguf"));
        if (q.Scheme.GridImportance && format != OutputFormat.Gguf)
            throw Error(ErrorCodes.ManifestCombination, "grid_importance weighs llama.cpp's k-quant block search; it needs format: gguf", f ?? root);
        if (q.Imatrix is not null && format != OutputFormat.Gguf)
            throw Error(ErrorCodes.ImatrixMismatch, "hessian: imatrix weighs llama.cpp's block grids; it needs format: gguf", f ?? root);
        if (format == OutputFormat.Gptq)
        {
            if (q.Method is QuantMethod.SpQR or QuantMethod.BiLLM)
                throw Error(ErrorCodes.ManifestCombination, $"format 'gptq' cannot store {Name(q.Method)} ({(q.Method == QuantMethod.SpQR ? "bilevel statistics and sparse outliers" : "binary groups and salient columns")}); use format 'dotquant'", f!);
            if (q.Rotation is not null)
                throw Error(ErrorCodes.ManifestCombination, "format 'gptq' cannot carry a rotated model (the online Hadamard before down_proj and the untied head are DotQuant runtime features); use format 'dotquant'", f!);
            if (q.Bits is not (2 or 3 or 4 or 8) || q.Layers.Any(r => r.Bits is int b && b is not (2 or 3 or 4 or 8)))
                throw Error(ErrorCodes.ManifestCombination, "format 'gptq' stores int2/3/4/8 only", f!);
            if (q.Layers.Any(r => r.Bits is not null && r.Bits != q.Bits) || q.Layers.Any(r => r.GroupSize is not null && r.GroupSize != q.GroupSize))
                throw Error(ErrorCodes.ManifestCombination, "format 'gptq' needs uniform bits and group size (per-layer overrides other than skip are not representable)", f!);
        }
        var head = OnnxHead.Int8;
        int accuracy = 4;
        if (format == OutputFormat.Onnx)
        {
            CheckOnnx(q, f!);
            if (m.TryGetValue("onnx", out var on))
            {
                var om = Keys(on, "output.onnx", "head", "accuracy_level");
                if (om.TryGetValue("head", out var hn))
                    head = Enum(hn, "output.onnx.head", ("int8", OnnxHead.Int8), ("int4", OnnxHead.Int4), ("float", OnnxHead.Float));
                if (om.TryGetValue("accuracy_level", out var al))
                    accuracy = Enum(al, "output.onnx.accuracy_level", ("0", 0), ("4", 4));
            }
        }
        else if (m.TryGetValue("onnx", out var onnxNode))
            throw Error(ErrorCodes.ManifestCombination, "output.onnx needs format: onnx", onnxNode);
        bool embed = m.TryGetValue("embed", out var e) && Bool(e, "output.embed");
        string? id = null, version = null, authors = null;
        if (m.TryGetValue("package", out var pkg))
        {
            var pm = Keys(pkg, "output.package", "id", "version", "authors");
            id = pm.TryGetValue("id", out var i) ? Str(i, "output.package.id") : throw Error(ErrorCodes.ManifestMissing, "output.package needs 'id'", pkg);
            version = pm.TryGetValue("version", out var v) ? Str(v, "output.package.version") : throw Error(ErrorCodes.ManifestMissing, "output.package needs 'version'", pkg);
            authors = pm.TryGetValue("authors", out var a) ? Str(a, "output.package.authors") : null;
        }
        long shard = OutputSpec.DefaultShardBytes;
        if (m.TryGetValue("shard_size", out var ss))
        {
            string text = Scalar(ss, "output.shard_size", "a size such as 5GB or 2GiB");
            if (!IO.ByteSize.TryParse(text, out shard))
                throw Error(ErrorCodes.ManifestValue, $"output.shard_size '{text}' is not a size (e.g. 5GB, 2GiB, 500MB; a tensor larger than the shard size gets a shard of its own)", ss);
        }
        return new OutputSpec(name, format, embed, id, version, authors) { ShardBytes = shard, Gguf = recipe, OnnxHead = head, OnnxAccuracyLevel = accuracy };
    }

    /// <summary>output.gguf and what a GGUF file can hold: the type fixes bits, block and grid; the
    /// methods are those whose weights are codes on a grid (not SpQR's outliers, BiLLM's binary groups or
    /// QuaRot's online rotation); act order only with static groups (GGUF blocks are contiguous columns,
    /// there is no g_idx); method none makes a float file.</summary>
    Gguf.GgufRecipe ReadGguf(YamlNode? node, QuantizeSpec q, YamlNode format)
    {
        string? typeName = null;
        YamlNode at = node ?? format;
        if (node is not null)
        {
            var gm = Keys(node, "output.gguf", "type");
            if (gm.TryGetValue("type", out var t)) { typeName = Str(t, "output.gguf.type"); at = t; }
        }
        typeName ??= q.Method == QuantMethod.None ? "f16" : "q4_k_m";
        var recipe = Gguf.GgufRecipe.Parse(typeName)
            ?? throw Error(ErrorCodes.ManifestValue, $"output.gguf.type '{typeName}' is not a GGUF type ({string.Join(", ", Gguf.GgufRecipe.Names)})", at);
        if (recipe.IsFloat && q.Method != QuantMethod.None)
            throw Error(ErrorCodes.ManifestCombination, $"output.gguf.type '{recipe.Name}' is a float type: use quantize.method: none (or a quantized type such as q4_k_m)", at);
        if (!recipe.IsFloat && q.Method == QuantMethod.None)
            throw Error(ErrorCodes.ManifestCombination, $"quantize.method none writes a float GGUF: output.gguf.type must be f32, f16 or bf16, not '{recipe.Name}'", at);
        if (q.Method is QuantMethod.SpQR or QuantMethod.BiLLM)
            throw Error(ErrorCodes.ManifestCombination, $"format 'gguf' cannot store {Name(q.Method)} ({(q.Method == QuantMethod.SpQR ? "sparse outliers and bilevel statistics" : "binary groups and salient columns")}); use rtn, gptq or gptaq, or format 'dotquant'", format);
        if (q.Rotation is not null)
            throw Error(ErrorCodes.ManifestCombination, "format 'gguf' cannot carry a rotated model (llama.cpp's graph has no online Hadamard before down_proj); remove rotate", format);
        foreach (var key in new[] { "bits", "group_size", "symmetric", "grid", "mse_clip" })
            if (_quantizeKeys.TryGetValue(key, out var k))
                throw Error(ErrorCodes.ManifestCombination, $"quantize.{key} has no effect with format 'gguf': output.gguf.type fixes the bits, block and grid (use a layers rule with 'type' for other tensors)", k);
        if (q.ActOrder && !q.StaticGroups)
            throw Error(ErrorCodes.ManifestCombination, "act_order on GGUF blocks needs static_groups: true (a GGUF block is 32 or 256 contiguous input columns and there is no g_idx)", _quantizeKeys.GetValueOrDefault("act_order") ?? format);
        foreach (var (rule, ruleNode) in _ruleNodes)
            if (rule.Bits is not null || rule.GroupSize is not null)
                throw Error(ErrorCodes.ManifestCombination, "a layers rule with format 'gguf' takes 'type' (a GGUF tensor type) or 'skip', not bits or group_size", ruleNode);
        return recipe;
    }

    /// <summary>What ONNX Runtime's MatMulNBits can hold: codes of 4 or 8 bits on a grid, in blocks of a
    /// power of two from 16 along the input (a group of g columns is g/block blocks with the same scale,
    /// so g must be a multiple of 16, or per-channel); consecutive groups (act order only with static
    /// groups: with g_idx ORT 1.31 ignores packed zero points); no SpQR/BiLLM, no online rotation.</summary>
    void CheckOnnx(QuantizeSpec q, YamlNode format)
    {
        if (q.Method is QuantMethod.SpQR or QuantMethod.BiLLM)
            throw Error(ErrorCodes.ManifestCombination, $"format 'onnx' cannot store {Name(q.Method)} ({(q.Method == QuantMethod.SpQR ? "sparse outliers and bilevel statistics" : "binary groups and salient columns")}); use rtn, gptq or gptaq, or format 'dotquant'", format);
        if (q.Rotation is not null)
            throw Error(ErrorCodes.ManifestCombination, "format 'onnx' cannot carry a rotated model yet (the graph has no online Hadamard before down_proj); remove rotate", format);
        YamlNode At(string key) => _quantizeKeys.GetValueOrDefault(key) ?? format;
        if (q.Bits is not (4 or 8))
            throw Error(ErrorCodes.ManifestCombination, $"format 'onnx' stores 4 or 8 bits (MatMulNBits), not {q.Bits}", At("bits"));
        if (q.GroupSize != -1 && q.GroupSize % 16 != 0)
            throw Error(ErrorCodes.ManifestCombination, $"format 'onnx' needs a group size that is a multiple of 16 (MatMulNBits blocks are 16 to 128 columns) or -1, not {q.GroupSize}", At("group_size"));
        foreach (var (rule, ruleNode) in _ruleNodes)
            if ((rule.Bits is int b && b is not (4 or 8)) || (rule.GroupSize is int g && g != -1 && g % 16 != 0))
                throw Error(ErrorCodes.ManifestCombination, "format 'onnx': a layers rule needs bits 4 or 8 and a group size that is a multiple of 16 (or -1)", ruleNode);
        if (q.ActOrder && !q.StaticGroups)
            throw Error(ErrorCodes.ManifestCombination, "act_order with format 'onnx' needs static_groups: true (MatMulNBits blocks are contiguous columns; ONNX Runtime 1.31 mis-reads packed zero points together with g_idx)", At("act_order"));
    }

    void CheckNotGguf(QuantizeSpec q, YamlNode at, YamlNode? ggufNode)
    {
        if (ggufNode is not null)
            throw Error(ErrorCodes.ManifestCombination, "output.gguf needs format: gguf", ggufNode);
        if (q.Method == QuantMethod.None)
            throw Error(ErrorCodes.ManifestCombination, "quantize.method none converts to a float GGUF: it needs output.format: gguf", _quantizeKeys.GetValueOrDefault("method") ?? at);
        foreach (var (rule, ruleNode) in _ruleNodes)
            if (rule.GgufType is not null)
                throw Error(ErrorCodes.ManifestCombination, "a layers rule's 'type' is a GGUF tensor type: it needs output.format: gguf", ruleNode);
    }

    EvaluateSpec ReadEvaluate(YamlNode node)
    {
        var m = Keys(node, "evaluate", "perplexity", "gate", "tasks", "rtn_baseline");
        PerplexitySpec? ppl = null;
        if (m.TryGetValue("perplexity", out var p))
        {
            var pm = Keys(p, "evaluate.perplexity", "data", "sequence_length", "max_sequences");
            var data = pm.GetValueOrDefault("data") ?? throw Error(ErrorCodes.ManifestMissing, "evaluate.perplexity needs 'data'", p);
            string evalPath = ResolvePath(Str(data, "evaluate.perplexity.data"));
            if (_checkFiles && !File.Exists(evalPath))
                throw Error(ErrorCodes.EvalData, $"evaluation data not found: {evalPath}", data);
            ppl = new PerplexitySpec(evalPath,
                pm.TryGetValue("sequence_length", out var l) ? Positive(l, "evaluate.perplexity.sequence_length") : null,
                pm.TryGetValue("max_sequences", out var ms) ? Positive(ms, "evaluate.perplexity.max_sequences") : null);
        }
        GateSpec? gate = null;
        if (m.TryGetValue("gate", out var g))
        {
            if (ppl is null) throw Error(ErrorCodes.ManifestCombination, "a gate needs evaluate.perplexity", g);
            var gm = Keys(g, "evaluate.gate", "max_perplexity_increase");
            var inc = gm.GetValueOrDefault("max_perplexity_increase") ?? throw Error(ErrorCodes.ManifestMissing, "gate needs 'max_perplexity_increase' (e.g. 10% or 0.5)", g);
            string text = Str(inc, "max_perplexity_increase").Trim();
            bool relative = text.EndsWith('%');
            if (!double.TryParse(relative ? text[..^1] : text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || v < 0)
                throw Error(ErrorCodes.ManifestValue, $"max_perplexity_increase '{text}' must be a non-negative number or percentage", inc);
            gate = new GateSpec(relative ? v / 100 : v, relative);
        }
        TasksSpec? tasks = null;
        if (m.TryGetValue("tasks", out var t))
        {
            var tm = Keys(t, "evaluate.tasks", "names", "dir", "limit");
            var names = tm.GetValueOrDefault("names") ?? throw Error(ErrorCodes.ManifestMissing, "evaluate.tasks needs 'names' (e.g. [piqa, arc_easy])", t);
            var list = names is YamlSequenceNode seq
                ? seq.Select(n => Str(n, "evaluate.tasks.names")).ToList()
                : Str(names, "evaluate.tasks.names").Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList();
            if (list.Count == 0) throw Error(ErrorCodes.ManifestValue, "evaluate.tasks.names is empty", names);
            string dir = tm.TryGetValue("dir", out var d) ? ResolvePath(Str(d, "evaluate.tasks.dir")) : _dir;
            var files = new List<string>();
            foreach (var name in list)
                files.Add(Evaluation.ZeroShotTask.Find(name, dir, out _, asPath: ResolvePath(name))
                    ?? throw Error(ErrorCodes.EvalData, $"task '{name}' not found (looked for {name}.jsonl and {name}.txt in {dir})", names));
            int? limit = tm.TryGetValue("limit", out var l2) ? Positive(l2, "evaluate.tasks.limit") : null;
            tasks = new TasksSpec(files, limit);
        }
        return new EvaluateSpec(ppl, gate, tasks, m.TryGetValue("rtn_baseline", out var rb) && Bool(rb, "evaluate.rtn_baseline"));
    }

    // ---------- typed access with positions ----------

    Dictionary<string, YamlNode> Keys(YamlNode node, string what, params string[] known)
    {
        if (node is not YamlMappingNode map)
            throw Error(ErrorCodes.ManifestType, $"{what} must be a mapping of keys", node);
        var result = new Dictionary<string, YamlNode>(StringComparer.Ordinal);
        foreach (var (k, v) in map.Children)
        {
            string key = k is YamlScalarNode s ? s.Value ?? "" : throw Error(ErrorCodes.ManifestType, "keys must be plain names", k);
            if (!known.Contains(key))
            {
                string hint = known.OrderBy(c => Distance(c, key)).First();
                throw Error(ErrorCodes.ManifestUnknownKey, $"unknown key '{key}' in {what}" + (Distance(hint, key) <= 3 ? $" (did you mean '{hint}'?)" : $" (known: {string.Join(", ", known)})"), k);
            }
            if (!result.TryAdd(key, v)) throw Error(ErrorCodes.ManifestSyntax, $"key '{key}' appears twice", k);
        }
        return result;
    }

    string Str(YamlNode node, string key) =>
        node is YamlScalarNode { Value: { } v } ? v : throw Error(ErrorCodes.ManifestType, $"{key} must be a string", node);

    string Scalar(YamlNode node, string key, string expected) =>
        node is YamlScalarNode { Value: { } v } && !(v.Length == 0 && ((YamlScalarNode)node).Style == ScalarStyle.Plain)
            ? v
            : throw Error(ErrorCodes.ManifestType, $"{key} must be {expected}", node);

    long Long(YamlNode node, string key)
    {
        string v = Scalar(node, key, "an integer");
        return long.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out long r) ? r : throw Error(ErrorCodes.ManifestType, $"{key} must be an integer (got '{v}')", node);
    }

    int Int(YamlNode node, string key)
    {
        long v = Long(node, key);
        return v is >= int.MinValue and <= int.MaxValue ? (int)v : throw Error(ErrorCodes.ManifestValue, $"{key} is out of range", node);
    }

    int Positive(YamlNode node, string key)
    {
        int v = Int(node, key);
        return v > 0 ? v : throw Error(ErrorCodes.ManifestValue, $"{key} must be positive (got {v})", node);
    }

    int Bits(YamlNode node, string key)
    {
        int v = Int(node, key);
        return v is >= 2 and <= 8 ? v : throw Error(ErrorCodes.ManifestValue, $"{key} must be between 2 and 8 (got {v})", node);
    }

    int StatBits(YamlNode node, string key)
    {
        int v = Int(node, key);
        return v is >= 1 and <= 8 ? v : throw Error(ErrorCodes.ManifestValue, $"{key} must be between 1 and 8 (got {v})", node);
    }

    int GroupSize(YamlNode node, string key)
    {
        int v = Int(node, key);
        return v == -1 || v >= 2 ? v : throw Error(ErrorCodes.ManifestValue, $"{key} must be -1 (per output channel) or at least 2 (got {v})", node);
    }

    double Double(YamlNode node, string key)
    {
        string v = Scalar(node, key, "a number");
        return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double r) && double.IsFinite(r)
            ? r : throw Error(ErrorCodes.ManifestType, $"{key} must be a number (got '{v}')", node);
    }

    bool Bool(YamlNode node, string key) => Scalar(node, key, "true or false") switch
    {
        "true" or "True" or "TRUE" => true,
        "false" or "False" or "FALSE" => false,
        var v => throw Error(ErrorCodes.ManifestType, $"{key} must be true or false (got '{v}')", node),
    };

    T Enum<T>(YamlNode node, string key, params (string Name, T Value)[] options)
    {
        string v = Scalar(node, key, "one of " + string.Join(", ", options.Select(o => o.Name)));
        foreach (var (name, value) in options)
            if (name == v) return value;
        throw Error(ErrorCodes.ManifestValue, $"{key} '{v}' is not one of: {string.Join(", ", options.Select(o => o.Name))}", node);
    }

    static string Name(QuantMethod m) => m.ToString().ToLowerInvariant();

    string ResolvePath(string p) => Path.GetFullPath(Path.IsPathRooted(p) ? p : Path.Combine(_dir, p));

    SourceSpan Span(YamlNode node) => new(_file, (int)node.Start.Line, (int)node.Start.Column);

    DotQuantException Error(string code, string message, YamlNode node) => Error(code, message, (int)node.Start.Line, (int)node.Start.Column);

    DotQuantException Error(string code, string message, int line, int column) =>
        new(code, message, _file, line: Math.Max(1, line), column: Math.Max(1, column));

    static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
        return d[a.Length, b.Length];
    }
}
