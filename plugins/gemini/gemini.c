/*
 * plugins/gemini/gemini.c — the `gemini` LLM backend (Google Gemini API, v1beta).
 *
 * generate() sends POST {base_url}/v1beta/models/{model}:generateContent with
 * the persona, the rules and the standing decisions as systemInstruction,
 * the knowledge (the whole KB when knowledge_bytes/4 fits context_budget_tokens,
 * else the retrieved chunks), the history and the customer's message. Function
 * calls run through koko_host.tool_call and are answered with functionResponse
 * parts until the model answers (at most max_tool_steps rounds).
 *
 * Managed context caching (cache.c): when the whole KB is sent and it is above
 * the model's minimum, persona + rules + decisions + KB + tool declarations
 * live in one cachedContents resource per context_hash, created on first use
 * and named by every later request, which then carries neither
 * systemInstruction nor tools nor toolConfig (the API rejects them); what
 * varies per request (reply language, customer facts) travels as a note in
 * the message. HTTP, retries and the rate limiter: plugins/common/llmcommon.c.
 */
#include "gemini.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const own_keys[] = {"api_key", "model", "base_url", "context_budget_tokens", "cache", NULL};
static const char *const cache_keys[] = {"enabled", "ttl_s", "min_tokens", NULL};

/* ---- configuration ---- */

static int check_cache(const json_t *v, koko_diag *d)
{
    if (!json_is_object(v)) {
        d->error(d, "cache", "expected an object {enabled, ttl_s, min_tokens}, got %s", llm_json_kind(v));
        return 1;
    }
    int n = 0;
    const char *k;
    json_t *x;
    json_object_foreach ((json_t *)v, k, x) {
        if (strcmp(k, "enabled") == 0) {
            if (!json_is_boolean(x)) {
                d->error(d, "cache.enabled", "expected true or false, got %s", llm_json_kind(x));
                n++;
            }
        } else if (strcmp(k, "ttl_s") == 0) {
            if (!json_is_integer(x) || json_integer_value(x) < 1 || json_integer_value(x) > 604800) {
                d->error(d, "cache.ttl_s", "expected a whole number of seconds from 1 to 604800");
                n++;
            }
        } else if (strcmp(k, "min_tokens") == 0) {
            if (json_is_integer(x)) {
                if (json_integer_value(x) < 0) {
                    d->error(d, "cache.min_tokens", "expected a whole number of tokens >= 0");
                    n++;
                }
            } else if (json_is_object(x)) {
                const char *m;
                json_t *y;
                json_object_foreach (x, m, y)
                    if (!json_is_integer(y) || json_integer_value(y) < 0) {
                        char path[256];
                        snprintf(path, sizeof path, "cache.min_tokens.%s", m);
                        d->error(d, path, "expected a whole number of tokens >= 0");
                        n++;
                    }
            } else {
                d->error(d, "cache.min_tokens",
                         "expected a whole number of tokens, or an object mapping model names to one, got %s",
                         llm_json_kind(x));
                n++;
            }
        } else {
            char list[128] = "";
            size_t off = 0;
            for (const char *const *c = cache_keys; *c; c++)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "", *c);
            d->error(d, "cache", "unknown key \"%s\" (known: %s)", k, list);
            n++;
        }
    }
    return n;
}

static int url_ok(const char *s)
{
    return s && (strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0) && strlen(s) > 8;
}

