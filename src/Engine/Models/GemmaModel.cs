using DotQuant.Engine.IO;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>Gemma 2 and Gemma 3 (text): the Llama block with Gemma's differences (transformers'
/// Gemma2/Gemma3 modeling): RMSNorm as x̂·(1+w) in fp32, embeddings scaled by √hidden, a norm after
/// attention and after the MLP as well as before each, GeLU-tanh gating, attention scaled by
/// 1/√query_pre_attn_scalar and soft-capped, sliding-window layers (Gemma 3: with their own RoPE base),
/// per-head q/k norms (Gemma 3) and soft-capped final logits (Gemma 2). Linears and their groups are
/// Llama's, so every calibrator applies unchanged.</summary>
public sealed class GemmaModel : DecoderModel
{
    sealed class GemmaBlock(GemmaModel model, int index) : DecoderBlock
    {
        public required NamedLinear Q, K, V, O, Gate, Up, Down;
        public required Tensor InputNorm, PostAttentionNorm, PreFeedForwardNorm, PostFeedForwardNorm;
        public Tensor? QNorm, KNorm;

        public override int Index => index;
        public override IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups => [[Q, K, V], [O], [Gate, Up], [Down]];

        public override Tensor Forward(Tensor hidden, ForwardContext ctx, LinearInputObserver? observer = null) =>
            model.StagesOf(this, observer).Forward(hidden, ctx);

        public override IStagedBlock Stages => model.StagesOf(this, null);

        public override void Dispose()
        {
            foreach (var l in new[] { Q, K, V, O, Gate, Up, Down }) l.Dispose();
            foreach (var t in new[] { InputNorm, PostAttentionNorm, PreFeedForwardNorm, PostFeedForwardNorm, QNorm, KNorm }) t?.Dispose();
        }
    }

    readonly ModelConfig _config;
    readonly GemmaSettings _gemma;
    readonly Tensor _finalNorm;
    readonly Rope _rope, _localRope;
    Tensor? _embed;

    public override ModelConfig Config => _config;

    GemmaModel(ModelConfig config, IWeightSource weights, bool ownsSource) : base(weights, ownsSource)
    {
        _config = config;
        _gemma = config.Gemma!;
        _rope = new Rope(config);
        // Gemma 3's sliding layers rotate with rope_local_base_freq and no scaling; Gemma 2's with the same base.
        _localRope = new Rope(config with { RopeTheta = _gemma.LocalRopeTheta, RopeScaling = null });
        _finalNorm = weights.Load("model.norm.weight", config.HiddenSize).DetachFromDisposeScope();
    }

    public static GemmaModel Open(ModelConfig c, IWeightSource weights, bool ownsSource)
    {
        long h = c.HiddenSize;
        WeightCheck.Expect(weights, "model.embed_tokens.weight", [c.VocabSize, h]);
        for (int i = 0; i < c.NumLayers; i++)
        {
            foreach (var l in Layout(c, i).SelectMany(g => g))
                WeightCheck.Expect(weights, l.Name + ".weight", [l.OutFeatures, l.InFeatures]);
            foreach (var (n, len) in Norms(c, i))
                WeightCheck.Expect(weights, n, [len]);
        }
        WeightCheck.Expect(weights, "model.norm.weight", [h]);
        return new GemmaModel(c, weights, ownsSource);
    }

    static IEnumerable<(string Name, long Length)> Norms(ModelConfig c, int i)
    {
        string p = $"model.layers.{i}.";
        foreach (var n in new[] { "input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm" })
            yield return (p + n + ".weight", c.HiddenSize);
        if (c.QkNorm)
        {
            yield return (p + "self_attn.q_norm.weight", c.HeadDim);
            yield return (p + "self_attn.k_norm.weight", c.HeadDim);
        }
    }

    static IReadOnlyList<IReadOnlyList<LinearSpec>> Layout(ModelConfig c, int i) => LlamaLayout.Of(c, i);

    public override IReadOnlyList<IReadOnlyList<LinearSpec>> LinearLayout(int index) => Layout(_config, index);


    public override string BlockPrefix(int index) => $"model.layers.{index}.";

