using FitLM.Tensors;
using Xunit;

namespace FitLM.Tests.Kernels;

public class WorkerPoolTests
{
    private sealed class CountingJob(int n) : IParallelJob
    {
        public readonly int[] Hits = new int[n];
        public void Execute(int item) => Interlocked.Increment(ref Hits[item]);
    }

    private sealed class FailingJob : IParallelJob
    {
        public void Execute(int item)
        {
            if (item == 7) throw new InvalidOperationException("boom");
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void EveryItemRunsExactlyOnceAcrossManyRegions(int threads)
    {
        using var pool = new WorkerPool(threads);
        for (int region = 0; region < 2000; region++)
        {
            int n = 1 + region % 37;
            var job = new CountingJob(n);
            pool.Run(job, n);
            Assert.All(job.Hits, h => Assert.Equal(1, h));
        }
    }

    [Fact]
    public void AFailingItemSurfacesAndThePoolKeepsWorking()
    {
        using var pool = new WorkerPool(2);
        var e = Assert.Throws<AggregateException>(() => pool.Run(new FailingJob(), 100));
        Assert.IsType<InvalidOperationException>(e.InnerException);
        var job = new CountingJob(50);
        pool.Run(job, 50);
        Assert.All(job.Hits, h => Assert.Equal(1, h));
    }

    [Fact]
    public void WorkersWakeAfterSleeping()
    {
        using var pool = new WorkerPool(2);
        pool.Run(new CountingJob(4), 4);
        Thread.Sleep(200); // long enough for the worker to stop spinning and sleep
        var job = new CountingJob(64);
        pool.Run(job, 64);
        Assert.All(job.Hits, h => Assert.Equal(1, h));
    }
}