static int gemini_validate(const json_t *cfg, koko_diag *d)
{
    int n = 0;
    if (!json_is_object(cfg)) {
        d->error(d, "", "expected an object of settings, got %s", llm_json_kind(cfg));
        return 1;
    }
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)cfg, k, v) {
        int c = llm_cfg_check_common(k, v, d);
        if (c >= 0) {
            n += c;
        } else if (strcmp(k, "api_key") == 0) {
            if (!json_is_string(v) || !json_string_length(v)) {
                d->error(d, k, "expected the Gemini API key as a non-empty string (e.g. api_key: \"${GEMINI_API_KEY}\"), got %s",
                         llm_json_kind(v));
                n++;
            }
        } else if (strcmp(k, "model") == 0) {
            const char *m = json_string_value(v);
            if (!m || !*m || strpbrk(m, " /?#:")) {
                d->error(d, k, "expected a Gemini model name such as \"gemini-2.5-flash\"");
                n++;
            }
        } else if (strcmp(k, "base_url") == 0) {
            if (!url_ok(json_string_value(v))) {
                d->error(d, k, "expected an http:// or https:// URL such as \"%s\"", GEMINI_DEFAULT_BASE_URL);
                n++;
            }
        } else if (strcmp(k, "context_budget_tokens") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000000) {
                d->error(d, k, "expected a whole number of tokens from 0 to 10000000");
                n++;
            }
        } else if (strcmp(k, "cache") == 0) {
            n += check_cache(v, d);
        } else {
            llm_cfg_unknown(d, "", k, own_keys);
            n++;
        }
    }
    if (!json_object_get(cfg, "api_key")) {
        d->error(d, "api_key", "missing: the Gemini API key is required (e.g. api_key: \"${GEMINI_API_KEY}\")");
        n++;
    }
    return n;
}

static uint64_t min_tokens_for(const json_t *cfg, const char *model)
{
    const json_t *mt = json_object_get(json_object_get(cfg, "cache"), "min_tokens");
    if (json_is_integer(mt))
        return (uint64_t)json_integer_value(mt);
    const json_t *m = json_object_get(mt, model);
    if (json_is_integer(m))
        return (uint64_t)json_integer_value(m);
    return strstr(model, "pro") ? 4096 : 1024; /* Gemini 2.5 Pro / 2.5 Flash minimums */
}

/* ---- life cycle ---- */

static void check_drained(gemini *gm)
{
    if (gm->stopping && !gm->drained_called && !gm->gens && !gm->refreshes &&
        llm_client_outstanding(gm->client) == 0 && gm->drained) {
        gm->drained_called = 1;
        gm->drained(gm->inst);
    }
}

static void on_client_idle(void *arg)
{
    check_drained(arg);
}

static void *gemini_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    if (host->size < offsetof(koko_host, tool_call) + sizeof host->tool_call) {
        snprintf(err, errlen, "this kokod is too old for the gemini plugin (host ABI %u.%u; 1.2 needed for function calling)",
                 host->abi_major, host->abi_minor);
        return NULL;
    }
    const char *key = json_string_value(json_object_get(cfg, "api_key"));
    if (!key || !*key) {
        snprintf(err, errlen, "api_key is missing: set it to the Gemini API key (e.g. \"${GEMINI_API_KEY}\")");
        return NULL;
    }
    gemini *gm = calloc(1, sizeof *gm);
    if (!gm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    gm->host = host;
    gm->inst = inst;
    llm_cfg_load(cfg, &gm->cfg);
    const char *model = json_string_value(json_object_get(cfg, "model"));
    gm->model = llm_strdup(model ? model : GEMINI_DEFAULT_MODEL);
    const char *base = json_string_value(json_object_get(cfg, "base_url"));
    gm->base_url = llm_strdup(base ? base : GEMINI_DEFAULT_BASE_URL);
    size_t bl = strlen(gm->base_url);
    while (bl > 0 && gm->base_url[bl - 1] == '/')
        gm->base_url[--bl] = '\0';
    gm->key_header = llm_asprintf("x-goog-api-key: %s", key);
    const json_t *b = json_object_get(cfg, "context_budget_tokens");
    gm->budget_tokens = json_is_integer(b) ? (uint64_t)json_integer_value(b) : GEMINI_DEFAULT_BUDGET_TOKENS;
    const json_t *cache = json_object_get(cfg, "cache");
    const json_t *en = json_object_get(cache, "enabled");
    gm->cache_enabled = en ? json_is_true(en) : 1;
    const json_t *ttl = json_object_get(cache, "ttl_s");
    gm->ttl_s = json_is_integer(ttl) ? (long)json_integer_value(ttl) : GEMINI_DEFAULT_TTL_S;
    gm->min_tokens = min_tokens_for(cfg, gm->model);
    gm->price = llm_price_of(&gm->cfg, gm->model);
    gm->client = llm_client_new(host, inst, &gm->cfg, "gemini", on_client_idle, gm);
    if (!gm->client) {
        snprintf(err, errlen, "out of memory");
        free(gm->model);
        free(gm->base_url);
        free(gm->key_header);
        llm_cfg_free(&gm->cfg);
        free(gm);
        return NULL;
    }
    if (!gm->price.known)
        host->log(inst, KOKO_LOG_WARN,
                  "gemini: no price for model %s in prices: its cost is counted as 0 USD (add prices.%s "
                  "{input, cached_input, output, cache_storage_per_hour})",
                  gm->model, gm->model);
    host->log(inst, KOKO_LOG_INFO, "gemini: model %s at %s, context budget %llu tokens, context cache %s (ttl %ld s, min %llu tokens)",
              gm->model, gm->base_url, (unsigned long long)gm->budget_tokens, gm->cache_enabled ? "on" : "off",
              gm->ttl_s, (unsigned long long)gm->min_tokens);
    return gm;
}

