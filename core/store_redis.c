/*
 * core/store_redis.c — the Redis store backend, for several kokod replicas
 * sharing one Redis: hiredis async with its libevent adapter on the daemon's
 * own event_base (nothing blocks, no thread).
 *
 * Every key is the store key under a prefix ("koko:"). Multi-step operations
 * that must be atomic across replicas (bounded push, increment with TTL, the
 * queue's claim/fail/retry) are Lua scripts. The queue is a Stream with one
 * consumer group: XREADGROUP for new entries, XAUTOCLAIM (min-idle = lease)
 * for entries whose consumer died, the delivery counter of XPENDING as the
 * attempt count, and a second stream for dead letters.
 *
 * When Redis goes away every pending call fails with STORE_E_UNAVAILABLE
 * (never hangs: a command unanswered for timeout_ms drops the connection),
 * the store reports unhealthy, and it reconnects with exponential backoff.
 */
#include "kokoconf.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "store_backend.h"
#include "util.h"

#define BACKOFF_MIN_MS 50
#define MAX_ARGS 12

enum { RS_WAITING, RS_CONNECTING, RS_READY };

typedef struct rd {
    store *s;
    struct event_base *base;
    char *host, *unix_path, *password, *prefix, *group;
    int port, db;
    char where[300]; /* "127.0.0.1:6379 db 0" for messages */
    int max_attempts, timeout_ms, backoff_max_ms, backoff_ms;
    redisAsyncContext *ac;
    int state;
    uint64_t state_since, retry_at;
    char last_err[256];
    const char *drop_reason; /* why we are dropping the connection ourselves */
    struct event *tick, *retry;
    store_req *head, *tail; /* requests with a command out, oldest first */
    char *stream_key, *dead_key;
    int closing;
} rd;

/* State of a prefix scan (and delete). */
typedef struct scan_state {
    char cursor[32];
    char *pattern;
    size_t next_del, deleting;
} scan_state;

/* ---- Lua scripts: atomic on the server, so replicas never interleave ---- */

static const char LUA_INCR[] =
    "local v = redis.call('INCRBY', KEYS[1], ARGV[1]) "
    "if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return v";
static const char LUA_INCRF[] =
    "local v = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]) "
    "if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then "
    "redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return v";
static const char LUA_EXPIRE[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end "
    "if tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) "
    "else redis.call('PERSIST', KEYS[1]) end return 1";
static const char LUA_PUSH[] =
    "local n = redis.call('RPUSH', KEYS[1], ARGV[1]) "
    "local m = tonumber(ARGV[2]) "
    "if m > 0 and n > m then redis.call('LTRIM', KEYS[1], -m, -1) n = m end return n";
#define LUA_PAYLOAD                                                                                            \
    "local function payload(f) for i = 1, #f, 2 do if f[i] == 'p' then return f[i + 1] end end return '' end "
/* KEYS: stream dead; ARGV: group consumer lease max max_attempts */
static const char LUA_CLAIM[] =
    LUA_PAYLOAD
    "local group, consumer = ARGV[1], ARGV[2] "
    "local lease, max, maxatt = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]) "
    "local out = {} local cursor = '0-0' "
    "repeat "
    "  local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, lease, cursor, 'COUNT', max - #out) "
    "  cursor = r[1] "
    "  for _, e in ipairs(r[2]) do "
    "    if e and e[2] then "
    "      local p = redis.call('XPENDING', KEYS[1], group, e[1], e[1], 1) "
    "      local n = p[1][4] "
    "      if n > maxatt then "
    "        redis.call('XADD', KEYS[2], '*', 'p', payload(e[2]), 'id', e[1], 'attempts', n - 1, 'reason', "
    "          'lease expired after ' .. (n - 1) .. ' deliveries (the consumer died or hung each time)') "
    "        redis.call('XACK', KEYS[1], group, e[1]) redis.call('XDEL', KEYS[1], e[1]) "
    "      else out[#out + 1] = {e[1], payload(e[2]), n} end "
    "    end "
    "  end "
    "until cursor == '0-0' or #out >= max "
    "if #out < max then "
    "  local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #out, 'STREAMS', KEYS[1], '>') "
    "  if r then for _, e in ipairs(r[1][2]) do out[#out + 1] = {e[1], payload(e[2]), 1} end end "
    "end "
    "return out";
/* KEYS: stream; ARGV: id */
static const char LUA_ACK[] =
    "redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) return redis.call('XDEL', KEYS[1], ARGV[2])";
/* KEYS: stream dead; ARGV: group id reason max_attempts */
static const char LUA_FAIL[] =
    LUA_PAYLOAD
    "local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) "
    "if #e == 0 then return -1 end "
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) "
    "local n = 0 if #p > 0 then n = p[1][4] end "
    "if n >= tonumber(ARGV[4]) then "
    "  redis.call('XADD', KEYS[2], '*', 'p', payload(e[1][2]), 'id', ARGV[2], 'attempts', n, 'reason', ARGV[3]) "
    "  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) redis.call('XDEL', KEYS[1], ARGV[2]) return 1 end "
    /* release the lease: make the entry look idle for ages, without counting a delivery */
    "if #p > 0 then redis.call('XCLAIM', KEYS[1], ARGV[1], p[1][2], 0, ARGV[2], 'IDLE', 1000000000000, 'JUSTID') end "
    "return 0";
