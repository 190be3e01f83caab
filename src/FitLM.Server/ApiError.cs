namespace FitLM.Server;

/// <summary>
/// An error a client caused (or the server's load), answered in OpenAI's shape
/// {"error": {"message", "type", "code"}} with its HTTP status.
/// </summary>
public sealed class ApiException(int status, string message, string code, string type = "invalid_request_error") : Exception(message)
{
    public int Status { get; } = status;
    public string Code { get; } = code;
    public string Type { get; } = type;
    /// <summary>Seconds for Retry-After (503 when the queue is full).</summary>
    public int? RetryAfter { get; init; }

    public static ApiException BadRequest(string message, string code = "invalid_value") => new(400, message, code);
}
