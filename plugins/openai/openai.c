/*
 * plugins/openai/openai.c — the `openai` LLM backend: any OpenAI-compatible
 * chat-completions server (OpenAI, Ollama, llama.cpp's server, vLLM).
 *
 * generate() sends POST {base_url}/v1/chat/completions with a system message
 * (persona, rules, standing decisions, reply language, customer facts, and
 * the whole KB when knowledge_bytes/4 fits context_budget_tokens), the
 * history, and the customer's message (with the retrieved passages when the
 * KB is not sent whole). tool_calls run through koko_host.tool_call and are
 * answered with role "tool" messages until the model answers (at most
 * max_tool_steps rounds). Prompt caching is the server's own (OpenAI caches
 * long identical prefixes by itself): usage.prompt_tokens_details.cached_tokens
 * is reported and priced at cached_input. HTTP, retries and the rate limiter:
 * plugins/common/llmcommon.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koko/host.h"
#include "koko/plugin.h"
#include "llmcommon.h"

#define OPENAI_DEFAULT_BUDGET_TOKENS 16000

static const char *const own_keys[] = {"base_url", "model", "api_key", "context_budget_tokens", NULL};

typedef struct openai openai;
typedef struct ogen ogen;

struct ogen {
    openai *oa;
    const koko_llm_request *req;
    koko_llm_fn done;
    void *arg;
    int whole_kb;
    json_t *messages; /* system, history, the message, then tool rounds */
    json_t *results;  /* role "tool" messages of the round in progress */
    size_t tools_pending;
    unsigned steps;
    koko_timer *timer;
    koko_status fin_st;
    char *error;
    uint64_t in, cached, out;
    char *text, *finish, *handoff_reason;
    int refused, called_handoff;
    ogen *prev, *next;
};

struct openai {
    const koko_host *host;
    koko_instance *inst;
    llm_common_cfg cfg;
    llm_client *client;
    char *model, *url;
    char *auth_header; /* "Authorization: Bearer …" or NULL — never logged */
    uint64_t budget_tokens;
    llm_price price;
    ogen *gens;
    int stopping, drained_called;
    koko_drained_fn drained;
};

/* ---- configuration ---- */

static int openai_validate(const json_t *cfg, koko_diag *d)
{
    if (!json_is_object(cfg)) {
        d->error(d, "", "expected an object of settings, got %s", llm_json_kind(cfg));
        return 1;
    }
    int n = 0;
    const char *k;
    json_t *v;
    json_object_foreach ((json_t *)cfg, k, v) {
        int c = llm_cfg_check_common(k, v, d);
        if (c >= 0) {
            n += c;
        } else if (strcmp(k, "base_url") == 0) {
            const char *s = json_string_value(v);
            if (!s || !((strncmp(s, "http://", 7) == 0 && s[7]) || (strncmp(s, "https://", 8) == 0 && s[8]))) {
                d->error(d, k, "expected an http:// or https:// URL such as \"https://api.openai.com\" or "
                               "\"http://127.0.0.1:11434\" (Ollama)");
                n++;
            }
        } else if (strcmp(k, "model") == 0) {
            if (!json_is_string(v) || !json_string_length(v)) {
                d->error(d, k, "expected a model name such as \"gpt-4o-mini\" or \"llama3.1:8b\", got %s",
                         llm_json_kind(v));
                n++;
            }
        } else if (strcmp(k, "api_key") == 0) {
            if (!json_is_string(v)) {
                d->error(d, k, "expected the API key as a string (e.g. api_key: \"${OPENAI_API_KEY}\"), got %s",
                         llm_json_kind(v));
                n++;
            }
        } else if (strcmp(k, "context_budget_tokens") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 10000000) {
                d->error(d, k, "expected a whole number of tokens from 0 to 10000000");
                n++;
            }
        } else {
            llm_cfg_unknown(d, "", k, own_keys);
            n++;
        }
    }
    if (!json_object_get(cfg, "base_url")) {
        d->error(d, "base_url", "missing: the server's URL is required (e.g. \"https://api.openai.com\" or "
                                "\"http://127.0.0.1:11434\" for Ollama)");
        n++;
    }
    if (!json_object_get(cfg, "model")) {
        d->error(d, "model", "missing: the model name is required (e.g. \"gpt-4o-mini\")");
        n++;
    }
    return n;
}

/* ---- life cycle ---- */

static void check_drained(openai *oa)
{
    if (oa->stopping && !oa->drained_called && !oa->gens && llm_client_outstanding(oa->client) == 0 &&
        oa->drained) {
        oa->drained_called = 1;
        oa->drained(oa->inst);
    }
}

static void on_client_idle(void *arg)
{
    check_drained(arg);
}

