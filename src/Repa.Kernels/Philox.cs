using System.Runtime.CompilerServices;
using Repa.Kernels.Cpu;

namespace Repa.Kernels;

/// <summary>
/// Counter-based random numbers: Philox4x32-10 (Salmon et al. 2011, as in Random123 and CUDA curand). Every value is a
/// pure function of (seed, stream, element index), so a run is reproducible from its seed, a checkpoint resumes the exact
/// sequence by storing only an offset, and any slice of a fill can be generated on its own (or on any number of threads)
/// with the same result.
/// </summary>
/// <remarks>
/// Layout, chosen to match curand_init(seed, subsequence, offset): the 64-bit key is the seed (key word 0 = low 32 bits,
/// word 1 = high 32 bits); the 128-bit counter is (stream, block) with ctr[0] = low 32 bits of the block index,
/// ctr[1] = its high 32 bits, ctr[2] = low 32 bits of the stream, ctr[3] = its high 32 bits. Element index
/// g = offset + i uses word g % 4 of block g / 4, so four consecutive elements share one Philox call.
/// </remarks>
public static unsafe class Philox
{
    private const uint M0 = 0xD2511F53, M1 = 0xCD9E8D57;
    private const uint W0 = 0x9E3779B9, W1 = 0xBB67AE85;

    /// <summary>Elements per thread chunk: below this a fill runs inline (a Philox block costs a few ns).</summary>
    private const long Grain = 1 << 15;

