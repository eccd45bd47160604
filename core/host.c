/*
 * host.c — the koko_host vtable: what plugins may ask of kokod.
 *
 * Each entry checks the instance it is given (magic number) and tags the
 * resource it creates with it, so instance.c can cancel everything an
 * instance left behind before its destroy().
 *
 * The kv_* calls (ABI 1.3) are the store (core/store.h) seen through a
 * namespace: "{tenant}:plugin:{plugin}:{key}". Each call the plugin wants an
 * answer to is linked to its instance; when the instance is drained the
 * host answers those with KOKO_KV_E_CANCELLED from the loop and throws the
 * store's late answer away, so no plugin code runs after destroy().
 */
#include "kokoconf.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "curlfn.h"
#include "instance.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "server.h"
#include "store.h"
#include "util.h"

static koko_instance *checked(koko_instance *inst, const char *fn)
{
    if (!inst || inst->magic != INSTANCE_MAGIC) {
        log_error("host", "%s: called with an invalid instance pointer (plugin bug)", fn);
        return NULL;
    }
    return inst;
}

static void host_log(koko_instance *inst, koko_log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(lvl, checked(inst, "log") ? inst->prefix : "plugin", fmt, ap);
    va_end(ap);
}

static const char *host_getenv(koko_instance *inst, const char *name)
{
    (void)inst;
    return name ? getenv(name) : NULL;
}

static const char *host_tenant(koko_instance *inst)
{
    return checked(inst, "tenant") ? inst->tenant : "";
}

static const char *host_base_dir(koko_instance *inst)
{
    if (!checked(inst, "base_dir") || !inst->kd->current)
        return ".";
    return inst->kd->current->cfg->base_dir;
}

/* ---- HTTP ---- */

struct koko_http {
    koko_http_fn fn;
    void *arg;
    httpc_xfer *x;
};

static void http_done(const httpc_result *r, void *arg)
{
    koko_http *h = arg;
    koko_http_result res = {
        .size = sizeof res,
        .status = r->status,
        .curl_code = r->curl_code,
        .cancelled = r->cancelled,
        .error = r->error,
        .body = r->body,
        .body_len = r->body_len,
        .headers = r->headers,
        .total_ms = r->total_ms,
    };
    h->fn(&res, h->arg);
    free(h);
}

static koko_http *host_http_submit(koko_instance *inst, CURL *easy, struct curl_slist *headers,
                                   koko_http_fn done, void *arg)
{
    if (!checked(inst, "http_submit") || !easy || !done) {
        if (curlfn_loaded() || curlfn_load((char[128]){0}, 128) == 0) {
            curl_slist_free_all(headers);
            if (easy)
                curl_easy_cleanup(easy);
        }
        return NULL;
    }
    koko_http *h = xcalloc(1, sizeof *h);
    h->fn = done;
    h->arg = arg;
    h->x = httpc_submit(inst->kd->http, easy, headers, inst, http_done, h);
    if (!h->x) { /* out of memory or shutting down: DONE will not run */
        free(h);
        return NULL;
    }
    return h;
}

static void host_http_cancel(koko_http *h)
{
    if (h && h->x)
        httpc_cancel(h->x);
}

/* ---- timers ---- */

static void timer_unlink(koko_timer *t)
{
    koko_instance *inst = t->inst;
    if (t->prev)
        t->prev->next = t->next;
    else
        inst->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    koko_timer *t = arg;
    timer_unlink(t);
    koko_timer_fn fn = t->fn;
    void *a = t->arg;
    event_free(t->ev);
    free(t);
    fn(a);
}

static koko_timer *host_timer_start(koko_instance *inst, uint64_t ms, koko_timer_fn fn, void *arg)
{
    if (!checked(inst, "timer_start") || !fn || inst->st == INST_DEAD)
        return NULL;
    koko_timer *t = xcalloc(1, sizeof *t);
    t->inst = inst;
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(inst->kd->base, timer_fire, t);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->ev, &tv);
    t->next = inst->timers;
    if (inst->timers)
        inst->timers->prev = t;
    inst->timers = t;
    return t;
}

