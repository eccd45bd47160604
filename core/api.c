/*
 * api.c — JSON endpoints: /health, /api/chat, /query, /projects, /stats,
 * /metrics and the dispatch of /webhook/<tenant>/<name> to plugins.
 */
#include "kokoconf.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "api.h"
#include "custmem.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "util.h"

#define MAX_MESSAGE_BYTES 16384

/* The hot path of load balancers and monitors: one snprintf, no JSON tree. */
void api_health(kokod *kd, koko_request *r)
{
    char body[2048];
    int n = kokod_health(kd, body, sizeof body);
    if (n < 0 || (size_t)n >= sizeof body) {
        server_respond_json(r, 200, kokod_status(kd));
        return;
    }
    server_respond_raw(r, 200, "application/json", body, (size_t)n);
}

static int is_json_ctype(koko_request *r)
{
    const char *ct = server_req_header(r, "Content-Type");
    return ct && strncasecmp(ct, "application/json", 16) == 0 && (ct[16] == '\0' || ct[16] == ';' || ct[16] == ' ');
}

/* Parse the body as a JSON object; answers R with 400 and returns NULL on failure. */
static json_t *body_object(koko_request *r)
{
    if (!is_json_ctype(r)) {
        server_respond_error(r, 400, "Content-Type must be application/json");
        return NULL;
    }
    json_error_t je;
    json_t *doc = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
    if (!doc) {
        server_respond_error(r, 400, "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        server_respond_error(r, 400, "the body must be a JSON object");
        return NULL;
    }
    return doc;
}

typedef struct chat_ctx {
    koko_request *r;
    int legacy; /* /query: add the old context-manager's field names */
    char *tenant;
} chat_ctx;

static double round2(double v) { return (double)(long long)(v * 100 + (v >= 0 ? 0.5 : -0.5)) / 100; }

static void chat_done(const chat_answer *a, void *arg)
{
    chat_ctx *c = arg;
    json_t *doc = json_pack("{s:s,s:s,s:O,s:f,s:b,s:s,s:s,s:f}", "reply", a->reply, "language", a->language,
                            "sources", a->sources, "confidence", round2(a->confidence), "handoff", a->handoff,
                            "backend", a->backend, "route", a->route, "latency_ms",
                            (double)(long long)(a->latency_ms * 1000 + 0.5) / 1000);
    if (a->handoff && a->handoff_reason)
        json_object_set_new(doc, "handoff_reason", json_string(a->handoff_reason));
    if (a->draft)
        json_object_set_new(doc, "draft", json_string(a->draft));
    if (json_array_size(a->attempts))
        json_object_set(doc, "attempts", a->attempts);
    if (c->legacy) {
        json_object_set_new(doc, "project_id", json_string(c->tenant));
        json_object_set_new(doc, "response", json_string(a->reply));
    }
    server_respond_json(c->r, 200, doc);
    free(c->tenant);
    free(c);
}

static void chat_common(kokod *kd, koko_request *r, const char *tenant_key, const char *msg_key, int legacy)
{
    json_t *doc = body_object(r);
    if (!doc)
        return;
    const json_t *jt = json_object_get(doc, tenant_key);
    const json_t *jm = json_object_get(doc, msg_key);
    const json_t *jc = json_object_get(doc, "conversation_id");
    const json_t *jl = json_object_get(doc, "language");
    const json_t *jct = json_object_get(doc, "contact");
    if (!jt || !json_is_string(jt)) {
        server_respond_error(r, 400, "\"%s\" is required and must be a string (the tenant name)", tenant_key);
        goto out;
    }
    if (!gen_tenant(r->gen, json_string_value(jt))) {
        server_respond_error(r, 404, "unknown tenant \"%s\"", json_string_value(jt));
        goto out;
    }
    if (!jm || !json_is_string(jm)) {
        server_respond_error(r, 400, "\"%s\" is required and must be a string", msg_key);
        goto out;
    }
    const char *text = json_string_value(jm);
    size_t tl = strlen(text);
    size_t sp = strspn(text, " \t\r\n");
    if (sp == tl) {
        server_respond_error(r, 400, "\"%s\" is empty", msg_key);
        goto out;
    }
    if (tl > MAX_MESSAGE_BYTES) {
        server_respond_error(r, 400, "\"%s\" is %zu bytes, more than %d", msg_key, tl, MAX_MESSAGE_BYTES);
        goto out;
    }
    if (jl && !json_is_string(jl)) {
        server_respond_error(r, 400, "\"language\" must be a string such as \"hu\"");
        goto out;
    }
    char convbuf[64];
    const char *conv = NULL;
    if (json_is_string(jc)) {
        conv = json_string_value(jc);
    } else if (json_is_integer(jc)) {
        snprintf(convbuf, sizeof convbuf, "%lld", (long long)json_integer_value(jc));
        conv = convbuf;
    } else if (jc && !json_is_null(jc)) {
        server_respond_error(r, 400, "\"conversation_id\" must be a string or a number");
        goto out;
    }
    if (conv && strlen(conv) > 200) {
        server_respond_error(r, 400, "\"conversation_id\" is longer than 200 bytes");
        goto out;
    }
    char why[256];
    if (jct && (!json_is_string(jct) || !custmem_contact_ok(json_string_value(jct), why, sizeof why))) {
        server_respond_error(r, 400, "\"contact\": %s",
                             json_is_string(jct) ? why : "must be a string such as \"chatwoot:17\"");
        goto out;
    }
    server_req_shed(r); /* the answer may take the model's while: keep only what the reply needs */
    chat_ctx *c = xcalloc(1, sizeof *c);
    c->r = r;
    c->legacy = legacy;
    c->tenant = xstrdup(json_string_value(jt));
    chat_input in = {.tenant = c->tenant, .text = text, .conversation_id = conv,
                     .language = jl ? json_string_value(jl) : NULL, .channel = "api",
                     .contact = jct ? json_string_value(jct) : NULL};
    pipeline_chat(kd->pipe, r->gen, &in, chat_done, c);
out:
    json_decref(doc);
}

void api_chat(kokod *kd, koko_request *r) { chat_common(kd, r, "tenant", "message", 0); }

void api_query(kokod *kd, koko_request *r) { chat_common(kd, r, "project_id", "query", 1); }

void api_projects(kokod *kd, koko_request *r)
{
    server_respond_json(r, 200, json_pack("{s:o}", "projects", kokod_tenants(kd)));
}

static double counter(const json_t *t, const char *k) { return json_number_value(json_object_get(t, k)); }

/* /stats's entry for one tenant from its counters C (borrowed). */
static json_t *stats_tenant(json_t *c)
{
    double tq = counter(c, "queries"), ttok = counter(c, "tokens_in") + counter(c, "tokens_out");
    return json_pack("{s:I,s:I,s:f,s:f,s:f,s:O}", "total_queries", (json_int_t)tq, "total_tokens", (json_int_t)ttok,
                     "estimated_cost_usd", counter(c, "cost_usd"), "cache_hit_rate",
                     counter(c, "tokens_in") > 0 ? counter(c, "tokens_cached") / counter(c, "tokens_in") : 0.0,
                     "avg_response_time_ms", tq > 0 ? counter(c, "latency_ms_sum") / tq : 0.0, "counters", c);
}

typedef struct stats_q {
    koko_request *r;
    json_t *doc;
} stats_q;

/* The daily series arrived: each tenant's entry gets its "daily" array, then /stats is answered. */
static void stats_daily_done(const json_t *daily, const char *error, void *arg)
{
    stats_q *sq = arg;
    json_t *tenants = json_object_get(sq->doc, "tenants");
    const char *name;
    json_t *series;
    json_object_foreach((json_t *)daily, name, series)
    {
        json_t *t = json_object_get(tenants, name);
        if (!t) { /* a tenant with nothing counted since the start: zeros */
            json_t *none = json_object();
            t = stats_tenant(none);
            json_decref(none);
            json_object_set_new(tenants, name, t);
        }
        json_object_set(t, "daily", series);
    }
    if (error)
        json_object_set_new(sq->doc, "daily_error", json_string(error));
    server_respond_json(sq->r, 200, sq->doc);
    free(sq);
}

/* GET /stats[?days=N]: the totals (in memory) and, per tenant, the last N days (default 7,
 * at most 90) read back from the store; answered from the store's callback. */
void api_stats(kokod *kd, koko_request *r)
{
    int days = 7;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(r->req));
    if (query) {
        struct evkeyvalq params;
        const char *v = evhttp_parse_query_str(query, &params) == 0 ? evhttp_find_header(&params, "days") : NULL;
        char *end = NULL;
        long n = v ? strtol(v, &end, 10) : days;
        int bad = v && (!*v || *end || n < 1 || n > KOKOD_DAILY_MAX);
        if (bad)
            server_respond_error(r, 400, "days=%s: give a whole number of days from 1 to %d (/stats?days=30)", v,
                                 KOKOD_DAILY_MAX);
        evhttp_clear_headers(&params);
        if (bad)
            return;
        days = (int)n;
    }
    json_t *tenants = json_object();
    double q = 0, tok = 0, cached = 0, tin = 0, lat = 0, cost = 0;
    const char *name;
    json_t *c;
    json_object_foreach(kd->stats, name, c)
    {
        json_object_set_new(tenants, name, stats_tenant(c));
        q += counter(c, "queries");
        tok += counter(c, "tokens_in") + counter(c, "tokens_out");
        cached += counter(c, "tokens_cached");
        tin += counter(c, "tokens_in");
        lat += counter(c, "latency_ms_sum");
        cost += counter(c, "cost_usd");
    }
    stats_q *sq = xcalloc(1, sizeof *sq);
    sq->r = r;
    sq->doc = json_pack("{s:I,s:I,s:f,s:f,s:f,s:i,s:o}", "total_queries", (json_int_t)q, "total_tokens",
                        (json_int_t)tok, "estimated_cost_usd", cost, "cache_hit_rate", tin > 0 ? cached / tin : 0.0,
                        "avg_response_time_ms", q > 0 ? lat / q : 0.0, "days", days, "tenants", tenants);
    kokod_stats_daily(kd, NULL, days, stats_daily_done, sq);
}

