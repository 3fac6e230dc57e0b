using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;
using System.Text;

namespace DotQuant.Tests;

/// <summary>Finds, in TorchSharp's IL, every public API that hands the caller a new Scalar or creates a
/// temporary one it does not dispose: the APIs TorchSharp's finalizer race lives in. A method creates a
/// Scalar when it runs `newobj Scalar::.ctor`; it is a factory when it returns a Scalar (the implicit
/// conversions, ToScalar) and allocating when it creates one or calls a factory or an allocating method
/// without also calling Scalar.Dispose (the methods that dispose what they create are safe).
/// Documentation-comment IDs are what BannedSymbols.txt names.</summary>
public static class ScalarAllocations
{
    public sealed record Finding(string DocId, bool Factory);

    public static IReadOnlyList<Finding> Scan(string assemblyPath)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();

        TypeDefinitionHandle scalarType = default;
        foreach (var h in md.TypeDefinitions)
        {
            var t = md.GetTypeDefinition(h);
            if (md.GetString(t.Name) == "Scalar" && md.GetString(t.Namespace) == "TorchSharp") scalarType = h;
        }
        if (scalarType.IsNil) throw new InvalidOperationException("TorchSharp.Scalar not found in " + assemblyPath);

        var provider = new DocIdTypeProvider();
        var methods = md.MethodDefinitions.ToList();
        var calls = new Dictionary<MethodDefinitionHandle, List<MethodDefinitionHandle>>();
        var creates = new HashSet<MethodDefinitionHandle>();
        var disposes = new HashSet<MethodDefinitionHandle>();
        var returnsScalar = new HashSet<MethodDefinitionHandle>();

        foreach (var h in methods)
        {
            var def = md.GetMethodDefinition(h);
            var sig = def.DecodeSignature(provider, null);
            if (sig.ReturnType == "TorchSharp.Scalar") returnsScalar.Add(h);
            var list = new List<MethodDefinitionHandle>();
            calls[h] = list;
            if (def.RelativeVirtualAddress == 0) continue;
            var body = pe.GetMethodBody(def.RelativeVirtualAddress);
            var il = body.GetILReader();
            while (il.RemainingBytes > 0)
            {
                var op = ReadOpCode(ref il);
                var operand = OperandSize(op, ref il);
                if (op is ILOpCode.Call or ILOpCode.Callvirt or ILOpCode.Newobj or ILOpCode.Ldftn or ILOpCode.Ldvirtftn)
                {
                    var token = MetadataTokens.EntityHandle(operand);
                    if (Resolve(md, token) is not { } target) continue;
                    var tdef = md.GetMethodDefinition(target);
                    string name = md.GetString(tdef.Name);
                    if (tdef.GetDeclaringType() == scalarType && name == ".ctor" && op == ILOpCode.Newobj) creates.Add(h);
                    else if (tdef.GetDeclaringType() == scalarType && name == "Dispose") disposes.Add(h);
                    else list.Add(target);
                }
            }
        }

        // A factory returns what it (or a factory it calls) created; an allocating method drops it.
        var factory = new HashSet<MethodDefinitionHandle>(creates.Where(returnsScalar.Contains));
        var allocating = new HashSet<MethodDefinitionHandle>(creates.Where(h => !returnsScalar.Contains(h) && !disposes.Contains(h)));
        bool changed = true;
        while (changed)
        {
            changed = false;
            foreach (var h in methods)
            {
                if (factory.Contains(h) || allocating.Contains(h)) continue;
                bool reaches = calls[h].Any(c => factory.Contains(c) || allocating.Contains(c));
                if (!reaches) continue;
                if (returnsScalar.Contains(h)) { factory.Add(h); changed = true; }
                else if (!disposes.Contains(h) || calls[h].Any(allocating.Contains)) { allocating.Add(h); changed = true; }
            }
        }

