using System.CommandLine;
using FitLM.Model;
using FitLM.Conversion;
using FitLM.Storage;
using FitLM.Weights;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm calibrate`: fit the per-layer FFN neuron predictors of a (prepared) model on calibration text.</summary>
internal static class CalibrateCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var file = new Option<string>("--file", "-f") { Description = "calibration text", Required = true };
        var rank = new Option<int>("--rank") { Description = "rank of each low-rank predictor", DefaultValueFactory = _ => 64 };
        var samples = new Option<int>("--samples") { Description = "FFN inputs recorded per layer", DefaultValueFactory = _ => 4096 };
        var recall = new Option<double>("--recall") { Description = "ReLU models: share of truly active neurons the predictor must catch", DefaultValueFactory = _ => 0.99 };
        var output = new Option<string?>("--output", "-o") { Description = "predictor file (default: MODEL.predictor.gguf beside the model, where loading finds it)" };
        var threads = Common.Threads();
        var cmd = new Command("calibrate", "fit the FFN neuron predictors used for sparse streaming (LLM in a flash)") { model, file, rank, samples, recall, output, threads };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            Common.ApplyThreads(r.GetValue(threads));
            string path = r.GetValue(file)!;
            if (!File.Exists(path)) throw new FitLMException($"{path}: calibration text not found");
            double target = r.GetValue(recall);
            if (!(target is > 0 and <= 1)) throw new FitLMException($"--recall {target} is out of range (0, 1]");
            int n = r.GetValue(samples);
            if (n is < 64 or > 1 << 20) throw new FitLMException($"--samples {n} is out of range (64..1048576)");
            string modelPath = r.GetValue(model)!;
            // Checked before the minutes of fitting, not after.
            OutputFile.EnsureNotInput(r.GetValue(output) ?? NeuronPredictor.SidecarPath(modelPath), modelPath, path);
            var report = Calibration.Fit(modelPath, File.ReadAllText(path), new Calibration.Options(r.GetValue(rank), n, target),
                line => Console.Error.WriteLine(line), ct);
            string outPath = r.GetValue(output) ?? NeuronPredictor.SidecarPath(modelPath);
            report.Predictor.Save(outPath); // a GgufWriter: a temp file beside it, renamed when complete
            Console.Out.WriteLine($"wrote {outPath}: rank {report.Predictor.Rank}, {report.Samples} samples per layer, " +
                $"mean recall {report.Recall.Average():P1}, truly active {report.ActiveFraction.Average():P1}, selected {report.SelectedFraction.Average():P1}");
            return 0;
        }));
        return cmd;
    }
}
