/*
 * core/store.c — the store's front end: turns each public call into a
 * store_req for the chosen backend and delivers every result exactly once,
 * later, on the loop thread (see store.h for the contract and
 * store_backend.h for the split). Finished requests are queued under a mutex
 * by whichever thread finished them (SQLite's worker, or the loop itself for
 * Redis) and a byte on a pipe wakes the loop to run their callbacks.
 */
#include "kokoconf.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store_backend.h"
#include "util.h"

struct store {
    struct event_base *base;
    const store_backend_ops *ops;
    void *be;
    int wake[2];
    struct event *wake_ev;
    pthread_mutex_t mu;
    store_req *done_head, *done_tail; /* under mu */
    size_t pending;                   /* accepted, callback not run yet */
    int closing, in_cb, close_requested;
};

/* ---- delivery ---- */

void store_req_done(store_req *req)
{
    store *s = req->s;
    req->next = req->prev = NULL;
    pthread_mutex_lock(&s->mu);
    int was_empty = s->done_head == NULL;
    if (s->done_tail)
        s->done_tail->next = req;
    else
        s->done_head = req;
    s->done_tail = req;
    if (was_empty) {
        ssize_t w = write(s->wake[1], "x", 1);
        (void)w; /* a full pipe already holds a wake-up */
    }
    pthread_mutex_unlock(&s->mu);
}

void store_req_fail(store_req *req, store_status st, const char *fmt, ...)
{
    va_list ap;
    char buf[512];
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    req->status = st;
    free(req->error);
    req->error = xstrdup(buf);
}

void store_req_set_value(store_req *req, const void *data, size_t len)
{
    free(req->value);
    req->value = xmalloc(len + 1);
    if (len)
        memcpy(req->value, data, len);
    req->value[len] = '\0';
    req->value_len = len;
    req->found = 1;
}

store_ritem *store_req_add_item(store_req *req, const char *name, const void *value, size_t len)
{
    if (req->n_items == req->cap_items) {
        req->cap_items = req->cap_items ? req->cap_items * 2 : 8;
        req->items = realloc(req->items, req->cap_items * sizeof *req->items);
        if (!req->items)
            abort();
    }
    store_ritem *it = &req->items[req->n_items++];
    memset(it, 0, sizeof *it);
    it->name = name ? xstrdup(name) : NULL;
    if (value) {
        it->value = xmalloc(len + 1);
        if (len)
            memcpy(it->value, value, len);
        it->value[len] = '\0';
        it->value_len = len;
    }
    return it;
}

static int ritem_cmp(const void *a, const void *b)
{
    const store_ritem *x = a, *y = b;
    return strcmp(x->name ? x->name : "", y->name ? y->name : "");
}

static void ritem_free(store_ritem *it)
{
    free(it->name);
    free(it->value);
    free(it->reason);
}

void store_req_sort_items(store_req *req, int unique)
{
    if (req->n_items < 2)
        return;
    qsort(req->items, req->n_items, sizeof *req->items, ritem_cmp);
    if (!unique)
        return;
    size_t o = 1;
    for (size_t i = 1; i < req->n_items; i++) {
        if (ritem_cmp(&req->items[o - 1], &req->items[i]) == 0)
            ritem_free(&req->items[i]);
        else
            req->items[o++] = req->items[i];
    }
    req->n_items = o;
}

static void req_free(store_req *req)
{
    for (size_t i = 0; i < req->n_items; i++)
        ritem_free(&req->items[i]);
    free(req->items);
    free(req->key);
    free(req->field);
    free(req->val);
    free(req->error);
    free(req->value);
    free(req);
}