/* KEYS: stream; ARGV: group id consumer. Reset the idle time (the lease)
 * only while CONSUMER still holds ID; JUSTID does not count a delivery. */
static const char LUA_EXTEND[] =
    "local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1) "
    "if #p == 0 or p[1][2] ~= ARGV[3] then return 0 end "
    "redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID') return 1";
/* KEYS: dead (or the stream: every entry not acked); ARGV: max */
static const char LUA_DEAD[] =
    "return {redis.call('XLEN', KEYS[1]), redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1])}";
/* KEYS: stream dead; ARGV: dead id */
static const char LUA_RETRY[] =
    LUA_PAYLOAD
    "local e = redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) "
    "if #e == 0 then return false end "
    "local id = redis.call('XADD', KEYS[1], '*', 'p', payload(e[1][2])) "
    "redis.call('XDEL', KEYS[2], ARGV[1]) return id";

/* ---- the in-flight list ---- */

static void fl_add(rd *b, store_req *req)
{
    req->t_sent = util_now_ms();
    req->next = NULL;
    req->prev = b->tail;
    if (b->tail)
        b->tail->next = req;
    else
        b->head = req;
    b->tail = req;
}

static void fl_del(rd *b, store_req *req)
{
    if (req->prev)
        req->prev->next = req->next;
    else
        b->head = req->next;
    if (req->next)
        req->next->prev = req->prev;
    else
        b->tail = req->prev;
    req->next = req->prev = NULL;
}

static void finish(store_req *req)
{
    scan_state *ss = req->bdata;
    if (ss) {
        free(ss->pattern);
        free(ss);
        req->bdata = NULL;
    }
    store_req_done(req);
}

/* ---- commands ---- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

static char *full_key(rd *b, const char *key)
{
    return util_asprintf("%s%s", b->prefix, key);
}

/* Send ARGC arguments (binary-safe with LENS, NULL lens = strlen) for REQ. */
static void send_cmd(rd *b, store_req *req, int argc, const char **argv, const size_t *lens)
{
    size_t l[MAX_ARGS];
    for (int i = 0; i < argc; i++)
        l[i] = lens && lens[i] != (size_t)-1 ? lens[i] : strlen(argv[i]);
    if (!b->ac || b->state == RS_WAITING) {
        store_req_fail(req, STORE_E_UNAVAILABLE, "store (redis %s): not connected: %s; reconnecting in %llu ms",
                       b->where, b->last_err[0] ? b->last_err : "connection lost",
                       (unsigned long long)(b->retry_at > util_now_ms() ? b->retry_at - util_now_ms() : 0));
        finish(req);
        return;
    }
    if (redisAsyncCommandArgv(b->ac, on_reply, req, argc, argv, l) != REDIS_OK) {
        store_req_fail(req, STORE_E_UNAVAILABLE, "store (redis %s): cannot send: %s", b->where,
                       b->ac->errstr ? b->ac->errstr : "connection closing");
        finish(req);
        return;
    }
    fl_add(b, req);
}

static void send_eval(rd *b, store_req *req, const char *script, int nkeys, int nargs, const char **args,
                      const size_t *lens)
{
    const char *argv[MAX_ARGS];
    size_t l[MAX_ARGS];
    char nk[8];
    snprintf(nk, sizeof nk, "%d", nkeys);
    argv[0] = "EVAL";
    argv[1] = script;
    argv[2] = nk;
    for (int i = 0; i < 3; i++)
        l[i] = (size_t)-1;
    for (int i = 0; i < nargs; i++) {
        argv[3 + i] = args[i];
        l[3 + i] = lens ? lens[i] : (size_t)-1;
    }
    send_cmd(b, req, 3 + nargs, argv, l);
}