static void host_timer_cancel(koko_timer *t)
{
    if (!t)
        return;
    timer_unlink(t);
    event_free(t->ev);
    free(t);
}

/* ---- routes ---- */

static int host_route_add(koko_instance *inst, const char *name, koko_route_fn fn, void *arg)
{
    if (!checked(inst, "route_add") || !fn)
        return -1;
    if (!name)
        name = inst->desc->name;
    if (instance_route(inst, name)) {
        log_error(inst->prefix, "route_add: route \"%s\" registered twice", name);
        return -1;
    }
    inst_route *r = xcalloc(1, sizeof *r);
    r->name = xstrdup(name);
    r->fn = fn;
    r->arg = arg;
    r->next = inst->routes;
    inst->routes = r;
    return 0;
}

/* ---- submit, post ---- */

static void host_submit(koko_instance *inst, const koko_msg *msg, koko_submit_fn done, void *arg)
{
    if (!checked(inst, "submit"))
        return;
    pipeline_submit(inst->kd->pipe, inst, msg, done, arg);
}

static int host_post(koko_instance *inst, koko_post_fn fn, void *arg)
{
    if (!inst || !fn)
        return -1;
    kokod *kd = inst->kd;
    post_item *p = malloc(sizeof *p);
    if (!p)
        return -1;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&kd->post_lock);
    if (kd->posted_tail)
        kd->posted_tail->next = p;
    else
        kd->posted = p;
    kd->posted_tail = p;
    pthread_mutex_unlock(&kd->post_lock);
    event_active(kd->post_ev, EV_READ, 0);
    return 0;
}

static void host_conversation(koko_instance *inst, const char *conversation_id, koko_conv_event ev,
                              const char *detail)
{
    if (!checked(inst, "conversation"))
        return;
    pipeline_conversation(inst->kd->pipe, inst, conversation_id, ev, detail);
}

static void host_tool_call(koko_instance *inst, void *job, const char *name, const json_t *args, koko_tool_fn done,
                           void *arg)
{
    if (!checked(inst, "tool_call"))
        return;
    pipeline_tool_call(inst, job, name, args, done, arg);
}

static const char *host_chunk_excerpt(koko_instance *inst, void *job, size_t i)
{
    if (!checked(inst, "chunk_excerpt"))
        return NULL;
    return pipeline_chunk_excerpt(inst, job, i);
}

/* ---- kv: plugin state in the store ---- */

#define KV_KEY_MAX 512

struct koko_kv {
    koko_instance *owner; /* NULL: nobody to call back (DONE was NULL, or dropped) */
    koko_kv_fn fn;
    void *arg;
    int linked;           /* on owner->kvs: the plugin is owed a callback */
    int cancelled;        /* owner->kv_cancelled counts this one until its callback ran */
    int in_store;         /* the store's callback has not run yet */
    struct event *ev;     /* a deferred answer (no store, or cancelled) */
    koko_kv_status st;
    char *error;
    struct koko_kv *prev, *next;
};

static void kv_unlink(struct koko_kv *op)
{
    koko_instance *inst = op->owner;
    if (!op->linked)
        return;
    if (op->prev)
        op->prev->next = op->next;
    else
        inst->kvs = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = op->next = NULL;
    op->linked = 0;
}

static void kv_free(struct koko_kv *op)
{
    if (op->ev)
        event_free(op->ev);
    free(op->error);
    free(op);
}

static koko_kv_status kv_status_of(store_status st)
{
    switch (st) {
    case STORE_OK:
        return KOKO_KV_OK;
    case STORE_E_UNAVAILABLE:
        return KOKO_KV_E_UNAVAILABLE;
    case STORE_E_CLOSED:
        return KOKO_KV_E_CANCELLED;
    case STORE_E_TYPE:
        return KOKO_KV_E_TYPE;
    default:
        return KOKO_KV_E_IO;
    }
}

