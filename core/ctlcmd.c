/*
 * ctlcmd.c — what each kokoctl command does inside the daemon.
 */
#include "kokoconf.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "ctlcmd.h"
#include "custmem.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "router.h"
#include "server.h"
#include "store.h"
#include "util.h"

typedef void (*cmd_fn)(struct kokod *kd, ctl_req *q, const json_t *args);

static void cmd_status(kokod *kd, ctl_req *q, const json_t *args)
{
    (void)args;
    json_t *st = kokod_status(kd);
    json_object_set_new(st, "config", json_string(kd->config_path));
    json_object_set_new(st, "pid", json_integer((json_int_t)getpid()));
    if (kd->current) {
        json_object_set_new(st, "listen", json_sprintf("%s:%d", kd->current->cfg->listen_host,
                                                       kd->srv ? server_port(kd->srv) : kd->current->cfg->listen_port));
        json_object_set_new(st, "generation_built_at", json_integer(kd->current->built_at));
    }
    control_ok(q, st);
}

static void cmd_reload(kokod *kd, ctl_req *q, const json_t *args)
{
    (void)args;
    diag *d = diag_new();
    json_t *changes = NULL;
    if (kokod_reload(kd, d, &changes) != 0) {
        json_t *errs = json_array();
        for (size_t i = 0; i < diag_count(d); i++)
            json_array_append_new(errs, json_string(diag_get(d, i)));
        char msg[128];
        snprintf(msg, sizeof msg, "reload refused (%zu problem(s)); generation %llu keeps serving", diag_count(d),
                 (unsigned long long)(kd->current ? kd->current->id : 0));
        control_fail(q, msg, errs);
    } else {
        control_ok(q, changes);
    }
    diag_free(d);
}

static void cmd_plugins(kokod *kd, ctl_req *q, const json_t *args)
{
    (void)args;
    control_ok(q, kokod_plugins(kd));
}

static void cmd_tenants(kokod *kd, ctl_req *q, const json_t *args)
{
    (void)args;
    control_ok(q, kokod_tenants(kd));
}

static tenant *need_tenant(kokod *kd, ctl_req *q, const json_t *args)
{
    const char *name = json_string_value(json_object_get(args, "tenant"));
    if (!name) {
        control_fail(q, "missing tenant name", NULL);
        return NULL;
    }
    tenant *t = gen_tenant(kd->current, name);
    if (!t) {
        char msg[256];
        snprintf(msg, sizeof msg, "unknown tenant \"%s\" (see kokoctl tenants)", name);
        control_fail(q, msg, NULL);
    }
    return t;
}

static void cmd_routes(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (!t)
        return;
    json_t *llm = json_array();
    for (size_t i = 0; i < t->n_chain; i++)
        json_array_append_new(llm, json_string(t->chain[i]->desc->name));
    control_ok(q, json_pack("{s:s,s:o,s:{s:o}}", "tenant", t->name, "routes", router_describe(t->router), "default",
                            "llm", llm));
}

static void cmd_route(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (!t)
        return;
    const char *text = json_string_value(json_object_get(args, "text"));
    const char *lang = json_string_value(json_object_get(args, "language"));
    if (!lang)
        lang = lang_choose(kd->lang, text ? text : "", text ? strlen(text) : 0, NULL, t->languages, t->n_languages);
    route_input in = {.channel = json_string_value(json_object_get(args, "channel")),
                      .inbox = json_string_value(json_object_get(args, "inbox")),
                      .language = lang,
                      .text = text ? text : ""};
    if (!in.channel)
        in.channel = "api";
    size_t idx = 0;
    const route *r = router_match(t->router, &in, &idx);
    control_ok(q, json_pack("{s:s,s:s,s:s,s:o}", "tenant", t->name, "route", r ? r->name : "default", "language",
                            lang ? lang : "", "evaluation", router_explain(t->router, &in)));
}

