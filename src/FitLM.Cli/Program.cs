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
            ChatCommand.Create(),
            TokenizeCommand.Create(),
            DetokenizeCommand.Create(),
            PerplexityCommand.Create(),
            InfoCommand.Create(),
            ConvertCommand.Create(),
            QuantizeCommand.Create(),
            ExportCommand.Create(),
            FinetuneCommand.Create(),
            SynthCommand.Create(),
            BenchCommand.Create(),
            PlanCommand.Create(),
            CompressCommand.Create(),
            CompressCommand.CreateLadder(),
            PrepareCommand.Create(),
            CalibrateCommand.Create(),
            ServeCommand.Create(),
            DevicesCommand.Create(),
        };
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0 && !args.Contains("--help") && !args.Contains("-h"))
        {
            // One line, like every other error: the first problem and where to read more.
            string command = parsed.CommandResult.Command == root ? "" : " " + parsed.CommandResult.Command.Name;
            Console.Error.WriteLine($"error: {ParseErrorText.Describe(parsed.Errors[0])} (see 'fitlm{command} --help')");
            return 2;
        }
        return parsed.Invoke();
    }
}