void api_metrics(kokod *kd, koko_request *r)
{
    strbuf sb = {0};
    json_t *st = kokod_status(kd);
    sb_printf(&sb, "# HELP koko_up 1 while kokod serves.\n# TYPE koko_up gauge\nkoko_up 1\n");
    sb_printf(&sb, "# HELP koko_generation Current configuration generation.\n# TYPE koko_generation gauge\n"
                   "koko_generation %lld\n", (long long)json_integer_value(json_object_get(st, "generation")));
    sb_printf(&sb, "# HELP koko_uptime_seconds Seconds since start.\n# TYPE koko_uptime_seconds gauge\n"
                   "koko_uptime_seconds %lld\n", (long long)json_integer_value(json_object_get(st, "uptime_s")));
    sb_printf(&sb, "# HELP koko_reloads_total Reloads by outcome.\n# TYPE koko_reloads_total counter\n"
                   "koko_reloads_total{outcome=\"ok\"} %llu\nkoko_reloads_total{outcome=\"failed\"} %llu\n",
              (unsigned long long)kd->reloads_ok, (unsigned long long)kd->reloads_failed);
    json_decref(st);
    sb_printf(&sb, "# HELP koko_events_total Pipeline counters per tenant.\n# TYPE koko_events_total counter\n");
    const char *tn;
    json_t *c;
    json_object_foreach(kd->stats, tn, c)
    {
        const char *k;
        json_t *v;
        json_object_foreach(c, k, v)
        {
            if (strcmp(k, "latency_ms_sum") == 0)
                continue;
            sb_printf(&sb, "koko_events_total{tenant=\"%s\",event=\"%s\"} %.17g\n", tn, k, json_number_value(v));
        }
    }
    sb_printf(&sb, "# HELP koko_latency_ms_sum Sum of answer latencies.\n# TYPE koko_latency_ms_sum counter\n");
    json_object_foreach(kd->stats, tn, c)
        sb_printf(&sb, "koko_latency_ms_sum{tenant=\"%s\"} %.3f\n", tn, counter(c, "latency_ms_sum"));
    server_respond_raw(r, 200, "text/plain; version=0.0.4", sb.buf ? sb.buf : "", sb.len);
    sb_free(&sb);
}

