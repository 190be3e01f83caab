using FitLM.KvCache;
using FitLM.Tensors;
using FitLM.Tests.KvCache;
using Xunit;
using static FitLM.Tests.Kernels.KernelTestData;

namespace FitLM.Tests.Kernels;

/// <summary>
/// The attention tile kernels: the AVX-512 path against its scalar reference (float sums in another order, so within
/// rounding), each score independent of the other rows it is computed with, and the prefill path (blocks of
/// queries sharing tiles) giving the same bits as the same queries one at a time.
/// </summary>
public unsafe class AttentionKernelTests
{
    /// <summary>Head sizes of the supported families (16 is the smallest vector chunk).</summary>
    public static TheoryData<int> HeadDims => new() { 16, 32, 64, 80, 96, 128, 256 };

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void VectorScoresMatchTheScalarReference(int hd)
    {
        if (!AttentionKernels.VectorSupported(hd)) return;   // no AVX-512 here, or a head of 80 (scalar only): the scalar path is all that runs
        var keys = Gaussian(32 * hd, hd, 1f);
        var q = Gaussian(hd, hd + 1, 1f);
        var want = new float[32];
        var got = new float[32];
        fixed (float* pk = keys, pq = q, pw = want, pg = got)
        {
            AttentionKernels.Scores(pk, hd, 32, pq, pw, 0.125f, vector: false);
            AttentionKernels.Scores(pk, hd, 32, pq, pg, 0.125f, vector: true);
        }
        for (int j = 0; j < 32; j++)
        {
            double mag = 0;
            for (int d = 0; d < hd; d++) mag += Math.Abs(q[d] * keys[j * hd + d]);
            Assert.True(Math.Abs(want[j] - got[j]) <= 1e-6 * 0.125 * mag + 1e-30, $"score {j}: {got[j]} vs {want[j]}");
        }
    }

    /// <summary>A key's score does not depend on the other 15 rows of its group (what lets H2O gather any 16 slots).</summary>
    [Fact]
    public void AScoreDependsOnlyOnItsOwnKey()
    {
        const int hd = 64;
        if (!AttentionKernels.VectorSupported(hd)) return;
        var keys = Gaussian(16 * hd, 3, 1f);
        var other = Gaussian(16 * hd, 4, 5f);
        keys.AsSpan(5 * hd, hd).CopyTo(other.AsSpan(11 * hd, hd));
        var q = Gaussian(hd, 5, 1f);
        var a = new float[16];
        var b = new float[16];
        fixed (float* pk = keys, po = other, pq = q, pa = a, pb = b)
        {
            AttentionKernels.Scores(pk, hd, 16, pq, pa, 0.3f, vector: true);
            AttentionKernels.Scores(po, hd, 16, pq, pb, 0.3f, vector: true);
        }
        Assert.Equal(a[5], b[11]);
    }

    [Theory]
    [MemberData(nameof(HeadDims))]
    public void VectorValuesMatchTheScalarReference(int hd)
    {
        if (!AttentionKernels.VectorSupported(hd)) return;
        var values = Gaussian(32 * hd, hd, 1f);
        var w = Gaussian(32, hd + 2, 0.2f);
        var want = Gaussian(hd, hd + 3, 1f);
        var got = (float[])want.Clone();
        fixed (float* pv = values, pw = w, po = want, pg = got)
        {
            AttentionKernels.AccumulateValues(pv, hd, pw, 3, 29, po, vector: false);
            AttentionKernels.AccumulateValues(pv, hd, pw, 3, 29, pg, vector: true);
        }
        for (int d = 0; d < hd; d++) Assert.True(Math.Abs(want[d] - got[d]) <= 1e-5f * (1 + Math.Abs(want[d])), $"element {d}: {got[d]} vs {want[d]}");
    }

    /// <summary>
    /// A prompt's attention (<see cref="PrefillAttention"/>: blocks of queries sharing each tile) equals the same queries
    /// attended one at a time (<see cref="MatMul.RowWise"/> runs query by query), bit for bit, for f32 and f16 pages,
    /// from position 0 and from the middle of a context, with grouped heads.
    /// </summary>
    [Theory]
    [InlineData("f32", 0, 100)]
    [InlineData("f16", 0, 77)]
    [InlineData("f16", 40, 64)]
    public void PrefillBlocksEqualQueryByQuery(string type, int start, int n)
    {
        var model = new TestKvModel(seed: 7, headDim: 64, heads: 8, kvHeads: 2);
        var c = model.Config;
        int total = start + n, kvDim = c.KvDim;
        var tokens = Enumerable.Range(0, total).Select(i => (i * 7) % c.Vocab).ToArray();
        var r = model.MakeRows(tokens, 1)[0];
        var q = Gaussian(n * c.QDim, 9, 1f);
        float[] Attend(bool rowWise)
        {
            using var factory = new KvStoreFactory(model, new KvCacheOptions { Type = KvCacheOptions.ParseType(type) }, 256, 128);
            using var store = factory.Create();
            if (start > 0)
                store.Append(0, 0, new KvRows(tokens.AsSpan(0, start), r.Residual.AsSpan(0, start * c.Dim), r.X.AsSpan(0, start * c.Dim),
                    r.K.AsSpan(0, start * kvDim), r.V.AsSpan(0, start * kvDim)));
            store.Append(0, start, new KvRows(tokens.AsSpan(start, n), r.Residual.AsSpan(start * c.Dim, n * c.Dim), r.X.AsSpan(start * c.Dim, n * c.Dim),
                r.K.AsSpan(start * kvDim, n * kvDim), r.V.AsSpan(start * kvDim, n * kvDim)));
            var o = new float[n * c.QDim];
            using (MatMul.RowWiseScope(rowWise)) store.Attend(0, start, n, q, o);
            return o;
        }
        Assert.Equal(Attend(rowWise: true), Attend(rowWise: false));
    }
}
