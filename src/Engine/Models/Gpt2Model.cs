using DotQuant.Runtime;
using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>GPT-2 (transformers' GPT2LMHeadModel): learned position embeddings, pre-LayerNorm blocks
/// with biases everywhere, q/k/v fused in c_attn, a gelu_new (tanh) MLP, tied head. The checkpoint's
/// Conv1D weights are [in, out]; <see cref="Conv1DWeights"/> turns them so the four linears of a block
/// (c_attn, attn.c_proj, c_fc, mlp.c_proj) are calibrated like any other. Names with and without the
/// <c>transformer.</c> prefix (hub checkpoints have both) are read.</summary>
public sealed class Gpt2Model : DecoderModel
{
    sealed class Gpt2Block(Gpt2Model model, int index) : DecoderBlock
    {
        public required NamedLinear Attn, AttnProj, Fc, MlpProj;
        public required Tensor Ln1Weight, Ln1Bias, Ln2Weight, Ln2Bias;

        public override int Index => index;
        public override IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups => [[Attn], [AttnProj], [Fc], [MlpProj]];

        public override Tensor Forward(Tensor hidden, ForwardContext ctx, LinearInputObserver? observer = null) =>
            model.StagesOf(this, observer).Forward(hidden, ctx);

        public override IStagedBlock Stages => model.StagesOf(this, null);

        public override void Dispose()
        {
            foreach (var l in new[] { Attn, AttnProj, Fc, MlpProj }) l.Dispose();
            foreach (var t in new[] { Ln1Weight, Ln1Bias, Ln2Weight, Ln2Bias }) t.Dispose();
        }
    }

    readonly ModelConfig _config;
    readonly string _prefix;             // "transformer." or ""
    readonly Tensor _lnfWeight, _lnfBias, _positions;
    Tensor? _wte;

    public override ModelConfig Config => _config;

    Gpt2Model(ModelConfig config, IWeightSource weights, bool ownsSource, string prefix) : base(weights, ownsSource)
    {
        _config = config;
        _prefix = prefix;
        _lnfWeight = weights.Load(prefix + "ln_f.weight", config.HiddenSize).DetachFromDisposeScope();
        _lnfBias = weights.Load(prefix + "ln_f.bias", config.HiddenSize).DetachFromDisposeScope();
        using var wpe = weights.Load(prefix + "wpe.weight", config.MaxPositionEmbeddings, config.HiddenSize);
        _positions = wpe.to(ScalarType.Float32).DetachFromDisposeScope();
    }

    static readonly string[] Conv1DModules = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"];

    /// <summary>Binds a GPT-2 checkpoint. A plain checkpoint stores Conv1D weights [in, out] and is viewed
    /// turned; DotQuant packages and GGUF files already hold [out, in].</summary>
    public static Gpt2Model Open(ModelConfig c, IWeightSource weights, bool ownsSource)
    {
        string prefix = weights.Contains("transformer.wte.weight") ? "transformer." : weights.Contains("wte.weight") ? "" :
            throw new DotQuantException(ErrorCodes.WeightMissing, "neither transformer.wte.weight nor wte.weight is in the checkpoint", weights.Directory);
        IWeightSource source = weights is Checkpoint
            ? new Conv1DWeights(weights, n => n.StartsWith(prefix + "h.", StringComparison.Ordinal) && Conv1DModules.Any(m => n.EndsWith(m, StringComparison.Ordinal)))
            : weights;
        long h = c.HiddenSize;
        WeightCheck.Expect(source, prefix + "wte.weight", [c.VocabSize, h]);
        WeightCheck.Expect(source, prefix + "wpe.weight", [c.MaxPositionEmbeddings, h]);
        for (int i = 0; i < c.NumLayers; i++)
        {
            foreach (var l in Layout(c, prefix, i).SelectMany(g => g))
            {
                WeightCheck.Expect(source, l.Name + ".weight", [l.OutFeatures, l.InFeatures]);
                WeightCheck.Expect(source, l.Name + ".bias", [l.OutFeatures]);
            }
            foreach (var n in new[] { "ln_1", "ln_2" })
            {
                WeightCheck.Expect(source, $"{prefix}h.{i}.{n}.weight", [h]);
                WeightCheck.Expect(source, $"{prefix}h.{i}.{n}.bias", [h]);
            }
        }
        if (!c.TieWordEmbeddings && !source.Contains("lm_head.weight"))
            throw new DotQuantException(ErrorCodes.WeightMissing, "tie_word_embeddings is false but the checkpoint has no lm_head.weight", weights.Directory);
        return new Gpt2Model(c, source, ownsSource, prefix);
    }

    static IReadOnlyList<IReadOnlyList<LinearSpec>> Layout(ModelConfig c, string prefix, int i)
    {
        long h = c.HiddenSize, f = c.IntermediateSize;
        string p = $"{prefix}h.{i}.";
        return [[new(p + "attn.c_attn", 3 * h, h)], [new(p + "attn.c_proj", h, h)], [new(p + "mlp.c_fc", f, h)], [new(p + "mlp.c_proj", h, f)]];
    }

    public override IReadOnlyList<IReadOnlyList<LinearSpec>> LinearLayout(int index) => Layout(_config, _prefix, index);


    public override string BlockPrefix(int index) => $"{_prefix}h.{index}.";

    public override DecoderBlock LoadBlock(int i)
    {
        if (i < 0 || i >= BlockCount) throw new ArgumentOutOfRangeException(nameof(i));
        string p = BlockPrefix(i);
        long h = _config.HiddenSize;
        var layout = Layout(_config, _prefix, i);
        return new BlockLoader(Weights).Build(load => new Gpt2Block(this, i)
        {
            Attn = load.Linear(layout[0][0], true), AttnProj = load.Linear(layout[1][0], true),
            Fc = load.Linear(layout[2][0], true), MlpProj = load.Linear(layout[3][0], true),
            Ln1Weight = load.Tensor(p + "ln_1.weight", h), Ln1Bias = load.Tensor(p + "ln_1.bias", h),
            Ln2Weight = load.Tensor(p + "ln_2.weight", h), Ln2Bias = load.Tensor(p + "ln_2.bias", h),
        });
    }

    protected override void OnResident() =>
        _wte = Weights.Load(_prefix + "wte.weight", _config.VocabSize, _config.HiddenSize).DetachFromDisposeScope();

    public override Tensor Embed(Tensor ids, long past = 0)
    {
        long t = ids.shape[1];
        if (past + t > _config.MaxPositionEmbeddings)
            throw new DotQuantException(ErrorCodes.ConfigInconsistent, $"GPT-2 has {_config.MaxPositionEmbeddings} learned positions; {past + t} were asked for");
        using var scope = NewDisposeScope();
        var flat = ids.reshape(-1);
        var rows = _wte is not null ? _wte.index_select(0, flat) : Weights.LoadRows(_prefix + "wte.weight", flat);
        var tokens = rows.to(ScalarType.Float32).view(ids.shape[0], t, -1);
        return scope.MoveToOuter(tokens.add(_positions.narrow(0, past, t), Scalars.One));
    }

    Tensor LayerNorm(Tensor x, Tensor weight, Tensor bias) =>
        nn.functional.layer_norm(x, [_config.HiddenSize], weight.to(ScalarType.Float32), bias.to(ScalarType.Float32), _config.RmsNormEps);

    /// <summary>The block's five stages (see <see cref="SublayerStages"/>), its forward when composed.</summary>
    SublayerStages StagesOf(Gpt2Block b, LinearInputObserver? observer) => new(
        x => LayerNorm(x, b.Ln1Weight, b.Ln1Bias),
        (x, ctx) => AttentionStage(b, x, ctx, observer),
        (h, attn) => OutputStage(b, h, attn, observer),
        x => FcStage(b, x, observer),
        (h, a) => ProjStage(b, h, a, observer));

    /// <summary>c_proj's input: causal attention over the fused q, k, v of the normed hidden states.</summary>
    Tensor AttentionStage(Gpt2Block b, Tensor x, ForwardContext ctx, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        long batch = x.shape[0], t = x.shape[1], h = _config.HiddenSize;
        int heads = _config.NumHeads, d = _config.HeadDim;
        observer?.Invoke(b.Attn, x);
        var qkv = b.Attn.Forward(x);
        var q = qkv.narrow(-1, 0, h).view(batch, t, heads, d).transpose(1, 2);
        var k = qkv.narrow(-1, h, h).view(batch, t, heads, d).transpose(1, 2);
        var v = qkv.narrow(-1, 2 * h, h).view(batch, t, heads, d).transpose(1, 2);
        if (ctx.Cache is not null)
            (k, v) = ctx.Cache.Append(b.Index, k, v);
        var attn = ctx.Mask is null && ctx.PastLength == 0 && t > 1
            ? nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, true)
            : nn.functional.scaled_dot_product_attention(q, k, v, ctx.Mask, 0.0, false);
        return scope.MoveToOuter(attn.transpose(1, 2).reshape(batch, t, h));
    }

    (Tensor Residual, Tensor MlpInput) OutputStage(Gpt2Block b, Tensor hidden, Tensor attn, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        observer?.Invoke(b.AttnProj, attn);
        var hh = hidden.Plus(b.AttnProj.Forward(attn));
        var x = LayerNorm(hh, b.Ln2Weight, b.Ln2Bias);
        return (scope.MoveToOuter(hh), scope.MoveToOuter(x));
    }

    Tensor FcStage(Gpt2Block b, Tensor x, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        observer?.Invoke(b.Fc, x);
        return scope.MoveToOuter(nn.functional.gelu(b.Fc.Forward(x), TorchSharp.Modules.GELU.Approximate.tanh));
    }

    Tensor ProjStage(Gpt2Block b, Tensor hh, Tensor act, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        observer?.Invoke(b.MlpProj, act);
        return scope.MoveToOuter(hh.Plus(b.MlpProj.Forward(act)));
    }

    public override Tensor FinalNorm(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(LayerNorm(hidden, _lnfWeight, _lnfBias));
    }

    public override string HeadName => _config.TieWordEmbeddings ? _prefix + "wte.weight" : "lm_head.weight";

    public override Tensor HeadWeight()
    {
        if (!_config.TieWordEmbeddings)
        {
            using var head = Weights.Load("lm_head.weight", _config.VocabSize, _config.HiddenSize);
            return head.to(ScalarType.Float32);
        }
        if (_wte is not null) return _wte.dtype == ScalarType.Float32 ? _wte.alias() : _wte.to(ScalarType.Float32);
        using var w = Weights.Load(_prefix + "wte.weight", _config.VocabSize, _config.HiddenSize);
        return w.dtype == ScalarType.Float32 ? w.alias() : w.to(ScalarType.Float32);
    }

    public override ForwardContext CreateContext(long past, long length, KvCache? cache = null)
    {
        long total = past + length;
        Tensor? mask = null;
        if (past > 0 && length > 1)
        {
            using var i = arange(Scalars.Of(past), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(1);
            using var j = arange(Scalars.Of(0L), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(0);
            mask = j.le(i).DetachFromDisposeScope();
        }
        // No rotary: empty tables keep the context's contract.
        return new ForwardContext
        {
            PastLength = past, Length = length, Cos = empty(0).DetachFromDisposeScope(), Sin = empty(0).DetachFromDisposeScope(),
            Mask = mask, Cache = cache,
        };
    }

    protected override void DisposeTables()
    {
        _wte?.Dispose();
        _lnfWeight.Dispose();
        _lnfBias.Dispose();
        _positions.Dispose();
    }
}
