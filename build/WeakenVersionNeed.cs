// Compiled by MSBuild's RoslynCodeTaskFactory (see DotQuant.NativeFix.targets) and by the tests
// (with DOTQUANT_ELF_NO_TASK). It must stay a single self-contained file for that reason.
//
// Why this exists: TorchSharp 0.107's libLibTorchSharp.so was linked against GCC 13's libstdc++,
// which makes the linker record a need for GLIBCXX_3.4.32. The only symbol behind that version is
// _ZSt21ios_base_library_initv, a marker GCC 13 emits so that static initialisation of iostreams
// is ordered; nothing relocates against it. glibc refuses to load a library whose *non-weak*
// version need is missing, but merely reports a missing *weak* need (VER_FLG_WEAK) in verbose mode.
// Setting that flag on the one auxiliary entry lets the library load on Debian 12 (GCC 12) and is
// a no-op where the version exists. We refuse to patch if any other symbol is bound to the
// version, because then weakening it would turn a load error into a crash at first call.
#nullable enable
using System;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace DotQuant.Build
{
    public sealed class ElfPatchResult
    {
        public string Status = "";           // "patched", "already-weak", "not-needed", "refused"
        public string Detail = "";
        public int Flags = -1;               // vna_flags of the entry, -1 when the need is absent
    }

    public static class ElfVersionNeed
    {
        const uint ShtDynsym = 11;
        const uint ShtGnuVerneed = 0x6ffffffe;
        const uint ShtGnuVersym = 0x6fffffff;
        const ushort VerFlgWeak = 0x2;

        /// <summary>Weakens the need for <paramref name="version"/> of <paramref name="library"/>
        /// (e.g. libstdc++.so.6) when only symbols in <paramref name="markerSymbols"/> use it.
        /// The input is not modified; the patched image is returned in <paramref name="patched"/>.</summary>
        public static ElfPatchResult Weaken(byte[] image, string library, string version,
            ICollection<string> markerSymbols, out byte[]? patched)
        {
            patched = null;
            var r = new ElfPatchResult();
            if (image.Length < 64 || image[0] != 0x7f || image[1] != (byte)'E' || image[2] != (byte)'L' || image[3] != (byte)'F')
                return Refuse(r, "not an ELF file");
            if (image[4] != 2 || image[5] != 1)
                return Refuse(r, "only little-endian ELF64 is supported");

            ulong shoff = U64(image, 0x28);
            int shentsize = U16(image, 0x3a), shnum = U16(image, 0x3c);
            if (shentsize < 64 || shoff == 0 || shoff + (ulong)shentsize * (ulong)shnum > (ulong)image.Length)
                return Refuse(r, "section header table is outside the file");

            var sections = new List<(uint Type, ulong Offset, ulong Size, uint Link, uint Info, ulong EntSize)>();
            for (int i = 0; i < shnum; i++)
            {
                int b = checked((int)shoff + i * shentsize);
                sections.Add((U32(image, b + 4), U64(image, b + 24), U64(image, b + 32), U32(image, b + 40), U32(image, b + 44), U64(image, b + 56)));
            }
            foreach (var s in sections)
                if (s.Type != 8 /* NOBITS */ && s.Offset + s.Size > (ulong)image.Length)
                    return Refuse(r, "a section lies outside the file");

            int verneed = sections.FindIndex(s => s.Type == ShtGnuVerneed);
            if (verneed < 0) { r.Status = "not-needed"; r.Detail = "no version needs"; return r; }
            var vn = sections[verneed];
            if (vn.Link >= sections.Count) return Refuse(r, "bad string table link");
            var strtab = sections[(int)vn.Link];

            // Find the auxiliary entry (library, version).
            int auxOffset = -1; ushort versionIndex = 0;
            long pos = (long)vn.Offset;
            for (uint n = 0; n < vn.Info; n++)
            {
                if (pos + 16 > (long)(vn.Offset + vn.Size)) return Refuse(r, "truncated verneed entry");
                int cnt = U16(image, (int)pos + 2);
                string file = Str(image, strtab, U32(image, (int)pos + 4));
                long aux = pos + U32(image, (int)pos + 8);
                for (int j = 0; j < cnt; j++)
                {
                    if (aux + 16 > (long)(vn.Offset + vn.Size)) return Refuse(r, "truncated vernaux entry");
                    string name = Str(image, strtab, U32(image, (int)aux + 8));
                    if (file == library && name == version)
                    {
                        auxOffset = (int)aux;
                        versionIndex = (ushort)(U16(image, (int)aux + 6) & 0x7fff);
                    }
                    uint next = U32(image, (int)aux + 12);
                    if (next == 0) break;
                    aux += next;
                }
                uint vnNext = U32(image, (int)pos + 12);
                if (vnNext == 0) break;
                pos += vnNext;
            }
            if (auxOffset < 0) { r.Status = "not-needed"; r.Detail = $"{library} {version} is not needed"; return r; }

            r.Flags = U16(image, auxOffset + 4);

            // Which dynamic symbols are bound to that version index?
            int dynsym = sections.FindIndex(s => s.Type == ShtDynsym);
            int versym = sections.FindIndex(s => s.Type == ShtGnuVersym);
            if (dynsym < 0 || versym < 0) return Refuse(r, "no dynamic symbol table");
            var ds = sections[dynsym]; var vs = sections[versym];
            if (ds.EntSize != 24 || ds.Link >= sections.Count) return Refuse(r, "unexpected dynamic symbol table layout");
            var dynstr = sections[(int)ds.Link];
            ulong count = ds.Size / 24;
            if (vs.Size < count * 2) return Refuse(r, "version symbol table shorter than the symbol table");
            var users = new List<string>();
            for (ulong k = 0; k < count; k++)
            {
                int vi = U16(image, (int)(vs.Offset + k * 2)) & 0x7fff;
                if (vi != versionIndex) continue;
                users.Add(Str(image, dynstr, U32(image, (int)(ds.Offset + k * 24))));
            }
            foreach (var u in users)
                if (!markerSymbols.Contains(u))
                    return Refuse(r, $"symbol '{u}' uses {version}; weakening it would defer a real failure to run time");

            ushort flags = U16(image, auxOffset + 4);
            if ((flags & VerFlgWeak) != 0) { r.Status = "already-weak"; r.Detail = $"{version} is already weak"; return r; }
            patched = (byte[])image.Clone();
            ushort newFlags = (ushort)(flags | VerFlgWeak);
            patched[auxOffset + 4] = (byte)newFlags;
            patched[auxOffset + 5] = (byte)(newFlags >> 8);
            r.Status = "patched";
            r.Detail = $"{library} {version} marked weak (used only by {string.Join(", ", users)})";
            return r;
        }

        /// <summary>Reads the vna_flags of (library, version), or -1 when the need is absent.</summary>
        public static int ReadFlags(byte[] image, string library, string version) =>
            Weaken(image, library, version, new HashSet<string>(), out _).Flags;

        static ElfPatchResult Refuse(ElfPatchResult r, string why) { r.Status = "refused"; r.Detail = why; return r; }
        static ushort U16(byte[] b, int o) => (ushort)(b[o] | b[o + 1] << 8);
        static uint U32(byte[] b, int o) => (uint)(b[o] | b[o + 1] << 8 | b[o + 2] << 16 | b[o + 3] << 24);
        static ulong U64(byte[] b, int o) => U32(b, o) | (ulong)U32(b, o + 4) << 32;

        static string Str(byte[] b, (uint Type, ulong Offset, ulong Size, uint Link, uint Info, ulong EntSize) table, uint index)
        {
            if (index >= table.Size) throw new InvalidDataException("string index outside the string table");
            int start = (int)(table.Offset + index), end = start;
            int limit = (int)(table.Offset + table.Size);
            while (end < limit && b[end] != 0) end++;
            return Encoding.ASCII.GetString(b, start, end - start);
        }

        /// <summary>Patches <paramref name="path"/> in place, atomically (temp file + rename) so that
        /// a hard-linked or shared copy is never written through, and keeps its timestamp so that
        /// incremental copies see the file as up to date.</summary>
        public static ElfPatchResult PatchFile(string path, string library, string version, ICollection<string> markerSymbols)
        {
            byte[] image = File.ReadAllBytes(path);
            ElfPatchResult r;
            try { r = Weaken(image, library, version, markerSymbols, out var patched); if (patched == null) return r;
                var stamp = File.GetLastWriteTimeUtc(path);
                string tmp = path + ".dqtmp";
                File.WriteAllBytes(tmp, patched);
                File.SetLastWriteTimeUtc(tmp, stamp);
                File.Replace(tmp, path, null);
            }
            catch (Exception e) when (e is InvalidDataException || e is IndexOutOfRangeException || e is OverflowException)
            {
                return Refuse(new ElfPatchResult(), "malformed ELF: " + e.Message);
            }
            return r;
        }
    }
}

