/*
 * plugins/gemini/cache.c — managed Gemini context caches (cachedContents).
 *
 * One record per context_hash (the core's hash of persona + decisions + KB +
 * tool declarations; the model is fixed per instance). The handle lives in
 * the store (host kv_*, "cache:{model}:{hash}" = {name, model, tokens,
 * created, expires}, TTL until expireTime), so a restarted kokod and every
 * replica reuse one cache; the instance keeps a copy in memory. On first use
 * the store is read; when it holds no live handle the replica takes the
 * "cache-lock:{model}:{hash}" key (kv_set_nx, GEMINI_LOCK_TTL_S) and creates
 * the cache — a replica that loses the race sends that query uncached and
 * looks in the store again GEMINI_LOCK_WAIT_S later. A store that fails
 * degrades to creating per process, with a warning. The cache is created
 * only when its estimated size (JSON bytes / 4) reaches the model's minimum;
 * requests arriving while it is looked up or created wait for it. Using a cache with less than 20 % of its
 * TTL left extends it with PATCH ?updateMask=ttl; an expired one (by its
 * expireTime) or one the API answers 404 for is created again. A new hash
 * whose knowledge differs from a record's (a reload with a new KB) retires
 * that record: its cache is DELETEd and its hash never cached again.
 *
 * Cost: storage is bought ahead — tokens × cache_storage_per_hour × the hours
 * a create or a PATCH adds — and charged to the next answer's cost_usd
 * (gemini.unbilled_storage_usd). An early DELETE is not refunded here, so the
 * figure is an upper bound. usd_saved = tokens served from the cache ×
 * (input − cached_input) − the storage bought for it. Hits, tokens saved
 * and storage bought (token-seconds) are also added to
 * "cache-stats:{model}:{hash}:*" counters (kv_incr), whose totals — every
 * replica, every run — are what cache_info() shows once known, priced with
 * this instance's price table.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gemini.h"

struct gcache {
    gemini *gm;
    char *hash;
    uint64_t kb_fp;     /* hash of the knowledge text: tells a reload from another route */
    json_t *body;       /* the create request without "ttl", kept to recreate and refresh */
    uint64_t est_tokens;
    char *name;         /* cachedContents/…, NULL when there is none */
    char *refresh_old;  /* the name a refresh replaces: DELETEd once the new one exists */
    uint64_t tokens;
    double created, expires, last_used; /* unix seconds */
    double retry_after;
    int uncacheable;    /* below the minimum, or the API refused it: never cached */
    int looking, creating, patching, dead;
    uint64_t hits, tokens_saved;
    double usd_saved, storage_usd;
    int64_t total_hits, total_tokens_saved, total_storage_tok_s; /* store; -1 unknown */
    int64_t unanswered[3]; /* sent to those counters, not answered yet */
    gen *waiters, *waiters_tail;
    grefresh *rf;
    gcache *next;
};

struct grefresh {
    gemini *gm;
    koko_deliver_fn done;
    void *arg;
    int pending;
    koko_status st;
    char *error;
    koko_timer *timer;
    grefresh *next;
};

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void rfc3339(double t, char *buf, size_t n)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- the store ---- */

static int has_kv(const gemini *gm)
{
    return KOKO_HOST_HAS_KV(gm->host);
}

static char *store_key(const gemini *gm, const char *kind, const char *hash, const char *suffix)
{
    return llm_asprintf("%s:%s:%s%s%s", kind, gm->model, hash, suffix ? ":" : "", suffix ? suffix : "");
}

/* Write C's handle: TTL until its expireTime. */
static void store_put(gemini *gm, gcache *c)
{
    if (!has_kv(gm) || !c->name)
        return;
    char created[40], expires[40];
    rfc3339(c->created, created, sizeof created);
    rfc3339(c->expires, expires, sizeof expires);
    json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:s}", "name", c->name, "model", gm->model, "tokens",
                          (json_int_t)c->tokens, "created", created, "expires", expires);
    char *text = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    int64_t ttl = (int64_t)((c->expires - wall_now()) * 1000.0);
    char *key = store_key(gm, "cache", c->hash, NULL);
    if (text && ttl > 0)
        gm->host->kv_set(gm->inst, key, text, strlen(text), ttl, NULL, NULL);
    free(key);
    free(text);
}

