using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.IO;
using DotQuant.Engine.Models;
using static TorchSharp.torch;

namespace DotQuant.Engine.Rotation;

/// <summary>Which QuaRot rotations to apply (weight-only, spec §5.2–§5.5).</summary>
/// <param name="Seed">Seeds the random signs of R1 (SplitMix64, so the same on every machine).</param>
/// <param name="DownProj">R4: fuse a Hadamard into down_proj and apply it online in the runtime.</param>
/// <param name="SubtractEmbeddingMean">QuaRot's code does it for every model; it breaks exact
/// invariance for RMSNorm models (spec §5.2), so it is off unless asked for.</param>
public sealed record RotationOptions(long Seed = 0, bool Heads = true, bool DownProj = true, bool SubtractEmbeddingMean = false)
{
    public System.Text.Json.Nodes.JsonObject ToJson() => new()
    {
        ["kind"] = "hadamard",
        ["seed"] = Seed,
        ["heads"] = Heads,
        ["down_proj"] = DownProj,
        ["subtract_embedding_mean"] = SubtractEmbeddingMean,
    };
}

/// <summary>QuaRot's computational invariance (spec §5): fold every RMSNorm scale into the linears
/// that read it, untie the head, rotate the residual stream by Q = diag(±1)·H/√d (R1), rotate each
/// attention head's V/O pair by H_hd/√hd (R2, per head, so any head count and GQA work without an
/// online op), and fuse H_f/√f into down_proj with the matching online transform (R4). All products
/// are done in fp64 and cast back once; the function of the float model does not change.</summary>
public static class QuaRot
{
    /// <summary>Rotates the model block by block into <paramref name="folder"/> (one safetensors file per
    /// block and one for the embeddings, head and final norm, in the source dtypes) and returns the
    /// rotated model as a weight source over those files. Files already there from an interrupted run
    /// with the same settings are reused (each is written whole or not at all).</summary>
    public static QuaRotSource Apply(ModelConfig c, Checkpoint source, RotationOptions o, string folder, CancellationToken ct = default)
    {
        if (c.ModelType is not ("llama" or "qwen2" or "mistral"))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"rotate: hadamard supports llama, qwen2 and mistral (not yet '{c.ModelType}': model_type)", source.Directory);
        if (c.DownProjHadamard)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, "the model is already rotated", source.Directory);
        int d = c.HiddenSize, hd = c.HeadDim, f = c.IntermediateSize;
        if (o.Heads && !Hadamard.IsPowerOfTwo(hd))
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"rotate: head_dim {hd} is not a power of two (R2 needs a Sylvester matrix)", source.Directory);
        Directory.CreateDirectory(folder);

        var dtypes = source.Tensors.ToDictionary(t => t.Name, t => t.DType.ToTorch(), StringComparer.Ordinal);
        var residualPlan = Hadamard.Plan(d);
        var downPlan = o.DownProj ? Hadamard.Plan(f) : null;
        using var scope = NewDisposeScope();
        var q = ResidualRotation(residualPlan, o.Seed);                 // [d, d] fp64
        var hHead = Hadamard.Sylvester(hd).div(Scalars.Of(Math.Sqrt(hd)));
        var hDown = downPlan is null ? null : Hadamard.Matrix(downPlan).div(Scalars.Of(downPlan.Norm));

        Tensor Get(string name) => source.Load(name).to(ScalarType.Float64);
        var files = new List<string>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            ct.ThrowIfCancellationRequested();
            string file = Path.Combine(folder, $"block-{i:D5}.safetensors");
            files.Add(file);
            if (File.Exists(file)) continue;
            using var layer = NewDisposeScope();
            var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            void Put(string name, Tensor t) => tensors[name] = t.to(dtypes.GetValueOrDefault(name, ScalarType.Float32));
            string p = $"model.layers.{i}.";
            var gIn = Get(p + "input_layernorm.weight");
            var gPost = Get(p + "post_attention_layernorm.weight");
            foreach (var name in new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj" })
            {
                var w = (Get(p + name + ".weight") * gIn).matmul(q);          // fold, then x ← x Q on the input side
                if (name.EndsWith("v_proj", StringComparison.Ordinal) && o.Heads)
                    w = PerHeadRows(w, hHead, c.NumKvHeads, hd);
                Put(p + name + ".weight", w);
                if (c.QkvBias && name.EndsWith("v_proj", StringComparison.Ordinal) && o.Heads)
                    Put(p + name + ".bias", PerHeadRows(Get(p + name + ".bias").unsqueeze(1), hHead, c.NumKvHeads, hd).squeeze(1));
            }
            var wo = q.t().matmul(Get(p + "self_attn.o_proj.weight"));          // output side: W ← Qᵀ W
            if (o.Heads) wo = PerHeadColumns(wo, hHead, c.NumHeads, hd);
            Put(p + "self_attn.o_proj.weight", wo);
            if (c.OutputBias) Put(p + "self_attn.o_proj.bias", q.t().matmul(Get(p + "self_attn.o_proj.bias")));
            foreach (var name in new[] { "mlp.gate_proj", "mlp.up_proj" })
                Put(p + name + ".weight", (Get(p + name + ".weight") * gPost).matmul(q));
            var wd = q.t().matmul(Get(p + "mlp.down_proj.weight"));
            if (hDown is not null) wd = wd.matmul(hDown);                      // online a ← a·T, so W ← W·T
            Put(p + "mlp.down_proj.weight", wd);
            if (c.MlpBias) Put(p + "mlp.down_proj.bias", q.t().matmul(Get(p + "mlp.down_proj.bias")));
            Put(p + "input_layernorm.weight", ones_like(gIn));
            Put(p + "post_attention_layernorm.weight", ones_like(gPost));
            SafeTensorsWriter.Write(file, tensors);
        }

        string globals = Path.Combine(folder, "globals.safetensors");
        files.Add(globals);
        if (!File.Exists(globals))
        {
            using var g = NewDisposeScope();
            var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            var embed = Get("model.embed_tokens.weight");
            var head = c.TieWordEmbeddings ? embed.clone() : Get("lm_head.weight");
            if (o.SubtractEmbeddingMean) embed = embed - embed.mean([1], keepdim: true);
            var gFinal = Get("model.norm.weight");
            var embedType = dtypes["model.embed_tokens.weight"];
            tensors["model.embed_tokens.weight"] = RowChunks(embed, q).to(embedType);
            tensors["lm_head.weight"] = RowChunks(head * gFinal, q).to(c.TieWordEmbeddings ? embedType : dtypes["lm_head.weight"]);
            tensors["model.norm.weight"] = ones_like(gFinal).to(dtypes["model.norm.weight"]);
            SafeTensorsWriter.Write(globals, tensors);
        }

        var config = c with { TieWordEmbeddings = false, DownProjHadamard = downPlan is not null };
        return new QuaRotSource(source, config, o, files, residualPlan, downPlan);
    }

    /// <summary>x·Q a bounded number of rows at a time (the embedding of a large vocabulary in fp64
    /// would otherwise be gigabytes).</summary>
    static Tensor RowChunks(Tensor x, Tensor q)
    {
        long rows = Math.Max(1, (32L << 20) / Math.Max(1, x.shape[1]));
        if (x.shape[0] <= rows) return x.matmul(q);
        var parts = new List<Tensor>();
        for (long r = 0; r < x.shape[0]; r += rows)
            parts.Add(x.narrow(0, r, Math.Min(rows, x.shape[0] - r)).matmul(q));
        return cat(parts, 0);
    }

    /// <summary>R1 = diag(s)·H_d/√d with seeded random signs s (QuaRot's randomized Hadamard).</summary>
    public static Tensor ResidualRotation(HadamardPlan plan, long seed)
    {
        using var scope = NewDisposeScope();
        var rng = new SplitMix64(seed);
        var signs = Enumerable.Range(0, plan.Size).Select(_ => (rng.Next() >> 63) == 0 ? 1.0 : -1.0).ToArray();
        var q = (tensor(signs).unsqueeze(1) * Hadamard.Matrix(plan)).div(Scalars.Of(plan.Norm));
        return scope.MoveToOuter(q);
    }

    /// <summary>Each head's block of output rows: W[h] ← H W[h].</summary>
    static Tensor PerHeadRows(Tensor w, Tensor h, int heads, int hd)
    {
        var blocks = w.reshape(heads, hd, -1);
        return h.matmul(blocks).reshape(w.shape);
    }

    /// <summary>Each head's block of input columns: W[:, h] ← W[:, h] Hᵀ (its input became z_h Hᵀ).</summary>
    static Tensor PerHeadColumns(Tensor w, Tensor h, int heads, int hd)
    {
        var blocks = w.reshape(w.shape[0], heads, hd);
        return blocks.matmul(h.t()).reshape(w.shape);
    }
}