static void *openai_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    if (host->size < offsetof(koko_host, tool_call) + sizeof host->tool_call) {
        snprintf(err, errlen, "this kokod is too old for the openai plugin (host ABI %u.%u; 1.2 needed for function calling)",
                 host->abi_major, host->abi_minor);
        return NULL;
    }
    const char *base = json_string_value(json_object_get(cfg, "base_url"));
    const char *model = json_string_value(json_object_get(cfg, "model"));
    if (!base || !model) {
        snprintf(err, errlen, "base_url and model are required");
        return NULL;
    }
    openai *oa = calloc(1, sizeof *oa);
    if (!oa) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    oa->host = host;
    oa->inst = inst;
    llm_cfg_load(cfg, &oa->cfg);
    oa->model = llm_strdup(model);
    char *b = llm_strdup(base);
    size_t bl = strlen(b);
    while (bl > 0 && b[bl - 1] == '/')
        b[--bl] = '\0';
    oa->url = llm_asprintf("%s/v1/chat/completions", b);
    free(b);
    const char *key = json_string_value(json_object_get(cfg, "api_key"));
    oa->auth_header = key && *key ? llm_asprintf("Authorization: Bearer %s", key) : NULL;
    const json_t *bt = json_object_get(cfg, "context_budget_tokens");
    oa->budget_tokens = json_is_integer(bt) ? (uint64_t)json_integer_value(bt) : OPENAI_DEFAULT_BUDGET_TOKENS;
    oa->price = llm_price_of(&oa->cfg, oa->model);
    oa->client = llm_client_new(host, inst, &oa->cfg, "openai", on_client_idle, oa);
    if (!oa->client) {
        snprintf(err, errlen, "out of memory");
        llm_cfg_free(&oa->cfg);
        free(oa->model);
        free(oa->url);
        free(oa->auth_header);
        free(oa);
        return NULL;
    }
    if (!oa->price.known)
        host->log(inst, KOKO_LOG_WARN,
                  "openai: no price for model %s in prices: its cost is counted as 0 USD (add prices.%s "
                  "{input, cached_input, output})",
                  oa->model, oa->model);
    host->log(inst, KOKO_LOG_INFO, "openai: model %s at %s, context budget %llu tokens", oa->model, oa->url,
              (unsigned long long)oa->budget_tokens);
    return oa;
}

static void ogen_free(ogen *g)
{
    json_decref(g->messages);
    json_decref(g->results);
    free(g->error);
    free(g->text);
    free(g->finish);
    free(g->handoff_reason);
    free(g);
}

static void openai_stop(void *state, koko_drained_fn drained)
{
    openai *oa = state;
    oa->stopping = 1;
    oa->drained = drained;
    llm_client_stop(oa->client);
    check_drained(oa);
}

static void openai_destroy(void *state)
{
    openai *oa = state;
    while (oa->gens) {
        ogen *g = oa->gens;
        oa->gens = g->next;
        ogen_free(g);
    }
    llm_client_free(oa->client);
    llm_cfg_free(&oa->cfg);
    free(oa->model);
    free(oa->url);
    free(oa->auth_header);
    free(oa);
}

/* ---- generate ---- */

static void gen_finish(ogen *g, koko_status st, const char *error)
{
    openai *oa = g->oa;
    llm_outcome o = {.st = st, .error = error, .text = g->text, .finish = g->finish, .refused = g->refused,
                     .called_handoff = g->called_handoff, .handoff_reason = g->handoff_reason, .model = oa->model,
                     .in = g->in, .cached = g->cached, .out = g->out,
                     .cost_usd = llm_cost(&oa->price, g->in, g->cached, g->out), .whole_kb = g->whole_kb};
    if (g->prev)
        g->prev->next = g->next;
    else
        oa->gens = g->next;
    if (g->next)
        g->next->prev = g->prev;
    llm_answer(g->req, &o, g->done, g->arg);
    ogen_free(g);
    check_drained(oa);
}

static void on_finish_timer(void *arg)
{
    ogen *g = arg;
    g->timer = NULL;
    gen_finish(g, g->fin_st, g->error);
}

static void on_answer(const llm_response *r, void *arg);


/* OpenAI's strict structured outputs want every object closed
 * ("additionalProperties": false); the core's schema leaves that out because
 * Gemini refuses the keyword. A new copy of SCHEMA with it added. */
static json_t *strict_schema(const json_t *schema)
{
    json_t *out = json_deep_copy(schema);
    json_t *stack[64];
    size_t n = 0;
    stack[n++] = out;
    while (n) {
        json_t *o = stack[--n];
        if (!json_is_object(o))
            continue;
        if (json_object_get(o, "properties"))
            json_object_set_new(o, "additionalProperties", json_false());
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v)
        {
            if (strcmp(k, "properties") == 0) {
                const char *pk;
                json_t *pv;
                json_object_foreach(v, pk, pv) if (n < 64) stack[n++] = pv;
            } else if (strcmp(k, "items") == 0 && n < 64) {
                stack[n++] = v;
            }
        }
    }
    return out;
}