#if !DOTQUANT_ELF_NO_TASK
namespace DotQuant.Build
{
    using Microsoft.Build.Framework;
    using Microsoft.Build.Utilities;

    /// <summary>MSBuild task: weakens GLIBCXX_3.4.32 in each given copy of libLibTorchSharp.so.</summary>
    public class WeakenGlibcxxVersionNeed : Task
    {
        [Required] public ITaskItem[] Files { get; set; } = Array.Empty<ITaskItem>();
        public string Library { get; set; } = "libstdc++.so.6";
        public string Version { get; set; } = "GLIBCXX_3.4.32";
        public string MarkerSymbols { get; set; } = "_ZSt21ios_base_library_initv";

        public override bool Execute()
        {
            var markers = new HashSet<string>(MarkerSymbols.Split(new[] { ';' }, StringSplitOptions.RemoveEmptyEntries));
            foreach (var item in Files)
            {
                string path = item.ItemSpec;
                if (!File.Exists(path)) continue;
                var r = ElfVersionNeed.PatchFile(path, Library, Version, markers);
                if (r.Status == "refused")
                    Log.LogWarning(null, "DQ0950", null, path, 0, 0, 0, 0, "Not weakening {0} in {1}: {2}", Version, path, r.Detail);
                else
                    Log.LogMessage(MessageImportance.Low, "{0}: {1} ({2})", path, r.Status, r.Detail);
            }
            return !Log.HasLoggedErrors;
        }
    }
}
#endif