static void req_run(store *s, store_req *req)
{
    store_item small[8];
    store_item *items = req->n_items <= 8 ? small : xcalloc(req->n_items, sizeof *items);
    for (size_t i = 0; i < req->n_items; i++) {
        items[i].name = req->items[i].name;
        items[i].value = req->items[i].value;
        items[i].value_len = req->items[i].value_len;
        items[i].attempts = req->items[i].attempts;
        items[i].reason = req->items[i].reason;
    }
    store_result r = {
        .status = req->status,
        .error = req->status == STORE_OK ? NULL : (req->error ? req->error : "store: operation failed"),
        .found = req->found,
        .integer = req->integer,
        .number = req->number,
        .value = req->value,
        .value_len = req->value_len,
        .items = req->n_items ? items : NULL,
        .n_items = req->n_items,
    };
    s->in_cb++;
    req->cb(&r, req->arg);
    s->in_cb--;
    s->pending--;
    if (items != small)
        free(items);
    req_free(req);
}

static store_req *done_pop(store *s)
{
    pthread_mutex_lock(&s->mu);
    store_req *req = s->done_head;
    if (req) {
        s->done_head = req->next;
        if (!s->done_head)
            s->done_tail = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    return req;
}

static void store_do_close(store *s);

/* Results run at most this many per turn of the loop. A batch of thousands
 * (5,000 conversations loaded at once) otherwise started every job, and every
 * outbound connection, before one socket event was seen: the connections'
 * set-up memory was then all freed at once, after the long-lived allocations,
 * and stayed as 3 MB of holes in the heap (bench-llm, malloc_info). */
#define STORE_RESULTS_PER_TURN 64

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    store *s = arg;
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    store_req *req;
    int n = 0;
    while (!s->close_requested && n < STORE_RESULTS_PER_TURN && (req = done_pop(s))) {
        req_run(s, req);
        n++;
    }
    if (s->close_requested) {
        store_do_close(s);
        return;
    }
    if (n == STORE_RESULTS_PER_TURN) {
        pthread_mutex_lock(&s->mu);
        int more = s->done_head != NULL;
        pthread_mutex_unlock(&s->mu);
        if (more) {
            ssize_t w = write(s->wake[1], "x", 1); /* the rest on the next turn, after other events */
            (void)w;
        }
    }
}

/* ---- open / close ---- */

