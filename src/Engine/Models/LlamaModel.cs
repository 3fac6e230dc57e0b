using DotQuant.Engine.Diagnostics;
using DotQuant.Engine.IO;
using DotQuant.Engine.Rotation;
using static TorchSharp.torch;

namespace DotQuant.Engine.Models;

/// <summary>The Llama family (llama, qwen2, mistral): pre-norm blocks with RMSNorm, rotary
/// attention with grouped KV heads, SwiGLU MLP. Differences between members are config flags
/// (q/k/v bias for Qwen2, sliding window for Mistral, tied or separate head).</summary>
public sealed class LlamaModel : DecoderModel
{
    sealed class Block : IDisposable
    {
        public required NamedLinear Q, K, V, O, Gate, Up, Down;
        public required Tensor InputNorm, PostAttentionNorm;
        public IReadOnlyList<IReadOnlyList<NamedLinear>> Groups => [[Q, K, V], [O], [Gate, Up], [Down]];

        public void Dispose()
        {
            foreach (var l in new[] { Q, K, V, O, Gate, Up, Down }) l.Dispose();
            InputNorm.Dispose();
            PostAttentionNorm.Dispose();
        }
    }

    readonly ModelConfig _config;
    readonly Tensor _embed;          // [V, H], stored dtype
    readonly Tensor? _lmHead;        // [V, H], null when tied
    readonly Tensor _finalNorm;
    readonly Block[] _blocks;
    readonly Rope _rope;
    readonly Hadamard.Transform? _downRotation;   // QuaRot R4, online part

    public override ModelConfig Config => _config;
    public override int BlockCount => _blocks.Length;

    LlamaModel(ModelConfig config, Tensor embed, Tensor? lmHead, Tensor finalNorm, Block[] blocks)
    {
        _config = config; _embed = embed; _lmHead = lmHead; _finalNorm = finalNorm; _blocks = blocks;
        _rope = new Rope(config);
        if (config.DownProjHadamard) _downRotation = new Hadamard.Transform(Hadamard.Plan(config.IntermediateSize));
    }

    /// <summary>Loads the weights named by transformers' LlamaForCausalLM / Qwen2ForCausalLM /
    /// MistralForCausalLM, checking every shape against the config.</summary>
    public static LlamaModel Load(ModelConfig c, IWeightSource ckpt)
    {
        long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, f = c.IntermediateSize;
        Tensor W(string name, params long[] shape) => ckpt.Load(name, shape).DetachFromDisposeScope();
        Tensor? B(bool present, string name, long n) => present ? W(name, n) : null;
        NamedLinear Lin(string name, long outF, long inF, bool bias) =>
            new(name, W(name + ".weight", outF, inF), B(bias, name + ".bias", outF));

        var blocks = new Block[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            blocks[i] = new Block
            {
                Q = Lin(p + "self_attn.q_proj", q, h, c.QkvBias),
                K = Lin(p + "self_attn.k_proj", kv, h, c.QkvBias),
                V = Lin(p + "self_attn.v_proj", kv, h, c.QkvBias),
                O = Lin(p + "self_attn.o_proj", h, q, c.OutputBias),
                Gate = Lin(p + "mlp.gate_proj", f, h, c.MlpBias),
                Up = Lin(p + "mlp.up_proj", f, h, c.MlpBias),
                Down = Lin(p + "mlp.down_proj", h, f, c.MlpBias),
                InputNorm = W(p + "input_layernorm.weight", h),
                PostAttentionNorm = W(p + "post_attention_layernorm.weight", h),
            };
        }
        var embed = W("model.embed_tokens.weight", c.VocabSize, h);
        Tensor? head = null;
        if (!c.TieWordEmbeddings)
        {
            if (!ckpt.Contains("lm_head.weight"))
                throw new DotQuantException(ErrorCodes.WeightMissing, "tie_word_embeddings is false but the checkpoint has no lm_head.weight", ckpt.Directory);
            head = W("lm_head.weight", c.VocabSize, h);
        }
        return new LlamaModel(c, embed, head, W("model.norm.weight", h), blocks);
    }

