using DotQuant.Engine.Calibration;
using DotQuant.Runtime;
using DotQuant.Engine.Hessians;
using DotQuant.Engine.Models;
using DotQuant.Engine.Quantizers;
using static TorchSharp.torch;

namespace DotQuant.Engine.Awq;

/// <summary>AWQ (Lin et al., spec §6.2) as a block transform run before the block's solves: for each scaling
/// point of the block, in group order, the per-channel mean |x| of the group's input, a grid search of
/// s = mean|x|^α (clamped at 1e-4, normalized by √(max·min)) minimising the inspected output's error when
/// the group's linears are round-to-nearest quantized as W·diag(s) and divided back; the best s is folded
/// into the previous op and the linears' columns. Then the clipping search per output row and group
/// (every linear but q and k). The inspected output is the next group's linears on the stage output for
/// q/k/v and gate/up (o of the attention, down of the MLP: llm-awq's self_attn and mlp), the linears' own
/// output for o and down. The quantizer in the searches is each linear's own grid (GPTQ's integer grid or
/// a GGUF block type), so the search optimizes for the file being written. Statistics come from the
/// calibrator's stream, one batch at a time: memory is one batch's activations plus the group's weights.</summary>
public sealed class AwqTransform(AwqOptions options)
{
    /// <summary>What the scale search may keep of one group's activations across the α grid (a small model keeps all).</summary>
    public const long CacheBytes = 1L << 30;