static void scan_next(rd *b, store_req *req)
{
    scan_state *ss = req->bdata;
    const char *argv[] = {"SCAN", ss->cursor, "MATCH", ss->pattern, "COUNT", "1000"};
    send_cmd(b, req, 6, argv, NULL);
}

/* Delete the next batch of scanned keys, or finish. */
static void delete_next(rd *b, store_req *req)
{
    scan_state *ss = req->bdata;
    if (ss->next_del >= req->n_items) {
        for (size_t i = 0; i < req->n_items; i++) {
            free(req->items[i].name);
            free(req->items[i].value);
            free(req->items[i].reason);
        }
        req->n_items = 0;
        finish(req);
        return;
    }
    size_t n = req->n_items - ss->next_del;
    if (n > 256)
        n = 256;
    const char **argv = xcalloc(n + 1, sizeof *argv);
    size_t *lens = xcalloc(n + 1, sizeof *lens);
    char **keys = xcalloc(n, sizeof *keys);
    argv[0] = "UNLINK";
    lens[0] = 6;
    for (size_t i = 0; i < n; i++) {
        keys[i] = full_key(b, req->items[ss->next_del + i].name);
        argv[i + 1] = keys[i];
        lens[i + 1] = strlen(keys[i]);
    }
    ss->next_del += n;
    ss->deleting = 1;
    if (!b->ac || b->state == RS_WAITING ||
        redisAsyncCommandArgv(b->ac, on_reply, req, (int)n + 1, argv, lens) != REDIS_OK) {
        store_req_fail(req, STORE_E_UNAVAILABLE, "store (redis %s): connection lost while deleting by prefix",
                       b->where);
        finish(req);
    } else {
        fl_add(b, req);
    }
    for (size_t i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    free(argv);
    free(lens);
}

/* A glob pattern matching exactly the keys that start with PREFIX. */
static char *glob_prefix(const char *prefix)
{
    strbuf sb = {0};
    for (const char *p = prefix; *p; p++) {
        if (strchr("*?[]\\", *p))
            sb_append(&sb, "\\", 1);
        sb_append(&sb, p, 1);
    }
    sb_append(&sb, "*", 1);
    return sb_take(&sb);
}

static void rd_submit(void *be, store_req *req)
{
    rd *b = be;
    char *key = req->key && req->op < SOP_QADD && req->op != SOP_SCAN && req->op != SOP_DELPFX
                    ? full_key(b, req->key)
                    : NULL;
    char n1[32], n2[32], n3[32];
    switch (req->op) {
    case SOP_GET: {
        const char *a[] = {"GET", key};
        send_cmd(b, req, 2, a, NULL);
        break;
    }
    case SOP_SET:
    case SOP_SETNX: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->a);
        const char *a[] = {"SET", key, req->val, "NX", "PX", n1};
        size_t l[] = {(size_t)-1, (size_t)-1, req->val_len, (size_t)-1, (size_t)-1, (size_t)-1};
        if (req->op == SOP_SETNX) {
            send_cmd(b, req, req->a > 0 ? 6 : 4, a, l);
        } else {
            a[3] = "PX";
            a[4] = n1;
            send_cmd(b, req, req->a > 0 ? 5 : 3, a, l);
        }
        break;
    }
    case SOP_DEL: {
        const char *a[] = {"UNLINK", key};
        send_cmd(b, req, 2, a, NULL);
        break;
    }
    case SOP_INCR:
    case SOP_INCRF: {
        if (req->op == SOP_INCR)
            snprintf(n1, sizeof n1, "%lld", (long long)req->b);
        else
            snprintf(n1, sizeof n1, "%.17g", req->d);
        snprintf(n2, sizeof n2, "%lld", (long long)req->a);
        const char *a[] = {key, n1, n2};
        send_eval(b, req, req->op == SOP_INCR ? LUA_INCR : LUA_INCRF, 1, 3, a, NULL);
        break;
    }
    case SOP_EXPIRE: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->a);
        const char *a[] = {key, n1};
        send_eval(b, req, LUA_EXPIRE, 1, 2, a, NULL);
        break;
    }
    case SOP_LPUSH: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->a);
        const char *a[] = {key, req->val, n1};
        size_t l[] = {(size_t)-1, req->val_len, (size_t)-1};
        send_eval(b, req, LUA_PUSH, 1, 3, a, l);
        break;
    }
    case SOP_LRANGE: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->a);
        snprintf(n2, sizeof n2, "%lld", (long long)req->b);
        const char *a[] = {"LRANGE", key, n1, n2};
        send_cmd(b, req, 4, a, NULL);
        break;
    }
    case SOP_HSET: {
        const char *a[] = {"HSET", key, req->field, req->val};
        size_t l[] = {(size_t)-1, (size_t)-1, (size_t)-1, req->val_len};
        send_cmd(b, req, 4, a, l);
        break;
    }
    case SOP_HGET:
    case SOP_HDEL: {
        const char *a[] = {req->op == SOP_HGET ? "HGET" : "HDEL", key, req->field};
        send_cmd(b, req, 3, a, NULL);
        break;
    }
    case SOP_HGETALL: {
        const char *a[] = {"HGETALL", key};
        send_cmd(b, req, 2, a, NULL);
        break;
    }
    case SOP_SCAN:
    case SOP_DELPFX: {
        scan_state *ss = xcalloc(1, sizeof *ss);
        char *pfx = full_key(b, req->key);
        ss->pattern = glob_prefix(pfx);
        free(pfx);
        snprintf(ss->cursor, sizeof ss->cursor, "0");
        req->bdata = ss;
        scan_next(b, req);
        break;
    }
    case SOP_QADD: {
        const char *a[] = {"XADD", b->stream_key, "*", "p", req->val};
        size_t l[] = {(size_t)-1, (size_t)-1, (size_t)-1, (size_t)-1, req->val_len};
        send_cmd(b, req, 5, a, l);
        break;
    }
    case SOP_QCLAIM: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->a);
        snprintf(n2, sizeof n2, "%lld", (long long)req->b);
        snprintf(n3, sizeof n3, "%d", b->max_attempts);
        const char *a[] = {b->stream_key, b->dead_key, b->group, req->key, n1, n2, n3};
        send_eval(b, req, LUA_CLAIM, 2, 7, a, NULL);
        break;
    }
    case SOP_QACK: {
        const char *a[] = {b->stream_key, b->group, req->key};
        send_eval(b, req, LUA_ACK, 1, 3, a, NULL);
        break;
    }
    case SOP_QFAIL: {
        snprintf(n1, sizeof n1, "%d", b->max_attempts);
        const char *a[] = {b->stream_key, b->dead_key, b->group, req->key, req->field, n1};
        send_eval(b, req, LUA_FAIL, 2, 6, a, NULL);
        break;
    }
    case SOP_QEXTEND: {
        const char *a[] = {b->stream_key, b->group, req->key, req->field};
        send_eval(b, req, LUA_EXTEND, 1, 4, a, NULL);
        break;
    }
    case SOP_QDEAD: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->b);
        const char *a[] = {b->dead_key, n1};
        send_eval(b, req, LUA_DEAD, 1, 2, a, NULL);
        break;
    }
    case SOP_QRETRY: {
        const char *a[] = {b->stream_key, b->dead_key, req->key};
        send_eval(b, req, LUA_RETRY, 2, 3, a, NULL);
        break;
    }
    case SOP_QLIST: {
        snprintf(n1, sizeof n1, "%lld", (long long)req->b);
        const char *a[] = {b->stream_key, n1};
        send_eval(b, req, LUA_DEAD, 1, 2, a, NULL);
        break;
    }
    case SOP_QDROP: {
        const char *a[] = {"XDEL", b->dead_key, req->key};
        send_cmd(b, req, 3, a, NULL);
        break;
    }
    case SOP_QPENDING: {
        const char *a[] = {"XLEN", b->stream_key};
        send_cmd(b, req, 2, a, NULL);
        break;
    }
    }
    free(key);
}

