namespace Repa.Kernels;

/// <summary>Table lookups (label embedding) and the sinusoidal timestep embedding of DiT/SiT.</summary>
public partial interface IBackend
{
    /// <summary>
    /// y[i, :] = table[ids[i], :] for <paramref name="count"/> int32 ids and a table [vocab, dim]. Throws
    /// <see cref="ArgumentOutOfRangeException"/> naming the id, its position and vocab when an id is outside [0, vocab).
    /// </summary>
    void EmbeddingForward(DeviceBuffer table, DeviceBuffer ids, DeviceBuffer y, long count, int vocab, int dim);

    /// <summary>dTable[ids[i], :] += dy[i, :]; repeated ids add up (race-free). The ids were checked by the forward.</summary>
    void EmbeddingBackward(DeviceBuffer ids, DeviceBuffer dy, DeviceBuffer dTable, long count, int vocab, int dim);

    /// <summary>
    /// y[r, :] = [cos(t_r f_0) .. cos(t_r f_{half-1}) | sin(t_r f_0) .. sin(t_r f_{half-1}) (| 0 when dim is odd)] with
    /// half = dim / 2 and f_k = exp(-ln(maxPeriod) k / half) (DiT's timestep_embedding; t used as given).
    /// </summary>
    void TimestepEmbeddingForward(DeviceBuffer t, DeviceBuffer y, long count, int dim, double maxPeriod);

    /// <summary>dt[r] += sum_k f_k (cos(t_r f_k) dy[r, half + k] - sin(t_r f_k) dy[r, k]).</summary>
    void TimestepEmbeddingBackward(DeviceBuffer t, DeviceBuffer dy, DeviceBuffer dt, long count, int dim, double maxPeriod);
}
