using System.Text;

namespace Repa.Runtime.Encoders;

/// <summary>
/// A minimal protobuf rewriter for ONNX ModelProto files, just enough to (1) make an intermediate tensor the only
/// graph output and (2) make the image input's batch, height and width symbolic. It avoids a protobuf/ONNX package:
/// every field it does not touch (nodes, initializers, opsets, metadata) is copied byte for byte.
/// Field numbers (onnx.proto): ModelProto.graph = 7; GraphProto.input = 11, output = 12, value_info = 13;
/// ValueInfoProto.name = 1, type = 2; TypeProto.tensor_type = 1; Tensor.elem_type = 1, shape = 2;
/// TensorShapeProto.dim = 1; Dimension.dim_value = 1, dim_param = 2.
/// </summary>
internal static class OnnxGraph
{
    private const int WireVarint = 0, WireFixed64 = 1, WireLength = 2, WireFixed32 = 5;
    private const int ModelGraph = 7;
    private const int GraphNode = 1, GraphInitializer = 5, GraphInput = 11, GraphOutput = 12, GraphValueInfo = 13;
    private const int NodeInput = 1, NodeOutput = 2, TensorName = 8;
    private const int ValueInfoName = 1, ValueInfoType = 2;
    private const int ElemTypeFloat = 1;

    /// <summary>One top-level field of a message: its number, wire type and the whole encoded field (tag included).</summary>
    private readonly record struct Field(int Number, int Wire, int Start, int End, int PayloadStart);

    /// <summary>
    /// Returns a copy of <paramref name="model"/> whose graph has <paramref name="outputName"/> as its single output
    /// (type float, rank unknown, so any intermediate works) and whose input <paramref name="inputName"/> is
    /// float [N, C, H, W] with N, H, W symbolic and C kept from the file. value_info is dropped: it holds the fixed
    /// shapes of the original export, which would contradict the symbolic input. Nodes the output does not depend on
    /// are dropped with their weights: ONNX Runtime would still run them, and the later layers can fail at input sizes
    /// the requested layer handles (ResNet-18's fixed 7x7 average pool at 128 px).
    /// </summary>
    public static byte[] Rewrite(byte[] model, string inputName, string outputName)
    {
        var modelFields = Parse(model, 0, model.Length);
        var graphs = modelFields.Where(f => f.Number == ModelGraph && f.Wire == WireLength).ToList();
        if (graphs.Count != 1)
            throw new InvalidDataException($"ONNX model has {graphs.Count} graph fields; expected exactly one.");
        var g = graphs[0];
        var graphFields = Parse(model, g.PayloadStart, g.End);

        // Nodes are topologically sorted, so one backward pass finds everything the output needs.
        var needed = new HashSet<string> { outputName };
        var keepNode = new HashSet<int>();
        for (int i = graphFields.Count - 1; i >= 0; i--)
        {
            var f = graphFields[i];
            if (f.Number != GraphNode || f.Wire != WireLength) continue;
            if (!Strings(model, f, NodeOutput).Any(needed.Contains)) continue;
            keepNode.Add(i);
            foreach (var name in Strings(model, f, NodeInput)) needed.Add(name);
        }
        if (!needed.Contains(inputName))
            throw new InvalidDataException($"ONNX tensor '{outputName}' does not depend on the input '{inputName}'.");

        var graph = new MemoryStream(g.End - g.PayloadStart + 256);
        bool foundInput = false;
        for (int i = 0; i < graphFields.Count; i++)
        {
            var f = graphFields[i];
            if (f.Number is GraphOutput or GraphValueInfo) continue;
            if (f.Number == GraphNode && !keepNode.Contains(i)) continue;
            if (f.Number == GraphInitializer && f.Wire == WireLength && Strings(model, f, TensorName).FirstOrDefault() is { } w
                && !needed.Contains(w)) continue;
            if (f.Number == GraphInput && f.Wire == WireLength && ValueInfoNameOf(model, f) is { } n && n != inputName
                && !needed.Contains(n)) continue;
            if (f.Number == GraphInput && f.Wire == WireLength && ValueInfoNameOf(model, f) == inputName)
            {
                foundInput = true;
                int channels = InputChannels(model, f);
                WriteBytes(graph, GraphInput, ValueInfo(inputName, ["N", channels, "H", "W"]));
                continue;
            }
            graph.Write(model, f.Start, f.End - f.Start);
        }
        if (!foundInput)
            throw new InvalidDataException($"ONNX model has no graph input named '{inputName}'.");
        WriteBytes(graph, GraphOutput, ValueInfo(outputName, null));

        var result = new MemoryStream(model.Length + 256);
        foreach (var f in modelFields)
        {
            if (f.Number == ModelGraph && f.Wire == WireLength) WriteBytes(result, ModelGraph, graph.ToArray());
            else result.Write(model, f.Start, f.End - f.Start);
        }
        return result.ToArray();
    }