static void gen_send(ogen *g)
{
    openai *oa = g->oa;
    const koko_llm_request *req = g->req;
    if (oa->stopping) {
        gen_finish(g, KOKO_ERR_CANCELLED, "cancelled: the backend is stopping");
        return;
    }
    json_t *body = json_pack("{s:s,s:O}", "model", oa->model, "messages", g->messages);
    if (oa->cfg.has_temperature)
        json_object_set_new(body, "temperature", json_real(oa->cfg.temperature));
    if (KOKO_LLM_IS_TASK(req) && req->response_schema)
        json_object_set_new(body, "response_format",
                            json_pack("{s:s,s:{s:s,s:b,s:o}}", "type", "json_schema", "json_schema", "name", "task",
                                      "strict", 1, "schema", strict_schema(req->response_schema)));
    if (json_array_size(req->tools) && !KOKO_LLM_IS_TASK(req)) {
        json_t *tools = json_array();
        size_t i;
        const json_t *d;
        json_array_foreach ((json_t *)req->tools, i, d)
            json_array_append_new(tools, json_pack("{s:s,s:O}", "type", "function", "function", (json_t *)d));
        json_object_set_new(body, "tools", tools);
        json_object_set_new(body, "tool_choice", json_string("auto"));
    }
    const char *hdrs[] = {oa->auth_header, NULL};
    char *dump = json_dumps(body, JSON_COMPACT); /* serialised once: the estimate and what goes out */
    if (dump)
        llm_call_start_text(oa->client, "POST", oa->url, hdrs, dump, strlen(dump) / 4 + 1, "chat.completions",
                            on_answer, g);
    else /* answers (later) that the body cannot be serialised */
        llm_call_start(oa->client, "POST", oa->url, hdrs, body, 1, "chat.completions", on_answer, g);
    json_decref(body);
}

typedef struct tool_slot {
    ogen *g;
    size_t index;
    char *id;
} tool_slot;

static void tool_answered(tool_slot *s, json_t *content)
{
    ogen *g = s->g;
    char *text = json_dumps(content, JSON_COMPACT | JSON_ENCODE_ANY);
    json_array_set_new(g->results, s->index,
                       json_pack("{s:s,s:s,s:s}", "role", "tool", "tool_call_id", s->id, "content", text ? text : "{}"));
    free(text);
    free(s->id);
    free(s);
    if (--g->tools_pending)
        return;
    json_array_extend(g->messages, g->results);
    json_decref(g->results);
    g->results = NULL;
    gen_send(g);
}

static void on_tool(koko_status st, json_t *result, void *arg)
{
    json_t *c = result ? json_deep_copy(result) : json_object();
    if (st != KOKO_OK && json_is_object(c) && !json_object_get(c, "error"))
        json_object_set_new(c, "error", json_string("the function failed"));
    tool_answered(arg, c);
    json_decref(c);
}

static void on_bad_args_timer(void *arg)
{
    json_t *c = json_pack("{s:s}", "error", "the arguments were not a valid JSON object; call the function again");
    tool_answered(arg, c);
    json_decref(c);
}

static void run_tools(ogen *g, const json_t *msg, const json_t *calls)
{
    openai *oa = g->oa;
    g->steps++;
    json_t *turn = json_pack("{s:s,s:O}", "role", "assistant", "tool_calls", (json_t *)calls);
    const json_t *content = json_object_get(msg, "content");
    json_object_set_new(turn, "content", json_is_string(content) ? json_copy((json_t *)content) : json_null());
    json_array_append_new(g->messages, turn);
    size_t n = json_array_size(calls);
    g->results = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(g->results, json_null());
    g->tools_pending = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *tc = json_array_get(calls, i);
        const json_t *fn = json_object_get(tc, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        const json_t *a = json_object_get(fn, "arguments");
        json_t *args = json_is_string(a) ? json_loads(json_string_value(a), 0, NULL)
                                         : json_is_object(a) ? json_incref((json_t *)a) : NULL;
        tool_slot *s = calloc(1, sizeof *s);
        if (!s)
            abort();
        s->g = g;
        s->index = i;
        const char *id = json_string_value(json_object_get(tc, "id"));
        s->id = id ? llm_strdup(id) : llm_asprintf("call_%zu_%u", i, g->steps);
        if (!json_is_object(args)) {
            json_decref(args);
            /* answer from the loop, as a tool would */
            if (!oa->host->timer_start(oa->inst, 0, on_bad_args_timer, s))
                on_bad_args_timer(s);
            continue;
        }
        if (name && strcmp(name, "handoff_to_human") == 0) {
            g->called_handoff = 1;
            const char *why = json_string_value(json_object_get(args, "reason"));
            free(g->handoff_reason);
            g->handoff_reason = llm_asprintf("the model asked for a human: %s", why && *why ? why : "no reason given");
        }
        oa->host->log(oa->inst, KOKO_LOG_DEBUG, "openai: the model calls %s (step %u)", name ? name : "?", g->steps);
        oa->host->tool_call(oa->inst, g->req->job, name ? name : "", args, on_tool, s);
        json_decref(args);
    }
}

