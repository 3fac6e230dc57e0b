using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Rotation;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>The Llama family (llama, qwen2, qwen3, mistral, phi3): pre-norm blocks with RMSNorm, rotary
/// attention with grouped KV heads, SwiGLU MLP. Differences between members are config flags
/// (q/k/v bias for Qwen2, per-head q/k RMSNorm for Qwen3, sliding window for Mistral, fused qkv and
/// gate_up projections, partial rotary and LongRoPE for Phi-3, tied or separate head). A fused
/// projection is one linear to the calibrators, as it is one matrix to every runtime.</summary>
public sealed class LlamaModel : DecoderModel
{
    sealed class LlamaBlock(LlamaModel model, int index) : DecoderBlock
    {
        /// <summary>In true-sequential groups: [q, k, v] or [qkv], [o], [gate, up] or [gate_up], [down].</summary>
        public required NamedLinear[][] Groups;
        public required Tensor InputNorm, PostAttentionNorm;
        public Tensor? QNorm, KNorm;
        public NamedLinear O => Groups[1][0];
        public NamedLinear Down => Groups[3][0];

        public override int Index => index;
        public override IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups => Groups;

        public override Tensor Forward(Tensor hidden, ForwardContext ctx, LinearInputObserver? observer = null) =>
            model.StagesOf(this, observer).Forward(hidden, ctx);

        public override IStagedBlock Stages => model.StagesOf(this, null);

        /// <summary>input_layernorm → q/k/v, v's rows → o (GQA: each v channel feeds its heads' copies),
        /// post_attention_layernorm → gate/up, up's rows → down; fused projections by row range.</summary>
        public override IReadOnlyList<ScalingPoint> ScalingPoints
        {
            get
            {
                var c = model._config;
                string p = model.BlockPrefix(index);
                long q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
                var (v, vFirst) = Groups[0].Length == 3 ? (Groups[0][2], 0L) : (Groups[0][0], q + kv);
                var (up, upFirst) = Groups[2].Length == 2 ? (Groups[2][1], 0L) : (Groups[2][0], f);
                return
                [
                    new() { Group = 0, Channels = c.HiddenSize, DivideInto = s => InputNorm = Divided(InputNorm, s),
                        Changed = () => new Dictionary<string, Tensor> { [p + "input_layernorm.weight"] = InputNorm } },
                    new() { Group = 1, Channels = kv, Repeat = c.KvGroups, HeadDim = c.HeadDim, DivideInto = s => v.DivideOutputRows(vFirst, s), Changed = v.Stored },
                    new() { Group = 2, Channels = c.HiddenSize, DivideInto = s => PostAttentionNorm = Divided(PostAttentionNorm, s),
                        Changed = () => new Dictionary<string, Tensor> { [p + "post_attention_layernorm.weight"] = PostAttentionNorm } },
                    new() { Group = 3, Channels = f, DivideInto = s => up.DivideOutputRows(upFirst, s), Changed = up.Stored },
                ];
            }
        }

        /// <summary>A norm weight divided by s, in its own dtype (what the file will hold and the block computes with).</summary>
        static Tensor Divided(Tensor norm, Tensor s)
        {
            using var scope = NewDisposeScope();
            var result = norm.to(ScalarType.Float32).div(s.to(ScalarType.Float32)).to(norm.dtype).DetachFromDisposeScope();
            norm.Dispose();
            return result;
        }

        public override void Dispose()
        {
            foreach (var l in Groups.SelectMany(g => g)) l.Dispose();
            InputNorm.Dispose();
            PostAttentionNorm.Dispose();
            QNorm?.Dispose();
            KNorm?.Dispose();
        }
    }

    readonly ModelConfig _config;
    readonly Tensor _finalNorm;
    readonly Rope _rope;
    readonly Hadamard.Transform? _downRotation;   // QuaRot R4, online part
    Tensor? _embed, _lmHead;                      // kept only once resident

    public override ModelConfig Config => _config;

    LlamaModel(ModelConfig config, IWeightSource weights, bool ownsSource) : base(weights, ownsSource)
    {
        _config = config;
        _rope = new Rope(config);
        if (config.DownProjHadamard) _downRotation = new Hadamard.Transform(Hadamard.Plan(config.IntermediateSize));
        _finalNorm = weights.Load("model.norm.weight", config.HiddenSize).DetachFromDisposeScope();
    }

    /// <summary>Binds the weights named by transformers' LlamaForCausalLM / Qwen2ForCausalLM /
    /// MistralForCausalLM, checking every name, dtype and shape against the config up front (a broken
    /// last block is reported before any work, not after it) without loading them.</summary>
    public static LlamaModel Open(ModelConfig c, IWeightSource weights, bool ownsSource)
    {
        foreach (var (name, shape) in ExpectedTensors(c, weights))
            WeightCheck.Expect(weights, name, shape);
        return new LlamaModel(c, weights, ownsSource);
    }