    public override DecoderBlock LoadBlock(int i)
    {
        if (i < 0 || i >= BlockCount) throw new ArgumentOutOfRangeException(nameof(i));
        var c = _config;
        string p = BlockPrefix(i);
        var layout = Layout(c, i);
        return new BlockLoader(Weights).Build(load => new GemmaBlock(this, i)
        {
            Q = load.Linear(layout[0][0], false), K = load.Linear(layout[0][1], false), V = load.Linear(layout[0][2], false),
            O = load.Linear(layout[1][0], false), Gate = load.Linear(layout[2][0], false), Up = load.Linear(layout[2][1], false),
            Down = load.Linear(layout[3][0], false),
            InputNorm = load.Tensor(p + "input_layernorm.weight", c.HiddenSize),
            PostAttentionNorm = load.Tensor(p + "post_attention_layernorm.weight", c.HiddenSize),
            PreFeedForwardNorm = load.Tensor(p + "pre_feedforward_layernorm.weight", c.HiddenSize),
            PostFeedForwardNorm = load.Tensor(p + "post_feedforward_layernorm.weight", c.HiddenSize),
            QNorm = c.QkNorm ? load.Tensor(p + "self_attn.q_norm.weight", c.HeadDim) : null,
            KNorm = c.QkNorm ? load.Tensor(p + "self_attn.k_norm.weight", c.HeadDim) : null,
        });
    }

    protected override void OnResident() =>
        _embed = Weights.Load("model.embed_tokens.weight", _config.VocabSize, _config.HiddenSize).DetachFromDisposeScope();

    public override Tensor Embed(Tensor ids, long past = 0)
    {
        using var flat = ids.reshape(-1);
        using var rows = _embed is not null ? _embed.index_select(0, flat) : Weights.LoadRows("model.embed_tokens.weight", flat);
        using var x = rows.to(ScalarType.Float32);
        // √hidden in fp32, as llama.cpp and an fp32 transformers model compute it.
        return x.mul(Scalars.Of(Math.Sqrt(_config.HiddenSize))).view(ids.shape[0], ids.shape[1], -1);
    }

    /// <summary>Gemma's RMSNorm: x / rms(x) · (1 + w), in fp32.</summary>
    Tensor Norm(Tensor x, Tensor weight)
    {
        var variance = x.pow(Scalars.Of(2L)).mean([-1], keepdim: true);
        return (x * variance.add(Scalars.Of(_config.RmsNormEps), Scalars.One).rsqrt()) * weight.to(ScalarType.Float32).add(Scalars.One, Scalars.One);
    }

    /// <summary>The block's five stages (see <see cref="SublayerStages"/>), its forward when composed.</summary>
    SublayerStages StagesOf(GemmaBlock b, LinearInputObserver? observer) => new(
        x => Norm(x, b.InputNorm),
        (x, ctx) => AttentionStage(b, x, ctx, observer),
        (h, attn) => OutputStage(b, h, attn, observer),
        x => GateStage(b, x, observer),
        (h, a) => DownStage(b, h, a, observer));

    /// <summary>o's input: soft-capped rotary attention (local or global per layer) of the normed input.</summary>
    Tensor AttentionStage(GemmaBlock b, Tensor x, ForwardContext ctx, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        long batch = x.shape[0], t = x.shape[1];
        int heads = _config.NumHeads, kvHeads = _config.NumKvHeads, d = _config.HeadDim;
        bool sliding = _gemma.SlidingLayers[b.Index];
        Observe(observer, [b.Q, b.K, b.V], x);
        var q = b.Q.Forward(x).view(batch, t, heads, d);
        var k = b.K.Forward(x).view(batch, t, kvHeads, d);
        if (b.QNorm is not null) q = Norm(q, b.QNorm);
        if (b.KNorm is not null) k = Norm(k, b.KNorm);
        var (cos, sin) = sliding && ctx.LocalCos is not null ? (ctx.LocalCos, ctx.LocalSin!) : (ctx.Cos, ctx.Sin);
        q = Rope.Apply(q.transpose(1, 2), cos, sin);
        k = Rope.Apply(k.transpose(1, 2), cos, sin);
        var v = b.V.Forward(x).view(batch, t, kvHeads, d).transpose(1, 2);
        if (ctx.Cache is not null)
            (k, v) = ctx.Cache.Append(b.Index, k, v);
        if (_config.KvGroups > 1)
        {
            k = k.repeat_interleave(_config.KvGroups, dim: 1);
            v = v.repeat_interleave(_config.KvGroups, dim: 1);
        }
        // Explicit attention: the soft cap sits between the scaled scores and the mask.
        var scores = q.matmul(k.transpose(-2, -1)).mul(Scalars.Of(1.0 / Math.Sqrt(_gemma.QueryPreAttnScalar)));
        if (_gemma.AttnSoftcap is double cap)
            scores = scores.div(Scalars.Of(cap)).tanh().mul(Scalars.Of(cap));
        var mask = sliding ? ctx.LocalMask! : ctx.Mask!;
        scores = scores.masked_fill(mask.logical_not(), Scalars.Of(double.NegativeInfinity));
        return scope.MoveToOuter(scores.softmax(-1).matmul(v).transpose(1, 2).reshape(batch, t, heads * d));
    }