static void store_forget(gemini *gm, const char *hash, const char *kind)
{
    if (!has_kv(gm))
        return;
    char *key = store_key(gm, kind, hash, NULL);
    gm->host->kv_del(gm->inst, key, NULL, NULL);
    free(key);
}

static gcache *find(gemini *gm, const char *hash);

typedef struct stat_ctx {
    gemini *gm;
    char *hash;
    int which; /* 0 hits, 1 tokens saved, 2 storage bought in token-seconds */
    int64_t delta;
} stat_ctx;

static int64_t *total_of(gcache *c, int which)
{
    int64_t *t[] = {&c->total_hits, &c->total_tokens_saved, &c->total_storage_tok_s};
    return t[which];
}

static void on_stat(const koko_kv_result *r, void *arg)
{
    stat_ctx *x = arg;
    gcache *c = find(x->gm, x->hash);
    if (c) {
        c->unanswered[x->which] -= x->delta;
        if (r->status == KOKO_KV_OK) /* the store's total, plus what it has not counted yet */
            *total_of(c, x->which) = r->integer + c->unanswered[x->which];
    }
    free(x->hash);
    free(x);
}

/* Add DELTA to C's shared counter WHICH; the answer is the total. */
static void stat_add(gemini *gm, gcache *c, int which, int64_t delta)
{
    static const char *const names[] = {"hits", "tokens_saved", "storage_token_seconds"};
    if (!has_kv(gm))
        return;
    stat_ctx *x = calloc(1, sizeof *x);
    if (!x)
        abort();
    x->gm = gm;
    x->hash = llm_strdup(c->hash);
    x->which = which;
    x->delta = delta;
    char *key = store_key(gm, "cache-stats", c->hash, names[which]);
    if (gm->host->kv_incr(gm->inst, key, delta, (int64_t)GEMINI_STATS_TTL_S * 1000, on_stat, x) != 0) {
        free(x->hash);
        free(x);
    } else {
        c->unanswered[which] += delta;
        if (*total_of(c, which) >= 0)
            *total_of(c, which) += delta;
    }
    free(key);
}

static gcache *find(gemini *gm, const char *hash)
{
    for (gcache *c = gm->caches; c; c = c->next)
        if (!c->dead && strcmp(c->hash, hash) == 0)
            return c;
    return NULL;
}

static int retired(const gemini *gm, const char *hash)
{
    for (size_t i = 0; i < GEMINI_RETIRED_HASHES; i++)
        if (gm->retired[i] && strcmp(gm->retired[i], hash) == 0)
            return 1;
    return 0;
}

static void retire(gemini *gm, const char *hash)
{
    free(gm->retired[gm->retired_next]);
    gm->retired[gm->retired_next] = llm_strdup(hash);
    gm->retired_next = (gm->retired_next + 1) % GEMINI_RETIRED_HASHES;
}

static void unlink_record(gemini *gm, gcache *c);

/* Unlink and free C. */
static void record_free(gcache *c)
{
    unlink_record(c->gm, c);
    json_decref(c->body);
    free(c->hash);
    free(c->name);
    free(c->refresh_old);
    free(c);
}

static void unlink_record(gemini *gm, gcache *c)
{
    for (gcache **pp = &gm->caches; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            return;
        }
}

/* ---- remote operations ---- */

typedef struct del_ctx {
    gemini *gm;
    char *name;
} del_ctx;

static void on_deleted_ctx(const llm_response *r, void *arg)
{
    del_ctx *d = arg;
    if (r->st == KOKO_OK || r->status == 404)
        d->gm->host->log(d->gm->inst, KOKO_LOG_INFO, "gemini: context cache %s deleted", d->name);
    else
        d->gm->host->log(d->gm->inst, KOKO_LOG_WARN,
                         "gemini: deleting context cache %s failed: %s (it expires by itself at its TTL)", d->name,
                         r->error ? r->error : "?");
    free(d->name);
    free(d);
}

static void remote_delete(gemini *gm, const char *name)
{
    del_ctx *d = calloc(1, sizeof *d);
    if (!d)
        abort();
    d->gm = gm;
    d->name = llm_strdup(name);
    char *url = llm_asprintf("%s/v1beta/%s", gm->base_url, name);
    const char *hdrs[] = {gm->key_header, NULL};
    llm_call_start(gm->client, "DELETE", url, hdrs, NULL, 0, "cachedContents.delete", on_deleted_ctx, d);
    free(url);
}