/* ---- replies ---- */

static void recreate_group(rd *b);

static int reply_error(rd *b, store_req *req, redisReply *r)
{
    const char *e = r->str ? r->str : "error";
    if (strstr(e, "WRONGTYPE") || strstr(e, "not an integer") || strstr(e, "not a valid float") ||
        strstr(e, "overflow") || strstr(e, "would produce NaN or Infinity")) {
        store_req_fail(req, STORE_E_TYPE, "store (redis %s): key \"%s\": %s", b->where, req->key ? req->key : "",
                       e);
    } else if (strstr(e, "Invalid stream ID")) {
        if (req->op == SOP_QACK) {
            req->integer = 0;
            return 0;
        }
        store_req_fail(req, STORE_E_NOTFOUND, "store: \"%s\" is not a queue entry id", req->key);
    } else if (strstr(e, "NOGROUP")) {
        recreate_group(b);
        store_req_fail(req, STORE_E_UNAVAILABLE,
                       "store (redis %s): the queue's consumer group was missing (Redis lost its data?); "
                       "recreated it, retry",
                       b->where);
    } else if (!strncmp(e, "LOADING", 7) || !strncmp(e, "NOAUTH", 6) || !strncmp(e, "BUSY", 4)) {
        store_req_fail(req, STORE_E_UNAVAILABLE, "store (redis %s): %s", b->where, e);
    } else {
        store_req_fail(req, STORE_E_IO, "store (redis %s): %s", b->where, e);
    }
    return -1;
}

