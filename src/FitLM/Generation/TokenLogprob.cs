namespace FitLM.Generation;

/// <summary>One of the most likely tokens at a step, with its log-probability.</summary>
public readonly record struct TopLogprob(int Id, float Logprob);

/// <summary>
/// A generated token's log-probability under the softmax of the final logits (bias and penalties applied,
/// before temperature, top-k/p and min-p: what OpenAI and llama.cpp report), the most likely alternatives, most
/// likely first, and where its text starts in the completion (UTF-16 chars).
/// </summary>
public sealed record TokenLogprob(int Id, float Logprob, int TextOffset, TopLogprob[] Top);
