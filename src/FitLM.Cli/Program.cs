using System.CommandLine;
using FitLM.Cli.Commands;

namespace FitLM.Cli;

public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("FitLM: run and evaluate large language models in whatever memory the machine has")
        {
            RunCommand.Create(),
            TokenizeCommand.Create(),
            PerplexityCommand.Create(),
            InfoCommand.Create(),
        };
        return root.Parse(args).Invoke();
    }
}