static int bad_reply(rd *b, store_req *req, redisReply *r)
{
    store_req_fail(req, STORE_E_IO, "store (redis %s): unexpected reply type %d to operation %d", b->where, r->type,
                   (int)req->op);
    return -1;
}

static const char *field_of(redisReply *fields, const char *name, size_t *len)
{
    if (fields->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING && !strcmp(fields->element[i]->str, name)) {
            if (len)
                *len = fields->element[i + 1]->len;
            return fields->element[i + 1]->str;
        }
    return NULL;
}

/* Fill REQ from R; 1 when more commands went out for it, 0 when done, -1 on failure. */
static int handle(rd *b, store_req *req, redisReply *r)
{
    if (r->type == REDIS_REPLY_ERROR)
        return reply_error(b, req, r);
    switch (req->op) {
    case SOP_GET:
    case SOP_HGET:
        if (r->type == REDIS_REPLY_STRING)
            store_req_set_value(req, r->str, r->len);
        else if (r->type != REDIS_REPLY_NIL)
            return bad_reply(b, req, r);
        return 0;
    case SOP_SET:
    case SOP_SETNX:
        req->integer = r->type == REDIS_REPLY_STATUS;
        return 0;
    case SOP_DEL:
    case SOP_INCR:
    case SOP_EXPIRE:
    case SOP_LPUSH:
    case SOP_HSET:
    case SOP_HDEL:
    case SOP_QACK:
    case SOP_QPENDING:
    case SOP_QEXTEND:
    case SOP_QDROP:
        if (r->type != REDIS_REPLY_INTEGER)
            return bad_reply(b, req, r);
        req->integer = r->integer;
        req->number = (double)r->integer;
        return 0;
    case SOP_INCRF:
        if (r->type != REDIS_REPLY_STRING)
            return bad_reply(b, req, r);
        req->number = strtod(r->str, NULL);
        return 0;
    case SOP_LRANGE:
        if (r->type != REDIS_REPLY_ARRAY)
            return bad_reply(b, req, r);
        for (size_t i = 0; i < r->elements; i++)
            store_req_add_item(req, NULL, r->element[i]->str ? r->element[i]->str : "", r->element[i]->len);
        return 0;
    case SOP_HGETALL:
        if (r->type != REDIS_REPLY_ARRAY)
            return bad_reply(b, req, r);
        for (size_t i = 0; i + 1 < r->elements; i += 2)
            store_req_add_item(req, r->element[i]->str, r->element[i + 1]->str ? r->element[i + 1]->str : "",
                               r->element[i + 1]->len);
        store_req_sort_items(req, 0);
        return 0;
    case SOP_SCAN:
    case SOP_DELPFX: {
        scan_state *ss = req->bdata;
        if (ss->deleting) {
            if (r->type == REDIS_REPLY_INTEGER)
                req->integer += r->integer;
            delete_next(b, req);
            return 1;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[1]->type != REDIS_REPLY_ARRAY)
            return bad_reply(b, req, r);
        size_t plen = strlen(b->prefix);
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            redisReply *k = r->element[1]->element[i];
            if (k->type != REDIS_REPLY_STRING || k->len < plen)
                continue;
            if (!strcmp(k->str, b->stream_key) || !strcmp(k->str, b->dead_key))
                continue; /* the queue is not tenant data */
            store_req_add_item(req, k->str + plen, NULL, 0);
        }
        snprintf(ss->cursor, sizeof ss->cursor, "%s", r->element[0]->str ? r->element[0]->str : "0");
        if (strcmp(ss->cursor, "0") != 0) {
            scan_next(b, req);
            return 1;
        }
        store_req_sort_items(req, 1);
        if (req->op == SOP_DELPFX) {
            delete_next(b, req);
            return 1;
        }
        return 0;
    }
    case SOP_QADD:
    case SOP_QRETRY:
        if (req->op == SOP_QRETRY && r->type == REDIS_REPLY_NIL) {
            store_req_fail(req, STORE_E_NOTFOUND, "store: there is no dead letter %s", req->key);
            return -1;
        }
        if (r->type != REDIS_REPLY_STRING)
            return bad_reply(b, req, r);
        store_req_set_value(req, r->str, r->len);
        req->found = 0;
        return 0;
    case SOP_QCLAIM:
        if (r->type != REDIS_REPLY_ARRAY)
            return bad_reply(b, req, r);
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 3)
                continue;
            store_ritem *it = store_req_add_item(req, e->element[0]->str, e->element[1]->str ? e->element[1]->str : "",
                                                 e->element[1]->len);
            it->attempts = (int)e->element[2]->integer;
        }
        return 0;
    case SOP_QFAIL:
        if (r->type != REDIS_REPLY_INTEGER)
            return bad_reply(b, req, r);
        if (r->integer < 0) {
            store_req_fail(req, STORE_E_NOTFOUND, "store: queue entry %s is not in the queue (acked or dead already)",
                           req->key);
            return -1;
        }
        req->integer = r->integer;
        return 0;
    case SOP_QDEAD:
    case SOP_QLIST:
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[1]->type != REDIS_REPLY_ARRAY)
            return bad_reply(b, req, r);
        req->integer = r->element[0]->integer;
        for (size_t i = 0; i < r->element[1]->elements; i++) {
            redisReply *e = r->element[1]->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
                continue;
            size_t plen = 0;
            const char *p = field_of(e->element[1], "p", &plen);
            const char *att = field_of(e->element[1], "attempts", NULL);
            const char *why = field_of(e->element[1], "reason", NULL);
            store_ritem *it = store_req_add_item(req, e->element[0]->str, p ? p : "", p ? plen : 0);
            it->attempts = att ? atoi(att) : 0;
            it->reason = xstrdup(why ? why : "");
        }
        return 0;
    }
    return bad_reply(b, req, r);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    rd *b = ac->data;
    store_req *req = priv;
    fl_del(b, req);
    if (!reply) {
        if (b->closing)
            store_req_fail(req, STORE_E_CLOSED, "store: closed before Redis answered");
        else
            store_req_fail(req, STORE_E_UNAVAILABLE, "store (redis %s): connection lost before the reply (%s)",
                           b->where, b->drop_reason ? b->drop_reason : ac->errstr[0] ? ac->errstr : "disconnected");
        finish(req);
        return;
    }
    if (handle(b, req, reply) != 1)
        finish(req);
}

