using System.CommandLine;
using System.Text.Json;
using FitLM.Model;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm tokenize`: text → token ids, for one text or a JSON array of texts on stdin.</summary>
internal static class TokenizeCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        var noBos = new Option<bool>("--no-bos") { Description = "do not add BOS/EOS tokens" };
        var json = new Option<bool>("--json") { Description = "read a JSON array of strings on stdin; print a JSON array of id arrays" };
        var special = new Option<bool>("--parse-special") { Description = "turn special-token text (e.g. <|eos|>) into its id" };
        var text = new Argument<string?>("text") { Description = "text to tokenize", Arity = ArgumentArity.ZeroOrOne };
        var cmd = new Command("tokenize", "print the token ids of a text") { model, noBos, json, special, text };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            using var src = ModelSource.Open(r.GetValue(model)!);
            var tok = src.Tokenizer;
            bool addSpecial = !r.GetValue(noBos);
            bool parseSpecial = r.GetValue(special);
            if (r.GetValue(json))
            {
                string input = Console.In.ReadToEnd();
                string[]? texts;
                try { texts = JsonSerializer.Deserialize<string[]>(input); }
                catch (JsonException e) { throw new FitLMException($"stdin is not a JSON array of strings: {e.Message}"); }
                if (texts == null) throw new FitLMException("stdin is not a JSON array of strings");
                var result = texts.Select(t => tok.Encode(t ?? "", addSpecial, parseSpecial)).ToArray();
                Console.Out.WriteLine(JsonSerializer.Serialize(result));
                return 0;
            }
            string? s = r.GetValue(text);
            if (s == null) throw new FitLMException("no text given (pass TEXT, or --json with a JSON array on stdin)");
            Console.Out.WriteLine(string.Join(' ', tok.Encode(s, addSpecial, parseSpecial)));
            return 0;
        }));
        return cmd;
    }
}
