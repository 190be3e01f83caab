using System.CommandLine;
using System.Text;
using System.Text.Json;
using FitLM.Tokenization;

namespace FitLM.Cli.Commands;

/// <summary>
/// `fitlm tokenize`: text → token ids, for one text or a JSON array of texts on stdin. Loads only the
/// vocabulary (Tokenizer.Load), so llama.cpp's vocabulary-only ggml-vocab-*.gguf files work too.
/// </summary>
internal static class TokenizeCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        model.Description = "model or vocabulary: a .gguf file (a vocabulary-only one too) or a Hugging Face folder (only tokenizer.json is read)";
        var noBos = new Option<bool>("--no-bos") { Description = "do not add BOS/EOS tokens" };
        var json = new Option<bool>("--json") { Description = "read a JSON array of strings on stdin; print a JSON array of id arrays" };
        var special = new Option<bool>("--parse-special") { Description = "turn special-token text (e.g. <|eos|>) into its id" };
        var pieces = new Option<bool>("--show-pieces") { Description = "print one token a line with its text, as llama-tokenize does:   1234 -> 'def'" };
        var text = new Argument<string?>("text") { Description = "text to tokenize", Arity = ArgumentArity.ZeroOrOne };
        var cmd = new Command("tokenize", "print the token ids of a text") { model, noBos, json, special, pieces, text };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            var tok = Tokenizer.Load(r.GetValue(model)!);
            bool addSpecial = !r.GetValue(noBos);
            bool parseSpecial = r.GetValue(special);
            if (r.GetValue(json))
            {
                if (r.GetValue(pieces)) throw new FitLMException("--show-pieces prints text, --json prints JSON: give one");
                string input = Console.In.ReadToEnd();
                string[]? texts;
                try { texts = CliJson.Parse<string[]>(input); }
                catch (JsonException e) { throw new FitLMException($"stdin is not a JSON array of strings: {e.Message}"); }
                if (texts == null) throw new FitLMException("stdin is not a JSON array of strings");
                var result = texts.Select(t => tok.Encode(t ?? "", addSpecial, parseSpecial)).ToArray();
                Console.Out.WriteLine(CliJson.Compact(result));
                return 0;
            }
            string? s = r.GetValue(text);
            if (s == null) throw new FitLMException("no text given (pass TEXT, or --json with a JSON array on stdin)");
            var ids = tok.Encode(s, addSpecial, parseSpecial);
            if (r.GetValue(pieces)) WritePieces(Console.Out, tok, ids);
            else Console.Out.WriteLine(string.Join(' ', ids));
            return 0;
        }));
        return cmd;
    }

    /// <summary>llama-tokenize's listing: the id right-aligned in six columns, then the token's text (special tokens as their text).</summary>
    public static void WritePieces(TextWriter o, Tokenizer tok, IEnumerable<int> ids)
    {
        foreach (int id in ids)
            o.WriteLine($"{id,6} -> '{Encoding.UTF8.GetString(tok.TokenBytes(id, special: true))}'");
    }
}