store *store_open(struct event_base *base, const store_options *opt, char *err, size_t errlen)
{
    static const store_options defaults = {0};
    if (!opt)
        opt = &defaults;
    if (!base) {
        snprintf(err, errlen, "store: no event base");
        return NULL;
    }
    store *s = xcalloc(1, sizeof *s);
    s->base = base;
    pthread_mutex_init(&s->mu, NULL);
    if (pipe(s->wake) != 0) {
        snprintf(err, errlen, "store: pipe: %s", strerror(errno));
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NULL;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(s->wake[i], F_SETFL, fcntl(s->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(s->wake[i], F_SETFD, FD_CLOEXEC);
    }
    s->wake_ev = event_new(base, s->wake[0], EV_READ | EV_PERSIST, on_wake, s);
    if (!s->wake_ev || event_add(s->wake_ev, NULL) != 0) {
        snprintf(err, errlen, "store: cannot watch the wake-up pipe");
        goto fail;
    }
    if (opt->redis_url && *opt->redis_url) {
        s->ops = &store_redis_ops;
        s->be = store_redis_open(s, base, opt, err, errlen);
    } else {
        s->ops = &store_sqlite_ops;
        s->be = store_sqlite_open(s, base, opt, err, errlen);
    }
    if (!s->be)
        goto fail;
    return s;
fail:
    if (s->wake_ev)
        event_free(s->wake_ev);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return NULL;
}

static void store_do_close(store *s)
{
    s->closing = 1;
    s->close_requested = 0;
    s->ops->close(s->be);
    s->be = NULL;
    store_req *req;
    while ((req = done_pop(s)))
        req_run(s, req);
    event_free(s->wake_ev);
    close(s->wake[0]);
    close(s->wake[1]);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void store_close(store *s)
{
    if (!s || s->closing)
        return;
    if (s->in_cb) {
        s->close_requested = 1;
        return;
    }
    store_do_close(s);
}

const char *store_backend(const store *s)
{
    return s ? s->ops->name : "none";
}

int store_healthy(const store *s, char *why, size_t whylen)
{
    if (!s || s->closing) {
        if (why && whylen)
            snprintf(why, whylen, "store closed");
        return 0;
    }
    char dummy[8];
    if (!why || !whylen) {
        why = dummy;
        whylen = sizeof dummy;
    }
    return s->ops->healthy(s->be, why, whylen);
}

size_t store_pending(const store *s)
{
    return s ? s->pending : 0;
}

char *store_key_part(const char *part)
{
    static const char hex[] = "0123456789ABCDEF";
    strbuf sb = {0};
    for (const unsigned char *p = (const unsigned char *)(part ? part : ""); *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
            *p == '_' || *p == '@' || *p == '+' || *p == '-') {
            sb_append(&sb, (const char *)p, 1);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            sb_append(&sb, e, 3);
        }
    }
    return sb_take(&sb);
}

/* ---- the calls ---- */

static store_req *req_new(store *s, store_op op, store_cb cb, void *arg)
{
    store_req *req = xcalloc(1, sizeof *req);
    req->s = s;
    req->op = op;
    req->cb = cb;
    req->arg = arg;
    return req;
}

static int submit(store_req *req)
{
    store *s = req->s;
    if (s->closing || s->close_requested) {
        req_free(req);
        return -1;
    }
    s->pending++;
    s->ops->submit(s->be, req);
    return 0;
}

static store_req *mk(store *s, store_op op, const char *key, const char *field, const void *val, size_t len,
                     store_cb cb, void *arg)
{
    if (!s || !cb || s->closing || s->close_requested)
        return NULL;
    store_req *req = req_new(s, op, cb, arg);
    req->key = key ? xstrdup(key) : NULL;
    req->field = field ? xstrdup(field) : NULL;
    if (val || len) {
        req->val = xmalloc(len + 1);
        if (len)
            memcpy(req->val, val, len);
        req->val[len] = '\0';
        req->val_len = len;
    }
    return req;
}

#define NEED(x)                                                                                                \
    do {                                                                                                       \
        if (!(x))                                                                                              \
            return -1;                                                                                         \
    } while (0)

int store_get(store *s, const char *key, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_GET, key, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_set(store *s, const char *key, const void *val, size_t len, int64_t ttl_ms, store_cb cb, void *arg)
{
    NEED(key && (val || !len));
    store_req *r = mk(s, SOP_SET, key, NULL, val ? val : "", len, cb, arg);
    if (!r)
        return -1;
    r->a = ttl_ms > 0 ? ttl_ms : 0;
    return submit(r);
}

int store_set_nx(store *s, const char *key, const void *val, size_t len, int64_t ttl_ms, store_cb cb, void *arg)
{
    NEED(key && (val || !len));
    store_req *r = mk(s, SOP_SETNX, key, NULL, val ? val : "", len, cb, arg);
    if (!r)
        return -1;
    r->a = ttl_ms > 0 ? ttl_ms : 0;
    return submit(r);
}

int store_del(store *s, const char *key, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_DEL, key, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_incr(store *s, const char *key, int64_t delta, int64_t ttl_ms, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_INCR, key, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = ttl_ms > 0 ? ttl_ms : 0;
    r->b = delta;
    return submit(r);
}

int store_incr_float(store *s, const char *key, double delta, int64_t ttl_ms, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_INCRF, key, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = ttl_ms > 0 ? ttl_ms : 0;
    r->d = delta;
    return submit(r);
}

int store_expire(store *s, const char *key, int64_t ttl_ms, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_EXPIRE, key, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = ttl_ms > 0 ? ttl_ms : 0;
    return submit(r);
}

int store_list_push(store *s, const char *key, const void *val, size_t len, int64_t max_len, store_cb cb,
                    void *arg)
{
    NEED(key && (val || !len));
    store_req *r = mk(s, SOP_LPUSH, key, NULL, val ? val : "", len, cb, arg);
    if (!r)
        return -1;
    r->a = max_len > 0 ? max_len : 0;
    return submit(r);
}

int store_list_range(store *s, const char *key, int64_t start, int64_t stop, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_LRANGE, key, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = start;
    r->b = stop;
    return submit(r);
}

int store_hash_set(store *s, const char *key, const char *field, const void *val, size_t len, store_cb cb,
                   void *arg)
{
    NEED(key && field && (val || !len));
    store_req *r = mk(s, SOP_HSET, key, field, val ? val : "", len, cb, arg);
    return r ? submit(r) : -1;
}

int store_hash_get(store *s, const char *key, const char *field, store_cb cb, void *arg)
{
    NEED(key && field);
    store_req *r = mk(s, SOP_HGET, key, field, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_hash_del(store *s, const char *key, const char *field, store_cb cb, void *arg)
{
    NEED(key && field);
    store_req *r = mk(s, SOP_HDEL, key, field, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_hash_getall(store *s, const char *key, store_cb cb, void *arg)
{
    NEED(key);
    store_req *r = mk(s, SOP_HGETALL, key, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_scan_prefix(store *s, const char *prefix, store_cb cb, void *arg)
{
    NEED(prefix);
    store_req *r = mk(s, SOP_SCAN, prefix, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_del_prefix(store *s, const char *prefix, store_cb cb, void *arg)
{
    NEED(prefix);
    store_req *r = mk(s, SOP_DELPFX, prefix, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_add(store *s, const void *payload, size_t len, store_cb cb, void *arg)
{
    NEED(payload || !len);
    store_req *r = mk(s, SOP_QADD, NULL, NULL, payload ? payload : "", len, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_claim(store *s, const char *consumer, int64_t lease_ms, int max, store_cb cb, void *arg)
{
    NEED(consumer && *consumer && lease_ms > 0 && max > 0);
    store_req *r = mk(s, SOP_QCLAIM, consumer, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = lease_ms;
    r->b = max;
    return submit(r);
}

int store_queue_ack(store *s, const char *id, store_cb cb, void *arg)
{
    NEED(id);
    store_req *r = mk(s, SOP_QACK, id, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_extend(store *s, const char *id, const char *consumer, int64_t lease_ms, store_cb cb, void *arg)
{
    NEED(id && consumer && *consumer && lease_ms > 0);
    store_req *r = mk(s, SOP_QEXTEND, id, consumer, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->a = lease_ms;
    return submit(r);
}

int store_queue_fail(store *s, const char *id, const char *reason, store_cb cb, void *arg)
{
    NEED(id);
    store_req *r = mk(s, SOP_QFAIL, id, reason ? reason : "failed", NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_dead(store *s, int max, store_cb cb, void *arg)
{
    NEED(max > 0);
    store_req *r = mk(s, SOP_QDEAD, NULL, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->b = max;
    return submit(r);
}

int store_queue_retry(store *s, const char *dead_id, store_cb cb, void *arg)
{
    NEED(dead_id);
    store_req *r = mk(s, SOP_QRETRY, dead_id, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_list(store *s, int max, store_cb cb, void *arg)
{
    NEED(max > 0);
    store_req *r = mk(s, SOP_QLIST, NULL, NULL, NULL, 0, cb, arg);
    if (!r)
        return -1;
    r->b = max;
    return submit(r);
}

int store_queue_drop_dead(store *s, const char *dead_id, store_cb cb, void *arg)
{
    NEED(dead_id);
    store_req *r = mk(s, SOP_QDROP, dead_id, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}

int store_queue_pending(store *s, store_cb cb, void *arg)
{
    store_req *r = mk(s, SOP_QPENDING, NULL, NULL, NULL, 0, cb, arg);
    return r ? submit(r) : -1;
}