/* Drop record C: delete its cache remotely, retire its hash. It stays in the
 * list, marked dead (invisible to find), until no operation holds it. */
static void drop(gemini *gm, gcache *c, const char *why, int retire_hash)
{
    if (c->name) {
        gm->host->log(gm->inst, KOKO_LOG_INFO, "gemini: deleting context cache %s (%s)", c->name, why);
        remote_delete(gm, c->name);
        free(c->name);
        c->name = NULL;
        store_forget(gm, c->hash, "cache");
    }
    if (c->refresh_old) {
        remote_delete(gm, c->refresh_old);
        free(c->refresh_old);
        c->refresh_old = NULL;
    }
    if (retire_hash)
        retire(gm, c->hash);
    c->dead = 1;
    if (!c->creating && !c->patching && !c->looking)
        record_free(c);
}

static void use(gen *g, gcache *c)
{
    free(g->cache_name);
    g->cache_name = llm_strdup(c->name);
    g->cache_tokens = c->tokens;
}

static void refresh_step(grefresh *rf, koko_status st, const char *error);

static void release_waiters(gcache *c, int with_cache)
{
    gen *g = c->waiters;
    c->waiters = c->waiters_tail = NULL;
    while (g) {
        gen *next = g->wnext;
        g->wnext = NULL;
        if (with_cache)
            use(g, c);
        gen_send(g);
        g = next;
    }
}

static void on_created(const llm_response *r, void *arg)
{
    gcache *c = arg;
    gemini *gm = c->gm;
    c->creating = 0;
    store_forget(gm, c->hash, "cache-lock"); /* ours, or expired: other replicas may look again */
    double now = wall_now();
    grefresh *rf = c->rf;
    c->rf = NULL;
    if (r->st == KOKO_OK) {
        const char *name = json_string_value(json_object_get(r->json, "name"));
        json_int_t tok = json_integer_value(json_object_get(json_object_get(r->json, "usageMetadata"), "totalTokenCount"));
        double exp = llm_parse_rfc3339(json_string_value(json_object_get(r->json, "expireTime")));
        if (!name) {
            gm->host->log(gm->inst, KOKO_LOG_WARN, "gemini: cachedContents.create answered without a name; "
                                                   "sending requests uncached for %d s", GEMINI_CREATE_RETRY_S);
            c->retry_after = now + GEMINI_CREATE_RETRY_S;
            release_waiters(c, 0);
            if (rf)
                refresh_step(rf, KOKO_ERR_TEMPORARY, "cachedContents.create answered without a name");
        } else {
            free(c->name);
            c->name = llm_strdup(name);
            c->tokens = tok > 0 ? (uint64_t)tok : c->est_tokens;
            c->created = now;
            c->expires = exp > 0 ? exp : now + (double)gm->ttl_s;
            /* the TTL asked for is what is billed, whatever the clocks say */
            double usd = llm_storage_cost(&gm->price, c->tokens, (double)gm->ttl_s);
            gm->unbilled_storage_usd += usd;
            c->storage_usd += usd;
            if (!c->dead) {
                store_put(gm, c);
                stat_add(gm, c, 2, (int64_t)c->tokens * gm->ttl_s);
            }
            gm->host->log(gm->inst, KOKO_LOG_INFO,
                          "gemini: context cache %s created (%llu tokens, ttl %ld s, storage %.6f USD)", c->name,
                          (unsigned long long)c->tokens, gm->ttl_s, usd);
            if (c->refresh_old) {
                remote_delete(gm, c->refresh_old);
                free(c->refresh_old);
                c->refresh_old = NULL;
            }
            if (rf)
                refresh_step(rf, KOKO_OK, NULL);
            if (c->dead) { /* superseded while being created: nobody should use it */
                remote_delete(gm, c->name);
                release_waiters(c, 0);
            } else {
                release_waiters(c, 1);
            }
        }
    } else {
        if (r->status == 400) {
            c->uncacheable = 1;
            gm->host->log(gm->inst, KOKO_LOG_WARN, "gemini: the API refused a context cache (%s); this context is sent uncached",
                          r->error);
        } else {
            c->retry_after = now + GEMINI_CREATE_RETRY_S;
            gm->host->log(gm->inst, KOKO_LOG_WARN, "gemini: creating a context cache failed (%s); requests go uncached for %d s",
                          r->error, GEMINI_CREATE_RETRY_S);
        }
        if (c->refresh_old) { /* a refresh that failed keeps the old cache */
            free(c->name);
            c->name = c->refresh_old;
            c->refresh_old = NULL;
            c->retry_after = 0;
            c->uncacheable = 0;
        }
        if (rf)
            refresh_step(rf, r->st, r->error);
        release_waiters(c, c->name != NULL && !c->dead);
    }
    if (c->dead)
        record_free(c);
}