/* /webhook/<tenant>/<name> → the route a plugin instance registered. */
void api_webhook(kokod *kd, koko_request *r)
{
    (void)kd;
    const char *rest = r->path + strlen("/webhook/");
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || !slash[1] || strchr(slash + 1, '/')) {
        server_respond_error(r, 404, "webhook paths are /webhook/<tenant>/<channel>");
        return;
    }
    char tenant_name[128];
    size_t tl = (size_t)(slash - rest);
    if (tl >= sizeof tenant_name) {
        server_respond_error(r, 404, "unknown tenant");
        return;
    }
    memcpy(tenant_name, rest, tl);
    tenant_name[tl] = '\0';
    tenant *t = gen_tenant(r->gen, tenant_name);
    if (!t) {
        server_respond_error(r, 404, "unknown tenant \"%s\"", tenant_name);
        return;
    }
    const char *name = slash + 1;
    koko_instance **lists[] = {t->channels, t->tools, t->backends};
    size_t counts[] = {t->n_channels, t->n_tools, t->n_backends};
    for (size_t l = 0; l < 3; l++)
        for (size_t i = 0; i < counts[l]; i++) {
            const inst_route *ro = instance_route(lists[l][i], name);
            if (ro) {
                ro->fn(r, ro->arg);
                return;
            }
        }
    server_respond_error(r, 404, "tenant \"%s\" has no webhook \"%s\" (is the channel configured?)", tenant_name, name);
}

