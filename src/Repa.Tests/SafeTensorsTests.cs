using System.Buffers.Binary;
using System.Text;
using NUnit.Framework;
using Repa.Autograd;
using Repa.Kernels;
using Repa.Runtime.Checkpoints;
using Repa.Tests.Checks;

namespace Repa.Tests;

/// <summary>Safetensors checkpoints: round trips, the exact byte layout, PyTorch dtypes on load, and clear errors.</summary>
[TestFixture]
public class SafeTensorsTests
{
    private static IBackend B => OpCheck.Backend;
    private string dir = "";

    [SetUp]
    public void SetUp()
    {
        dir = Path.Combine(Path.GetTempPath(), "repa-safetensors-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
    }

    [TearDown]
    public void TearDown()
    {
        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
    }

    private string PathOf(string name) => Path.Combine(dir, name);

    /// <summary>A file as the format defines it: u64 LE header length, the header padded with spaces to 8, the data.</summary>
    private static byte[] Build(string headerJson, byte[] data, bool pad = true)
    {
        var header = Encoding.UTF8.GetBytes(headerJson).ToList();
        while (pad && header.Count % 8 != 0) header.Add((byte)' ');
        var file = new byte[8 + header.Count + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, (ulong)header.Count);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Count);
        return file;
    }

    private static byte[] Bytes<T>(params T[] values) where T : unmanaged =>
        System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    // ---- round trips ----

    [Test]
    public void RoundTripKeepsDtypesShapesValuesAndMetadata()
    {
        var rng = new Random(3);
        var f32 = Enumerable.Range(0, 3 * 5 * 7).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var f64 = new[] { Math.PI, -1e-300, double.MaxValue };
        var i32 = new[] { int.MinValue, -1, 0, 1, int.MaxValue, 42, 7 };
        using var a = Tensor.FromArray(B, f32, 3, 5, 7);
        using var s = Tensor.FromArray(B, new[] { 2.5f });            // scalar, shape []
        using var one = Tensor.FromArray(B, new[] { -0.125 }, 1);
        using var d = Tensor.FromArray(B, f64, 3);
        using var ids = Tensor.FromArray(B, i32, 7, 1);
        using var empty = Tensor.FromArray(B, Array.Empty<float>(), 0, 3);
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["step"] = "17", ["note"] = "ünïcode \"quoted\"" };

        string path = PathOf("model.safetensors");
        SafeTensors.Write(path, [("z.weight", a), ("scalar", s), ("one", one), ("f64", d), ("ids", ids), ("empty", empty)], meta);
        using var file = SafeTensors.Read(path, B);

        Assert.That(file.Metadata, Is.EquivalentTo(meta));
        Assert.That(file.Tensors.Keys, Is.EqualTo(new[] { "empty", "f64", "ids", "one", "scalar", "z.weight" }), "sorted by name");