static void create(gemini *gm, gcache *c)
{
    c->creating = 1;
    json_t *body = json_deep_copy(c->body);
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%lds", gm->ttl_s);
    json_object_set_new(body, "ttl", json_string(ttl));
    char *url = llm_asprintf("%s/v1beta/cachedContents", gm->base_url);
    const char *hdrs[] = {gm->key_header, NULL};
    llm_call_start(gm->client, "POST", url, hdrs, body, 0, "cachedContents.create", on_created, c);
    free(url);
    json_decref(body);
}

static void on_patched(const llm_response *r, void *arg)
{
    gcache *c = arg;
    gemini *gm = c->gm;
    c->patching = 0;
    if (c->dead) {
        record_free(c);
        return;
    }
    if (r->st == KOKO_OK) {
        double now = wall_now();
        double exp = llm_parse_rfc3339(json_string_value(json_object_get(r->json, "expireTime")));
        if (exp <= 0)
            exp = now + (double)gm->ttl_s;
        double usd = llm_storage_cost(&gm->price, c->tokens, exp - c->expires);
        gm->unbilled_storage_usd += usd;
        c->storage_usd += usd;
        c->expires = exp;
        store_put(gm, c);
        stat_add(gm, c, 2, (int64_t)c->tokens * llround(exp - c->expires));
        gm->host->log(gm->inst, KOKO_LOG_INFO, "gemini: context cache %s extended by %ld s (storage %.6f USD)",
                      c->name ? c->name : "?", gm->ttl_s, usd);
    } else if (r->status == 404) {
        free(c->name);
        c->name = NULL; /* gone: the next request creates it again */
        store_forget(gm, c->hash, "cache");
    } else {
        gm->host->log(gm->inst, KOKO_LOG_WARN, "gemini: extending context cache %s failed: %s",
                      c->name ? c->name : "?", r->error);
    }
}

static void extend(gemini *gm, gcache *c)
{
    c->patching = 1;
    char ttl[32];
    snprintf(ttl, sizeof ttl, "%lds", gm->ttl_s);
    json_t *body = json_pack("{s:s}", "ttl", ttl);
    char *url = llm_asprintf("%s/v1beta/%s?updateMask=ttl", gm->base_url, c->name);
    const char *hdrs[] = {gm->key_header, NULL};
    llm_call_start(gm->client, "PATCH", url, hdrs, body, 0, "cachedContents.patch", on_patched, c);
    free(url);
    json_decref(body);
}

/* ---- looking in the store before creating ---- */

static void lookup_end(gcache *c, int create_now, int with_cache)
{
    gemini *gm = c->gm;
    c->looking = 0;
    if (c->dead) { /* dropped meanwhile (a reload): nobody uses it */
        release_waiters(c, 0);
        record_free(c);
        return;
    }
    if (create_now) {
        create(gm, c); /* the waiters stay queued for it */
        return;
    }
    release_waiters(c, with_cache);
}

static void on_locked(const koko_kv_result *r, void *arg)
{
    gcache *c = arg;
    gemini *gm = c->gm;
    if (r->status == KOKO_KV_E_CANCELLED) {
        lookup_end(c, 0, 0);
    } else if (r->status != KOKO_KV_OK) {
        gm->host->log(gm->inst, KOKO_LOG_WARN,
                      "gemini: the store failed (%s); creating the context cache without the replicas' lock",
                      r->error ? r->error : "?");
        lookup_end(c, 1, 0);
    } else if (r->integer == 1) {
        lookup_end(c, 1, 0);
    } else { /* another replica is creating it: this query goes uncached */
        gm->host->log(gm->inst, KOKO_LOG_INFO,
                      "gemini: another replica is creating the context cache for %s; sending uncached for %d s",
                      c->hash, GEMINI_LOCK_WAIT_S);
        c->retry_after = wall_now() + GEMINI_LOCK_WAIT_S;
        lookup_end(c, 0, 0);
    }
}