static void gemini_stop(void *state, koko_drained_fn drained)
{
    gemini *gm = state;
    gm->stopping = 1;
    gm->drained = drained;
    /* queued and backing-off calls finish (later) as cancelled; transfers in
     * flight, tool calls and deferred finishes complete on their own */
    llm_client_stop(gm->client);
    check_drained(gm);
}

static void gemini_destroy(void *state)
{
    gemini *gm = state;
    while (gm->gens) {
        gen *g = gm->gens;
        gm->gens = g->next;
        gen_free(g);
    }
    cache_free_all(gm);
    llm_client_free(gm->client);
    llm_cfg_free(&gm->cfg);
    free(gm->model);
    free(gm->base_url);
    free(gm->key_header);
    free(gm);
}

/* ---- generate ---- */

void gen_free(gen *g)
{
    json_decref(g->turns);
    json_decref(g->responses);
    free(g->cache_name);
    free(g->text);
    free(g->finish);
    free(g->handoff_reason);
    free(g->error);
    free(g);
}

static void gen_unlink(gen *g)
{
    gemini *gm = g->gm;
    if (g->prev)
        g->prev->next = g->next;
    else
        gm->gens = g->next;
    if (g->next)
        g->next->prev = g->prev;
}

/* Answer the core and free G. */
static void gen_finish(gen *g, koko_status st, const char *error)
{
    gemini *gm = g->gm;
    const koko_llm_request *req = g->req;
    double cost = llm_cost(&gm->price, g->in, g->cached, g->out);
    if (st == KOKO_OK) { /* cache storage bought since the last answer is charged to this one */
        cost += gm->unbilled_storage_usd;
        gm->unbilled_storage_usd = 0;
    }
    if (g->cached)
        cache_account(gm, req->context_hash, g->cached);
    llm_outcome o = {.st = st, .error = error, .text = g->text, .finish = g->finish,
                     .called_handoff = g->called_handoff, .handoff_reason = g->handoff_reason, .model = gm->model,
                     .in = g->in, .cached = g->cached, .out = g->out, .cost_usd = cost, .whole_kb = g->whole_kb};
    gen_unlink(g);
    llm_answer(req, &o, g->done, g->arg);
    gen_free(g);
    check_drained(gm);
}

static void on_finish_timer(void *arg)
{
    gen *g = arg;
    g->timer = NULL;
    gen_finish(g, g->fin_st, g->error);
}

static void gen_finish_later(gen *g, koko_status st, const char *error)
{
    g->fin_st = st;
    free(g->error);
    g->error = llm_strdup(error);
    g->timer = g->gm->host->timer_start(g->gm->inst, 0, on_finish_timer, g);
    if (!g->timer)
        on_finish_timer(g);
}