    /// <summary>Transforms the block in place (its norms and linear weights) and returns the stored tensors
    /// it changed with their new values (the writer stores them instead of the checkpoint's).</summary>
    /// <param name="optionsFor">The solver options of a planned linear, null for one left in float.</param>
    public IReadOnlyDictionary<string, Tensor> Apply(BlockWork work, Func<NamedLinear, SolverOptions?> optionsFor)
    {
        var block = work.Block;
        var points = block.ScalingPoints;
        if (points.Count == 0)
            throw new DotQuantException(ErrorCodes.UnsupportedModelType, $"AWQ has no scaling points for {work.Model.Config.ModelType} blocks yet (the Llama family has them)");
        var changed = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var point in points)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            var group = block.LinearGroups[point.Group];
            Tensor s;
            using (PhaseClock.Measure("awq scales"))
                s = Search(work, point, group, optionsFor);
            using var owned = s;
            point.DivideInto(s);
            using var sIn = point.Expand(s);
            foreach (var lin in group) ScaleColumns(lin, sIn);
            foreach (var (name, t) in point.Changed()) changed[name] = t;
            foreach (var lin in group) foreach (var (name, t) in lin.Stored()) changed[name] = t;
        }
        if (options.Clip)
            for (int g = 0; g < block.LinearGroups.Count; g++)
                foreach (var lin in block.LinearGroups[g].Where(l => optionsFor(l) is not null && !SkipsClip(l.Name)))
                {
                    work.Cancellation.ThrowIfCancellationRequested();
                    using (PhaseClock.Measure("awq clip"))
                        Clip(work, g, lin, optionsFor(lin)!);
                    foreach (var (name, t) in lin.Stored()) changed[name] = t;
                }
        return changed;
    }

    /// <summary>llm-awq and AutoAWQ leave the query and key projections unclipped (fused qkv included).</summary>
    static bool SkipsClip(string name) =>
        name.EndsWith("q_proj", StringComparison.Ordinal) || name.EndsWith("k_proj", StringComparison.Ordinal) || name.EndsWith("qkv_proj", StringComparison.Ordinal);

    static void ScaleColumns(NamedLinear lin, Tensor sIn)
    {
        using var scope = NewDisposeScope();
        lin.SetWeight(lin.Weight.to(ScalarType.Float32).mul(sIn.unsqueeze(0)).DetachFromDisposeScope());
    }

    /// <summary>The best scale over the point's channels [Channels].</summary>
    Tensor Search(BlockWork work, ScalingPoint point, IReadOnlyList<NamedLinear> group, Func<NamedLinear, SolverOptions?> optionsFor)
    {
        using var scope = NewDisposeScope();
        // mean_t |x_t,j| of the group's input.
        var absSum = zeros(group[0].InFeatures, dtype: ScalarType.Float64);
        long tokens = 0;
        ForEachInput(work, point.Group, x =>
        {
            var flat = x.reshape(-1, x.shape[^1]);
            absSum.add_(flat.abs().sum(dim: 0L).to(ScalarType.Float64), Scalars.One);
            tokens += flat.shape[0];
        });
        var a = point.Reduce(absSum.div(Scalars.Of((double)tokens)).to(ScalarType.Float32));
        var originals = group.Select(l => l.Weight.to(ScalarType.Float32, copy: true)).ToArray();
        using var inspection = new Inspection(work, point.Group, group);
        double best = double.PositiveInfinity;
        Tensor? bestS = null;
        for (int k = 0; k < options.Grid; k++)
        {
            double alpha = (double)k / options.Grid;
            var s = a.pow(Scalars.Of(alpha)).clamp_min(Scalars.Of(1e-4));
            s = s.div(s.max().mul(s.min()).sqrt());
            var sIn = point.Expand(s);
            var trial = group.Select((l, i) => Trial(originals[i], sIn, optionsFor(l))).ToArray();
            double loss = inspection.Error(trial);
            if (loss < best)
            {
                best = loss;
                bestS = s;
            }
        }
        if (bestS is null || !float.IsFinite(bestS.sum().item<float>()))
            throw new DotQuantException(ErrorCodes.NonFinite, $"{group[0].Name}: AWQ's scale search found no finite scale (NaN or Inf in the activations)");
        return scope.MoveToOuter(bestS);
    }

    /// <summary>Q(W·diag(s))·diag(s)⁻¹ on the linear's own grid (W itself for a linear left in float).</summary>
    static Tensor Trial(Tensor w, Tensor sIn, SolverOptions? o)
    {
        if (o is null) return w;
        using var scope = NewDisposeScope();
        using var q = RtnSolver.Solve(w.mul(sIn.unsqueeze(0)), o with { Kind = SolverKind.Rtn });
        return scope.MoveToOuter(q.Dequantize().div(sIn.unsqueeze(0)));
    }

    /// <summary>Group <paramref name="g"/>'s stage states and float inspected outputs per batch, kept across the
    /// α grid when they fit <see cref="CacheBytes"/> (otherwise recomputed for every α).</summary>
    sealed class Inspection(BlockWork work, int g, IReadOnlyList<NamedLinear> group) : IDisposable
    {
        readonly List<(BlockState State, Tensor Reference)>? _cached = Fits(work, g, group) ? [] : null;
        readonly bool _throughNext = g % 2 == 0 && g + 1 < work.Block.LinearGroups.Count;

        static bool Fits(BlockWork work, int g, IReadOnlyList<NamedLinear> group)
        {
            long tokens = work.Stream.Sequences * work.Stream.Ids[0][0].Length;
            var groups = work.Block.LinearGroups;
            long outputs = g % 2 == 0 && g + 1 < groups.Count ? groups[g + 1].Sum(l => l.OutFeatures) : group.Sum(l => l.OutFeatures);
            // The state (residual and input) and the reference output, fp32.
            return tokens * (2 * work.Model.Config.HiddenSize + group[0].InFeatures + outputs) * 4 <= CacheBytes;
        }

        Tensor Inspected(BlockState state, ForwardContext ctx)
        {
            if (!_throughNext) return cat(group.Select(l => l.Forward(state.Input)).ToArray(), -1);
            using var next = work.Block.Stages.Next(g, state, ctx);
            return cat(work.Block.LinearGroups[g + 1].Select(l => l.Forward(next.Input)).ToArray(), -1);
        }

        /// <summary>Σ over the stream of ‖inspected(trial weights) − inspected(float weights)‖² / elements.</summary>
        public double Error(Tensor[] trial)
        {
            double sum = 0;
            long count = 0;
            void Add(BlockState state, Tensor reference, ForwardContext ctx)
            {
                var saved = group.Select((l, i) => l.ExchangeWeight(trial[i])).ToArray();
                Tensor quantized;
                try { quantized = Inspected(state, ctx); }
                finally { for (int i = 0; i < group.Count; i++) group[i].ExchangeWeight(saved[i]); }
                var d = quantized.sub(reference);
                sum += d.mul(d).sum().to(ScalarType.Float64).item<double>();
                count += d.NumberOfElements;
            }
            if (_cached is { Count: > 0 })
                foreach (var (state, reference) in _cached)
                {
                    using var scope = NewDisposeScope();
                    Add(state, reference, work.Contexts.For(state.Input.shape[1]));
                }
            else
                ForEachInput(work, g, (x, state, ctx) =>
                {
                    var reference = Inspected(state, ctx);
                    if (_cached is not null)
                        _cached.Add((new BlockState(state.Residual.clone().DetachFromDisposeScope(), state.Input.clone().DetachFromDisposeScope()),
                            reference.DetachFromDisposeScope()));
                    Add(state, reference, ctx);
                });
            return sum / Math.Max(1, count);
        }

        public void Dispose()
        {
            if (_cached is null) return;
            foreach (var (state, reference) in _cached) { state.Dispose(); reference.Dispose(); }
        }
    }

    /// <summary>llm-awq's auto_clip: per output row and input group, the clamp max = amax·(1 − i/ClipGrid)
    /// minimising the mean over strided tokens of (x·(Q(clamp(w)) − w))², then the weight clamped to it.</summary>
    void Clip(BlockWork work, int g, NamedLinear lin, SolverOptions o)
    {
        using var scope = NewDisposeScope();
        var x = StridedInput(work, g, options.ClipTokens);                  // [T, in]
        var w = lin.Weight.to(ScalarType.Float32, copy: true);               // [out, in]
        long n = w.shape[1];
        int size = o.Grid.BlockSize ?? (o.GroupSize == -1 ? (int)n : o.GroupSize);
        int steps = (int)(options.MaxShrink * options.ClipGrid);
        for (long c = 0; c < n; c += size)
        {
            long width = Math.Min(size, n - c);
            using var groupScope = NewDisposeScope();
            var wg = w.narrow(1, c, width);
            var xg = x.narrow(1, c, width);
            var org = xg.matmul(wg.t());                                     // [T, out]
            var amax = wg.abs().amax([1], keepdim: true);                   // [out, 1]
            var bestMax = amax.clone();
            var bestErr = full([wg.shape[0]], Scalars.Of(double.PositiveInfinity), dtype: ScalarType.Float32);
            for (int i = 0; i < steps; i++)
            {
                var max = amax.mul(Scalars.Of(1 - (double)i / options.ClipGrid));
                var clamped = wg.clamp(max.neg(), max);
                using var q = RtnSolver.Solve(clamped, o with { Kind = SolverKind.Rtn, GroupSize = (int)width });
                var diff = xg.matmul(q.Dequantize().t()).sub(org);
                var err = diff.mul(diff).mean([0]);                          // [out]
                var better = err.lt(bestErr);
                bestErr = where(better, err, bestErr);
                bestMax = where(better.unsqueeze(1), max, bestMax);
            }
            wg.copy_(wg.clamp(bestMax.neg(), bestMax));
        }
        lin.SetWeight(w.DetachFromDisposeScope());
    }

    /// <summary>Group <paramref name="g"/>'s inputs at ~<paramref name="limit"/> tokens taken at an even stride over the stream.</summary>
    static Tensor StridedInput(BlockWork work, int g, int limit)
    {
        long total = 0;
        for (int i = 0; i < work.Stream.Count; i++) total += work.Stream.Ids[i].Sum(s => (long)s.Length);
        long stride = Math.Max(1, total / Math.Max(1, limit));
        var parts = new List<Tensor>();
        long seen = 0;
        ForEachInput(work, g, x =>
        {
            var flat = x.reshape(-1, x.shape[^1]);
            long first = (stride - seen % stride) % stride;
            seen += flat.shape[0];
            if (first >= flat.shape[0]) return;
            var idx = arange(Scalars.Of(first), Scalars.Of(flat.shape[0]), Scalars.Of(stride), dtype: ScalarType.Int64);
            parts.Add(flat.index_select(0, idx).DetachFromDisposeScope());
        });
        var result = cat(parts, 0);
        foreach (var p in parts) p.Dispose();
        return result;
    }

    static void ForEachInput(BlockWork work, int g, Action<Tensor> use) => ForEachInput(work, g, (x, _, _) => use(x));

    /// <summary>Runs each batch of the stream through the block's stages up to group <paramref name="g"/>'s
    /// input and hands it over (with the stage state and context, for the next stage).</summary>
    static void ForEachInput(BlockWork work, int g, Action<Tensor, BlockState, ForwardContext> use)
    {
        var stages = work.Block.Stages;
        for (int i = 0; i < work.Stream.Count; i++)
        {
            work.Cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            using var hidden = work.Stream.Input(i);
            var ctx = work.Contexts.For(hidden.shape[1]);
            var state = stages.Begin(hidden, ctx);
            for (int k = 0; k < g; k++)
            {
                var next = stages.Next(k, state, ctx);
                state.Dispose();
                state = next;
            }
            try { use(state.Input, state, ctx); }
            finally { state.Dispose(); }
        }
    }
}