    static IEnumerable<(string Name, long[] Shape)> ExpectedTensors(ModelConfig c, IWeightSource weights)
    {
        long h = c.HiddenSize;
        yield return ("model.embed_tokens.weight", [c.VocabSize, h]);
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            foreach (var group in Layout(c, i))
                foreach (var l in group)
                {
                    yield return (l.Name + ".weight", [l.OutFeatures, l.InFeatures]);
                    if (HasBias(c, l.Name)) yield return (l.Name + ".bias", [l.OutFeatures]);
                }
            yield return (p + "input_layernorm.weight", [h]);
            yield return (p + "post_attention_layernorm.weight", [h]);
            if (c.QkNorm)
            {
                yield return (p + "self_attn.q_norm.weight", [c.HeadDim]);
                yield return (p + "self_attn.k_norm.weight", [c.HeadDim]);
            }
        }
        yield return ("model.norm.weight", [h]);
        if (!c.TieWordEmbeddings)
        {
            if (!weights.Contains("lm_head.weight"))
                throw new DotQuantException(ErrorCodes.WeightMissing, "tie_word_embeddings is false but the checkpoint has no lm_head.weight", weights.Directory);
            yield return ("lm_head.weight", [c.VocabSize, h]);
        }
    }

    static bool HasBias(ModelConfig c, string linear) => linear.Split('.')[^1] switch
    {
        "q_proj" or "k_proj" or "v_proj" or "qkv_proj" => c.QkvBias,
        "o_proj" => c.OutputBias,
        _ => c.MlpBias,
    };

    static IReadOnlyList<IReadOnlyList<LinearSpec>> Layout(ModelConfig c, int i) => LlamaLayout.Of(c, i);

    public override IReadOnlyList<IReadOnlyList<LinearSpec>> LinearLayout(int index) => Layout(_config, index);


    public override string BlockPrefix(int index) => $"model.layers.{index}.";

    /// <summary>Not with QuaRot's online rotation before down (up's rows cannot take down's scale through it).</summary>
    public override bool HasScalingPoints => _downRotation is null;

    public override DecoderBlock LoadBlock(int i)
    {
        if (i < 0 || i >= BlockCount) throw new ArgumentOutOfRangeException(nameof(i));
        var c = _config;
        string p = BlockPrefix(i);
        return new BlockLoader(Weights).Build(load => new LlamaBlock(this, i)
        {
            Groups = Layout(c, i).Select(g => g.Select(s => load.Linear(s, HasBias(c, s.Name))).ToArray()).ToArray(),
            InputNorm = load.Tensor(p + "input_layernorm.weight", c.HiddenSize),
            PostAttentionNorm = load.Tensor(p + "post_attention_layernorm.weight", c.HiddenSize),
            QNorm = c.QkNorm ? load.Tensor(p + "self_attn.q_norm.weight", c.HeadDim) : null,
            KNorm = c.QkNorm ? load.Tensor(p + "self_attn.k_norm.weight", c.HeadDim) : null,
        });
    }

    protected override void OnResident()
    {
        _embed = Weights.Load("model.embed_tokens.weight", _config.VocabSize, _config.HiddenSize).DetachFromDisposeScope();
        if (!_config.TieWordEmbeddings)
            _lmHead = Weights.Load("lm_head.weight", _config.VocabSize, _config.HiddenSize).DetachFromDisposeScope();
    }

    public override Tensor Embed(Tensor ids, long past = 0)
    {
        using var flat = ids.reshape(-1);
        using var rows = _embed is not null ? _embed.index_select(0, flat) : Weights.LoadRows("model.embed_tokens.weight", flat);
        return rows.to(ScalarType.Float32).view(ids.shape[0], ids.shape[1], -1);
    }

    Tensor RmsNorm(Tensor x, Tensor weight)
    {
        var variance = x.pow(Scalars.Of(2L)).mean([-1], keepdim: true);
        return weight.to(ScalarType.Float32) * (x * variance.add(Scalars.Of(_config.RmsNormEps), Scalars.One).rsqrt());
    }

    /// <summary>The block's five stages (see <see cref="SublayerStages"/>), its forward when composed.</summary>
    SublayerStages StagesOf(LlamaBlock b, LinearInputObserver? observer) => new(
        x => RmsNorm(x, b.InputNorm),
        (x, ctx) => AttentionStage(b, x, ctx, observer),
        (h, attn) => OutputStage(b, h, attn, observer),
        x => GateStage(b, x, observer),
        (h, a) => DownStage(b, h, a, observer));

    /// <summary>o's input: rotary attention over q, k, v of the normed hidden states.</summary>
    Tensor AttentionStage(LlamaBlock b, Tensor x, ForwardContext ctx, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        long batch = x.shape[0], t = x.shape[1];
        int heads = _config.NumHeads, kvHeads = _config.NumKvHeads, d = _config.HeadDim;
        var (q, k, v) = Attention(b.Groups[0], x, observer);
        q = q.view(batch, t, heads, d);
        k = k.view(batch, t, kvHeads, d);
        if (b.QNorm is not null) q = RmsNorm(q, b.QNorm);
        if (b.KNorm is not null) k = RmsNorm(k, b.KNorm);
        q = q.transpose(1, 2);
        k = k.transpose(1, 2);
        v = v.view(batch, t, kvHeads, d).transpose(1, 2);
        q = Rope.Apply(q, ctx.Cos, ctx.Sin);
        k = Rope.Apply(k, ctx.Cos, ctx.Sin);
        if (ctx.Cache is not null)
            (k, v) = ctx.Cache.Append(b.Index, k, v);
        if (_config.KvGroups > 1)
        {
            k = k.repeat_interleave(_config.KvGroups, dim: 1);
            v = v.repeat_interleave(_config.KvGroups, dim: 1);
        }
        var attn = ctx.Mask is null && ctx.PastLength == 0 && t > 1
            ? nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, true)
            : nn.functional.scaled_dot_product_attention(q, k, v, ctx.Mask, 0.0, false);
        return scope.MoveToOuter(attn.transpose(1, 2).reshape(batch, t, heads * d));
    }

    /// <summary>The residual after attention and gate/up's input.</summary>
    (Tensor H, Tensor MlpIn) OutputStage(LlamaBlock b, Tensor hidden, Tensor attn, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        Observe(observer, [b.O], attn);
        var h = hidden.Plus(b.O.Forward(attn));
        var x = RmsNorm(h, b.PostAttentionNorm);
        return (scope.MoveToOuter(h), scope.MoveToOuter(x));
    }

    /// <summary>down's input: the gated activation (after the online rotation, what down's weights see).</summary>
    Tensor GateStage(LlamaBlock b, Tensor x, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        var (gate, up) = GateUp(b.Groups[2], x, observer);
        var act = nn.functional.silu(gate) * up;
        if (_downRotation is not null) act = _downRotation.Apply(act);
        return scope.MoveToOuter(act);
    }

    Tensor DownStage(LlamaBlock b, Tensor h, Tensor act, LinearInputObserver? observer)
    {
        using var scope = NewDisposeScope();
        Observe(observer, [b.Down], act);
        return scope.MoveToOuter(h.Plus(b.Down.Forward(act)));
    }

    /// <summary>q, k, v from separate projections or split from the fused one ([q | k | v] rows).</summary>
    (Tensor Q, Tensor K, Tensor V) Attention(NamedLinear[] group, Tensor x, LinearInputObserver? observer)
    {
        Observe(observer, group, x);
        if (group.Length == 3) return (group[0].Forward(x), group[1].Forward(x), group[2].Forward(x));
        long q = (long)_config.NumHeads * _config.HeadDim, kv = (long)_config.NumKvHeads * _config.HeadDim;
        var qkv = group[0].Forward(x);
        return (qkv.narrow(-1, 0, q), qkv.narrow(-1, q, kv), qkv.narrow(-1, q + kv, kv));
    }

    /// <summary>gate and up from separate projections or split from the fused one ([gate | up] rows).</summary>
    static (Tensor Gate, Tensor Up) GateUp(NamedLinear[] group, Tensor x, LinearInputObserver? observer)
    {
        Observe(observer, group, x);
        if (group.Length == 2) return (group[0].Forward(x), group[1].Forward(x));
        var both = group[0].Forward(x);
        long f = both.shape[^1] / 2;
        return (both.narrow(-1, 0, f), both.narrow(-1, f, f));
    }

    public override Tensor FinalNorm(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(RmsNorm(hidden, _finalNorm));
    }

    public override string HeadName => _config.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";

    public override Tensor HeadWeight()
    {
        var resident = _lmHead ?? _embed;
        if (resident is not null && (_lmHead is not null || _config.TieWordEmbeddings))
            return resident.dtype == ScalarType.Float32 ? resident.alias() : resident.to(ScalarType.Float32);
        string name = _config.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight";
        using var w = Weights.Load(name, _config.VocabSize, _config.HiddenSize);
        return w.dtype == ScalarType.Float32 ? w.alias() : w.to(ScalarType.Float32);
    }

    public override ForwardContext CreateContext(long past, long length, KvCache? cache = null)
    {
        var (cos, sin) = _rope.Tables(past, length);
        long total = past + length;
        Tensor? mask = null;
        bool windowed = _config.SlidingWindow is int w && total > w;
        if ((past > 0 && length > 1) || windowed)
        {
            using var i = arange(Scalars.Of(past), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(1);   // query positions
            using var j = arange(Scalars.Of(0L), Scalars.Of(total), Scalars.Of(1L), dtype: ScalarType.Int64).unsqueeze(0);      // key positions
            using var causal = j.le(i);
            mask = windowed
                ? causal.logical_and(j.gt(i.sub(Scalars.Of((long)_config.SlidingWindow!.Value))))
                : causal.clone();
        }
        return new ForwardContext
        {
            PastLength = past, Length = length, Cos = cos.DetachFromDisposeScope(), Sin = sin.DetachFromDisposeScope(),
            Mask = mask?.DetachFromDisposeScope(), Cache = cache,
        };
    }

    protected override void DisposeTables()
    {
        _embed?.Dispose();
        _lmHead?.Dispose();
        _finalNorm.Dispose();
        _rope.Dispose();
        _downRotation?.Dispose();
    }
}