static void chat_done(const chat_answer *a, void *arg)
{
    ctl_req *q = arg;
    json_t *doc = json_pack("{s:s,s:s,s:O,s:f,s:b,s:s,s:s,s:f}", "reply", a->reply, "language", a->language,
                            "sources", a->sources, "confidence", a->confidence, "handoff", a->handoff, "backend",
                            a->backend, "route", a->route, "latency_ms", a->latency_ms);
    if (a->handoff_reason)
        json_object_set_new(doc, "handoff_reason", json_string(a->handoff_reason));
    if (a->draft)
        json_object_set_new(doc, "draft", json_string(a->draft));
    if (json_array_size(a->attempts))
        json_object_set(doc, "attempts", a->attempts);
    control_ok(q, doc);
}

static void cmd_chat(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (!t)
        return;
    const char *text = json_string_value(json_object_get(args, "message"));
    if (!text || !*text) {
        control_fail(q, "missing message text", NULL);
        return;
    }
    chat_input in = {.tenant = t->name, .text = text,
                     .conversation_id = json_string_value(json_object_get(args, "conversation_id")),
                     .language = json_string_value(json_object_get(args, "language")), .channel = "api"};
    pipeline_chat(kd->pipe, kd->current, &in, chat_done, q);
}

typedef struct stats_q {
    ctl_req *q;
    json_t *counters; /* the totals, for the tenants asked for */
    int days;
} stats_q;

static void stats_daily_done(const json_t *daily, const char *error, void *arg)
{
    stats_q *sq = arg;
    json_t *tenants = json_object();
    const char *name;
    json_t *series;
    json_object_foreach((json_t *)daily, name, series)
    {
        json_t *c = json_object_get(sq->counters, name);
        json_object_set_new(tenants, name, json_pack("{s:o,s:O}", "counters", c ? json_incref(c) : json_object(), "daily", series));
    }
    json_t *doc = json_pack("{s:i,s:o}", "days", sq->days, "tenants", tenants);
    if (error)
        json_object_set_new(doc, "error", json_string(error));
    control_ok(sq->q, doc);
    json_decref(sq->counters);
    free(sq);
}

/* stats: the totals per tenant ({tenant: counters}); with "days" or "tenant" in ARGS,
 * {"days", "tenants": {tenant: {"counters", "daily"}}} with the daily series from the store. */
static void cmd_stats(kokod *kd, ctl_req *q, const json_t *args)
{
    const json_t *jd = json_object_get(args, "days");
    const json_t *jt = json_object_get(args, "tenant");
    if (!jd && !jt) {
        control_ok(q, json_deep_copy(kd->stats));
        return;
    }
    if (jd && (!json_is_integer(jd) || json_integer_value(jd) < 1 || json_integer_value(jd) > KOKOD_DAILY_MAX)) {
        char msg[128];
        snprintf(msg, sizeof msg, "days must be a whole number from 1 to %d", KOKOD_DAILY_MAX);
        control_fail(q, msg, NULL);
        return;
    }
    const tenant *t = jt ? need_tenant(kd, q, args) : NULL;
    if (jt && !t)
        return;
    stats_q *sq = xcalloc(1, sizeof *sq);
    sq->q = q;
    sq->days = jd ? (int)json_integer_value(jd) : 7;
    sq->counters = json_deep_copy(kd->stats);
    kokod_stats_daily(kd, t ? t->name : NULL, sq->days, stats_daily_done, sq);
}

static void cmd_cache(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (t)
        control_ok(q, api_cache_info(t));
}

static void refresh_done(json_t *results, void *arg)
{
    ctl_req *q = arg;
    int ok = 1;
    size_t i;
    json_t *v;
    json_array_foreach(results, i, v) ok &= json_is_true(json_object_get(v, "ok"));
    if (ok)
        control_ok(q, json_pack("{s:O}", "backends", results));
    else
        control_fail(q, "a backend could not rebuild its cache", json_incref(results));
}

static void cmd_cache_refresh(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (t)
        api_cache_refresh(kd, t, refresh_done, q);
}

/* ---- the durable queue: pending count, dead letters, retry ---- */

#define QUEUE_DEAD_MAX 1000

