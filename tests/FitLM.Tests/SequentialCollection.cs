using Xunit;

namespace FitLM.Tests;

/// <summary>Tests that observe process-wide state (GC counts, memory) run alone, after the parallel ones.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class SequentialCollection
{
    public const string Name = "Sequential";
}