        var findings = new List<Finding>();
        foreach (var h in factory.Concat(allocating))
        {
            if (!Visible(md, h)) continue;
            findings.Add(new Finding(DocId(md, provider, h), factory.Contains(h)));
        }
        return findings.DistinctBy(f => f.DocId).OrderBy(f => f.DocId, StringComparer.Ordinal).ToList();
    }

    static MethodDefinitionHandle? Resolve(MetadataReader md, EntityHandle token)
    {
        switch (token.Kind)
        {
            case HandleKind.MethodDefinition:
                return (MethodDefinitionHandle)token;
            case HandleKind.MethodSpecification:
                return Resolve(md, md.GetMethodSpecification((MethodSpecificationHandle)token).Method);
            case HandleKind.MemberReference:
                // A member of a generic instantiation of one of TorchSharp's own types: find the definition.
                var mr = md.GetMemberReference((MemberReferenceHandle)token);
                if (mr.Parent.Kind != HandleKind.TypeSpecification) return null;
                var spec = md.GetTypeSpecification((TypeSpecificationHandle)mr.Parent);
                var blob = md.GetBlobReader(spec.Signature);
                if (blob.ReadSignatureTypeCode() != SignatureTypeCode.GenericTypeInstance) return null;
                blob.ReadSignatureTypeCode();
                var generic = blob.ReadTypeHandle();
                if (generic.Kind != HandleKind.TypeDefinition) return null;
                string name = md.GetString(mr.Name);
                foreach (var m in md.GetTypeDefinition((TypeDefinitionHandle)generic).GetMethods())
                    if (md.GetString(md.GetMethodDefinition(m).Name) == name && md.GetBlobContent(md.GetMethodDefinition(m).Signature).SequenceEqual(md.GetBlobContent(mr.Signature)))
                        return m;
                return null;
            default:
                return null;
        }
    }

    /// <summary>Public or protected, on a type reachable from outside.</summary>
    static bool Visible(MetadataReader md, MethodDefinitionHandle h)
    {
        var def = md.GetMethodDefinition(h);
        var access = def.Attributes & MethodAttributes.MemberAccessMask;
        if (access is not (MethodAttributes.Public or MethodAttributes.Family or MethodAttributes.FamORAssem)) return false;
        var t = def.GetDeclaringType();
        while (!t.IsNil)
        {
            var td = md.GetTypeDefinition(t);
            var v = td.Attributes & TypeAttributes.VisibilityMask;
            if (v is not (TypeAttributes.Public or TypeAttributes.NestedPublic or TypeAttributes.NestedFamily or TypeAttributes.NestedFamORAssem)) return false;
            t = td.GetDeclaringType();
        }
        return true;
    }

    static string TypeName(MetadataReader md, TypeDefinitionHandle h)
    {
        var td = md.GetTypeDefinition(h);
        string name = md.GetString(td.Name);
        var outer = td.GetDeclaringType();
        if (!outer.IsNil) return TypeName(md, outer) + "." + name;
        string ns = md.GetString(td.Namespace);
        return ns.Length > 0 ? ns + "." + name : name;
    }

    static string DocId(MetadataReader md, DocIdTypeProvider provider, MethodDefinitionHandle h)
    {
        var def = md.GetMethodDefinition(h);
        var sig = def.DecodeSignature(provider, null);
        string name = md.GetString(def.Name).Replace('.', '#');
        var sb = new StringBuilder("M:").Append(TypeName(md, def.GetDeclaringType())).Append('.').Append(name);
        int generics = def.GetGenericParameters().Count;
        if (generics > 0) sb.Append("``").Append(generics);
        if (sig.ParameterTypes.Length > 0) sb.Append('(').Append(string.Join(",", sig.ParameterTypes)).Append(')');
        if (name is "op_Implicit" or "op_Explicit") sb.Append('~').Append(sig.ReturnType);
        return sb.ToString();
    }

    static ILOpCode ReadOpCode(ref BlobReader il)
    {
        byte b = il.ReadByte();
        return b == 0xFE ? (ILOpCode)(0xFE00 | il.ReadByte()) : (ILOpCode)b;
    }

    /// <summary>Reads the operand; returns it when it is a 4-byte token, else 0.</summary>
    static int OperandSize(ILOpCode op, ref BlobReader il)
    {
        switch (op)
        {
            case ILOpCode.Switch:
                uint n = il.ReadUInt32();
                for (uint i = 0; i < n; i++) il.ReadInt32();
                return 0;
            case ILOpCode.Ldarg_s or ILOpCode.Ldarga_s or ILOpCode.Starg_s or ILOpCode.Ldloc_s or ILOpCode.Ldloca_s or ILOpCode.Stloc_s
                or ILOpCode.Ldc_i4_s or ILOpCode.Br_s or ILOpCode.Brfalse_s or ILOpCode.Brtrue_s or ILOpCode.Beq_s or ILOpCode.Bge_s
                or ILOpCode.Bgt_s or ILOpCode.Ble_s or ILOpCode.Blt_s or ILOpCode.Bne_un_s or ILOpCode.Bge_un_s or ILOpCode.Bgt_un_s
                or ILOpCode.Ble_un_s or ILOpCode.Blt_un_s or ILOpCode.Leave_s or ILOpCode.Unaligned:
                il.ReadByte();
                return 0;
            case ILOpCode.Ldarg or ILOpCode.Ldarga or ILOpCode.Starg or ILOpCode.Ldloc or ILOpCode.Ldloca or ILOpCode.Stloc:
                il.ReadInt16();
                return 0;
            case ILOpCode.Ldc_i8:
                il.ReadInt64();
                return 0;
            case ILOpCode.Ldc_r8:
                il.ReadDouble();
                return 0;
            case ILOpCode.Ldc_i4 or ILOpCode.Ldc_r4 or ILOpCode.Br or ILOpCode.Brfalse or ILOpCode.Brtrue or ILOpCode.Beq or ILOpCode.Bge
                or ILOpCode.Bgt or ILOpCode.Ble or ILOpCode.Blt or ILOpCode.Bne_un or ILOpCode.Bge_un or ILOpCode.Bgt_un or ILOpCode.Ble_un
                or ILOpCode.Blt_un or ILOpCode.Leave:
                il.ReadInt32();
                return 0;
            case ILOpCode.Call or ILOpCode.Callvirt or ILOpCode.Newobj or ILOpCode.Ldftn or ILOpCode.Ldvirtftn or ILOpCode.Jmp
                or ILOpCode.Calli or ILOpCode.Ldtoken or ILOpCode.Ldstr or ILOpCode.Ldfld or ILOpCode.Ldflda or ILOpCode.Stfld
                or ILOpCode.Ldsfld or ILOpCode.Ldsflda or ILOpCode.Stsfld or ILOpCode.Box or ILOpCode.Unbox or ILOpCode.Unbox_any
                or ILOpCode.Castclass or ILOpCode.Isinst or ILOpCode.Newarr or ILOpCode.Ldelema or ILOpCode.Ldelem or ILOpCode.Stelem
                or ILOpCode.Ldobj or ILOpCode.Stobj or ILOpCode.Cpobj or ILOpCode.Initobj or ILOpCode.Sizeof or ILOpCode.Mkrefany
                or ILOpCode.Refanyval or ILOpCode.Constrained:
                return il.ReadInt32();
            default:
                return 0;
        }
    }

    /// <summary>Types as documentation-comment IDs spell them.</summary>
    sealed class DocIdTypeProvider : ISignatureTypeProvider<string, object?>
    {
        public string GetArrayType(string elementType, ArrayShape shape) =>
            elementType + "[" + string.Join(",", Enumerable.Range(0, shape.Rank).Select(_ => "0:")) + "]";
        public string GetByReferenceType(string elementType) => elementType + "@";
        public string GetFunctionPointerType(MethodSignature<string> signature) => "=FUNC";
        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments)
        {
            int tick = genericType.LastIndexOf('`');
            return (tick >= 0 ? genericType[..tick] : genericType) + "{" + string.Join(",", typeArguments) + "}";
        }
        public string GetGenericMethodParameter(object? genericContext, int index) => "``" + index;
        public string GetGenericTypeParameter(object? genericContext, int index) => "`" + index;
        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;
        public string GetPinnedType(string elementType) => elementType;
        public string GetPointerType(string elementType) => elementType + "*";
        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => typeCode switch
        {
            PrimitiveTypeCode.Boolean => "System.Boolean", PrimitiveTypeCode.Byte => "System.Byte", PrimitiveTypeCode.SByte => "System.SByte",
            PrimitiveTypeCode.Char => "System.Char", PrimitiveTypeCode.Int16 => "System.Int16", PrimitiveTypeCode.UInt16 => "System.UInt16",
            PrimitiveTypeCode.Int32 => "System.Int32", PrimitiveTypeCode.UInt32 => "System.UInt32", PrimitiveTypeCode.Int64 => "System.Int64",
            PrimitiveTypeCode.UInt64 => "System.UInt64", PrimitiveTypeCode.Single => "System.Single", PrimitiveTypeCode.Double => "System.Double",
            PrimitiveTypeCode.IntPtr => "System.IntPtr", PrimitiveTypeCode.UIntPtr => "System.UIntPtr", PrimitiveTypeCode.Object => "System.Object",
            PrimitiveTypeCode.String => "System.String", PrimitiveTypeCode.Void => "System.Void", PrimitiveTypeCode.TypedReference => "System.TypedReference",
            _ => typeCode.ToString(),
        };
        public string GetSZArrayType(string elementType) => elementType + "[]";
        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => TypeName(reader, handle);
        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind)
        {
            var tr = reader.GetTypeReference(handle);
            string name = reader.GetString(tr.Name);
            if (tr.ResolutionScope.Kind == HandleKind.TypeReference)
                return GetTypeFromReference(reader, (TypeReferenceHandle)tr.ResolutionScope, rawTypeKind) + "." + name;
            string ns = reader.GetString(tr.Namespace);
            return ns.Length > 0 ? ns + "." + name : name;
        }
        public string GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) =>
            reader.GetTypeSpecification(handle).DecodeSignature(this, genericContext);
    }
}