/* ---- connection management ---- */

static void connect_now(rd *b);

static void set_state(rd *b, int st)
{
    b->state = st;
    b->state_since = util_now_ms();
}

/* The connection is gone (AC already freed or being freed by hiredis). */
static void conn_lost(rd *b, const char *why)
{
    b->ac = NULL;
    if (why && *why)
        snprintf(b->last_err, sizeof b->last_err, "%s", why);
    if (b->closing)
        return;
    int was_ready = b->state == RS_READY;
    set_state(b, RS_WAITING);
    if (was_ready)
        log_warn("store", "redis %s: connection lost (%s); reconnecting", b->where, b->last_err);
    struct timeval tv = {b->backoff_ms / 1000, (b->backoff_ms % 1000) * 1000};
    b->retry_at = util_now_ms() + (uint64_t)b->backoff_ms;
    evtimer_add(b->retry, &tv);
    b->backoff_ms = b->backoff_ms * 2 > b->backoff_max_ms ? b->backoff_max_ms : b->backoff_ms * 2;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rd *b = ac->data;
    if (status != REDIS_OK) {
        char why[256];
        snprintf(why, sizeof why, "%s", ac->errstr[0] ? ac->errstr : "connect failed");
        conn_lost(b, why); /* hiredis frees AC after this returns */
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rd *b = ac->data;
    char why[256];
    snprintf(why, sizeof why, "%s",
             b->drop_reason ? b->drop_reason : status == REDIS_OK ? "disconnected" : ac->errstr[0] ? ac->errstr : "I/O error");
    conn_lost(b, why);
}

static void on_setup(redisAsyncContext *ac, void *reply, void *priv)
{
    rd *b = ac->data;
    redisReply *r = reply;
    const char *step = priv;
    if (!r)
        return; /* the connection went: conn_lost() handles it */
    if (r->type == REDIS_REPLY_ERROR && !(strcmp(step, "XGROUP") == 0 && r->str && strstr(r->str, "BUSYGROUP"))) {
        if (b->drop_reason)
            return; /* already starting over because of an earlier step */
        char msg[256];
        snprintf(msg, sizeof msg, "%s failed: %s", step, r->str ? r->str : "error");
        if (strcmp(msg, b->last_err) != 0) /* once per cause, not once per reconnect attempt */
            log_error("store", "redis %s: %s (check state.redis and the password)", b->where, msg);
        snprintf(b->last_err, sizeof b->last_err, "%s", msg);
        /* without authentication, the database or the queue's group nothing works: start over */
        b->drop_reason = b->last_err;
        redisAsyncDisconnect(ac);
        return;
    }
    if (strcmp(step, "XGROUP") == 0 && b->state == RS_CONNECTING && !b->drop_reason) {
        set_state(b, RS_READY);
        b->backoff_ms = BACKOFF_MIN_MS;
        b->last_err[0] = '\0';
        log_info("store", "redis %s: connected", b->where);
    }
}

static void recreate_group(rd *b)
{
    if (b->ac)
        redisAsyncCommand(b->ac, on_setup, (void *)"XGROUP", "XGROUP CREATE %s %s 0 MKSTREAM", b->stream_key,
                          b->group);
}

static void connect_now(rd *b)
{
    b->drop_reason = NULL;
    redisAsyncContext *ac =
        b->unix_path ? redisAsyncConnectUnix(b->unix_path) : redisAsyncConnect(b->host, b->port);
    if (!ac || ac->err) {
        char why[256];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        set_state(b, RS_CONNECTING);
        conn_lost(b, why);
        return;
    }
    ac->data = b;
    b->ac = ac;
    set_state(b, RS_CONNECTING);
    if (redisLibeventAttach(ac, b->base) != REDIS_OK) {
        redisAsyncFree(ac);
        conn_lost(b, "cannot attach to the event loop");
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (b->password && *b->password) {
        const char *argv[] = {"AUTH", b->password};
        redisAsyncCommandArgv(ac, on_setup, (void *)"AUTH", 2, argv, NULL);
    }
    if (b->db) {
        char dbs[16];
        snprintf(dbs, sizeof dbs, "%d", b->db);
        const char *argv[] = {"SELECT", dbs};
        redisAsyncCommandArgv(ac, on_setup, (void *)"SELECT", 2, argv, NULL);
    }
    recreate_group(b);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    connect_now(arg);
}

/* Drop a connection that stopped answering; every pending call fails. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rd *b = arg;
    uint64_t now = util_now_ms();
    const char *why = NULL;
    if (b->state == RS_CONNECTING && now - b->state_since > (uint64_t)b->timeout_ms)
        why = "connect timed out";
    else if (b->head && now - b->head->t_sent > (uint64_t)b->timeout_ms)
        why = "command timed out";
    if (!why || !b->ac)
        return;
    redisAsyncContext *ac = b->ac;
    b->drop_reason = why;
    redisAsyncFree(ac); /* fails every pending call; on_disconnect runs when it was connected */
    if (b->ac == ac)
        conn_lost(b, why);
    b->drop_reason = NULL;
}

static void rd_close(void *be)
{
    rd *b = be;
    b->closing = 1;
    if (b->ac) {
        redisAsyncContext *ac = b->ac;
        redisAsyncFree(ac);
        b->ac = NULL;
    }
    while (b->head) { /* nothing should be left: hiredis failed them all */
        store_req *req = b->head;
        fl_del(b, req);
        store_req_fail(req, STORE_E_CLOSED, "store: closed before Redis answered");
        finish(req);
    }
    event_free(b->tick);
    event_free(b->retry);
    free(b->host);
    free(b->unix_path);
    free(b->password);
    free(b->prefix);
    free(b->group);
    free(b->stream_key);
    free(b->dead_key);
    free(b);
}

static int rd_healthy(void *be, char *why, size_t whylen)
{
    rd *b = be;
    if (b->state == RS_READY) {
        snprintf(why, whylen, "redis %s: connected", b->where);
        return 1;
    }
    if (b->state == RS_CONNECTING)
        snprintf(why, whylen, "redis %s: connecting%s%s", b->where, b->last_err[0] ? " after: " : "", b->last_err);
    else
        snprintf(why, whylen, "redis %s: %s; reconnecting in %llu ms", b->where,
                 b->last_err[0] ? b->last_err : "not connected",
                 (unsigned long long)(b->retry_at > util_now_ms() ? b->retry_at - util_now_ms() : 0));
    return 0;
}

/* ---- URL ---- */

static int parse_url(rd *b, const char *url, char *err, size_t errlen)
{
    if (!strncmp(url, "rediss://", 9)) {
        snprintf(err, errlen,
                 "store: %s: TLS to Redis needs hiredis >= 1.0 (this build has %d.%d); reach Redis over a unix "
                 "socket or a local TLS tunnel (stunnel) instead",
                 url, HIREDIS_MAJOR, HIREDIS_MINOR);
        return -1;
    }
    if (!strncmp(url, "unix:", 5)) {
        const char *p = url + 5;
        if (!strncmp(p, "//", 2))
            p += 2;
        const char *q = strchr(p, '?');
        b->unix_path = q ? strndup(p, (size_t)(q - p)) : xstrdup(p);
        if (q && !strncmp(q, "?db=", 4))
            b->db = atoi(q + 4);
        if (!*b->unix_path || b->unix_path[0] != '/') {
            snprintf(err, errlen, "store: %s: a unix socket URL needs an absolute path (unix:/run/redis.sock)", url);
            return -1;
        }
        snprintf(b->where, sizeof b->where, "%s db %d", b->unix_path, b->db);
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "store: %s: not a Redis URL (redis://[:password@]host[:port][/db] or unix:/path)",
                 url);
        return -1;
    }
    const char *p = url + 8;
    const char *end = p + strcspn(p, "/");
    const char *at = memchr(p, '@', (size_t)(end - p));
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon)
            b->password = strndup(colon + 1, (size_t)(at - colon - 1));
        p = at + 1;
    }
    const char *hend, *port = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb) {
            snprintf(err, errlen, "store: %s: unterminated [IPv6] address", url);
            return -1;
        }
        b->host = strndup(p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
        if (hend < end && *hend == ':')
            port = hend + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        b->host = strndup(p, (size_t)(hend - p));
        if (colon)
            port = colon + 1;
    }
    b->port = 6379;
    if (port) {
        char *pe;
        long v = strtol(port, &pe, 10);
        if (pe != end || v <= 0 || v > 65535) {
            snprintf(err, errlen, "store: %s: bad port", url);
            return -1;
        }
        b->port = (int)v;
    }
    if (!*b->host) {
        snprintf(err, errlen, "store: %s: no host", url);
        return -1;
    }
    if (*end == '/' && end[1]) {
        char *de;
        long v = strtol(end + 1, &de, 10);
        if (*de || v < 0 || v > 100000) {
            snprintf(err, errlen, "store: %s: the database must be a number (redis://host:6379/0)", url);
            return -1;
        }
        b->db = (int)v;
    }
    snprintf(b->where, sizeof b->where, "%s:%d db %d", b->host, b->port, b->db);
    return 0;
}