        Assert.That(file["z.weight"].DType, Is.EqualTo(DType.F32));
        Assert.That(file["z.weight"].Shape, Is.EqualTo(new[] { 3, 5, 7 }));
        Assert.That(file["z.weight"].ToFloatArray(), Is.EqualTo(f32));
        Assert.That(file["scalar"].Shape, Is.Empty);
        Assert.That(file["scalar"].ToFloatArray(), Is.EqualTo(new[] { 2.5f }));
        Assert.That(file["one"].DType, Is.EqualTo(DType.F64));
        Assert.That(file["one"].Shape, Is.EqualTo(new[] { 1 }));
        Assert.That(file["one"].ToDoubleArray(), Is.EqualTo(new[] { -0.125 }));
        Assert.That(file["f64"].ToDoubleArray(), Is.EqualTo(f64));
        Assert.That(file["ids"].DType, Is.EqualTo(DType.I32));
        Assert.That(file["ids"].Shape, Is.EqualTo(new[] { 7, 1 }));
        Assert.That(file["ids"].ToIntArray(), Is.EqualTo(i32));
        Assert.That(file["empty"].Shape, Is.EqualTo(new[] { 0, 3 }));
        Assert.That(file["empty"].RequiresGrad, Is.False);
    }

    [Test]
    public void LoadedTensorsBelongToNoTape()
    {
        string path = PathOf("w.safetensors");
        using (var w = Tensor.FromArray(B, new[] { 1f, 2f, 3f }, 3))
            SafeTensors.Write(path, [("w", w)]);

        SafeTensorFile file;
        using (var tape = new Tape())
        {
            file = SafeTensors.Read(path, B);
            tape.Reset(); // would return tape-owned buffers to the pool
        }
        using (file)
        {
            Assert.That(file["w"].ToFloatArray(), Is.EqualTo(new[] { 1f, 2f, 3f }));
            Assert.That(file["w"].RequiresGrad, Is.False);
            Assert.That(file["w"].Name, Is.EqualTo("w"));
        }
    }

    [Test]
    public void AnEmptyCheckpointRoundTrips()
    {
        string path = PathOf("empty.safetensors");
        SafeTensors.Write(path, []);
        Assert.That(File.ReadAllBytes(path), Is.EqualTo(Build("{}", [])));
        using var file = SafeTensors.Read(path, B);
        Assert.That(file.Tensors, Is.Empty);
        Assert.That(file.Metadata, Is.Empty);
    }

    // ---- byte layout ----

    [Test]
    public void ByteLayoutMatchesTheFormat()
    {
        using var b = Tensor.FromArray(B, new[] { 7 });                  // I32 scalar
        using var a = Tensor.FromArray(B, new[] { 1f, -2f }, 2);         // F32 [2]
        using var c = Tensor.FromArray(B, new[] { 0.5 }, 1, 1);          // F64 [1,1]
        string path = PathOf("tiny.safetensors");
        SafeTensors.Write(path, [("b", b), ("a", a), ("c", c)], new Dictionary<string, string> { ["k"] = "v" });

        const string json = "{\"__metadata__\":{\"k\":\"v\"},"
            + "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            + "\"b\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[8,12]},"
            + "\"c\":{\"dtype\":\"F64\",\"shape\":[1,1],\"data_offsets\":[12,20]}}";
        byte[] data = [.. Bytes(1f, -2f), .. Bytes(7), .. Bytes(0.5)];
        byte[] expected = Build(json, data);
        byte[] actual = File.ReadAllBytes(path);

        Assert.That(actual, Is.EqualTo(expected));
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(actual);
        Assert.That(n % 8, Is.EqualTo(0UL), "header padded to a multiple of 8");
        Assert.That((long)n, Is.GreaterThanOrEqualTo(json.Length));
        Assert.That(Encoding.UTF8.GetString(actual, 8, (int)n).TrimEnd(' '), Is.EqualTo(json));
        Assert.That(actual.Length, Is.EqualTo(8 + (int)n + 20));
        Assert.That(BitConverter.ToSingle(actual, 8 + (int)n + 4), Is.EqualTo(-2f), "a[1] right after a[0]");
    }

    // ---- PyTorch dtypes on load ----

    [Test]
    public void LoadsI64AsI32AndBf16AndF16AsF32()
    {
        var labels = new long[] { 0, 3, -1, int.MaxValue, int.MinValue };
        var fp32 = new[] { 1f, -2.5f, 3.140625f, 1e-20f, float.NegativeInfinity, 65504f };
        var bf16 = fp32.Select(f => (ushort)(BitConverter.SingleToInt32Bits(f) >>> 16)).ToArray();
        var bf16Expected = bf16.Select(h => BitConverter.Int32BitsToSingle(h << 16)).ToArray();
        var f16 = new[] { (Half)1.5f, (Half)(-0.333f), Half.MaxValue };
        string json = "{\"__metadata__\":{\"format\":\"pt\"},"
            + "\"labels\":{\"dtype\":\"I64\",\"shape\":[5],\"data_offsets\":[0,40]},"
            + "\"w\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[40,52]},"
            + "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[52,58]}}";
        string path = PathOf("torch.safetensors");
        File.WriteAllBytes(path, Build(json, [.. Bytes(labels), .. Bytes(bf16), .. Bytes(f16)]));

        using var file = SafeTensors.Read(path, B);
        Assert.That(file.Tensors.Keys, Is.EqualTo(new[] { "labels", "w", "h" }), "header order");
        Assert.That(file.Metadata["format"], Is.EqualTo("pt"));
        Assert.That(file["labels"].DType, Is.EqualTo(DType.I32));
        Assert.That(file["labels"].ToIntArray(), Is.EqualTo(labels.Select(l => (int)l).ToArray()));
        Assert.That(file["w"].DType, Is.EqualTo(DType.F32));
        Assert.That(file["w"].Shape, Is.EqualTo(new[] { 2, 3 }));
        Assert.That(file["w"].ToFloatArray(), Is.EqualTo(bf16Expected));
        Assert.That(file["w"].ToFloatArray()[..3], Is.EqualTo(new[] { 1f, -2.5f, 3.140625f }), "exact in bf16");
        Assert.That(file["h"].ToFloatArray(), Is.EqualTo(f16.Select(h => (float)h).ToArray()));
    }

    // ---- errors ----

    private const string OneF32 = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    private static IEnumerable<TestCaseData> BadFiles()
    {
        byte[] eight = Bytes(1f, 2f);
        TestCaseData Case(string name, byte[] file, string expect) => new TestCaseData(file, expect).SetName("Rejects_" + name);

        yield return Case("Empty", [], "truncated");
        yield return Case("ShortLength", [1, 0, 0], "truncated");
        yield return Case("TruncatedData", Build(OneF32, eight)[..^3], "truncated");
        yield return Case("HeaderLongerThanFile", Build(OneF32, eight).Select((v, i) => i == 0 ? (byte)0xFF : v).ToArray(), "header");
        yield return Case("HugeHeaderLength", [.. BitConverter.GetBytes(ulong.MaxValue), .. Encoding.UTF8.GetBytes("{}      ")], "header");
        yield return Case("BadJson", Build("{\"x\": [", eight), "not valid JSON");
        yield return Case("JsonArray", Build("[1,2]", []), "not an object");
        yield return Case("UnknownDtype", Build(OneF32.Replace("F32", "Q7"), eight), "unknown or unsupported dtype 'Q7'");
        yield return Case("MissingDtype", Build("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", eight), "dtype");
        yield return Case("NegativeShape", Build(OneF32.Replace("[2]", "[-2]"), eight), "shape");
        yield return Case("OffsetsPastEnd", Build(OneF32.Replace("[0,8]", "[8,16]"), eight), "data offset");
        yield return Case("OffsetsReversed", Build(OneF32.Replace("[0,8]", "[8,0]"), eight), "end before they begin");
        yield return Case("OffsetsVsShape", Build(OneF32.Replace("[2]", "[3]"), eight), "span 8 bytes instead");
        yield return Case("OffsetsVsDtype", Build(OneF32.Replace("F32", "F64"), eight), "span 8 bytes instead");
        yield return Case("TrailingBytes", Build(OneF32, [.. eight, .. eight]), "after the last tensor");
        yield return Case("Overlap", Build("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
            + "\"y\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", eight), "overlapping");
        yield return Case("Gap", Build("{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", eight), "gap");
        yield return Case("I64TooLarge", Build("{\"x\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", Bytes(1L << 40)), "does not fit in int32");
        yield return Case("MetadataNotStrings", Build("{\"__metadata__\":{\"k\":1}," + OneF32[1..], eight), "not a string");
    }

    [TestCaseSource(nameof(BadFiles))]
    public void MalformedFilesThrowInvalidDataNamingTheFile(byte[] bytes, string expect)
    {
        string path = PathOf("bad.safetensors");
        File.WriteAllBytes(path, bytes);
        var ex = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path, B).Dispose());
        Assert.That(ex!.Message, Does.Contain(path).And.Contain(expect));
    }

    [Test]
    public void MissingFileThrowsInvalidDataNamingTheFile()
    {
        string path = PathOf("nope.safetensors");
        var ex = Assert.Throws<InvalidDataException>(() => SafeTensors.Read(path, B));
        Assert.That(ex!.Message, Does.Contain(path).And.Contain("does not exist"));
    }

    [Test]
    public void WritingRejectsDuplicateAndReservedNames()
    {
        using var t = Tensor.FromArray(B, new[] { 1f }, 1);
        string path = PathOf("dup.safetensors");
        Assert.Throws<ArgumentException>(() => SafeTensors.Write(path, [("a", t), ("a", t)]));
        Assert.Throws<ArgumentException>(() => SafeTensors.Write(path, [("__metadata__", t)]));
        Assert.That(Directory.GetFiles(dir), Is.Empty, "nothing written on bad input");
    }

    // ---- atomic replace ----

    [Test]
    public void OverwritingReplacesTheFileAndLeavesNoTmp()
    {
        string path = PathOf("ckpt.safetensors");
        using (var first = Tensor.FromArray(B, new[] { 1f, 2f, 3f }, 3))
            SafeTensors.Write(path, [("w", first)]);
        using (var second = Tensor.FromArray(B, new[] { 9.0 }, 1))
            SafeTensors.Write(path, [("v", second)], new Dictionary<string, string> { ["step"] = "2" });

        Assert.That(File.Exists(path + ".tmp"), Is.False);
        Assert.That(Directory.GetFiles(dir).Select(Path.GetFileName), Is.EqualTo(new[] { "ckpt.safetensors" }));
        using var file = SafeTensors.Read(path, B);
        Assert.That(file.Tensors.Keys, Is.EqualTo(new[] { "v" }));
        Assert.That(file["v"].ToDoubleArray(), Is.EqualTo(new[] { 9.0 }));
        Assert.That(file.Metadata["step"], Is.EqualTo("2"));
    }
}