typedef struct queue_q {
    ctl_req *q;
    kokod *kd;
    int max;
    int64_t pending;
} queue_q;

/* A dead letter's payload is a message kokod wrote: show who it was for. */
static json_t *dead_json(const store_item *it)
{
    json_t *d = json_pack("{s:s,s:s,s:i}", "id", it->name ? it->name : "", "reason", it->reason ? it->reason : "",
                          "attempts", it->attempts);
    json_t *pl = it->value ? json_loadb(it->value, it->value_len, 0, NULL) : NULL;
    static const char *const fields[] = {"tenant", "channel", "conversation_id", "msg_id", "text"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        const char *v = json_string_value(json_object_get(pl, fields[i]));
        if (v)
            json_object_set_new(d, fields[i], json_string(v));
    }
    json_decref(pl);
    return d;
}

static void queue_dead_done(const store_result *r, void *arg)
{
    queue_q *qq = arg;
    if (r->status != STORE_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "cannot list the dead letters: %s", r->error ? r->error : "store closed");
        control_fail(qq->q, msg, NULL);
        free(qq);
        return;
    }
    json_t *dead = json_array();
    for (size_t i = 0; i < r->n_items; i++)
        json_array_append_new(dead, dead_json(&r->items[i]));
    char why[512];
    int healthy = kokod_store_healthy(qq->kd, why, sizeof why);
    control_ok(qq->q, json_pack("{s:s,s:b,s:I,s:I,s:o}", "backend", store_backend(qq->kd->store), "healthy", healthy,
                                "pending", (json_int_t)qq->pending, "dead_total", (json_int_t)r->integer, "dead",
                                dead));
    free(qq);
}

static void queue_pending_done(const store_result *r, void *arg)
{
    queue_q *qq = arg;
    if (r->status != STORE_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "cannot count the queue: %s", r->error ? r->error : "store closed");
        control_fail(qq->q, msg, NULL);
        free(qq);
        return;
    }
    qq->pending = r->integer;
    if (!qq->kd->store || store_queue_dead(qq->kd->store, qq->max, queue_dead_done, qq) != 0) {
        control_fail(qq->q, "the state store is closing", NULL);
        free(qq);
    }
}

static void cmd_queue(kokod *kd, ctl_req *q, const json_t *args)
{
    if (!kd->store) {
        control_fail(q, "no state store is open", NULL);
        return;
    }
    json_int_t max = json_integer_value(json_object_get(args, "max"));
    queue_q *qq = xcalloc(1, sizeof *qq);
    qq->q = q;
    qq->kd = kd;
    qq->max = max > 0 && max < QUEUE_DEAD_MAX ? (int)max : QUEUE_DEAD_MAX;
    if (store_queue_pending(kd->store, queue_pending_done, qq) != 0) {
        control_fail(q, "the state store is closing", NULL);
        free(qq);
    }
}

typedef struct retry_q {
    ctl_req *q;
    kokod *kd;
    char *id;
    char *payload; /* the dead letter's, when it was among the first QUEUE_DEAD_MAX */
    size_t len;
} retry_q;

static void retry_q_free(retry_q *rq)
{
    free(rq->id);
    free(rq->payload);
    free(rq);
}

static void queue_retry_done(const store_result *r, void *arg)
{
    retry_q *rq = arg;
    if (r->status == STORE_E_NOTFOUND) {
        control_fail(rq->q, "no such dead letter (see kokoctl queue for their ids)", NULL);
    } else if (r->status != STORE_OK) {
        char msg[600];
        snprintf(msg, sizeof msg, "dead letter not put back: %s", r->error ? r->error : "store closed");
        control_fail(rq->q, msg, NULL);
    } else {
        if (rq->payload && r->value)
            pipeline_requeued(rq->kd->pipe, rq->payload, rq->len, r->value);
        control_ok(rq->q, json_pack("{s:s}", "queued", r->value ? r->value : ""));
    }
    retry_q_free(rq);
}