    public override Tensor Embed(Tensor ids)
    {
        using var flat = ids.reshape(-1);
        using var rows = _embed.index_select(0, flat);
        return rows.to(ScalarType.Float32).view(ids.shape[0], ids.shape[1], -1);
    }

    Tensor RmsNorm(Tensor x, Tensor weight)
    {
        var variance = x.pow(2).mean([-1], keepdim: true);
        return weight.to(ScalarType.Float32) * (x * (variance + _config.RmsNormEps).rsqrt());
    }

    public override Tensor ForwardBlock(int index, Tensor hidden, ForwardContext ctx, LinearInputObserver? observer = null)
    {
        using var scope = NewDisposeScope();
        var b = _blocks[index];
        long batch = hidden.shape[0], t = hidden.shape[1];
        int heads = _config.NumHeads, kvHeads = _config.NumKvHeads, d = _config.HeadDim;

        var x = RmsNorm(hidden, b.InputNorm);
        Observe(observer, [b.Q, b.K, b.V], x);
        var q = b.Q.Forward(x).view(batch, t, heads, d).transpose(1, 2);
        var k = b.K.Forward(x).view(batch, t, kvHeads, d).transpose(1, 2);
        var v = b.V.Forward(x).view(batch, t, kvHeads, d).transpose(1, 2);
        q = Rope.Apply(q, ctx.Cos, ctx.Sin);
        k = Rope.Apply(k, ctx.Cos, ctx.Sin);
        if (ctx.Cache is not null)
            (k, v) = ctx.Cache.Append(index, k, v);
        if (_config.KvGroups > 1)
        {
            k = k.repeat_interleave(_config.KvGroups, dim: 1);
            v = v.repeat_interleave(_config.KvGroups, dim: 1);
        }
        var attn = ctx.Mask is null && ctx.PastLength == 0 && t > 1
            ? nn.functional.scaled_dot_product_attention(q, k, v, null, 0.0, true)
            : nn.functional.scaled_dot_product_attention(q, k, v, ctx.Mask, 0.0, false);
        attn = attn.transpose(1, 2).reshape(batch, t, heads * d);
        Observe(observer, [b.O], attn);
        var h = hidden + b.O.Forward(attn);

        x = RmsNorm(h, b.PostAttentionNorm);
        Observe(observer, [b.Gate, b.Up], x);
        var act = nn.functional.silu(b.Gate.Forward(x)) * b.Up.Forward(x);
        // Statistics are taken after the online rotation: that is what down_proj's weights see.
        if (_downRotation is not null) act = _downRotation.Apply(act);
        Observe(observer, [b.Down], act);
        var output = h + b.Down.Forward(act);
        return scope.MoveToOuter(output);
    }

    static void Observe(LinearInputObserver? observer, NamedLinear[] linears, Tensor input)
    {
        if (observer is null) return;
        foreach (var l in linears) observer(l, input);
    }

    public override IReadOnlyList<IReadOnlyList<NamedLinear>> LinearGroups(int index) => _blocks[index].Groups;

    public override Tensor FinalNorm(Tensor hidden)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(RmsNorm(hidden, _finalNorm));
    }

    public override Tensor HeadWeight()
    {
        var w = _lmHead ?? _embed;
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
            using var i = arange(past, total, dtype: ScalarType.Int64).unsqueeze(1);   // query positions
            using var j = arange(0, total, dtype: ScalarType.Int64).unsqueeze(0);      // key positions
            using var causal = j.le(i);
            mask = windowed
                ? causal.logical_and(j.gt(i - _config.SlidingWindow!.Value))
                : causal.clone();
        }
        return new ForwardContext
        {
            PastLength = past, Length = length, Cos = cos.DetachFromDisposeScope(), Sin = sin.DetachFromDisposeScope(),
            Mask = mask?.DetachFromDisposeScope(), Cache = cache,
        };
    }

    public override void Dispose()
    {
        foreach (var b in _blocks) b.Dispose();
        _embed.Dispose();
        _lmHead?.Dispose();
        _finalNorm.Dispose();
        _rope.Dispose();
        _downRotation?.Dispose();
    }
}