/* The final user turn: [note when cached] [passages in chunk mode] message. */
static json_t *user_turn(gen *g, int cached)
{
    const koko_llm_request *req = g->req;
    json_t *parts = json_array();
    if (KOKO_LLM_IS_TASK(req)) {
        json_array_append_new(parts, json_pack("{s:s}", "text", req->text ? req->text : ""));
        return json_pack("{s:s,s:o}", "role", "user", "parts", parts);
    }
    if (cached) {
        char *note = llm_request_note(req);
        json_array_append_new(parts, json_pack("{s:s}", "text", note));
        free(note);
    }
    if (!g->whole_kb) {
        char *k = llm_chunks_text(req);
        json_array_append_new(parts, json_pack("{s:s}", "text", k));
        free(k);
    }
    json_array_append_new(parts, json_pack("{s:s}", "text", req->text ? req->text : ""));
    return json_pack("{s:s,s:o}", "role", "user", "parts", parts);
}

static json_t *history_json(const koko_llm_request *req)
{
    json_t *a = json_array();
    for (size_t i = 0; i < req->n_history; i++) {
        const koko_turn *t = &req->history[i];
        if (!t->text || !*t->text)
            continue;
        const char *role = t->role && strcmp(t->role, "assistant") == 0 ? "model" : "user";
        json_array_append_new(a, json_pack("{s:s,s:[{s:s}]}", "role", role, "parts", "text", t->text));
    }
    return a;
}

/* System instruction text for a request that does not use a cache. */
static char *plain_system(gen *g)
{
    char *sys = llm_system_text(g->req, 1);
    if (g->whole_kb && g->req->knowledge) {
        char *all = llm_asprintf("%s\nKnowledge base:\n%s", sys, g->req->knowledge);
        free(sys);
        return all;
    }
    return sys;
}

static void on_generated(const llm_response *r, void *arg);

void gen_send(gen *g)
{
    gemini *gm = g->gm;
    const koko_llm_request *req = g->req;
    int cached = g->cache_name != NULL;
    /* built per send rather than kept: thousands of calls wait on the model at once */
    json_t *contents = KOKO_LLM_IS_TASK(req) ? json_array() : history_json(req);
    json_array_append_new(contents, user_turn(g, cached));
    if (g->turns)
        json_array_extend(contents, g->turns);
    json_t *body = json_pack("{s:o}", "contents", contents);
    json_t *gc = json_object();
    if (gm->cfg.has_temperature)
        json_object_set_new(gc, "temperature", json_real(gm->cfg.temperature));
    json_object_set_new(body, "generationConfig", gc);
    uint64_t extra = 0;
    if (KOKO_LLM_IS_TASK(req)) {
        /* a task: its own instruction, structured output, nothing of the persona or the cache */
        json_object_set_new(body, "systemInstruction", json_pack("{s:[{s:s}]}", "parts", "text", req->instruction));
        if (req->response_schema) {
            json_object_set_new(gc, "responseMimeType", json_string("application/json"));
            json_object_set_new(gc, "responseSchema", json_deep_copy(req->response_schema));
        }
    } else if (cached) {
        json_object_set_new(body, "cachedContent", json_string(g->cache_name));
        extra = g->cache_tokens;
    } else {
        char *sys = plain_system(g);
        json_object_set_new(body, "systemInstruction", json_pack("{s:[{s:s}]}", "parts", "text", sys));
        free(sys);
        if (json_array_size(req->tools)) {
            json_object_set_new(body, "tools",
                                json_pack("[{s:O}]", "functionDeclarations", (json_t *)req->tools));
            json_object_set_new(body, "toolConfig", json_pack("{s:{s:s}}", "functionCallingConfig", "mode", "AUTO"));
        }
    }
    char *url = llm_asprintf("%s/v1beta/models/%s:generateContent", gm->base_url, gm->model);
    const char *hdrs[] = {gm->key_header, NULL};
    char *dump = json_dumps(body, JSON_COMPACT); /* serialised once: the estimate and what goes out */
    if (dump)
        g->call = llm_call_start_text(gm->client, "POST", url, hdrs, dump, strlen(dump) / 4 + extra + 1,
                                      "generateContent", on_generated, g);
    else /* answers (later) that the body cannot be serialised */
        g->call = llm_call_start(gm->client, "POST", url, hdrs, body, 1, "generateContent", on_generated, g);
    free(url);
    json_decref(body);
}