static void on_answer(const llm_response *r, void *arg)
{
    ogen *g = arg;
    openai *oa = g->oa;
    if (r->st != KOKO_OK) {
        gen_finish(g, r->st, r->error);
        return;
    }
    const json_t *usage = json_object_get(r->json, "usage");
    g->in += (uint64_t)json_integer_value(json_object_get(usage, "prompt_tokens"));
    g->out += (uint64_t)json_integer_value(json_object_get(usage, "completion_tokens"));
    g->cached += (uint64_t)json_integer_value(
        json_object_get(json_object_get(usage, "prompt_tokens_details"), "cached_tokens"));
    const json_t *choice = json_array_get(json_object_get(r->json, "choices"), 0);
    const json_t *msg = json_object_get(choice, "message");
    free(g->finish);
    g->finish = llm_strdup(json_string_value(json_object_get(choice, "finish_reason")));
    const char *refusal = json_string_value(json_object_get(msg, "refusal"));
    if (refusal && *refusal)
        g->refused = 1;
    const json_t *calls = json_object_get(msg, "tool_calls");
    const char *content = json_string_value(json_object_get(msg, "content"));
    if (json_array_size(calls) && !g->refused) {
        if (g->steps >= oa->cfg.max_tool_steps) {
            free(g->text);
            g->text = llm_strdup(content);
            g->called_handoff = 1;
            free(g->handoff_reason);
            g->handoff_reason =
                llm_asprintf("the model still called functions after %u steps (max_tool_steps)", g->steps);
            gen_finish(g, KOKO_OK, NULL);
            return;
        }
        run_tools(g, msg, calls);
        return;
    }
    free(g->text);
    g->text = llm_strdup(content);
    gen_finish(g, KOKO_OK, NULL);
}

static void openai_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    openai *oa = state;
    ogen *g = calloc(1, sizeof *g);
    if (!g)
        abort();
    g->oa = oa;
    g->req = req;
    g->done = done;
    g->arg = arg;
    g->next = oa->gens;
    if (oa->gens)
        oa->gens->prev = g;
    oa->gens = g;
    g->whole_kb = req->knowledge && req->knowledge_bytes && req->knowledge_bytes / 4 <= oa->budget_tokens;
    int task = KOKO_LLM_IS_TASK(req);
    char *sys = task ? llm_strdup(req->instruction) : llm_system_text(req, 1);
    if (g->whole_kb) {
        char *all = llm_asprintf("%s\nKnowledge base:\n%s", sys, req->knowledge);
        free(sys);
        sys = all;
    }
    if (task)
        g->whole_kb = 1; /* a task: the instruction and the input, nothing else */
    g->messages = json_array();
    json_array_append_new(g->messages, json_pack("{s:s,s:s}", "role", "system", "content", sys));
    free(sys);
    for (size_t i = 0; !task && i < req->n_history; i++) {
        const koko_turn *t = &req->history[i];
        if (!t->text || !*t->text)
            continue;
        const char *role = t->role && strcmp(t->role, "assistant") == 0 ? "assistant" : "user";
        json_array_append_new(g->messages, json_pack("{s:s,s:s}", "role", role, "content", t->text));
    }
    char *user;
    if (g->whole_kb) {
        user = llm_strdup(req->text ? req->text : "");
    } else {
        char *k = llm_chunks_text(req);
        user = llm_asprintf("%s\nCustomer's message:\n%s", k, req->text ? req->text : "");
        free(k);
    }
    json_array_append_new(g->messages, json_pack("{s:s,s:s}", "role", "user", "content", user));
    free(user);
    if (oa->stopping) {
        g->fin_st = KOKO_ERR_CANCELLED;
        g->error = llm_strdup("cancelled: the backend is stopping");
        g->timer = oa->host->timer_start(oa->inst, 0, on_finish_timer, g);
        if (!g->timer)
            on_finish_timer(g);
        return;
    }
    gen_send(g);
}

static const koko_llm_ops openai_ops = {
    .size = sizeof(koko_llm_ops),
    .generate = openai_generate,
};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE,
    .kind = KOKO_KIND_LLM,
    .name = "openai",
    .version = "1.0",
    .description = "OpenAI-compatible chat completions (OpenAI, Ollama, llama.cpp, vLLM): tools, retries, cost",
    .validate = openai_validate,
    .init = openai_init,
    .stop = openai_stop,
    .destroy = openai_destroy,
    .ops = &openai_ops,
};