/* ---- context caches: GET /cache/{tenant}, POST /cache/{tenant}/refresh ---- */

json_t *api_cache_info(const tenant *t)
{
    json_t *caches = json_array();
    for (size_t i = 0; i < t->n_backends; i++) {
        koko_instance *b = t->backends[i];
        const koko_llm_ops *ops = b->desc->ops;
        if (!KOKO_OPS_HAS(ops, koko_llm_ops, cache_info) || !ops->cache_info)
            continue;
        json_t *list = ops->cache_info(b->state);
        size_t k;
        json_t *c;
        json_array_foreach(list, k, c)
        {
            json_object_set_new(c, "backend", json_string(b->desc->name));
            json_array_append(caches, c);
        }
        json_decref(list);
    }
    return json_pack("{s:s,s:o}", "tenant", t->name, "caches", caches);
}

typedef struct refresh {
    int pending;
    json_t *results;
    api_refresh_fn done;
    void *arg;
} refresh;

typedef struct refresh_one {
    refresh *r;
    char *backend;
} refresh_one;

static void refresh_done(koko_status st, const char *error, void *arg)
{
    refresh_one *o = arg;
    refresh *r = o->r;
    json_array_append_new(r->results, json_pack("{s:s,s:b,s:s*}", "backend", o->backend, "ok", st == KOKO_OK,
                                                "error", st == KOKO_OK ? NULL : (error ? error : "failed")));
    free(o->backend);
    free(o);
    if (--r->pending == 0) {
        r->done(r->results, r->arg);
        json_decref(r->results);
        free(r);
    }
}

void api_cache_refresh(kokod *kd, const tenant *t, api_refresh_fn done, void *arg)
{
    refresh *r = xcalloc(1, sizeof *r);
    r->results = json_array();
    r->done = done;
    r->arg = arg;
    r->pending = 1; /* held while starting, so no callback finishes early */
    for (size_t i = 0; i < t->n_backends; i++) {
        koko_instance *b = t->backends[i];
        const koko_llm_ops *ops = b->desc->ops;
        if (!KOKO_OPS_HAS(ops, koko_llm_ops, cache_refresh) || !ops->cache_refresh || b->st == INST_DEAD)
            continue;
        refresh_one *o = xcalloc(1, sizeof *o);
        o->r = r;
        o->backend = xstrdup(b->desc->name);
        r->pending++;
        ops->cache_refresh(b->state, refresh_done, o);
    }
    (void)kd;
    log_info("cache", "%s: context caches refresh requested", t->name);
    if (--r->pending == 0) { /* drop the reference held while starting */
        r->done(r->results, r->arg);
        json_decref(r->results);
        free(r);
    }
}

static void http_refresh_done(json_t *results, void *arg)
{
    koko_request *r = arg;
    int ok = 1;
    size_t i;
    json_t *v;
    json_array_foreach(results, i, v) ok &= json_is_true(json_object_get(v, "ok"));
    server_respond_json(r, ok ? 200 : 502, json_pack("{s:b,s:O}", "refreshed", ok, "backends", results));
}

void api_cache(kokod *kd, koko_request *r)
{
    const char *rest = r->path + strlen("/cache/");
    const char *slash = strchr(rest, '/');
    size_t tl = slash ? (size_t)(slash - rest) : strlen(rest);
    char name[128];
    if (tl == 0 || tl >= sizeof name) {
        server_respond_error(r, 404, "cache paths are /cache/<tenant> and /cache/<tenant>/refresh");
        return;
    }
    memcpy(name, rest, tl);
    name[tl] = '\0';
    const tenant *t = gen_tenant(r->gen, name);
    if (!t) {
        server_respond_error(r, 404, "unknown tenant \"%s\"", name);
        return;
    }
    int is_refresh = slash && strcmp(slash, "/refresh") == 0;
    if (slash && !is_refresh) {
        server_respond_error(r, 404, "no such path: %s", r->path);
        return;
    }
    int post = strcmp(r->method, "POST") == 0;
    if (is_refresh != post) {
        evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", is_refresh ? "POST" : "GET, HEAD");
        server_respond_error(r, 405, "method %s not allowed on %s (allowed: %s)", r->method, r->path,
                             is_refresh ? "POST" : "GET");
        return;
    }
    if (!is_refresh) {
        server_respond_json(r, 200, api_cache_info(t));
        return;
    }
    api_cache_refresh(kd, t, http_refresh_done, r);
}