/* The dead letter's payload first: the retried entry must own its message's dedup key. */
static void queue_retry_found(const store_result *r, void *arg)
{
    retry_q *rq = arg;
    for (size_t i = 0; r->status == STORE_OK && i < r->n_items; i++)
        if (r->items[i].name && strcmp(r->items[i].name, rq->id) == 0 && r->items[i].value) {
            rq->payload = xcalloc(1, r->items[i].value_len + 1);
            memcpy(rq->payload, r->items[i].value, r->items[i].value_len);
            rq->len = r->items[i].value_len;
        }
    if (!rq->kd->store || store_queue_retry(rq->kd->store, rq->id, queue_retry_done, rq) != 0) {
        control_fail(rq->q, "the state store is closing", NULL);
        retry_q_free(rq);
    }
}

static void cmd_queue_retry(kokod *kd, ctl_req *q, const json_t *args)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    if (!id || !*id) {
        control_fail(q, "missing dead-letter id (see kokoctl queue)", NULL);
        return;
    }
    if (!kd->store) {
        control_fail(q, "no state store is open", NULL);
        return;
    }
    retry_q *rq = xcalloc(1, sizeof *rq);
    rq->q = q;
    rq->kd = kd;
    rq->id = xstrdup(id);
    if (store_queue_dead(kd->store, QUEUE_DEAD_MAX, queue_retry_found, rq) != 0) {
        control_fail(q, "the state store is closing", NULL);
        retry_q_free(rq);
    }
}

/* ---- customer memory (custmem.h) ---- */

static void memory_done(int status, json_t *doc, const char *error, void *arg)
{
    ctl_req *q = arg;
    if (status == 200)
        control_ok(q, doc);
    else
        control_fail(q, error ? error : "failed", NULL);
}

static const char *need_contact(ctl_req *q, const json_t *args)
{
    const char *c = json_string_value(json_object_get(args, "contact"));
    if (!c)
        control_fail(q, "missing contact (CHANNEL:ID, e.g. chatwoot:17)", NULL);
    return c;
}

static void cmd_memory_summary(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    if (t)
        custmem_summary(kd, kd->current, t->name, memory_done, q);
}

static void cmd_memory_show(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    const char *c = t ? need_contact(q, args) : NULL;
    if (c)
        custmem_get(kd, t->name, c, memory_done, q);
}

static void cmd_memory_export(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    const char *c = t ? need_contact(q, args) : NULL;
    if (c)
        custmem_export(kd, t->name, c, memory_done, q);
}

static void cmd_memory_forget(kokod *kd, ctl_req *q, const json_t *args)
{
    tenant *t = need_tenant(kd, q, args);
    const char *c = t ? need_contact(q, args) : NULL;
    if (c)
        custmem_forget(kd, t->name, c, memory_done, q);
}

static const struct {
    const char *name;
    cmd_fn fn;
} commands[] = {
    {"cache", cmd_cache}, {"cache_refresh", cmd_cache_refresh},
    {"status", cmd_status}, {"reload", cmd_reload}, {"plugins", cmd_plugins}, {"tenants", cmd_tenants},
    {"routes", cmd_routes}, {"route", cmd_route},   {"chat", cmd_chat},       {"stats", cmd_stats},
    {"queue", cmd_queue},   {"queue_retry", cmd_queue_retry},
    {"memory_summary", cmd_memory_summary}, {"memory_show", cmd_memory_show},
    {"memory_export", cmd_memory_export},   {"memory_forget", cmd_memory_forget},
};

void ctlcmd_dispatch(kokod *kd, ctl_req *q, const char *name, const json_t *args)
{
    if (!kd->current) {
        control_fail(q, "kokod is stopping", NULL);
        return;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(commands[i].name, name) == 0) {
            commands[i].fn(kd, q, args);
            return;
        }
    char msg[512];
    snprintf(msg, sizeof msg, "unknown command \"%s\" (known: status, reload, plugins, tenants, routes, route, chat, stats, cache, cache_refresh, queue, queue_retry, memory_summary, memory_show, memory_export, memory_forget)",
             name);
    control_fail(q, msg, NULL);
}
