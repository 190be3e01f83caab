using Xunit;
using FitLM.Training;

namespace FitLM.Tests.Training;

/// <summary>The batch the graph trains on: next-token targets within each sequence, and what it refuses.</summary>
public class TrainingBatchTests
{
    [Fact]
    public void TargetsAreTheNextTokenWithinEachSequence()
    {
        var batch = new TrainingBatch([[5, 6, 7], [8, 9], [3, 3, 3, 4]]);
        Assert.Equal([5, 6, 7, 8, 9, 3, 3, 3, 4], batch.Tokens);
        // The last token of a sequence predicts nothing: it must not be trained to predict the next sequence's first.
        Assert.Equal([6, 7, -1, 9, -1, 3, 3, 4, -1], batch.Targets);
        Assert.Equal([(0, 3), (3, 2), (5, 4)], batch.Sequences);
        Assert.Equal(6, batch.TargetCount);
        Assert.Equal(9, batch.Count);
    }

    [Fact]
    public void SequencesTooShortToPredictAnythingAreRefused()
    {
        var e = Assert.Throws<FitLMException>(() => new TrainingBatch([[1, 2, 3], [4]]));
        Assert.Contains("training sequence 1 has 1 token(s)", e.Message);
        e = Assert.Throws<FitLMException>(() => new TrainingBatch([[]]));
        Assert.Contains("training sequence 0 has 0 token(s)", e.Message);
        e = Assert.Throws<FitLMException>(() => new TrainingBatch([]));
        Assert.Contains("at least one sequence", e.Message);
    }

    [Fact]
    public void GraphRefusesBatchesItCannotHold()
    {
        var c = GradientCheck.Config(vocab: 20);
        using var model = TinyTrainingModel.Create(c, 1);
        var graph = new TrainingGraph(c, model.Weights, null, 6);
        var e = Assert.Throws<FitLMException>(() => graph.Loss(new TrainingBatch([[1, 2, 3, 4], [5, 6, 7]])));
        Assert.Contains("larger than this graph's 6", e.Message);
        e = Assert.Throws<FitLMException>(() => graph.LossAndGradients(new TrainingBatch([[1, 20]]), 1f));
        Assert.Contains("token id 20 is outside the vocabulary (20)", e.Message);
        Assert.True(double.IsFinite(graph.Loss(new TrainingBatch([[1, 2, 3], [4, 5, 6]]))));
    }
}