/* ---- customer memory: /memory/... (custmem.h) ---- */

static void memory_done(int status, json_t *doc, const char *error, void *arg)
{
    koko_request *r = arg;
    if (status == 200)
        server_respond_json(r, 200, doc);
    else
        server_respond_error(r, status, "%s", error ? error : "failed");
}

static void method_not_allowed(koko_request *r, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(r->req), "Allow", allow);
    server_respond_error(r, 405, "method %s not allowed on %s (allowed: %s)", r->method, r->path, allow);
}

/* Percent-decode one path segment [S, S+N) into a new string; NULL when malformed. */
static char *path_segment(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                free(out);
                return NULL;
            }
            char hex[3] = {s[i + 1], s[i + 2], 0};
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end || v <= 0) {
                free(out);
                return NULL;
            }
            out[o++] = (char)v;
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

void api_memory(kokod *kd, koko_request *r)
{
    static const char usage[] = "memory paths are /memory/<tenant>, /memory/<tenant>/customers/<contact>[/export], "
                                "/memory/<tenant>/extract and /memory/<tenant>/forget";
    const char *rest = r->path + strlen("/memory/");
    const char *slash = strchr(rest, '/');
    size_t tl = slash ? (size_t)(slash - rest) : strlen(rest);
    char name[128];
    if (tl == 0 || tl >= sizeof name) {
        server_respond_error(r, 404, "%s", usage);
        return;
    }
    memcpy(name, rest, tl);
    name[tl] = '\0';
    if (!gen_tenant(r->gen, name)) {
        server_respond_error(r, 404, "unknown tenant \"%s\"", name);
        return;
    }
    const char *sub = slash ? slash : "";
    int get = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    int post = strcmp(r->method, "POST") == 0, del = strcmp(r->method, "DELETE") == 0;
    if (!*sub || strcmp(sub, "/") == 0) {
        if (!get) {
            method_not_allowed(r, "GET, HEAD");
            return;
        }
        custmem_summary(kd, r->gen, name, memory_done, r);
        return;
    }
    if (strcmp(sub, "/extract") == 0) {
        if (!post) {
            method_not_allowed(r, "POST");
            return;
        }
        json_t *doc = body_object(r);
        if (doc) {
            custmem_extract(kd, r->gen, name, doc, memory_done, r);
            json_decref(doc);
        }
        return;
    }
    if (strcmp(sub, "/forget") == 0) {
        if (!del) {
            method_not_allowed(r, "DELETE");
            return;
        }
        json_t *doc = body_object(r);
        if (!doc)
            return;
        const json_t *jc = json_object_get(doc, "contact");
        if (!json_is_string(jc))
            server_respond_error(r, 400, "\"contact\" is required: the customer's contact key, e.g. \"chatwoot:17\"");
        else
            custmem_forget(kd, name, json_string_value(jc), memory_done, r);
        json_decref(doc);
        return;
    }
    if (strncmp(sub, "/customers/", 11) == 0 && sub[11]) {
        const char *cs = sub + 11;
        const char *cend = strchr(cs, '/');
        size_t cl = cend ? (size_t)(cend - cs) : strlen(cs);
        const char *tail = cend ? cend : "";
        char *contact = path_segment(cs, cl);
        if (!contact) {
            server_respond_error(r, 400, "the contact in the path is not properly percent-encoded");
            return;
        }
        if (strcmp(tail, "/export") == 0) {
            if (!get)
                method_not_allowed(r, "GET, HEAD");
            else
                custmem_export(kd, name, contact, memory_done, r);
        } else if (!*tail) {
            if (get) {
                custmem_get(kd, name, contact, memory_done, r);
            } else if (post) {
                json_t *doc = body_object(r);
                if (doc) {
                    custmem_put(kd, name, contact, doc, memory_done, r);
                    json_decref(doc);
                }
            } else {
                method_not_allowed(r, "GET, HEAD, POST");
            }
        } else {
            server_respond_error(r, 404, "%s", usage);
        }
        free(contact);
        return;
    }
    server_respond_error(r, 404, "%s", usage);
}
