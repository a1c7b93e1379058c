namespace Repa.Kernels;

/// <summary>
/// Host-side bf16 and fp16 conversions, bit for bit the ones of kernels/common.cuh (float_to_bf16_bits,
/// bf16_bits_to_float, float_to_f16_bits, f16_bits_to_float), so that data converted on the host and on a device (or
/// the emulator) agree exactly. Round to nearest even; overflow to infinity; NaN stays a quiet NaN with its sign and
/// top payload bits.
/// </summary>
public static class HalfPrecision
{
    /// <summary>fp32 -> bf16 bits (the top half of the rounded fp32).</summary>
    public static ushort FloatToBf16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (ushort)((u >> 16) | 0x0040u);
        u += 0x7fffu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    /// <summary>bf16 bits -> fp32, exact.</summary>
    public static float Bf16ToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    /// <summary>fp32 -> fp16 bits, subnormals included (the same results as System.Half's conversion).</summary>
    public static ushort FloatToF16(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        uint sign = (u >> 16) & 0x8000u;
        uint a = u & 0x7fffffffu;
        if (a > 0x7f800000u) return (ushort)(sign | 0x7e00u | ((a >> 13) & 0x03ffu));
        if (a >= 0x38800000u)
        {
            uint r = (a - 0x38000000u + 0x0fffu + ((a >> 13) & 1u)) >> 13;
            return (ushort)(sign | Math.Min(r, 0x7c00u));
        }
        uint exponent = a >> 23;
        uint mantissa = (a & 0x007fffffu) | (exponent != 0 ? 0x00800000u : 0u);
        int shift = 126 - (int)(exponent != 0 ? exponent : 1u);
        if (shift > 24) return (ushort)sign;
        uint q = mantissa >> shift;
        uint rest = mantissa & ((1u << shift) - 1u);
        uint half = 1u << (shift - 1);
        if (rest > half || (rest == half && (q & 1u) != 0)) q++;
        return (ushort)(sign | q);
    }

    /// <summary>fp16 bits -> fp32, exact (a signalling NaN comes back quiet).</summary>
    public static float F16ToFloat(ushort bits)
    {
        uint sign = (bits & 0x8000u) << 16;
        uint exponent = (uint)(bits >> 10) & 0x1fu;
        uint mantissa = bits & 0x03ffu;
        if (exponent == 0x1f)
            return BitConverter.UInt32BitsToSingle(sign | 0x7f800000u | (mantissa != 0 ? 0x00400000u | (mantissa << 13) : 0u));
        if (exponent != 0) return BitConverter.UInt32BitsToSingle(sign | ((exponent + 112u) << 23) | (mantissa << 13));
        float magnitude = mantissa * 5.9604644775390625e-8f;
        return sign != 0 ? -magnitude : magnitude;
    }

    /// <summary>Converts a span of fp32 to bf16 bits.</summary>
    public static void FloatToBf16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException($"The destination holds {destination.Length} values, fewer than the {source.Length} to convert.", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FloatToBf16(source[i]);
    }

    /// <summary>Converts a span of bf16 bits to fp32.</summary>
    public static void Bf16ToFloat(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException($"The destination holds {destination.Length} values, fewer than the {source.Length} to convert.", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = Bf16ToFloat(source[i]);
    }
}
