using System.Text.Json.Nodes;
using DotQuant.Engine.Quantizers;

namespace DotQuant.Engine.Manifest;

public enum QuantMethod { None, Rtn, Gptq, Gptaq, SpQR, BiLLM }

/// <summary>A quantization method's settings: its defaults, the quant.yaml keys it has no use for,
/// the canonical JSON it is recorded as (dotquant.json's scheme; hashed into the fingerprint) and the
/// solver options for one linear. One record per method; a new method is a new record.</summary>
public abstract record QuantScheme
{
    public abstract QuantMethod Method { get; }
    public string Name => Method.ToString().ToLowerInvariant();

    public int Bits { get; init; } = 4;
    /// <summary>Input channels per group; −1 = one group (per output channel).</summary>
    public int GroupSize { get; init; } = 128;
    public bool Symmetric { get; init; }
    public bool MseClip { get; init; }
    public GridConvention Grid { get; init; } = GridConvention.Gptq;
    public bool ActOrder { get; init; }
    public bool StaticGroups { get; init; }
    /// <summary>λ = Damp · mean(diag H) (percdamp).</summary>
    public double Damp { get; init; } = 0.01;
    /// <summary>Lazy-update block width B (spec §3.3).</summary>
    public int BlockSize { get; init; } = 128;
    /// <summary>quantize.grid_importance: the solver weighs each GGUF k-quant block's scale search with
    /// diag(H) (llama.cpp's importance-weighted search fed from the solver's own statistics).</summary>
    public bool GridImportance { get; init; }

    /// <summary>Each method with its own defaults.</summary>
    public static QuantScheme For(QuantMethod method) => method switch
    {
        QuantMethod.None => new NoneScheme(),
        QuantMethod.Rtn => new RtnScheme(),
        QuantMethod.Gptq => new GptqScheme(),
        QuantMethod.Gptaq => new GptaqScheme(),
        QuantMethod.SpQR => new SpqrScheme(),
        QuantMethod.BiLLM => new BillmScheme(),
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    /// <summary>Statistics and forward passes are needed (all but round-to-nearest).</summary>
    public virtual bool NeedsCalibration => true;

    /// <summary>quantize keys that have no effect with this method (a manifest naming one is refused,
    /// so a misunderstanding does not pass silently), and why.</summary>
    public virtual (IReadOnlyList<string> Keys, string Why) Unused => ([], "");

    /// <summary>Why the output-adaptive Hessian cannot be used, or null when it can.</summary>
    public virtual string? OutputAdaptiveRefusal => null;

    /// <summary>The solver options of one linear with <paramref name="bits"/> and <paramref name="groupSize"/>
    /// (the scheme's, or a layer rule's).</summary>
    public abstract SolverOptions Options(int bits, int groupSize);

    protected SolverOptions Grid_(SolverKind kind, int bits, int groupSize) => new()
    {
        Kind = kind, Bits = bits, GroupSize = groupSize, Symmetric = Symmetric, Convention = Grid, MseClip = MseClip,
        ActOrder = ActOrder, StaticGroups = StaticGroups, Damp = Damp, BlockSize = BlockSize, GridImportance = GridImportance,
    };

    /// <summary>The canonical JSON (field order fixed).</summary>
    public virtual JsonObject ToJson() => GridFields();

    /// <summary>Fields recorded only when set, so the JSON (and fingerprint) of earlier schemes stay as they were.</summary>
    protected JsonObject WithOptionalFields(JsonObject j)
    {
        if (GridImportance) j["grid_importance"] = true;
        return j;
    }

    /// <summary>The fields every Hessian-based method records.</summary>
    protected JsonObject WithSolverFields(bool compensationAware)
    {
        var j = GridFields();
        j["act_order"] = ActOrder;
        j["static_groups"] = StaticGroups;
        j["damp"] = Damp;
        j["block_size"] = BlockSize;
        j["compensation_aware"] = compensationAware;
        return WithOptionalFields(j);
    }

    JsonObject GridFields() => new()
    {
        ["method"] = Name,
        ["bits"] = Bits,
        ["group_size"] = GroupSize,
        ["symmetric"] = Symmetric,
        ["grid"] = Grid.ToString().ToLowerInvariant(),
        ["mse_clip"] = MseClip,
    };
}

/// <summary>No quantization: the weights are converted to the output's float type (a float GGUF, what
/// convert_hf_to_gguf.py writes).</summary>
public sealed record NoneScheme : QuantScheme
{
    public override QuantMethod Method => QuantMethod.None;
    public override bool NeedsCalibration => false;
    public override (IReadOnlyList<string> Keys, string Why) Unused =>
        (["bits", "group_size", "symmetric", "grid", "mse_clip", "act_order", "static_groups", "damp", "block_size"], "(method none converts the weights to a float type)");
    public override string? OutputAdaptiveRefusal => "hessian 'output_adaptive' needs a Hessian-based method, not none";
    public override SolverOptions Options(int bits, int groupSize) => throw new InvalidOperationException("method none has no solver");
    public override JsonObject ToJson() => new() { ["method"] = "none" };
}

/// <summary>Round-to-nearest on the grid: no statistics, the baseline every calibrator must beat.</summary>
public sealed record RtnScheme : QuantScheme
{
    public override QuantMethod Method => QuantMethod.Rtn;
    public override bool NeedsCalibration => false;
    public override (IReadOnlyList<string> Keys, string Why) Unused => (["act_order", "static_groups", "damp", "block_size"], "(no Hessian); remove it");
    public override string? OutputAdaptiveRefusal => "hessian 'output_adaptive' needs a Hessian-based method (gptq, spqr, billm), not rtn";
    public override SolverOptions Options(int bits, int groupSize) => Grid_(SolverKind.Rtn, bits, groupSize);
}

/// <summary>GPTQ's column loop, with ResComp's compensation-aware term as an option.</summary>
public record GptqScheme : QuantScheme
{
    public override QuantMethod Method => QuantMethod.Gptq;
    /// <summary>ResComp's R term (spec §5).</summary>
    public bool CompensationAware { get; init; }
    /// <summary>ResComp's R scale (0.25, hard-coded in the reference).</summary>
    public double Alpha2 { get; init; } = 0.25;
    public ResCompMode ResCompMode { get; init; } = ResCompMode.Auto;