/* Adopt the handle in the store's JSON V when it is live; 1 when adopted. */
static int adopt(gcache *c, const char *v, size_t len)
{
    gemini *gm = c->gm;
    json_t *j = json_loadb(v, len, 0, NULL);
    const char *name = json_string_value(json_object_get(j, "name"));
    const char *model = json_string_value(json_object_get(j, "model"));
    double exp = llm_parse_rfc3339(json_string_value(json_object_get(j, "expires")));
    double created = llm_parse_rfc3339(json_string_value(json_object_get(j, "created")));
    json_int_t tok = json_integer_value(json_object_get(j, "tokens"));
    double now = wall_now(), margin = fmin(5.0, 0.05 * (double)gm->ttl_s);
    int ok = name && model && strcmp(model, gm->model) == 0 && exp > now + margin;
    if (ok) {
        free(c->name);
        c->name = llm_strdup(name);
        c->expires = exp;
        c->created = created > 0 ? created : now;
        c->tokens = tok > 0 ? (uint64_t)tok : c->est_tokens;
        gm->host->log(gm->inst, KOKO_LOG_INFO, "gemini: reusing context cache %s from the store (expires in %.0f s)",
                      c->name, exp - now);
        for (int i = 0; i < 3; i++) /* learn the shared totals */
            stat_add(gm, c, i, 0);
    }
    json_decref(j);
    return ok;
}

static void on_looked_up(const koko_kv_result *r, void *arg)
{
    gcache *c = arg;
    gemini *gm = c->gm;
    if (r->status == KOKO_KV_E_CANCELLED) {
        lookup_end(c, 0, 0);
        return;
    }
    if (r->status != KOKO_KV_OK) {
        gm->host->log(gm->inst, KOKO_LOG_WARN,
                      "gemini: reading the context cache handle from the store failed (%s); creating one here",
                      r->error ? r->error : "?");
        lookup_end(c, 1, 0);
        return;
    }
    if (!c->dead && r->found && adopt(c, r->value, r->value_len)) {
        lookup_end(c, 0, 1);
        return;
    }
    if (c->dead) {
        lookup_end(c, 0, 0);
        return;
    }
    char *key = store_key(gm, "cache-lock", c->hash, NULL);
    char owner[64];
    snprintf(owner, sizeof owner, "pid %ld", (long)getpid());
    if (gm->host->kv_set_nx(gm->inst, key, owner, strlen(owner), (int64_t)GEMINI_LOCK_TTL_S * 1000, on_locked, c) != 0)
        lookup_end(c, 1, 0);
    free(key);
}

/* C has no live handle: look in the store (another replica, an earlier
 * run), else lock and create. The caller queues its request as a waiter. */
static void lookup(gemini *gm, gcache *c)
{
    if (!has_kv(gm)) {
        create(gm, c);
        return;
    }
    c->looking = 1;
    char *key = store_key(gm, "cache", c->hash, NULL);
    int rc = gm->host->kv_get(gm->inst, key, on_looked_up, c);
    free(key);
    if (rc != 0) {
        c->looking = 0;
        create(gm, c);
    }
}

/* ---- attach ---- */