void *store_redis_open(store *s, struct event_base *base, const store_options *opt, char *err, size_t errlen)
{
    rd *b = xcalloc(1, sizeof *b);
    b->s = s;
    b->base = base;
    b->max_attempts = opt->max_attempts > 0 ? opt->max_attempts : 5;
    b->timeout_ms = opt->timeout_ms > 0 ? opt->timeout_ms : 5000;
    b->backoff_max_ms = opt->backoff_max_ms > 0 ? opt->backoff_max_ms : 5000;
    b->backoff_ms = BACKOFF_MIN_MS;
    b->prefix = xstrdup(opt->prefix ? opt->prefix : "koko:");
    b->group = xstrdup(opt->group && *opt->group ? opt->group : "kokod");
    b->stream_key = util_asprintf("%squeue:inbound", b->prefix);
    b->dead_key = util_asprintf("%squeue:dead", b->prefix);
    b->tick = event_new(base, -1, EV_PERSIST, on_tick, b);
    b->retry = evtimer_new(base, on_retry, b);
    if (parse_url(b, opt->redis_url, err, errlen) < 0) {
        rd_close(b);
        return NULL;
    }
    if (!b->password) {
        const char *env = getenv(opt->password_env && *opt->password_env ? opt->password_env : "REDIS_PASSWORD");
        if (env && *env)
            b->password = xstrdup(env);
    }
    int tick_ms = b->timeout_ms / 5;
    tick_ms = tick_ms < 20 ? 20 : tick_ms > 500 ? 500 : tick_ms;
    struct timeval tv = {tick_ms / 1000, (tick_ms % 1000) * 1000};
    event_add(b->tick, &tv);
    connect_now(b);
    return b;
}

const store_backend_ops store_redis_ops = {
    .name = "redis",
    .submit = rd_submit,
    .close = rd_close,
    .healthy = rd_healthy,
};
