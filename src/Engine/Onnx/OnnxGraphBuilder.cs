using Google.Protobuf;
using Onnx;

namespace DotQuant.Engine.Onnx;

/// <summary>Appends nodes and small constants to an ONNX graph and names their outputs. Large weights are
/// not held here: they are initializers whose bytes live in the external data file
/// (<see cref="OnnxInitializer"/>), so the graph itself stays a few hundred KB whatever the model.</summary>
internal sealed class OnnxGraphBuilder
{
    public const string MicrosoftDomain = "com.microsoft";

    readonly Dictionary<string, int> _counts = new(StringComparer.Ordinal);

    public GraphProto Graph { get; } = new();

    /// <summary>One node; its outputs are named after <paramref name="name"/> (unique per graph).</summary>
    public string[] Node(string op, string name, IEnumerable<string> inputs, int outputs = 1, string domain = "", params AttributeProto[] attributes)
    {
        string unique = Unique(name);
        var node = new NodeProto { OpType = op, Name = unique, Domain = domain };
        node.Input.AddRange(inputs);
        var names = Enumerable.Range(0, outputs).Select(i => outputs == 1 ? unique + "/out" : $"{unique}/out{i}").ToArray();
        node.Output.AddRange(names);
        node.Attribute.AddRange(attributes);
        Graph.Node.Add(node);
        return names;
    }

    public string Op(string op, string name, params string[] inputs) => Node(op, name, inputs)[0];

    /// <summary>A node whose outputs have fixed names (graph outputs such as present.{i}.key among them).</summary>
    public string[] NodeOutputs(string op, string name, IEnumerable<string> inputs, string[] outputs, string domain = "", params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = Unique(name), Domain = domain };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        node.Attribute.AddRange(attributes);
        Graph.Node.Add(node);
        return outputs;
    }

    /// <summary>A node whose single output is given a fixed name (a graph output such as logits).</summary>
    public void NodeTo(string op, string output, IEnumerable<string> inputs, string domain = "", params AttributeProto[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = Unique(output), Domain = domain };
        node.Input.AddRange(inputs);
        node.Output.Add(output);
        node.Attribute.AddRange(attributes);
        Graph.Node.Add(node);
    }

    string Unique(string name)
    {
        int n = _counts.TryGetValue(name, out var c) ? c : 0;
        _counts[name] = n + 1;
        return n == 0 ? name : $"{name}_{n}";
    }

    public string Int64s(string name, params long[] values) => Constant(name, TensorProto.Types.DataType.Int64, [values.Length], values.SelectMany(BitConverter.GetBytes).ToArray());

    public string Int64Scalar(string name, long value) => Constant(name, TensorProto.Types.DataType.Int64, [], BitConverter.GetBytes(value));

    public string FloatScalar(string name, float value) => Constant(name, TensorProto.Types.DataType.Float, [], BitConverter.GetBytes(value));

    /// <summary>A small constant stored inside model.onnx.</summary>
    public string Constant(string name, TensorProto.Types.DataType type, long[] dims, byte[] raw)
    {
        string unique = Unique(name);
        var t = new TensorProto { Name = unique, DataType = (int)type, RawData = ByteString.CopyFrom(raw) };
        t.Dims.AddRange(dims);
        Graph.Initializer.Add(t);
        return unique;
    }

    public void Input(string name, TensorProto.Types.DataType type, params object[] dims) => Graph.Input.Add(ValueInfo(name, type, dims));

    public void Output(string name, TensorProto.Types.DataType type, params object[] dims) => Graph.Output.Add(ValueInfo(name, type, dims));

    /// <summary>A typed value; each dimension is a size (long/int) or a symbolic name (string).</summary>
    static ValueInfoProto ValueInfo(string name, TensorProto.Types.DataType type, object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d switch
            {
                string s => new TensorShapeProto.Types.Dimension { DimParam = s },
                int i => new TensorShapeProto.Types.Dimension { DimValue = i },
                long l => new TensorShapeProto.Types.Dimension { DimValue = l },
                _ => throw new ArgumentException($"dimension {d} of {name}"),
            });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
    }

    public static AttributeProto Int(string name, long value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static AttributeProto Float(string name, float value) => new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    public static AttributeProto Ints(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }
}
