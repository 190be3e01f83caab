namespace FitLM.Cli.Chat;

/// <summary>
/// Ctrl-C in a chat: while a reply is generating it stops the reply and the chat goes on; at the prompt it
/// leaves, as llama.cpp's and Ollama's chats do. Registered after Common.Guard's handler, so its choice of
/// <see cref="ConsoleCancelEventArgs.Cancel"/> is the one that counts.
/// </summary>
internal sealed class ReplyInterrupt : IDisposable
{
    private CancellationTokenSource? _reply;

    public ReplyInterrupt() => Console.CancelKeyPress += OnCancel;

    /// <summary>A token that Ctrl-C cancels until <see cref="EndReply"/>.</summary>
    public CancellationToken BeginReply()
    {
        var cts = new CancellationTokenSource();
        Volatile.Write(ref _reply, cts);
        return cts.Token;
    }

    public void EndReply() => Interlocked.Exchange(ref _reply, null)?.Dispose();

    private void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        var reply = Volatile.Read(ref _reply);
        if (reply != null)
        {
            e.Cancel = true;
            try { reply.Cancel(); } catch (ObjectDisposedException) { } // the reply ended as the key came
            return;
        }
        Console.Out.WriteLine();
        Console.Out.Flush();
        e.Cancel = false; // at the prompt: the process ends, as on Ctrl-C anywhere else
    }

    public void Dispose()
    {
        Console.CancelKeyPress -= OnCancel;
        EndReply();
    }
}
