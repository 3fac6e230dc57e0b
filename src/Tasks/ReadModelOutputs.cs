using System;
using System.Collections.Generic;
using System.IO;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

namespace DotQuant.MSBuild
{
    /// <summary>Reads the state file DotQuantQuantize wrote (one "name|embed|manifest|folder" line per model)
    /// and returns the files of each quantized folder with ModelName, Embed and RelativePath, so a
    /// build whose quantize step was skipped still ships the models.</summary>
    public class ReadModelOutputs : Task
    {
        [Required] public string StateFile { get; set; } = "";
        [Output] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
        /// <summary>False: a recorded folder that no longer exists is not an error but sets <see cref="Stale"/>.</summary>
        public bool ReportMissing { get; set; } = true;
        /// <summary>Some recorded folder is gone (or the state is unreadable): quantize again.</summary>
        [Output] public bool Stale { get; set; }
        /// <summary>One item per model folder, with ModelName, Embed and Manifest.</summary>
        [Output] public ITaskItem[] Models { get; set; } = Array.Empty<ITaskItem>();

        public override bool Execute()
        {
            if (!File.Exists(StateFile)) return true;
            var files = new List<ITaskItem>();
            var models = new List<ITaskItem>();
            foreach (var line in File.ReadAllLines(StateFile))
            {
                var parts = line.Split(new[] { '|' }, 4);
                if (parts.Length != 4) { Stale = true; continue; }
                string name = parts[0], embed = parts[1], manifest = parts[2], folder = parts[3];
                if (!Directory.Exists(folder))
                {
                    Stale = true;
                    if (!ReportMissing) continue;
                    Log.LogError(null, "DQ0191", null, StateFile, 0, 0, 0, 0,
                        "the quantized model '{0}' is no longer in the cache ({1}); delete obj/dotquant or rebuild with --no-incremental", name, folder);
                    continue;
                }
                var model = new TaskItem(folder);
                model.SetMetadata("ModelName", name);
                model.SetMetadata("Embed", embed);
                model.SetMetadata("Manifest", manifest);
                models.Add(model);
                string root = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
                var inFolder = new List<string>(Directory.GetFiles(folder, "*", SearchOption.AllDirectories));
                inFolder.Sort(StringComparer.Ordinal);
                foreach (var f in inFolder)
                {
                    var item = new TaskItem(f);
                    item.SetMetadata("ModelName", name);
                    item.SetMetadata("Embed", embed);
                    item.SetMetadata("ModelRelativePath", "models/" + name + "/" + Path.GetFullPath(f).Substring(root.Length).Replace('\\', '/'));
                    files.Add(item);
                }
            }
            Files = files.ToArray();
            Models = models.ToArray();
            return !Log.HasLoggedErrors;
        }
    }
}
