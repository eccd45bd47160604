/*
 * core/store_backend.h — what core/store.c shares with its two backends
 * (store_sqlite.c, store_redis.c); nothing outside the store includes it.
 *
 * store.c turns each public call into a store_req, hands it to the backend,
 * and owns delivery: a backend finishes a request with store_req_done(),
 * from any thread, and store.c runs the callback later on the loop thread
 * (a pipe wakes the loop). So no user callback ever runs inside SQLite, inside
 * hiredis, or inside the call that submitted it.
 */
#ifndef KOKO_CORE_STORE_BACKEND_H
#define KOKO_CORE_STORE_BACKEND_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef enum store_op {
    SOP_GET, SOP_SET, SOP_SETNX, SOP_DEL, SOP_INCR, SOP_INCRF, SOP_EXPIRE,
    SOP_LPUSH, SOP_LRANGE,
    SOP_HSET, SOP_HGET, SOP_HDEL, SOP_HGETALL,
    SOP_SCAN, SOP_DELPFX,
    SOP_QADD, SOP_QCLAIM, SOP_QACK, SOP_QFAIL, SOP_QDEAD, SOP_QRETRY, SOP_QPENDING, SOP_QEXTEND, SOP_QLIST, SOP_QDROP,
} store_op;

/* One owned item of a result (store_item points into these). */
typedef struct store_ritem {
    char *name, *value, *reason;
    size_t value_len;
    int attempts;
} store_ritem;

typedef struct store_req {
    store *s;
    store_op op;
    char *key;     /* key, prefix, queue id, consumer */
    char *field;   /* hash field, fail reason */
    char *val;     /* value or payload (NUL-terminated copy) */
    size_t val_len;
    int64_t a, b;  /* ttl_ms | delta | start,stop | max_len | lease_ms,max */
    double d;      /* float delta */
    store_cb cb;
    void *arg;

    /* the result, filled by the backend */
    store_status status;
    char *error;
    int found;
    int64_t integer;
    double number;
    char *value;
    size_t value_len;
    store_ritem *items;
    size_t n_items, cap_items;

    void *bdata;   /* backend scratch (Redis scan cursor state) */
    uint64_t t_sent; /* backend: when it went out (monotonic ms) */
    struct store_req *next, *prev; /* backend's in-flight list, then the done list */
} store_req;

typedef struct store_backend_ops {
    const char *name;
    /* Take REQ (loop thread). Must eventually store_req_done() it exactly once. */
    void (*submit)(void *be, store_req *req);
    /* Fail or finish everything taken and free the backend (loop thread).
     * Every request it still holds must be store_req_done() before it returns. */
    void (*close)(void *be);
    int (*healthy)(void *be, char *why, size_t whylen);
} store_backend_ops;

/* Backend constructors: return NULL with ERR set on failure. */
void *store_sqlite_open(store *s, struct event_base *base, const store_options *opt, char *err, size_t errlen);
void *store_redis_open(store *s, struct event_base *base, const store_options *opt, char *err, size_t errlen);
extern const store_backend_ops store_sqlite_ops;
extern const store_backend_ops store_redis_ops;

/* Hand a finished request back (any thread); its callback runs later on the loop. */
void store_req_done(store_req *req);
/* Set the request's failure (status + formatted message). */
void store_req_fail(store_req *req, store_status st, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Result helpers: copy DATA. */
void store_req_set_value(store_req *req, const void *data, size_t len);
store_ritem *store_req_add_item(store_req *req, const char *name, const void *value, size_t len);
/* Sort the result items by name (byte order) and drop repeated names. */
void store_req_sort_items(store_req *req, int unique);

#endif /* KOKO_CORE_STORE_BACKEND_H */
