using NUnit.Framework;
using Repa.Kernels;

namespace Repa.Tests;

/// <summary>
/// HalfPrecision mirrors kernels/common.cuh's conversions bit for bit; these tests pin them to independent references:
/// exact round-to-nearest-even computed in float64 (bf16) and System.Half (fp16), on every exponent with the mantissas
/// where rounding decides (ties, just below/above ties, carries into the exponent, overflow, subnormals, NaN payloads)
/// and on a sweep of a million fp32 patterns. The device side runs the same code under the emulator's tests.
/// </summary>
[TestFixture]
public sealed class HalfPrecisionTests
{
    /// <summary>Sign x every exponent x mantissas around the 16-bit (bf16) and 13-bit (fp16) rounding points, plus a
    /// stride-4099 sweep over all 2^32 patterns.</summary>
    private static IEnumerable<uint> InterestingPatterns()
    {
        uint[] mantissas =
        [
            0, 1, 2, 0x40, 0x0fff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x7fff, 0x8000, 0x8001, 0xffff, 0x10000,
            0x17fff, 0x18000, 0x18001, 0x3ffff, 0x400000, 0x400001, 0x7f7fff, 0x7f8000, 0x7f8001, 0x7fe000, 0x7fefff,
            0x7ff000, 0x7ff001, 0x7fff80, 0x7fffff,
        ];
        var random = new Random(12345);
        for (uint sign = 0; sign <= 1; sign++)
            for (uint exponent = 0; exponent <= 255; exponent++)
            {
                foreach (uint m in mantissas) yield return sign << 31 | exponent << 23 | m;
                for (int i = 0; i < 8; i++) yield return sign << 31 | exponent << 23 | (uint)random.Next(1 << 23);
            }
        for (ulong u = 0; u <= uint.MaxValue; u += 4099) yield return (uint)u;
    }

    /// <summary>Round to nearest even, by comparing distances to the two bf16 neighbours in float64 (exact here).</summary>
    private static ushort ReferenceBf16(uint u)
    {
        uint sign = u & 0x80000000u, magnitude = u & 0x7fffffffu;
        if (magnitude == 0x7f800000u) return (ushort)((sign | magnitude) >> 16);
        uint low = magnitude & 0xffff0000u, high = low + 0x10000u;
        double value = BitConverter.UInt32BitsToSingle(magnitude);
        double below = BitConverter.UInt32BitsToSingle(low);
        double above = high == 0x7f800000u ? Math.Pow(2, 128) : BitConverter.UInt32BitsToSingle(high); // overflow rounds like 2^128
        double toBelow = value - below, toAbove = above - value;
        uint chosen = toBelow < toAbove ? low : toAbove < toBelow ? high : ((low >> 16) & 1) == 0 ? low : high;
        return (ushort)((sign | chosen) >> 16);
    }