    (Tensor Residual, Tensor MlpInput) OutputStage(GemmaBlock b, Tensor hidden, Tensor attn, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        Observe(observer, [b.O], attn);
        var h = hidden.Plus(Norm(b.O.Forward(attn), b.PostAttentionNorm));
        var x = Norm(h, b.PreFeedForwardNorm);
        return (scope.MoveToOuter(h), scope.MoveToOuter(x));
    }

    Tensor GateStage(GemmaBlock b, Tensor x, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        Observe(observer, [b.Gate, b.Up], x);
        return scope.MoveToOuter(nn.functional.gelu(b.Gate.Forward(x), TorchSharp.Modules.GELU.Approximate.tanh) * b.Up.Forward(x));
    }

    Tensor DownStage(GemmaBlock b, Tensor h, Tensor act, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        Observe(observer, [b.Down], act);
        return scope.MoveToOuter(h.Plus(Norm(b.Down.Forward(act), b.PostFeedForwardNorm)));
    }

    public override Tensor FinalNorm(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(Norm(hidden, _finalNorm));
    }

    /// <summary>The embedding, as every Gemma checkpoint ties it; lm_head.weight only when the config says
    /// tie_word_embeddings: false (as transformers does), e.g. an ONNX folder whose head was quantized.</summary>
    public override string HeadName => _config.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";

    public override Tensor HeadWeight()
    {
        if (!_config.TieWordEmbeddings)
        {
            using var head = Weights.Load("lm_head.weight", _config.VocabSize, _config.HiddenSize);
            return head.to(ScalarType.Float32);
        }
        if (_embed is not null) return _embed.dtype == ScalarType.Float32 ? _embed.alias() : _embed.to(ScalarType.Float32);
        using var w = Weights.Load("model.embed_tokens.weight", _config.VocabSize, _config.HiddenSize);
        return w.dtype == ScalarType.Float32 ? w.alias() : w.to(ScalarType.Float32);
    }

    public override Tensor Logits(Tensor normedHidden, Tensor head)
    {
        var logits = base.Logits(normedHidden, head);
        if (_gemma.FinalSoftcap is not double cap) return logits;
        using (logits)
        {
            using var scaled = logits.div(Scalars.Of(cap));
            using var capped = scaled.tanh();
            return capped.mul(Scalars.Of(cap));
        }
    }

    public override ForwardContext CreateContext(long past, long length, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var (cos, sin) = _rope.Tables(past, length);
        var (localCos, localSin) = _localRope.Tables(past, length);
        long total = past + length;
        var i = arange(Scalars.Of(past), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(1);   // query positions
        var j = arange(Scalars.Of(0L), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(0);      // key positions
        var causal = j.le(i);
        // transformers' sliding window: a query sees the last `sliding_window` positions, itself included.
        var local = causal.logical_and(j.gt(i.sub(Scalars.Of((long)_gemma.SlidingWindow))));
        return new ForwardContext
        {
            PastLength = past, Length = length, Cache = cache,
            Cos = cos.DetachFromDisposeScope(), Sin = sin.DetachFromDisposeScope(), Mask = causal.DetachFromDisposeScope(),
            LocalCos = localCos.DetachFromDisposeScope(), LocalSin = localSin.DetachFromDisposeScope(), LocalMask = local.DetachFromDisposeScope(),
        };
    }

    protected override void DisposeTables()
    {
        _embed?.Dispose();
        _finalNorm.Dispose();
        _rope.Dispose();
        _localRope.Dispose();
    }
}
