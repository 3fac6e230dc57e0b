using System;
using System.Collections.Generic;
using System.Collections.Immutable;
using System.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Diagnostics;
using Microsoft.CodeAnalysis.Operations;

namespace DotQuant.Analyzers
{
    /// <summary>BannedApiAnalyzers checks operators written as `a + b` but not as `a += b`: a compound
    /// assignment calls the same user-defined operator without the analyzer seeing it (measured with
    /// 5.6.0). This rule closes that gap: a compound assignment whose operator is in BannedSymbols.txt is
    /// DQ9030, with the list's own reason.</summary>
    [DiagnosticAnalyzer(LanguageNames.CSharp)]
    public sealed class CompoundAssignmentAnalyzer : DiagnosticAnalyzer
    {
        public static readonly DiagnosticDescriptor Rule = new DiagnosticDescriptor(
            "DQ9030",
            "Compound assignment through a banned operator",
            "'{0}' is banned in this project: {1}",
            "Reliability",
            DiagnosticSeverity.Error,
            isEnabledByDefault: true,
            description: "The operator behind this compound assignment is listed in BannedSymbols.txt.");

        public override ImmutableArray<DiagnosticDescriptor> SupportedDiagnostics => ImmutableArray.Create(Rule);

        public override void Initialize(AnalysisContext context)
        {
            context.ConfigureGeneratedCodeAnalysis(GeneratedCodeAnalysisFlags.None);
            context.EnableConcurrentExecution();
            context.RegisterCompilationStartAction(start =>
            {
                var banned = Read(start.Options.AdditionalFiles, start.CancellationToken);
                if (banned.Count == 0) return;
                start.RegisterOperationAction(op =>
                {
                    var assignment = (ICompoundAssignmentOperation)op.Operation;
                    if (assignment.OperatorMethod is not { } method) return;
                    string? id = method.GetDocumentationCommentId();
                    if (id is not null && banned.TryGetValue(id, out var reason))
                        op.ReportDiagnostic(Diagnostic.Create(Rule, assignment.Syntax.GetLocation(), method.ToDisplayString(), reason));
                }, OperationKind.CompoundAssignment);
            });
        }

        static Dictionary<string, string> Read(ImmutableArray<AdditionalText> files, System.Threading.CancellationToken ct)
        {
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var file in files.Where(f => System.IO.Path.GetFileName(f.Path).StartsWith("BannedSymbols", StringComparison.Ordinal)))
            {
                var text = file.GetText(ct);
                if (text is null) continue;
                foreach (var line in text.Lines)
                {
                    string s = line.ToString().Trim();
                    if (s.Length == 0 || s.StartsWith("//", StringComparison.Ordinal)) continue;
                    int semi = s.IndexOf(';');
                    result[semi < 0 ? s : s.Substring(0, semi)] = semi < 0 ? "" : s.Substring(semi + 1);
                }
            }
            return result;
        }
    }
}
