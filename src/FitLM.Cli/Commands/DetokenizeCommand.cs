using System.CommandLine;
using System.Text.Json;
using FitLM.Tokenization;

namespace FitLM.Cli.Commands;

/// <summary>`fitlm detokenize`: token ids → text, as llama.cpp's detokenize (special tokens as their text). Loads only the vocabulary.</summary>
internal static class DetokenizeCommand
{
    public static Command Create()
    {
        var model = Common.Model();
        model.Description = "model or vocabulary: a .gguf file (a vocabulary-only one too) or a Hugging Face folder (only tokenizer.json is read)";
        var json = new Option<bool>("--json") { Description = "read a JSON array of ids on stdin (or an array of id arrays); print a JSON string (or array of strings)" };
        var skipSpecial = new Option<bool>("--skip-special") { Description = "render control tokens (BOS, EOS, ...) as nothing instead of their text" };
        var pieces = new Option<bool>("--show-pieces") { Description = "print one token a line with its text instead of the joined text" };
        var ids = new Argument<string[]>("ids") { Description = "token ids, space-separated", Arity = ArgumentArity.ZeroOrMore };
        var cmd = new Command("detokenize", "print the text of token ids") { model, json, skipSpecial, pieces, ids };
        cmd.SetAction(r => Common.Guard(ct =>
        {
            var tok = Tokenizer.Load(r.GetValue(model)!);
            bool skip = r.GetValue(skipSpecial);
            if (r.GetValue(json))
            {
                if (r.GetValue(ids) is { Length: > 0 }) throw new FitLMException("--json reads the ids on stdin: give ids there or as arguments, not both");
                WriteJson(tok, Console.In.ReadToEnd(), skip);
                return 0;
            }
            var given = r.GetValue(ids) ?? [];
            if (given.Length == 0) throw new FitLMException("no ids given (pass IDS..., or --json with a JSON array on stdin)");
            var parsed = given.SelectMany(a => a.Split([' ', ',', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries)).Select(a => ParseId(tok, a)).ToArray();
            if (r.GetValue(pieces)) TokenizeCommand.WritePieces(Console.Out, tok, parsed);
            else Console.Out.WriteLine(tok.Decode(parsed, skip));
            return 0;
        }));
        return cmd;
    }

    private static void WriteJson(Tokenizer tok, string input, bool skip)
    {
        JsonElement root;
        try { root = JsonDocument.Parse(input).RootElement; }
        catch (JsonException e) { throw new FitLMException($"stdin is not JSON: {e.Message}"); }
        if (root.ValueKind != JsonValueKind.Array) throw new FitLMException("stdin is not a JSON array of ids");
        bool nested = root.GetArrayLength() > 0 && root[0].ValueKind == JsonValueKind.Array;
        string Decode(JsonElement array) => tok.Decode(array.EnumerateArray().Select(e => CheckId(tok, JsonId(e))).ToArray(), skip);
        object result = nested
            ? root.EnumerateArray().Select(a => a.ValueKind == JsonValueKind.Array ? Decode(a) : throw new FitLMException("stdin mixes ids and arrays of ids")).ToArray()
            : Decode(root);
        // Relaxed escaping: the text is for a terminal or a script, not for embedding in HTML (<s> stays <s>).
        Console.Out.WriteLine(CliJson.Relaxed(result));
    }

    private static int JsonId(JsonElement e) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) ? id : throw new FitLMException($"{e.GetRawText()} is not a token id");

    private static int ParseId(Tokenizer tok, string text) =>
        int.TryParse(text, out int id) ? CheckId(tok, id) : throw new FitLMException($"'{text}' is not a token id");

    private static int CheckId(Tokenizer tok, int id) =>
        tok.IsValidId(id) ? id : throw new FitLMException($"token id {id} is outside the vocabulary (0..{tok.VocabSize - 1})");
}