/* ---- function calling ---- */

typedef struct tool_slot {
    gen *g;
    size_t index;
    char *name;
} tool_slot;

static void on_tool(koko_status st, json_t *result, void *arg)
{
    tool_slot *s = arg;
    gen *g = s->g;
    json_t *resp;
    if (json_is_object(result))
        resp = json_deep_copy(result);
    else if (result)
        resp = json_pack("{s:O}", "result", result);
    else
        resp = json_object();
    if (st != KOKO_OK && !json_object_get(resp, "error"))
        json_object_set_new(resp, "error", json_string("the function failed"));
    json_array_set_new(g->responses, s->index,
                       json_pack("{s:{s:s,s:o}}", "functionResponse", "name", s->name, "response", resp));
    free(s->name);
    free(s);
    if (--g->tools_pending)
        return;
    json_array_append_new(g->turns, json_pack("{s:s,s:O}", "role", "user", "parts", g->responses));
    json_decref(g->responses);
    g->responses = NULL;
    if (g->gm->stopping) {
        gen_finish(g, KOKO_ERR_CANCELLED, "cancelled: the backend is stopping");
        return;
    }
    gen_send(g);
}

static void run_tools(gen *g, const json_t *content, const json_t *calls)
{
    gemini *gm = g->gm;
    g->steps++;
    json_t *model_turn = json_deep_copy(content);
    json_object_set_new(model_turn, "role", json_string("model"));
    if (!g->turns)
        g->turns = json_array();
    json_array_append_new(g->turns, model_turn);
    size_t n = json_array_size(calls);
    g->responses = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(g->responses, json_null());
    g->tools_pending = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *fc = json_array_get(calls, i);
        const char *name = json_string_value(json_object_get(fc, "name"));
        const json_t *args = json_object_get(fc, "args");
        json_t *empty = NULL;
        if (!json_is_object(args))
            args = empty = json_object();
        if (name && strcmp(name, "handoff_to_human") == 0) {
            g->called_handoff = 1;
            const char *why = json_string_value(json_object_get(args, "reason"));
            free(g->handoff_reason);
            g->handoff_reason = llm_asprintf("the model asked for a human: %s", why && *why ? why : "no reason given");
        }
        tool_slot *s = calloc(1, sizeof *s);
        if (!s)
            abort();
        s->g = g;
        s->index = i;
        s->name = llm_strdup(name ? name : "");
        gm->host->log(gm->inst, KOKO_LOG_DEBUG, "gemini: the model calls %s (step %u)", s->name, g->steps);
        gm->host->tool_call(gm->inst, g->req->job, s->name, args, on_tool, s);
        json_decref(empty);
    }
}

/* ---- the answer ---- */