/* A deferred answer: no store, or the instance was stopped first. */
static void kv_deferred(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct koko_kv *op = arg;
    koko_instance *inst = op->owner;
    kv_unlink(op);
    if (inst && op->fn) {
        koko_kv_result res = {.size = sizeof res, .status = op->st, .error = op->error};
        op->fn(&res, op->arg);
    }
    if (inst && op->cancelled)
        inst->kv_cancelled--;
    op->owner = NULL;
    event_free(op->ev);
    op->ev = NULL;
    if (!op->in_store)
        kv_free(op);
}

static int kv_defer(struct koko_kv *op, koko_kv_status st, const char *error)
{
    op->st = st;
    free(op->error);
    op->error = xstrdup(error);
    if (!op->ev) {
        op->ev = event_new(op->owner->kd->base, -1, 0, kv_deferred, op);
        if (!op->ev)
            return -1;
    }
    event_active(op->ev, EV_TIMEOUT, 0);
    return 0;
}

static void kv_stored(const store_result *r, void *arg)
{
    struct koko_kv *op = arg;
    op->in_store = 0;
    if (!op->linked) { /* cancelled or nobody to tell: the answer goes nowhere */
        if (!op->ev)
            kv_free(op);
        return;
    }
    kv_unlink(op);
    koko_kv_result res = {
        .size = sizeof res,
        .status = kv_status_of(r->status),
        .error = r->error,
        .found = r->found,
        .integer = r->integer,
        .value = r->value,
        .value_len = r->value_len,
    };
    if (r->status == STORE_E_CLOSED && !res.error)
        res.error = "cancelled: the state store closed";
    op->fn(&res, op->arg);
    kv_free(op);
}

/* The store key of plugin key KEY, or NULL (refused, logged). */
static char *kv_key(koko_instance *inst, const char *fn, const char *key)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > KV_KEY_MAX) {
        log_error(inst->prefix, "%s: the key is %s (1 to %d bytes; plugin bug)", fn, n ? "too long" : "empty",
                  KV_KEY_MAX);
        return NULL;
    }
    char *copy = xstrdup(key);
    char *out = util_asprintf("%s:plugin:%s", inst->tenant, inst->desc->name);
    char *rest = copy, *part;
    /* each ':'-separated part escaped alone: the plugin keeps its structure, never another's keys */
    while ((part = strsep(&rest, ":")) != NULL) {
        char *esc = store_key_part(part);
        char *next = util_asprintf("%s:%s", out, esc);
        free(esc);
        free(out);
        out = next;
    }
    free(copy);
    return out;
}

/* A new call of INST, or NULL when it must be refused. */
static struct koko_kv *kv_start(koko_instance *inst, const char *fn_name, const char *key, koko_kv_fn done,
                                void *arg, char **skey)
{
    if (!checked(inst, fn_name))
        return NULL;
    if (inst->st == INST_DEAD) {
        log_warn(inst->prefix, "%s: refused: the instance is stopped", fn_name);
        return NULL;
    }
    if (!(*skey = kv_key(inst, fn_name, key)))
        return NULL;
    struct koko_kv *op = xcalloc(1, sizeof *op);
    if (done) {
        op->owner = inst;
        op->fn = done;
        op->arg = arg;
        op->linked = 1;
        op->next = inst->kvs;
        if (inst->kvs)
            inst->kvs->prev = op;
        inst->kvs = op;
    }
    return op;
}

/* Hand OP to the store through SUBMIT's result RC. */
static int kv_submitted(koko_instance *inst, struct koko_kv *op, char *skey, int rc)
{
    free(skey);
    if (rc == 0) {
        op->in_store = 1;
        return 0;
    }
    if (!op->linked) {
        kv_free(op);
        return rc == -2 ? 0 : -1;
    }
    if (rc == -2) { /* no store at all: answer later, with a status */
        if (kv_defer(op, KOKO_KV_E_UNAVAILABLE,
                     "kokod has no state store: the value is not kept (check state: in the configuration)") == 0)
            return 0;
    }
    (void)inst;
    kv_unlink(op);
    kv_free(op);
    return -1;
}

static store *kv_store(koko_instance *inst)
{
    return inst->kd ? inst->kd->store : NULL;
}

