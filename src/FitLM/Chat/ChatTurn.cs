namespace FitLM.Chat;

/// <summary>One message of a conversation. Roles: system, user, assistant (tool and others pass through to the template).</summary>
public sealed record ChatTurn(string Role, string Content);
