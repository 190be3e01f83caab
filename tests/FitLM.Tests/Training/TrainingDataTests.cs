using Xunit;
using FitLM.Training;

namespace FitLM.Tests.Training;

public class TrainingDataTests
{
    private static int[] Ids(int n) => Enumerable.Range(0, n).ToArray();

    [Fact]
    public void WindowsAreNonOverlappingAndTheLastPartialOneIsDropped()
    {
        var d = TrainingData.FromTokens(Ids(70), 32, "t");
        Assert.Equal(2, d.Windows.Count);
        Assert.Equal(Ids(32), d.Windows[0]);
        Assert.Equal(Enumerable.Range(32, 32), d.Windows[1]);
        Assert.Equal(64, d.TokenCount);
    }

    [Fact]
    public void TooShortTextSaysHowManyTokensItHasAndWhatCtxNeeds()
    {
        var e = Assert.Throws<FitLMException>(() => TrainingData.FromTokens(Ids(20), 32, "train.txt"));
        Assert.Contains("train.txt has 20 token(s); --ctx 32 needs at least 32", e.Message);
    }

    [Fact]
    public void BatchesFollowAShuffledOrderThatDependsOnlyOnSeedAndStep()
    {
        var d = TrainingData.FromTokens(Ids(32 * 10), 32, "t");
        var fresh = TrainingData.FromTokens(Ids(32 * 10), 32, "t");
        // Steps asked out of order (a resumed run) give the same batches as steps asked in order.
        var inOrder = Enumerable.Range(0, 12).Select(s => d.BatchAt(s, 3, 7)).ToList();
        for (int s = 11; s >= 0; s--) Assert.Equal(inOrder[s], fresh.BatchAt(s, 3, 7));
        // Each epoch (10 windows) visits every window once.
        var firstEpoch = inOrder.SelectMany(b => b).Take(10).Select(w => w[0] / 32).Order();
        Assert.Equal(Enumerable.Range(0, 10), firstEpoch);
        Assert.NotEqual(inOrder.SelectMany(b => b).Select(w => w[0]), d.BatchAt(0, 36, 8).Select(w => w[0]));
    }

    [Fact]
    public void IdsBatchIsCheckedAgainstTheVocabularyAndItsShape()
    {
        var ok = TrainingData.FromIdsJson("[[1,2,3],[4,5]]", 10, "b.json");
        Assert.True(ok.FixedBatch);
        Assert.Equal(2, ok.Windows.Count);
        Assert.Contains("outside the model's vocabulary", Assert.Throws<FitLMException>(() => TrainingData.FromIdsJson("[[1,2,30]]", 10, "b.json")).Message);
        Assert.Contains("not valid JSON", Assert.Throws<FitLMException>(() => TrainingData.FromIdsJson("[[1,2", 10, "b.json")).Message);
        Assert.Contains("not an array", Assert.Throws<FitLMException>(() => TrainingData.FromIdsJson("[1,2]", 10, "b.json")).Message);
        Assert.Contains("at least 2", Assert.Throws<FitLMException>(() => TrainingData.FromIdsJson("[[1]]", 10, "b.json")).Message);
        Assert.Contains("empty", Assert.Throws<FitLMException>(() => TrainingData.FromIdsJson("[]", 10, "b.json")).Message);
    }

    [Fact]
    public void EpochsBecomeStepsOfTheBatch()
    {
        var d = TrainingData.FromTokens(Ids(32 * 10), 32, "t");
        Assert.Equal(3, d.StepsFor(1, 4));     // 10 windows, 4 a step: the last step runs into the next epoch
        Assert.Equal(5, d.StepsFor(2, 4));
        Assert.Equal(2, TrainingData.FromIdsJson("[[1,2]]", 10, "b").StepsFor(1.5, 4)); // a fixed batch: one step an epoch
    }
}