static void on_generated(const llm_response *r, void *arg)
{
    gen *g = arg;
    gemini *gm = g->gm;
    g->call = NULL;
    if (r->st != KOKO_OK) {
        if (g->cache_name && r->status == 404 && !g->cache_retried) {
            /* the cache expired or was deleted behind our back: rebuild it once */
            gm->host->log(gm->inst, KOKO_LOG_WARN, "gemini: %s is gone (404); recreating the context cache",
                          g->cache_name);
            cache_gone(gm, g->req->context_hash, g->cache_name);
            free(g->cache_name);
            g->cache_name = NULL;
            g->cache_retried = 1;
            gen_route(g);
            return;
        }
        gen_finish(g, r->st, r->error);
        return;
    }
    const json_t *doc = r->json;
    const json_t *um = json_object_get(doc, "usageMetadata");
    g->in += (uint64_t)json_integer_value(json_object_get(um, "promptTokenCount"));
    g->cached += (uint64_t)json_integer_value(json_object_get(um, "cachedContentTokenCount"));
    g->out += (uint64_t)json_integer_value(json_object_get(um, "candidatesTokenCount")) +
              (uint64_t)json_integer_value(json_object_get(um, "thoughtsTokenCount"));
    const json_t *cand = json_array_get(json_object_get(doc, "candidates"), 0);
    if (!cand) {
        const char *block = json_string_value(json_object_get(json_object_get(doc, "promptFeedback"), "blockReason"));
        free(g->finish);
        g->finish = llm_strdup(block ? block : "OTHER");
        free(g->text);
        g->text = NULL;
        gen_finish(g, KOKO_OK, NULL);
        return;
    }
    free(g->finish);
    g->finish = llm_strdup(json_string_value(json_object_get(cand, "finishReason")));
    const json_t *content = json_object_get(cand, "content");
    const json_t *parts = json_object_get(content, "parts");
    json_t *calls = json_array();
    size_t tl = 0;
    char *text = NULL;
    size_t i;
    const json_t *p;
    json_array_foreach ((json_t *)parts, i, p) {
        const json_t *fc = json_object_get(p, "functionCall");
        if (json_is_object(fc)) {
            json_array_append(calls, (json_t *)fc);
            continue;
        }
        const char *t = json_string_value(json_object_get(p, "text"));
        if (!t || json_is_true(json_object_get(p, "thought")))
            continue;
        size_t n = strlen(t);
        char *q = realloc(text, tl + n + 1);
        if (!q)
            abort();
        text = q;
        memcpy(text + tl, t, n + 1);
        tl += n;
    }
    if (json_array_size(calls)) {
        if (g->steps >= gm->cfg.max_tool_steps) {
            free(g->text);
            g->text = text;
            g->called_handoff = 1;
            free(g->handoff_reason);
            g->handoff_reason = llm_asprintf("the model still called functions after %u steps (max_tool_steps)",
                                             g->steps);
            json_decref(calls);
            gen_finish(g, KOKO_OK, NULL);
            return;
        }
        free(text);
        run_tools(g, content, calls);
        json_decref(calls);
        return;
    }
    json_decref(calls);
    free(g->text);
    g->text = text;
    gen_finish(g, KOKO_OK, NULL);
}

/* Decide how to send G: through a context cache (maybe after creating it) or plain. */
void gen_route(gen *g)
{
    gemini *gm = g->gm;
    if (gm->stopping) {
        gen_finish_later(g, KOKO_ERR_CANCELLED, "cancelled: the backend is stopping");
        return;
    }
    if (g->whole_kb && gm->cache_enabled && g->req->context_hash && *g->req->context_hash) {
        if (cache_attach(gm, g)) /* 1: G waits for the cache, or was sent through it */
            return;
    }
    gen_send(g);
}

static void gemini_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    gemini *gm = state;
    gen *g = calloc(1, sizeof *g);
    if (!g)
        abort();
    g->gm = gm;
    g->req = req;
    g->done = done;
    g->arg = arg;
    g->whole_kb = req->knowledge && req->knowledge_bytes && req->knowledge_bytes / 4 <= gm->budget_tokens;
    if (KOKO_LLM_IS_TASK(req))
        g->whole_kb = 1; /* no history (gen_send) and no passages either */
    g->next = gm->gens;
    if (gm->gens)
        gm->gens->prev = g;
    gm->gens = g;
    if (gm->stopping) {
        gen_finish_later(g, KOKO_ERR_CANCELLED, "cancelled: the backend is stopping");
        return;
    }
    if (KOKO_LLM_IS_TASK(req)) {
        gen_send(g); /* never through a context cache */
        return;
    }
    gen_route(g);
}

static const koko_llm_ops gemini_ops = {
    .size = sizeof(koko_llm_ops),
    .generate = gemini_generate,
    .cache_info = cache_info,
    .cache_refresh = cache_refresh,
};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE,
    .kind = KOKO_KIND_LLM,
    .name = "gemini",
    .version = "1.0",
    .description = "Google Gemini API: managed context caching, function calling, retries, rate limits, cost",
    .validate = gemini_validate,
    .init = gemini_init,
    .stop = gemini_stop,
    .destroy = gemini_destroy,
    .ops = &gemini_ops,
};
