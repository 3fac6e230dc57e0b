using System;
using System.Collections.Generic;
using System.IO;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace DotQuant.MSBuild
{
    /// <summary>Runs <c>dotnet-quantize run MANIFEST --cache-dir CACHE --format json</c> out of
    /// process (the heavy work never loads into MSBuild), turns its JSON event lines into build
    /// messages, its canonical <c>quant.yaml(line,col): error DQ0xxx</c> lines into build errors
    /// (ToolTask's canonical-error parsing), and reports where the quantized folder is. Cancelling
    /// the build kills the child; the tool's atomic output leaves no partial folder behind.</summary>
    public class QuantizeModel : ToolTask
    {
        [Required] public string Manifest { get; set; } = "";
        /// <summary>dotnet-quantize.dll shipped inside the package.</summary>
        [Required] public string ToolDll { get; set; } = "";
        [Required] public string CacheDir { get; set; } = "";
        public bool RequireCache { get; set; }
        /// <summary>One quantization at a time on the machine (others wait, with a message); DotQuantExclusive.</summary>
        public bool Exclusive { get; set; } = true;
        /// <summary>Spread the calibration over this cluster's workers (DotQuantCluster); empty: in the tool's own process.</summary>
        public string? Cluster { get; set; }
        /// <summary>With <see cref="Cluster"/>: the workers to wait for (DotQuantWorkers); empty: those that joined.</summary>
        public string? Workers { get; set; }
        /// <summary>embed: true is refused above this size (DQ0190).</summary>
        public long MaxEmbedBytes { get; set; } = 1L << 30;

        /// <summary>The quantized folder, with metadata ModelName and Embed.</summary>
        [Output] public ITaskItem? OutputFolder { get; set; }
        /// <summary>Files the run read (model, calibration, evaluation data): the next build's inputs.</summary>
        [Output] public ITaskItem[] InputFiles { get; set; } = Array.Empty<ITaskItem>();

        string? _summary;

        protected override string ToolName => "dotnet";

        protected override string GenerateFullPathToTool()
        {
            // The dotnet CLI tells MSBuild which host runs it; use the same one.
            string? host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            return !string.IsNullOrEmpty(host) && File.Exists(host) ? host! : ToolName;
        }

        protected override string GenerateCommandLineCommands()
        {
            var b = new CommandLineBuilder();
            b.AppendFileNameIfNotNull(ToolDll);
            b.AppendSwitch("run");
            b.AppendFileNameIfNotNull(Manifest);
            b.AppendSwitchIfNotNull("--cache-dir ", CacheDir);
            if (RequireCache) b.AppendSwitch("--require-cache");
            if (Exclusive) b.AppendSwitch("--exclusive");
            if (!string.IsNullOrWhiteSpace(Cluster))
            {
                b.AppendSwitchIfNotNull("--cluster ", Cluster!.Trim());
                if (!string.IsNullOrWhiteSpace(Workers)) b.AppendSwitchIfNotNull("--workers ", Workers!.Trim());
            }
            // An interrupted build (Ctrl+C, a killed agent) continues after its last completed block.
            b.AppendSwitch("--resume");
            b.AppendSwitch("--format json");
            return b.ToString();
        }

        protected override bool ValidateParameters()
        {
            if (!File.Exists(ToolDll))
            {
                Log.LogError(null, "DQ0900", null, null, 0, 0, 0, 0, "dotnet-quantize is missing from the DotQuant.MSBuild package ({0}); restore the package again", ToolDll);
                return false;
            }
            return base.ValidateParameters();
        }

        protected override MessageImportance StandardOutputLoggingImportance => MessageImportance.Normal;

        protected override void LogEventsFromTextOutput(string singleLine, MessageImportance messageImportance)
        {
            if (!singleLine.StartsWith("{", StringComparison.Ordinal))
            {
                // Canonical "file(line,col): error DQ0xxx: ..." lines become errors with location.
                base.LogEventsFromTextOutput(singleLine, messageImportance);
                return;
            }
            string? kind = Field(singleLine, "event");
            string? message = Field(singleLine, "message");
            switch (kind)
            {
                case "summary":
                    _summary = singleLine;
                    break;
                case "layer":
                    Log.LogMessage(MessageImportance.Normal, "DotQuant: [{0}/{1}] {2}", Number(singleLine, "index"), Number(singleLine, "total"), Field(singleLine, "layer"));
                    break;
                case "warning":
                    // A warning that carries its own code ("DQ0161: ...") keeps it; others are DQ0180.
                    var coded = Regex.Match(message ?? "", "^(DQ[0-9]{4}): (.*)$", RegexOptions.Singleline);
                    if (coded.Success) Log.LogWarning(null, coded.Groups[1].Value, null, Manifest, 0, 0, 0, 0, coded.Groups[2].Value);
                    else Log.LogWarning(null, "DQ0180", null, Manifest, 0, 0, 0, 0, message ?? "");
                    break;
                case "waiting":
                    Log.LogMessage(MessageImportance.High, "DotQuant: {0}", message ?? "");
                    break;
                case "cache":
                case "progress":
                case "block":
                case "memory":
                    Log.LogMessage(MessageImportance.Normal, "DotQuant: {0}", message ?? "");
                    break;
                default:
                    Log.LogMessage(MessageImportance.High, "DotQuant: {0}", message ?? singleLine);
                    break;
            }
        }

        /// <summary>The tool already reported why it failed (a DQ error); skip MSB6006's "exited with code".</summary>
        protected override bool HandleTaskExecutionErrors() => Log.HasLoggedErrors ? false : base.HandleTaskExecutionErrors();

        public override bool Execute()
        {
            Log.LogMessage(MessageImportance.High, "DotQuant: quantizing as {0} describes", Manifest);
            bool ok = base.Execute();
            if (_summary is null) return false;
            string folder = Field(_summary, "output") ?? "";
            var item = new TaskItem(folder);
            item.SetMetadata("ModelName", Field(_summary, "name") ?? Path.GetFileName(folder));
            item.SetMetadata("Embed", Regex.IsMatch(_summary, "\"embed\":true") ? "true" : "false");
            item.SetMetadata("Manifest", Manifest);
            OutputFolder = item;
            if (item.GetMetadata("Embed") == "true" && Directory.Exists(folder))
            {
                long bytes = 0;
                foreach (var f in Directory.GetFiles(folder, "*", SearchOption.AllDirectories)) bytes += new FileInfo(f).Length;
                if (bytes > MaxEmbedBytes)
                    Log.LogError(null, "DQ0190", null, Manifest, 0, 0, 0, 0,
                        "embed: true would put {0:N0} bytes of model into the assembly, above DotQuantMaxEmbedBytes ({1:N0}); ship it as files (embed: false)", bytes, MaxEmbedBytes);
            }
            var inputs = new List<ITaskItem>();
            var m = Regex.Match(_summary, "\"inputs\":\\[(.*?)\\]");
            if (m.Success)
                foreach (Match s in Regex.Matches(m.Groups[1].Value, "\"((?:\\\\.|[^\"\\\\])*)\""))
                    inputs.Add(new TaskItem(Unescape(s.Groups[1].Value)));
            InputFiles = inputs.ToArray();
            return ok && !Log.HasLoggedErrors;
        }

        /// <summary>A string field of a one-line JSON object (the tool's compact output).</summary>
        static string? Field(string json, string name)
        {
            var m = Regex.Match(json, "\"" + name + "\":\"((?:\\\\.|[^\"\\\\])*)\"");
            return m.Success ? Unescape(m.Groups[1].Value) : null;
        }

        static string Number(string json, string name)
        {
            var m = Regex.Match(json, "\"" + name + "\":(-?[0-9.eE+-]+)");
            return m.Success ? m.Groups[1].Value : "?";
        }

        static string Unescape(string s)
        {
            if (s.IndexOf('\\') < 0) return s;
            var sb = new StringBuilder(s.Length);
            for (int i = 0; i < s.Length; i++)
            {
                char c = s[i];
                if (c != '\\' || i + 1 >= s.Length) { sb.Append(c); continue; }
                char e = s[++i];
                switch (e)
                {
                    case 'n': sb.Append('\n'); break;
                    case 't': sb.Append('\t'); break;
                    case 'r': sb.Append('\r'); break;
                    case 'b': sb.Append('\b'); break;
                    case 'f': sb.Append('\f'); break;
                    case 'u' when i + 4 < s.Length:
                        sb.Append((char)Convert.ToInt32(s.Substring(i + 1, 4), 16));
                        i += 4;
                        break;
                    default: sb.Append(e); break;
                }
            }
            return sb.ToString();
        }
    }
}