static int host_kv_get(koko_instance *inst, const char *key, koko_kv_fn done, void *arg)
{
    char *skey = NULL;
    struct koko_kv *op = kv_start(inst, "kv_get", key, done, arg, &skey);
    if (!op)
        return -1;
    store *s = kv_store(inst);
    return kv_submitted(inst, op, skey, s ? store_get(s, skey, kv_stored, op) : -2);
}

static int host_kv_set(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                       koko_kv_fn done, void *arg)
{
    char *skey = NULL;
    struct koko_kv *op = kv_start(inst, "kv_set", key, done, arg, &skey);
    if (!op)
        return -1;
    store *s = kv_store(inst);
    return kv_submitted(inst, op, skey, s ? store_set(s, skey, val ? val : "", val ? len : 0, ttl_ms, kv_stored, op) : -2);
}

static int host_kv_set_nx(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                          koko_kv_fn done, void *arg)
{
    char *skey = NULL;
    struct koko_kv *op = kv_start(inst, "kv_set_nx", key, done, arg, &skey);
    if (!op)
        return -1;
    store *s = kv_store(inst);
    return kv_submitted(inst, op, skey,
                        s ? store_set_nx(s, skey, val ? val : "", val ? len : 0, ttl_ms, kv_stored, op) : -2);
}

static int host_kv_del(koko_instance *inst, const char *key, koko_kv_fn done, void *arg)
{
    char *skey = NULL;
    struct koko_kv *op = kv_start(inst, "kv_del", key, done, arg, &skey);
    if (!op)
        return -1;
    store *s = kv_store(inst);
    return kv_submitted(inst, op, skey, s ? store_del(s, skey, kv_stored, op) : -2);
}

static int host_kv_incr(koko_instance *inst, const char *key, int64_t delta, int64_t ttl_ms, koko_kv_fn done,
                        void *arg)
{
    char *skey = NULL;
    struct koko_kv *op = kv_start(inst, "kv_incr", key, done, arg, &skey);
    if (!op)
        return -1;
    store *s = kv_store(inst);
    return kv_submitted(inst, op, skey, s ? store_incr(s, skey, delta, ttl_ms, kv_stored, op) : -2);
}

size_t host_kv_cancel(koko_instance *inst, int deliver)
{
    size_t n = 0;
    while (inst->kvs) {
        struct koko_kv *op = inst->kvs;
        kv_unlink(op);
        n++;
        if (deliver && (op->ev || kv_defer(op, KOKO_KV_E_CANCELLED, "cancelled: the instance was stopped") == 0)) {
            if (op->ev && op->st != KOKO_KV_E_CANCELLED) { /* a no-store answer already queued */
                op->st = KOKO_KV_E_CANCELLED;
                free(op->error);
                op->error = xstrdup("cancelled: the instance was stopped");
            }
            op->cancelled = 1;
            inst->kv_cancelled++;
            continue;
        }
        op->owner = NULL; /* dropped: nothing calls back */
        if (op->ev) {
            event_free(op->ev);
            op->ev = NULL;
        }
        if (!op->in_store)
            kv_free(op);
    }
    return n;
}

size_t host_kv_pending(const koko_instance *inst)
{
    size_t n = inst->kv_cancelled;
    for (const struct koko_kv *op = inst->kvs; op; op = op->next)
        n++;
    return n;
}

const koko_host core_host = {
    .size = sizeof(koko_host),
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .log = host_log,
    .getenv = host_getenv,
    .tenant = host_tenant,
    .base_dir = host_base_dir,
    .http_submit = host_http_submit,
    .http_cancel = host_http_cancel,
    .timer_start = host_timer_start,
    .timer_cancel = host_timer_cancel,
    .route_add = host_route_add,
    .req_method = server_req_method,
    .req_header = server_req_header,
    .req_body = server_req_body,
    .req_peer = server_req_peer,
    .respond = server_respond,
    .submit = host_submit,
    .post = host_post,
    .conversation = host_conversation,
    .tool_call = host_tool_call,
    .chunk_excerpt = host_chunk_excerpt,
    .kv_get = host_kv_get,
    .kv_set = host_kv_set,
    .kv_set_nx = host_kv_set_nx,
    .kv_del = host_kv_del,
    .kv_incr = host_kv_incr,
};