    /// <summary>
    /// One Philox4x32-10 block. Key words: k0 = (uint)key, k1 = (uint)(key &gt;&gt; 32). Counter words:
    /// ctr[0] = (uint)counterLo, ctr[1] = (uint)(counterLo &gt;&gt; 32), ctr[2] = (uint)counterHi, ctr[3] = (uint)(counterHi &gt;&gt; 32).
    /// Returns the output words in Random123 order (out[0], out[1], out[2], out[3]).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (uint, uint, uint, uint) Block(ulong key, ulong counterHi, ulong counterLo)
    {
        uint c0 = (uint)counterLo, c1 = (uint)(counterLo >> 32), c2 = (uint)counterHi, c3 = (uint)(counterHi >> 32);
        uint k0 = (uint)key, k1 = (uint)(key >> 32);
        Round(ref c0, ref c1, ref c2, ref c3, k0, k1);
        for (int r = 1; r < 10; r++)
        {
            // Weyl key schedule: the key is bumped between rounds (9 bumps for 10 rounds).
            k0 += W0;
            k1 += W1;
            Round(ref c0, ref c1, ref c2, ref c3, k0, k1);
        }
        return (c0, c1, c2, c3);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Round(ref uint c0, ref uint c1, ref uint c2, ref uint c3, uint k0, uint k1)
    {
        ulong p0 = (ulong)M0 * c0, p1 = (ulong)M1 * c2;
        uint n0 = (uint)(p1 >> 32) ^ c1 ^ k0;
        uint n2 = (uint)(p0 >> 32) ^ c3 ^ k1;
        c0 = n0;
        c1 = (uint)p1;
        c2 = n2;
        c3 = (uint)p0;
    }

    /// <summary>Raw 32-bit words: output[i] = word (offset+i) % 4 of block (offset+i) / 4 of counter (stream, block).</summary>
    public static void Bits(ulong seed, ulong stream, ulong offset, Span<uint> output, int threads = 0) =>
        Run<uint, BitsGen>(seed, stream, offset, output, threads);

    /// <summary>
    /// Uniform fp32 in (0, 1] (as curand): the top 24 bits of the element's word w, u = ((w &gt;&gt; 8) + 1) * 2^-24. Exact in
    /// fp32 (no rounding), so every backend can reproduce it bit for bit; never 0, so log(u) is safe.
    /// </summary>
    public static void Uniform(ulong seed, ulong stream, ulong offset, Span<float> output, int threads = 0) =>
        Run<float, UniformF32>(seed, stream, offset, output, threads);

    /// <summary>Uniform fp64 in (0, 1] from the same word as the fp32 fill, all 32 bits: u = (w + 1) * 2^-32 (exact).</summary>
    public static void Uniform(ulong seed, ulong stream, ulong offset, Span<double> output, int threads = 0) =>
        Run<double, UniformF64>(seed, stream, offset, output, threads);

    /// <summary>
    /// Standard normal fp32 by Box-Muller on word pairs of each block: elements with g % 4 in {0, 1} use words (0, 1), those
    /// in {2, 3} use words (2, 3). For a pair (a, b): r = sqrt(-2 ln((a + 1) 2^-32)), t = 2 pi (b + 1/2) 2^-32; the even
    /// element is r sin t, the odd one r cos t (curand's order). Computed in fp64 from the full 32-bit words and rounded
    /// once, so the fp32 fill is exactly the fp64 fill rounded to fp32 (and the tail reaches |z| ~ 6.66, not 5.77).
    /// </summary>
    public static void Normal(ulong seed, ulong stream, ulong offset, Span<float> output, int threads = 0) =>
        Run<float, NormalF32>(seed, stream, offset, output, threads);

    /// <summary>Standard normal fp64: the same words and formula as the fp32 overload, without the final rounding.</summary>
    public static void Normal(ulong seed, ulong stream, ulong offset, Span<double> output, int threads = 0) =>
        Run<double, NormalF64>(seed, stream, offset, output, threads);

    private interface IGen<T> where T : unmanaged
    {
        /// <summary>The value of the element using word j (0..3) of block words w.</summary>
        static abstract T Get(in (uint W0, uint W1, uint W2, uint W3) w, int j);

        /// <summary>All four elements of a block, exactly Get(w, 0..3); lets Box-Muller share log and sincos per pair.</summary>
        static abstract void Get4(in (uint W0, uint W1, uint W2, uint W3) w, T* dst);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static uint Word(in (uint W0, uint W1, uint W2, uint W3) w, int j) =>
        j switch { 0 => w.W0, 1 => w.W1, 2 => w.W2, _ => w.W3 };

    private readonly struct BitsGen : IGen<uint>
    {
        public static uint Get(in (uint W0, uint W1, uint W2, uint W3) w, int j) => Word(w, j);

        public static void Get4(in (uint W0, uint W1, uint W2, uint W3) w, uint* dst)
        {
            dst[0] = Get(w, 0);
            dst[1] = Get(w, 1);
            dst[2] = Get(w, 2);
            dst[3] = Get(w, 3);
        }
    }

    private readonly struct UniformF32 : IGen<float>
    {
        public static float Get(in (uint W0, uint W1, uint W2, uint W3) w, int j) =>
            ((Word(w, j) >> 8) + 1) * (1.0f / 16777216.0f);

        public static void Get4(in (uint W0, uint W1, uint W2, uint W3) w, float* dst)
        {
            dst[0] = Get(w, 0);
            dst[1] = Get(w, 1);
            dst[2] = Get(w, 2);
            dst[3] = Get(w, 3);
        }
    }

    private readonly struct UniformF64 : IGen<double>
    {
        public static double Get(in (uint W0, uint W1, uint W2, uint W3) w, int j) =>
            (Word(w, j) + 1.0) * (1.0 / 4294967296.0);

        public static void Get4(in (uint W0, uint W1, uint W2, uint W3) w, double* dst)
        {
            dst[0] = Get(w, 0);
            dst[1] = Get(w, 1);
            dst[2] = Get(w, 2);
            dst[3] = Get(w, 3);
        }
    }

    private readonly struct NormalF64 : IGen<double>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static double Get(in (uint W0, uint W1, uint W2, uint W3) w, int j)
        {
            // Both halves through Pair, so a slice starting mid-pair matches a full-block fill bit for bit.
            Pair(j < 2 ? w.W0 : w.W2, j < 2 ? w.W1 : w.W3, out double z0, out double z1);
            return (j & 1) == 0 ? z0 : z1;
        }

        public static void Get4(in (uint W0, uint W1, uint W2, uint W3) w, double* dst)
        {
            Pair(w.W0, w.W1, out dst[0], out dst[1]);
            Pair(w.W2, w.W3, out dst[2], out dst[3]);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Pair(uint a, uint b, out double z0, out double z1)
        {
            double r = Math.Sqrt(-2.0 * Math.Log((a + 1.0) * (1.0 / 4294967296.0)));
            var (sin, cos) = Math.SinCos((2.0 * Math.PI / 4294967296.0) * (b + 0.5));
            z0 = r * sin;
            z1 = r * cos;
        }
    }

    private readonly struct NormalF32 : IGen<float>
    {
        public static float Get(in (uint W0, uint W1, uint W2, uint W3) w, int j) => (float)NormalF64.Get(w, j);

        public static void Get4(in (uint W0, uint W1, uint W2, uint W3) w, float* dst)
        {
            NormalF64.Pair(w.W0, w.W1, out double z0, out double z1);
            NormalF64.Pair(w.W2, w.W3, out double z2, out double z3);
            dst[0] = (float)z0;
            dst[1] = (float)z1;
            dst[2] = (float)z2;
            dst[3] = (float)z3;
        }
    }

    /// <summary>Splits the fill over threads; each chunk generates its own index range, so the split never shows.</summary>
    private static void Run<T, G>(ulong seed, ulong stream, ulong offset, Span<T> output, int threads)
        where T : unmanaged where G : IGen<T>
    {
        long n = output.Length;
        if (n == 0) return;
        int t = threads > 0 ? threads : Environment.ProcessorCount;
        fixed (T* p = output)
        {
            nint dst = (nint)p; // a fixed local cannot be captured by the lambda; its address can
            CpuParallel.For(n, Grain, t, (start, end) => Fill<T, G>(seed, stream, offset + (ulong)start, (T*)dst + start, end - start));
        }
    }

    /// <summary>Elements offset .. offset+n-1 into dst; a range may start and end mid-block.</summary>
    private static void Fill<T, G>(ulong seed, ulong stream, ulong offset, T* dst, long n)
        where T : unmanaged where G : IGen<T>
    {
        long i = 0;
        ulong g = offset;
        int j = (int)(g & 3);
        if (j != 0)
        {
            // Leading partial block.
            var w = Block(seed, stream, g >> 2);
            for (; j < 4 && i < n; j++, i++) dst[i] = G.Get(w, j);
            g += (ulong)i;
        }
        ulong block = g >> 2;
        for (; i + 4 <= n; i += 4, block++)
        {
            G.Get4(Block(seed, stream, block), dst + i);
        }
        if (i < n)
        {
            var w = Block(seed, stream, block);
            for (j = 0; i < n; j++, i++) dst[i] = G.Get(w, j);
        }
    }
}