    public override SolverOptions Options(int bits, int groupSize) => Grid_(SolverKind.Gptq, bits, groupSize) with
    {
        Alpha2 = CompensationAware ? Alpha2 : 0,
        ResCompMode = ResCompMode,
    };

    public override JsonObject ToJson()
    {
        var j = WithSolverFields(CompensationAware);
        AddAlpha(j);
        if (CompensationAware) { j["alpha2"] = Alpha2; j["rescomp_mode"] = ResCompMode.ToString().ToLowerInvariant(); }
        return j;
    }

    protected virtual void AddAlpha(JsonObject j) { }
}

/// <summary>GPTAQ: GPTQ's loop with the asymmetric term P from the float stream (spec §4).</summary>
public sealed record GptaqScheme : GptqScheme
{
    public override QuantMethod Method => QuantMethod.Gptaq;
    /// <summary>GPTAQ's P scale (0.25 in every reference implementation; the paper has none).</summary>
    public double Alpha { get; init; } = 0.25;
    public override string? OutputAdaptiveRefusal => "hessian 'output_adaptive' has no asymmetric term: GPTAQ's D is a layer-wise quantity (use gptq, spqr or billm)";
    public override SolverOptions Options(int bits, int groupSize) => base.Options(bits, groupSize) with { Alpha = Alpha };
    protected override void AddAlpha(JsonObject j) => j["alpha"] = Alpha;
}

/// <summary>SpQR (spec §3): defaults are the README configuration (2 bits, β1 = 16, act order, damp 1).</summary>
public sealed record SpqrScheme : QuantScheme
{
    public SpqrScheme()
    {
        Bits = 2;
        GroupSize = 16;
        ActOrder = true;
        Damp = 1.0;
    }

    public override QuantMethod Method => QuantMethod.SpQR;
    /// <summary>Statistics and outlier settings (bits and β1 come from Bits/GroupSize).</summary>
    public SpqrOptions Outliers { get; init; } = new();

    public override SolverOptions Options(int bits, int groupSize) => Grid_(SolverKind.SpQR, bits, groupSize) with
    {
        Spqr = Outliers with { Bits = bits, GroupSize = groupSize, ActOrder = ActOrder, Damp = Damp, BlockSize = BlockSize },
    };

    public override JsonObject ToJson()
    {
        var j = WithSolverFields(false);
        j["spqr"] = new JsonObject
        {
            ["relative_threshold"] = double.IsFinite(Outliers.OutlierThreshold) ? Outliers.OutlierThreshold : null,
            ["scale_bits"] = Outliers.ScaleBits,
            ["zero_bits"] = Outliers.ZeroBits,
            ["stat_group_size"] = Outliers.StatGroupSize,
        };
        return j;
    }
}

/// <summary>BiLLM (spec §4): 1-bit residual binarization in groups of the block size.</summary>
public sealed record BillmScheme : QuantScheme
{
    public BillmScheme()
    {
        Bits = 1;
        GroupSize = 128;
    }

    public override QuantMethod Method => QuantMethod.BiLLM;
    public BillmOptions Binarization { get; init; } = new();
    public override (IReadOnlyList<string> Keys, string Why) Unused =>
        (["bits", "group_size", "act_order", "static_groups", "symmetric", "grid", "mse_clip"], "(1-bit residual binarization; the block_size is the group)");

    public override SolverOptions Options(int bits, int groupSize) => Grid_(SolverKind.BiLLM, bits, groupSize) with
    {
        Billm = Binarization with { BlockSize = BlockSize, Damp = Damp },
    };

    public override JsonObject ToJson()
    {
        var j = WithSolverFields(false);
        j["billm"] = new JsonObject
        {
            ["metric"] = Binarization.Metric.ToString().ToLowerInvariant(),
            ["search_on"] = Binarization.SearchOnSalience ? "salience" : "weights",
            ["max_salient"] = Binarization.MaxSalient,
        };
        return j;
    }
}