static gcache *record_new(gemini *gm, const koko_llm_request *req)
{
    gcache *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->gm = gm;
    c->total_hits = c->total_tokens_saved = c->total_storage_tok_s = -1;
    c->hash = llm_strdup(req->context_hash);
    c->kb_fp = llm_fnv1a64(req->knowledge, req->knowledge_bytes);
    char *sys = llm_system_text(req, 0);
    char *kb = llm_asprintf("Knowledge base:\n%s", req->knowledge);
    char *model = llm_asprintf("models/%s", gm->model);
    char display[128];
    snprintf(display, sizeof display, "koko %s %s", gm->host->tenant(gm->inst), req->context_hash);
    c->body = json_pack("{s:s,s:s,s:{s:[{s:s}]},s:[{s:s,s:[{s:s}]}]}", "model", model, "displayName", display,
                        "systemInstruction", "parts", "text", sys, "contents", "role", "user", "parts", "text", kb);
    if (json_array_size(req->tools)) {
        json_object_set_new(c->body, "tools", json_pack("[{s:O}]", "functionDeclarations", (json_t *)req->tools));
        json_object_set_new(c->body, "toolConfig", json_pack("{s:{s:s}}", "functionCallingConfig", "mode", "AUTO"));
    }
    free(sys);
    free(kb);
    free(model);
    char *dump = json_dumps(c->body, JSON_COMPACT);
    c->est_tokens = (dump ? strlen(dump) : 0) / 4;
    free(dump);
    if (c->est_tokens < gm->min_tokens) {
        c->uncacheable = 1;
        json_decref(c->body);
        c->body = NULL;
        gm->host->log(gm->inst, KOKO_LOG_INFO,
                      "gemini: context %s is about %llu tokens, below the %llu-token minimum for %s: sent uncached",
                      c->hash, (unsigned long long)c->est_tokens, (unsigned long long)gm->min_tokens, gm->model);
    }
    return c;
}

int cache_attach(gemini *gm, gen *g)
{
    const koko_llm_request *req = g->req;
    if (retired(gm, req->context_hash))
        return 0;
    double now = wall_now();
    gcache *c = find(gm, req->context_hash);
    if (!c) {
        c = record_new(gm, req);
        /* a different knowledge base under a new hash: the KB was reloaded, the old caches go */
        for (gcache *o = gm->caches, *next; o; o = next) {
            next = o->next;
            if (!o->dead && o->kb_fp != c->kb_fp)
                drop(gm, o, "the knowledge base changed", 1);
        }
        c->next = gm->caches;
        gm->caches = c;
        size_t n = 0;
        gcache *lru = NULL;
        for (gcache *o = gm->caches; o; o = o->next) {
            if (o->dead)
                continue;
            n++;
            if (o != c && (!lru || o->last_used < lru->last_used))
                lru = o;
        }
        if (n > GEMINI_MAX_CACHES && lru)
            drop(gm, lru, "least recently used", 0);
    }
    c->last_used = now;
    if (c->uncacheable || now < c->retry_after)
        return 0;
    if (!c->creating && !c->looking) {
        double margin = fmin(5.0, 0.05 * (double)gm->ttl_s);
        if (c->name && now < c->expires - margin) {
            use(g, c);
            if (!c->patching && c->expires - now < 0.2 * (double)gm->ttl_s)
                extend(gm, c);
            gen_send(g);
            return 1;
        }
        if (c->name) {
            gm->host->log(gm->inst, KOKO_LOG_INFO, "gemini: context cache %s expired; creating it again", c->name);
            free(c->name);
            c->name = NULL;
        }
        lookup(gm, c);
        if (!c->looking && !c->creating) { /* decided at once (no store): send as it stands */
            use(g, c);
            if (!c->name)
                return 0;
            gen_send(g);
            return 1;
        }
    }
    g->wnext = NULL;
    if (c->waiters_tail)
        c->waiters_tail->wnext = g;
    else
        c->waiters = g;
    c->waiters_tail = g;
    return 1;
}

void cache_gone(gemini *gm, const char *hash, const char *name)
{
    gcache *c = find(gm, hash);
    if (c && c->name && strcmp(c->name, name) == 0) {
        free(c->name);
        c->name = NULL;
        store_forget(gm, hash, "cache"); /* gone for every replica: the next use creates it again */
    }
}

void cache_account(gemini *gm, const char *hash, uint64_t cached)
{
    gcache *c = hash ? find(gm, hash) : NULL;
    if (!c)
        return;
    c->hits++;
    c->tokens_saved += cached;
    double usd = (double)cached * (gm->price.input - gm->price.cached_input) / 1e6;
    c->usd_saved += usd;
    stat_add(gm, c, 0, 1);
    stat_add(gm, c, 1, (int64_t)cached);
}