    [Test]
    public void FloatToBf16RoundsToNearestEven()
    {
        int checkedCount = 0;
        foreach (uint u in InterestingPatterns())
        {
            float f = BitConverter.UInt32BitsToSingle(u);
            if (float.IsNaN(f)) continue;
            ushort expected = ReferenceBf16(u), actual = HalfPrecision.FloatToBf16(f);
            if (actual != expected) Assert.Fail($"fp32 0x{u:x8} ({f:R}) -> bf16 0x{actual:x4}, expected 0x{expected:x4}");
            checkedCount++;
        }
        Assert.That(checkedCount, Is.GreaterThan(1_000_000));
        // Spot checks written out: ties go to the even neighbour, overflow goes to infinity.
        Assert.That(HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(0x3f808000u)), Is.EqualTo(0x3f80), "tie, even below");
        Assert.That(HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(0x3f818000u)), Is.EqualTo(0x3f82), "tie, even above");
        Assert.That(HalfPrecision.FloatToBf16(float.MaxValue), Is.EqualTo(0x7f80), "float.MaxValue rounds to infinity");
        Assert.That(HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(0x7f7f7fffu)), Is.EqualTo(0x7f7f), "largest finite bf16");
        Assert.That(HalfPrecision.FloatToBf16(-0f), Is.EqualTo(0x8000));
        Assert.That(HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(0x00008000u)), Is.EqualTo(0x0000), "subnormal tie to even zero");
        Assert.That(HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(0x00018000u)), Is.EqualTo(0x0002), "subnormal tie up to even");
    }

    [Test]
    public void Bf16NaNsStayQuietNaNsWithTheirSign()
    {
        foreach (uint u in new uint[] { 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fbfffffu, 0x7fffffffu, 0x7f810000u })
        {
            ushort b = HalfPrecision.FloatToBf16(BitConverter.UInt32BitsToSingle(u));
            Assert.That(float.IsNaN(HalfPrecision.Bf16ToFloat(b)), Is.True, $"0x{u:x8} must not round into infinity");
            Assert.That(b, Is.EqualTo((ushort)((u >> 16) | 0x40)), $"0x{u:x8}: sign and top payload kept, quiet bit set");
        }
    }

    [Test]
    public void EveryBf16RoundTripsThroughFloat()
    {
        for (int b = 0; b <= 0xffff; b++)
        {
            float f = HalfPrecision.Bf16ToFloat((ushort)b);
            Assert.That(BitConverter.SingleToUInt32Bits(f), Is.EqualTo((uint)b << 16), "bf16 is the top half of an fp32");
            ushort back = HalfPrecision.FloatToBf16(f);
            ushort expected = float.IsNaN(f) ? (ushort)(b | 0x40) : (ushort)b;
            if (back != expected) Assert.Fail($"bf16 0x{b:x4} came back as 0x{back:x4}");
        }
    }

    [Test]
    public void FloatToF16MatchesSystemHalf()
    {
        int checkedCount = 0;
        foreach (uint u in InterestingPatterns())
        {
            float f = BitConverter.UInt32BitsToSingle(u);
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f), actual = HalfPrecision.FloatToF16(f);
            if (actual != expected) Assert.Fail($"fp32 0x{u:x8} ({f:R}) -> fp16 0x{actual:x4}, System.Half gives 0x{expected:x4}");
            checkedCount++;
        }
        Assert.That(checkedCount, Is.GreaterThan(1_000_000));
        Assert.That(HalfPrecision.FloatToF16(65519.996f), Is.EqualTo(0x7bff), "just below 65520 stays finite");
        Assert.That(HalfPrecision.FloatToF16(65520f), Is.EqualTo(0x7c00), "65520 rounds to infinity");
        Assert.That(HalfPrecision.FloatToF16(MathF.Pow(2, -25)), Is.EqualTo(0x0000), "half the smallest subnormal: tie to zero");
        Assert.That(HalfPrecision.FloatToF16(BitConverter.UInt32BitsToSingle(0x33000001u)), Is.EqualTo(0x0001), "just above it");
    }

    [Test]
    public void EveryF16ConvertsToFloatAsSystemHalfAndBack()
    {
        for (int h = 0; h <= 0xffff; h++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            float actual = HalfPrecision.F16ToFloat((ushort)h);
            if (BitConverter.SingleToUInt32Bits(actual) != BitConverter.SingleToUInt32Bits(expected))
                Assert.Fail($"fp16 0x{h:x4} -> 0x{BitConverter.SingleToUInt32Bits(actual):x8}, System.Half gives 0x{BitConverter.SingleToUInt32Bits(expected):x8}");
            ushort back = HalfPrecision.FloatToF16(actual);
            ushort quiet = float.IsNaN(actual) ? (ushort)(h | 0x0200) : (ushort)h;
            if (back != quiet) Assert.Fail($"fp16 0x{h:x4} came back as 0x{back:x4}");
        }
    }

    [Test]
    public void SpanConversionsCheckTheDestination()
    {
        float[] values = [1f, -2.5f, 3.14159f];
        var bits = new ushort[3];
        HalfPrecision.FloatToBf16(values, bits);
        Assert.That(bits, Is.EqualTo(new ushort[] { 0x3f80, 0xc020, 0x4049 }));
        var back = new float[3];
        HalfPrecision.Bf16ToFloat(bits, back);
        Assert.That(back, Is.EqualTo(new[] { 1f, -2.5f, 3.140625f }));
        var e = Assert.Throws<ArgumentException>(() => HalfPrecision.FloatToBf16(values, new ushort[2]))!;
        Assert.That(e.Message, Does.Contain("2 values").And.Contain("3"));
    }
}
