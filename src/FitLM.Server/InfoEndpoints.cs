using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace FitLM.Server;

/// <summary>GET /v1/models, /v1/models/{id}, /props, /health, /metrics and POST /tokenize, /detokenize (llama.cpp's server shapes).</summary>
internal sealed class InfoEndpoints(ServerState state)
{
    private ModelCard Card => new(state.ModelId, "model", state.Created, "fitlm");

    public Task ModelsAsync(HttpContext http) =>
        GenerationEndpoints.Json(http, new ModelList("list", [Card]), JsonContext.Web.ModelList, http.RequestAborted);

    /// <summary>GET /v1/models/{id} (the OpenAI SDKs' GetModel): this model under any name it answers to, else 404.</summary>
    public Task ModelAsync(HttpContext http, string id)
    {
        if (!state.Serves(id))
            throw new ApiException(404, $"the model '{RequestReader.Cap(id)}' does not exist; this server runs '{state.ModelId}' (GET /v1/models)", "model_not_found");
        return GenerationEndpoints.Json(http, Card, JsonContext.Web.ModelCard, http.RequestAborted);
    }

    /// <summary>GET /props: llama.cpp's server properties (the default sampling settings are the ones a request gets when it names none).</summary>
    public Task PropsAsync(HttpContext http)
    {
        var tok = state.Model.Tokenizer;
        var defaults = new GenerationParams();
        var settings = new GenerationSettings(0, -1, state.Budget.Context, false, state.Scheduler.ActiveCount > 0,
            new SamplingDefaults(-1, -1, defaults.Temperature, defaults.TopK, defaults.TopP, defaults.MinP, defaults.RepeatLastN, defaults.RepeatPenalty,
                defaults.PresencePenalty, defaults.FrequencyPenalty, 0, false, []));
        var props = new Props(settings, state.Options.Parallel, Path.GetFullPath(state.Model.Source.Path), state.ModelId, state.TemplateText,
            tok.BosId >= 0 ? tok.TokenText(tok.BosId) : "", tok.EosId >= 0 ? tok.TokenText(tok.EosId) : "", new Modalities(false, false), state.BuildInfo);
        return GenerationEndpoints.Json(http, props, JsonContext.Web.Props, http.RequestAborted);
    }

    public Task HealthAsync(HttpContext http) =>
        GenerationEndpoints.Json(http, new Health("ok"), JsonContext.Web.Health, http.RequestAborted);

    public async Task MetricsAsync(HttpContext http)
    {
        http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await http.Response.WriteAsync(state.Metrics.Render(state.Scheduler, state.Budget, state.Model.Transformer.KvStores, state.Model.Governor), http.RequestAborted);
    }

    /// <summary>{"content": TEXT, "add_special": false, "parse_special": true} → {"tokens": [...]}.</summary>
    public async Task TokenizeAsync(HttpContext http)
    {
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, http.RequestAborted);
        var root = doc.RootElement;
        string content = RequestReader.OptionalString(root, "content") ?? throw ApiException.BadRequest("content is missing", "missing_required_parameter");
        bool addSpecial = RequestReader.OptionalBool(root, "add_special") ?? false;
        bool parseSpecial = RequestReader.OptionalBool(root, "parse_special") ?? true;
        var tokens = state.Model.Tokenizer.Encode(content, addSpecial, parseSpecial);
        await GenerationEndpoints.Json(http, new TokenizeResult(tokens), JsonContext.Web.TokenizeResult, http.RequestAborted);
    }

    /// <summary>{"tokens": [...]} → {"content": TEXT}.</summary>
    public async Task DetokenizeAsync(HttpContext http)
    {
        using var doc = await RequestReader.ReadJsonAsync(http.Request, state.Options.MaxBodyBytes, http.RequestAborted);
        if (!doc.RootElement.TryGetProperty("tokens", out var arr) || arr.ValueKind != JsonValueKind.Array)
            throw ApiException.BadRequest("tokens must be an array of token ids", "missing_required_parameter");
        int vocab = state.Model.Config.Vocab;
        var ids = new int[arr.GetArrayLength()];
        for (int i = 0; i < ids.Length; i++)
            if (arr[i].ValueKind != JsonValueKind.Number || !arr[i].TryGetInt32(out ids[i]) || (uint)ids[i] >= (uint)vocab)
                throw ApiException.BadRequest($"tokens[{i}] is not a token id (0..{vocab - 1})");
        await GenerationEndpoints.Json(http, new DetokenizeResult(state.Model.Tokenizer.Decode(ids)), JsonContext.Web.DetokenizeResult, http.RequestAborted);
    }
}
