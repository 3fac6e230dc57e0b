using DotQuant.Engine.Calibration;

namespace DotQuant.Tool.Reports;

/// <summary>The per-layer calibration loss as a bar chart (log10 scale): the solver's loss next to
/// round-to-nearest's on the same statistics, so a reader sees where calibration helped and which
/// layers are hardest.</summary>
public static class LossChart
{
    public static void Save(string path, IReadOnlyList<LayerReport> layers, string title)
    {
        var q = layers.Where(l => l.Quantized).ToList();
        var plot = new ScottPlot.Plot();
        plot.Title($"{title}: per-layer calibration loss");
        plot.YLabel("log10 tr(ΔW·H·ΔW^T)");
        var bars = new List<ScottPlot.Bar>();
        for (int i = 0; i < q.Count; i++)
        {
            if (double.IsFinite(q[i].Loss) && q[i].Loss > 0)
                bars.Add(new ScottPlot.Bar { Position = i * 3, Value = Math.Log10(q[i].Loss), FillColor = ScottPlot.Colors.SteelBlue });
            if (double.IsFinite(q[i].RtnLoss) && q[i].RtnLoss > 0)
                bars.Add(new ScottPlot.Bar { Position = i * 3 + 1, Value = Math.Log10(q[i].RtnLoss), FillColor = ScottPlot.Colors.Orange });
        }
        if (bars.Count > 0)
        {
            double floor = Math.Floor(bars.Min(b => b.Value)) - 1;
            foreach (var b in bars) b.ValueBase = floor;
            plot.Add.Bars(bars);
        }
        var ticks = q.Select((l, i) => new ScottPlot.Tick(i * 3 + 0.5, Short(l.Name))).ToArray();
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        plot.Axes.Bottom.TickLabelStyle.Rotation = 90;
        plot.Axes.Bottom.TickLabelStyle.Alignment = ScottPlot.Alignment.MiddleLeft;
        plot.Axes.Bottom.MinimumSize = 160;
        plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = "calibrated", FillColor = ScottPlot.Colors.SteelBlue });
        plot.Legend.ManualItems.Add(new ScottPlot.LegendItem { LabelText = "round to nearest", FillColor = ScottPlot.Colors.Orange });
        plot.ShowLegend(ScottPlot.Alignment.UpperLeft);
        plot.SavePng(path, Math.Max(800, q.Count * 24 + 200), 560);
    }

    /// <summary>model.layers.3.self_attn.q_proj → 3.q_proj.</summary>
    static string Short(string name)
    {
        var parts = name.Split('.');
        int i = Array.IndexOf(parts, "layers");
        return i >= 0 && i + 1 < parts.Length ? $"{parts[i + 1]}.{parts[^1]}" : name;
    }
}
