using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using NUnit.Framework;
using Repa.Runtime.Data;

namespace Repa.Tests;

/// <summary>.npy read/write in every supported type, numpy's own header bytes, .npz as numpy.savez lays it out, bad files.</summary>
[TestFixture]
public class NpyTests
{
    private string folder = "";

    [SetUp]
    public void MakeFolder() => Directory.CreateDirectory(folder = Path.Combine(Path.GetTempPath(), "repa-npy-" + Guid.NewGuid().ToString("N")));

    [TearDown]
    public void RemoveFolder() => Directory.Delete(folder, true);

    /// <summary>numpy.save's bytes for a C-order array: magic, version, header length, the dict padded to 64 bytes.</summary>
    private static byte[] NumpyFile(string dict, byte[] data, int major = 1, int total = 128)
    {
        int prefix = major == 1 ? 10 : 12;
        var header = Encoding.ASCII.GetBytes(dict.PadRight(total - prefix - 1) + "\n");
        var bytes = new byte[prefix + header.Length + data.Length];
        new byte[] { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y' }.CopyTo(bytes, 0);
        bytes[6] = (byte)major;
        if (major == 1) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(8), (ushort)header.Length);
        else BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), (uint)header.Length);
        header.CopyTo(bytes, prefix);
        data.CopyTo(bytes, prefix + header.Length);
        return bytes;
    }

    [Test]
    public void RoundTripsEveryTypeAndShape()
    {
        var values = Enumerable.Range(0, 24).Select(i => (i - 11) * 0.375).ToArray();
        var arrays = new[]
        {
            NpyArray.FromFloats(values.Select(v => (float)v).ToArray(), 2, 3, 4),
            NpyArray.FromDoubles(values.Select(v => v / 3).ToArray(), 24),
            NpyArray.FromHalves(values.Select(v => (Half)v).ToArray(), 4, 6),
            NpyArray.FromBytes(values.Select(v => (byte)(v * 4 + 50)).ToArray(), 1, 2, 3, 4),
            NpyArray.FromFloats([2.5f]), // a scalar: shape ()
        };
        foreach (var a in arrays)
        {
            string path = Path.Combine(folder, $"{a.Type}-{a.Shape.Length}.npy");
            Npy.Write(path, a);
            var b = Npy.Read(path);
            Assert.That(b.Type, Is.EqualTo(a.Type));
            Assert.That(b.Shape, Is.EqualTo(a.Shape));
            Assert.That(b.Data, Is.EqualTo(a.Data));
            Assert.That(Npy.ReadHeader(path), Is.EqualTo((a.Type, a.Shape)).Using<(NpyType, int[])>((x, y) => x.Item1 == y.Item1 && x.Item2.SequenceEqual(y.Item2)));
            Assert.That(new FileInfo(path).Length - a.Data.Length, Is.EqualTo(128).Or.EqualTo(64), "the data starts on a 64-byte boundary");
        }
        Assert.That(arrays[0].ToDoubles(), Is.EqualTo(values));
        Assert.That(arrays[2].ToFloats(), Is.EqualTo(values.Select(v => (float)v).ToArray()), "these halves are exact");
    }

    [Test]
    public void WritesTheHeaderNumpyWrites()
    {
        var header = Npy.Header(NpyType.Float32, [8, 4, 4]);
        Assert.That(header.Length % 64, Is.EqualTo(0));
        Assert.That(header[..8], Is.EqualTo(new byte[] { 0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0 }));
        Assert.That(BinaryPrimitives.ReadUInt16LittleEndian(header.AsSpan(8)), Is.EqualTo(header.Length - 10));
        string text = Encoding.ASCII.GetString(header, 10, header.Length - 10);
        Assert.That(text.TrimEnd(' ', '\n'), Is.EqualTo("{'descr': '<f4', 'fortran_order': False, 'shape': (8, 4, 4), }"));
        Assert.That(text[^1], Is.EqualTo('\n'));
        Assert.That(Encoding.ASCII.GetString(Npy.Header(NpyType.UInt8, [5])), Does.Contain("'descr': '|u1'").And.Contain("'shape': (5,)"));
    }

    [Test]
    public void ReadsNumpysOwnBytesInEitherByteOrderAndVersion()
    {
        var data = new byte[6 * 4];
        for (int i = 0; i < 6; i++) BinaryPrimitives.WriteSingleLittleEndian(data.AsSpan(i * 4), i * 1.5f - 2);
        var v1 = Npy.Parse(NumpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data), "v1");
        Assert.That(v1.Shape, Is.EqualTo(new[] { 2, 3 }));
        Assert.That(v1.ToFloats(), Is.EqualTo(new[] { -2f, -0.5f, 1f, 2.5f, 4f, 5.5f }));

        var v2 = Npy.Parse(NumpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", data, major: 2), "v2");
        Assert.That(v2.ToFloats(), Is.EqualTo(v1.ToFloats()));

        var big = new byte[3 * 8];
        for (int i = 0; i < 3; i++) BinaryPrimitives.WriteDoubleBigEndian(big.AsSpan(i * 8), Math.PI * i);
        var be = Npy.Parse(NumpyFile("{'descr': '>f8', 'fortran_order': False, 'shape': (3,), }", big), "be");
        Assert.That(be.ToDoubles(), Is.EqualTo(new[] { 0, Math.PI, 2 * Math.PI }));
    }

    [Test]
    public void BadFilesAreNamedInOneSentence()
    {
        var data = new byte[8];
        void Expect(byte[] bytes, string why)
        {
            string path = Path.Combine(folder, "bad.npy");
            File.WriteAllBytes(path, bytes);
            var e = Assert.Throws<InvalidDataException>(() => Npy.Read(path))!;
            Assert.That(e.Message, Does.Contain(path).And.Contain(why));
            Assert.That(e.Message, Does.Not.Contain("\n"), "one line (the dict is quoted without its padding)");
            Assert.That(() => Npy.ReadHeader(path), why == "truncated or damaged" ? Throws.Nothing : Throws.InstanceOf<InvalidDataException>());
        }
        Expect("PK\x03\x04 not npy"u8.ToArray(), "magic");
        Expect(NumpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", data), "truncated or damaged");
        Expect(NumpyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", data), "Fortran order");
        Expect(NumpyFile("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", data), "'<i8'");
        Expect(NumpyFile("{'descr': '<f4', 'fortran_order': False, }", data), "no 'shape' key");
        Expect(NumpyFile("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", data), "dimension 'x'");
        Assert.Throws<FileNotFoundException>(() => Npy.Read(Path.Combine(folder, "missing.npy")));
    }

    [Test]
    public void NpzIsAZipOfStoredNpyMembersAsNumpySavez()
    {
        string path = Path.Combine(folder, "samples.npz");
        var images = new byte[3 * 2 * 2 * 3];
        for (int i = 0; i < images.Length; i++) images[i] = (byte)(i * 11);
        var extra = NpyArray.FromFloats([1f, -2f], 2);
        using (var npz = new NpzWriter(path))
        {
            using (var s = npz.BeginArray("arr_0", NpyType.UInt8, [3, 2, 2, 3])) // streamed in two writes, as a sampler would
            {
                s.Write(images, 0, 20);
                s.Write(images, 20, images.Length - 20);
            }
            npz.Add("arr_1", extra);
        }
        using var zip = ZipFile.OpenRead(path);
        Assert.That(zip.Entries.Select(e => e.FullName), Is.EqualTo(new[] { "arr_0.npy", "arr_1.npy" }));
        foreach (var entry in zip.Entries) Assert.That(entry.CompressedLength, Is.EqualTo(entry.Length), "stored, not deflated");
        NpyArray Member(string name)
        {
            using var s = zip.GetEntry(name)!.Open();
            var m = new MemoryStream();
            s.CopyTo(m);
            return Npy.Parse(m.ToArray(), name);
        }
        var arr0 = Member("arr_0.npy");
        Assert.That((arr0.Type, arr0.Shape), Is.EqualTo((NpyType.UInt8, new[] { 3, 2, 2, 3 })).Using<(NpyType, int[])>((a, b) => a.Item1 == b.Item1 && a.Item2.SequenceEqual(b.Item2)));
        Assert.That(arr0.Data, Is.EqualTo(images));
        Assert.That(Member("arr_1.npy").ToFloats(), Is.EqualTo(new[] { 1f, -2f }));
        Assert.That(Directory.GetFiles(folder, "*.tmp"), Is.Empty);
    }

    [Test]
    public void AnIncompleteNpzIsNeverPublished()
    {
        string path = Path.Combine(folder, "short.npz");
        var npz = new NpzWriter(path);
        var s = npz.BeginArray("arr_0", NpyType.UInt8, [4]);
        s.Write([1, 2, 3]);
        Assert.Throws<InvalidOperationException>(() => s.Dispose(), "3 of 4 bytes");
        npz.Dispose();
        Assert.That(File.Exists(path), Is.False);
        Assert.That(Directory.GetFiles(folder), Is.Empty, "the temp file is removed");

        var over = new NpzWriter(path);
        var t = over.BeginArray("arr_0", NpyType.Float32, [1]);
        Assert.Throws<ArgumentException>(() => t.Write(new byte[5]), "5 bytes overflow a float32 [1]");
        Assert.Throws<InvalidOperationException>(() => t.Dispose(), "and nothing was written");
        over.Dispose();
        Assert.That(File.Exists(path), Is.False);
    }
}