json_t *cache_info(void *state)
{
    gemini *gm = state;
    json_t *a = json_array();
    for (gcache *c = gm->caches; c; c = c->next) {
        if (!c->name || c->dead)
            continue;
        char created[40], expires[40];
        rfc3339(c->created, created, sizeof created);
        rfc3339(c->expires, expires, sizeof expires);
        /* totals of every replica and run when the store told them, else this process's */
        int shared = c->total_hits >= 0 && c->total_tokens_saved >= 0 && c->total_storage_tok_s >= 0;
        json_int_t hits = shared ? (json_int_t)c->total_hits : (json_int_t)c->hits;
        json_int_t saved_tok = shared ? (json_int_t)c->total_tokens_saved : (json_int_t)c->tokens_saved;
        /* USD from the shared token counts and this config's prices: no rounding adds up */
        double saved = shared ? (double)c->total_tokens_saved * (gm->price.input - gm->price.cached_input) / 1e6
                              : c->usd_saved;
        double storage = shared ? llm_storage_cost(&gm->price, (uint64_t)c->total_storage_tok_s, 1.0)
                                : c->storage_usd;
        json_array_append_new(
            a, json_pack("{s:s,s:s,s:I,s:s,s:s,s:I,s:I,s:f,s:s,s:f,s:b,s:I}", "name", c->name, "model", gm->model,
                         "tokens", (json_int_t)c->tokens, "created", created, "expires", expires, "hits", hits,
                         "tokens_saved", saved_tok, "usd_saved", saved - storage, "context_hash", c->hash,
                         "storage_usd", storage, "totals_shared", shared, "hits_here", (json_int_t)c->hits));
    }
    return a;
}

/* ---- refresh ---- */

static void refresh_free(grefresh *rf)
{
    gemini *gm = rf->gm;
    for (grefresh **pp = &gm->refreshes; *pp; pp = &(*pp)->next)
        if (*pp == rf) {
            *pp = rf->next;
            break;
        }
    free(rf->error);
    free(rf);
}

static void refresh_report(grefresh *rf)
{
    gemini *gm = rf->gm;
    rf->done(rf->st, rf->st == KOKO_OK ? NULL : rf->error, rf->arg);
    refresh_free(rf);
    if (gm->stopping && !gm->drained_called && !gm->gens && !gm->refreshes &&
        llm_client_outstanding(gm->client) == 0 && gm->drained) {
        gm->drained_called = 1;
        gm->drained(gm->inst);
    }
}

static void refresh_step(grefresh *rf, koko_status st, const char *error)
{
    if (st != KOKO_OK && rf->st == KOKO_OK) {
        rf->st = st;
        rf->error = llm_strdup(error);
    }
    if (--rf->pending == 0)
        refresh_report(rf);
}

static void on_refresh_timer(void *arg)
{
    grefresh *rf = arg;
    rf->timer = NULL;
    refresh_report(rf);
}

void cache_refresh(void *state, koko_deliver_fn done, void *arg)
{
    gemini *gm = state;
    grefresh *rf = calloc(1, sizeof *rf);
    if (!rf)
        abort();
    rf->gm = gm;
    rf->done = done;
    rf->arg = arg;
    rf->next = gm->refreshes;
    gm->refreshes = rf;
    if (gm->stopping) {
        rf->st = KOKO_ERR_CANCELLED;
        rf->error = llm_strdup("cancelled: the backend is stopping");
    } else {
        for (gcache *c = gm->caches; c; c = c->next) {
            if (c->creating || c->looking || c->uncacheable || !c->body || c->dead)
                continue;
            free(c->refresh_old);
            c->refresh_old = c->name; /* requests wait for the new one; the old one is deleted then */
            c->name = NULL;
            c->retry_after = 0;
            c->rf = rf;
            rf->pending++;
            create(gm, c);
        }
        gm->host->log(gm->inst, KOKO_LOG_INFO, "gemini: refreshing %d context cache%s", rf->pending,
                      rf->pending == 1 ? "" : "s");
    }
    if (rf->pending == 0) {
        rf->timer = gm->host->timer_start(gm->inst, 0, on_refresh_timer, rf);
        if (!rf->timer)
            refresh_report(rf);
    }
}

size_t cache_refreshes(const gemini *gm)
{
    size_t n = 0;
    for (grefresh *rf = gm->refreshes; rf; rf = rf->next)
        n++;
    return n;
}

void cache_free_all(gemini *gm)
{
    while (gm->caches)
        record_free(gm->caches);
    while (gm->refreshes)
        refresh_free(gm->refreshes);
    for (size_t i = 0; i < GEMINI_RETIRED_HASHES; i++)
        free(gm->retired[i]);
}
