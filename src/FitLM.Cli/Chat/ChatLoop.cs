using System.Diagnostics;
using System.Text;
using FitLM.Chat;
using FitLM.Generation;

namespace FitLM.Cli.Chat;

/// <summary>
/// The terminal side of `fitlm chat`: reads a message per line (a line ending in \ continues on the next), streams
/// each reply to stdout, and handles /clear, /exit, Ctrl-D and Ctrl-C. With stdin not a terminal, each line is a
/// user message and the replies are printed one after another (no prompt), so a chat can be scripted.
/// Everything that is not a reply (banner, notes, --verbose-prompt) goes to stderr.
/// </summary>
internal static class ChatLoop
{
    private const string Banner = "/exit or Ctrl-D leaves, Ctrl-C stops a reply, /help for more";
    private const string Help = "/clear forgets the conversation, /exit or Ctrl-D leaves, Ctrl-C stops a reply, \\ at a line's end continues the message";

    /// <summary>Loads the model and chats until /exit or the end of the input; 0 on a normal end.</summary>
    public static int Run(Func<LanguageModel> loadModel, string modelPath, ChatSettings settings)
    {
        var clock = Stopwatch.StartNew();
        using var interrupt = new ReplyInterrupt(); // from the start, so Ctrl-C while the model loads leaves too
        using var model = loadModel();
        var template = ChooseTemplate(model, settings.Template);
        var session = new ChatSession(model, template, settings.System);
        CheckRenders(session);
        bool interactive = !Console.IsInputRedirected;
        Console.Error.WriteLine($"chat: {Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath))}, context {model.Transformer.MaxContext} tokens, " +
            $"template {(template.Name == "model" ? "the model's own" : template.Name)} (loaded in {clock.Elapsed.TotalSeconds:F1} s); {Banner}");

        var stdout = Console.Out;
        while (true)
        {
            if (interactive)
            {
                stdout.Write("> ");
                stdout.Flush();
            }
            string? line = ReadMessage(Console.In);
            if (line == null) break; // EOF, Ctrl-D
            string command = line.Trim();
            if (command.Length == 0) continue;
            if (command is "/exit" or "/quit" or "/bye") break;
            if (command == "/clear")
            {
                session.Clear();
                Console.Error.WriteLine("(conversation cleared)");
                continue;
            }
            if (command is "/help" or "/?")
            {
                Console.Error.WriteLine(Help + "; // at the start sends a message that begins with /");
                continue;
            }
            if (command.StartsWith('/') && !command.Contains(' ') && command.Length > 1)
            {
                Console.Error.WriteLine($"unknown command {command} (/help lists them; start a message with // to send it as text)");
                continue;
            }
            if (command.StartsWith("//", StringComparison.Ordinal)) line = line.TrimStart()[1..];
            Reply(session, line, settings, interrupt, stdout, model.Transformer.MaxContext);
        }
        if (interactive) stdout.WriteLine();
        return 0;
    }

    private static void Reply(ChatSession session, string message, ChatSettings settings, ReplyInterrupt interrupt, TextWriter stdout, int context)
    {
        var ct = interrupt.BeginReply();
        try
        {
            var reply = session.Send(message, settings.Reply,
                onText: text => { stdout.Write(text); stdout.Flush(); },
                onPrompt: p => Announce(p, settings.VerbosePrompt, context),
                ct: ct);
            stdout.WriteLine();
            stdout.Flush();
            if (reply.Cancelled) Console.Error.WriteLine("(reply stopped; Ctrl-C at the prompt leaves)");
            else if (reply.Stop == StopReason.ContextFull)
                Console.Error.WriteLine($"(the context is full at {context} tokens: the reply was cut; the next message drops the oldest turns, or /clear)");
            if (settings.VerbosePrompt)
                Console.Error.WriteLine($"[reply: {reply.Tokens} tokens, stop {Describe(reply)}, prompt {reply.PromptTime.TotalMilliseconds:F0} ms, " +
                    $"{(reply.Tokens > 1 ? $"{(reply.Tokens - 1) / Math.Max(1e-9, reply.ReplyTime.TotalSeconds):F1} tokens/s" : "-")}]");
        }
        catch (FitLMException e)
        {
            // One turn failed (a message too long for the context, a template that refuses the conversation):
            // say why and keep the chat.
            stdout.Flush();
            Console.Error.WriteLine($"error: {e.Message.ReplaceLineEndings(" ")}");
        }
        finally
        {
            interrupt.EndReply();
        }
    }

    private static void Announce(ChatPrompt p, bool verbose, int context)
    {
        if (p.DroppedMessages > 0)
            Console.Error.WriteLine($"(context of {context} tokens full: dropped the oldest {p.DroppedMessages} messages; /clear starts over)");
        if (!verbose) return;
        Console.Error.WriteLine($"[prompt: {p.Tokens} tokens, {p.Reused} reused from the previous turn]");
        Console.Error.Write(p.Text);
        Console.Error.WriteLine("[/prompt]");
        Console.Error.Flush();
    }

    private static string Describe(ChatReply r) => r.Cancelled ? "cancelled" : r.Stop switch
    {
        StopReason.EndOfGeneration => "end of turn",
        StopReason.StopString => "end-of-turn text",
        StopReason.ContextFull => "context full",
        _ => "token limit",
    };

    /// <summary>The --chat-template override, else the model's own, else ChatML with a note (base models have none).</summary>
    private static ChatTemplate ChooseTemplate(LanguageModel model, string? fileOrName)
    {
        if (fileOrName != null) return ChatTemplateOverride.Resolve(fileOrName, model.Tokenizer);
        var own = ChatTemplate.ForModel(model);
        if (own != ChatTemplate.Completion) return own;
        Console.Error.WriteLine("note: the model has no chat template; using chatml (choose one with --chat-template FILE|NAME)");
        return ChatTemplate.ChatMl;
    }

    /// <summary>Renders a one-message conversation once, so a template that cannot render fails before the first prompt.</summary>
    private static void CheckRenders(ChatSession session)
    {
        try { session.Template.Render(session.Messages("Hello"), addGenerationPrompt: true); }
        catch (FitLMException e) { throw new FitLMException($"chat template {session.Template.Name}: {e.Message}", e); }
    }

    /// <summary>One message: a line, continued over following lines while it ends with a backslash; null at the end of input.</summary>
    private static string? ReadMessage(TextReader input)
    {
        string? line = input.ReadLine();
        if (line == null || !line.EndsWith('\\')) return line;
        var text = new StringBuilder();
        while (line != null && line.EndsWith('\\'))
        {
            text.Append(line, 0, line.Length - 1).Append('\n');
            line = input.ReadLine();
        }
        return text.Append(line).ToString();
    }
}