    /// <summary>Whether the file holds <paramref name="name"/> as a protobuf string (a tensor or node name), so a
    /// mistyped layer gets a clear error before ONNX Runtime's.</summary>
    public static bool HasTensor(byte[] model, string name)
    {
        // A cheap check: the tensor name appears as a length-prefixed string somewhere in the file.
        var needle = Encoding.UTF8.GetBytes(name);
        var prefixed = new byte[needle.Length + 1];
        if (needle.Length > 127) return true; // not worth a multi-byte varint here; let the session decide
        prefixed[0] = (byte)needle.Length;
        needle.CopyTo(prefixed, 1);
        return model.AsSpan().IndexOf(prefixed) >= 0;
    }

    private static IEnumerable<string> Strings(byte[] buf, Field parent, int number)
    {
        foreach (var f in Parse(buf, parent.PayloadStart, parent.End))
            if (f.Number == number && f.Wire == WireLength)
                yield return Encoding.UTF8.GetString(buf, f.PayloadStart, f.End - f.PayloadStart);
    }

    private static string? ValueInfoNameOf(byte[] buf, Field f)
    {
        foreach (var v in Parse(buf, f.PayloadStart, f.End))
            if (v.Number == ValueInfoName && v.Wire == WireLength)
                return Encoding.UTF8.GetString(buf, v.PayloadStart, v.End - v.PayloadStart);
        return null;
    }

    /// <summary>The input's dim 1 if it is a fixed value (the channel count of an NCHW image), else 3.</summary>
    private static int InputChannels(byte[] buf, Field valueInfo)
    {
        var type = Child(buf, valueInfo, ValueInfoType);
        var tensor = type is { } t ? Child(buf, t, 1) : null;
        var shape = tensor is { } te ? Child(buf, te, 2) : null;
        if (shape is { } s)
        {
            var dims = Parse(buf, s.PayloadStart, s.End).Where(d => d.Number == 1 && d.Wire == WireLength).ToList();
            if (dims.Count == 4)
                foreach (var v in Parse(buf, dims[1].PayloadStart, dims[1].End))
                    if (v.Number == 1 && v.Wire == WireVarint)
                    {
                        int p = v.PayloadStart;
                        return (int)ReadVarint(buf, ref p);
                    }
        }
        return 3;
    }

    private static Field? Child(byte[] buf, Field parent, int number)
    {
        foreach (var f in Parse(buf, parent.PayloadStart, parent.End))
            if (f.Number == number && f.Wire == WireLength) return f;
        return null;
    }

    /// <summary>A float tensor ValueInfoProto; <paramref name="dims"/> holds strings (symbolic) or ints (fixed), or is
    /// null for unknown rank.</summary>
    private static byte[] ValueInfo(string name, object[]? dims)
    {
        var tensor = new MemoryStream();
        WriteVarintField(tensor, 1, ElemTypeFloat);
        if (dims is not null)
        {
            var shape = new MemoryStream();
            foreach (var d in dims)
            {
                var dim = new MemoryStream();
                if (d is string s) WriteBytes(dim, 2, Encoding.UTF8.GetBytes(s));
                else WriteVarintField(dim, 1, Convert.ToUInt64(d));
                WriteBytes(shape, 1, dim.ToArray());
            }
            WriteBytes(tensor, 2, shape.ToArray());
        }
        var type = new MemoryStream();
        WriteBytes(type, 1, tensor.ToArray());
        var vi = new MemoryStream();
        WriteBytes(vi, ValueInfoName, Encoding.UTF8.GetBytes(name));
        WriteBytes(vi, ValueInfoType, type.ToArray());
        return vi.ToArray();
    }

    private static List<Field> Parse(byte[] buf, int start, int end)
    {
        var fields = new List<Field>();
        int p = start;
        while (p < end)
        {
            int fieldStart = p;
            ulong tag = ReadVarint(buf, ref p);
            int number = (int)(tag >> 3), wire = (int)(tag & 7);
            int payload = p;
            switch (wire)
            {
                case WireVarint: ReadVarint(buf, ref p); break;
                case WireFixed64: p += 8; break;
                case WireFixed32: p += 4; break;
                case WireLength:
                    ulong len = ReadVarint(buf, ref p);
                    payload = p;
                    if (len > (ulong)(end - p)) throw new InvalidDataException("ONNX file is truncated or not a protobuf.");
                    p += (int)len;
                    break;
                default: throw new InvalidDataException($"ONNX file has unsupported protobuf wire type {wire}.");
            }
            if (p > end) throw new InvalidDataException("ONNX file is truncated or not a protobuf.");
            fields.Add(new Field(number, wire, fieldStart, p, payload));
        }
        return fields;
    }

    private static ulong ReadVarint(byte[] buf, ref int p)
    {
        ulong v = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (p >= buf.Length) throw new InvalidDataException("ONNX file is truncated or not a protobuf.");
            byte b = buf[p++];
            v |= (ulong)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return v;
        }
        throw new InvalidDataException("ONNX file has a malformed varint.");
    }

    private static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80)
        {
            s.WriteByte((byte)(v | 0x80));
            v >>= 7;
        }
        s.WriteByte((byte)v);
    }

    private static void WriteVarintField(Stream s, int number, ulong value)
    {
        WriteVarint(s, (ulong)number << 3 | WireVarint);
        WriteVarint(s, value);
    }

    private static void WriteBytes(Stream s, int number, byte[] payload)
    {
        WriteVarint(s, (ulong)number << 3 | WireLength);
        WriteVarint(s, (ulong)payload.Length);
        s.Write(payload);
    }
}
