/*
 * core/store.h — the one asynchronous store for all of kokod's runtime state.
 *
 * Everything that must survive a restart (the durable inbound queue, dedup
 * keys, conversation history and ownership, reply idempotency markers, stats
 * counters, rate-limit buckets, context-cache handles, customer memory) goes
 * through this interface. Two backends sit behind it, chosen at store_open():
 * embedded SQLite (WAL, on its own worker thread) and Redis (hiredis async on
 * the daemon's event_base, the queue a Stream with a consumer group). The key
 * schema and the durability guarantees are in doc/state.md.
 *
 * The contract, for every operation below:
 * - It returns 0 when accepted: CB(result, ARG) then runs EXACTLY ONCE, always
 *   LATER on the loop thread of the store's event_base — never from inside the
 *   call that submitted it — also when the operation fails (Redis down, disk
 *   full, wrong type) and when store_close() ends it (status STORE_E_CLOSED).
 * - It returns -1 only when the call is refused outright (CB NULL, a required
 *   argument NULL, or the store closing); CB then never runs.
 * - Arguments are copied before the call returns: the caller keeps ownership
 *   of every string and buffer it passes.
 * - The result and everything it points to is borrowed for the duration of
 *   the callback only: copy what you keep.
 * - A write whose callback reported STORE_OK is durable to the backend's
 *   policy (doc/state.md): SQLite has committed it, Redis has applied it.
 *
 * Keys are NUL-terminated strings WITHOUT the store's prefix ("demo:conv:..."),
 * values are byte strings with a length (binary-safe). Key and value kinds are
 * Redis-like: a key holds a string, a list or a hash; using a key as another
 * kind fails with STORE_E_TYPE. Build key parts from outside input with
 * store_key_part() so that ':' and glob characters cannot forge other keys.
 *
 * Threading: every function is for the loop thread only.
 */
#ifndef KOKO_CORE_STORE_H
#define KOKO_CORE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct store store;

typedef enum store_status {
    STORE_OK = 0,
    STORE_E_UNAVAILABLE = 1, /* backend unreachable or timed out (Redis down): retry later */
    STORE_E_CLOSED = 2,      /* store_close() ran before the operation finished */
    STORE_E_TYPE = 3,        /* key holds another kind of value, or not a number */
    STORE_E_IO = 4,          /* the backend failed (disk full, corrupt file, Redis error reply) */
    STORE_E_NOTFOUND = 5,    /* queue: the entry id is not in the queue / dead-letter list */
} store_status;

/* One element of a multi-valued result. Which fields are set depends on the
 * operation (see each one); unset strings are NULL, unset numbers 0. */
typedef struct store_item {
    const char *name;   /* hash field, scanned key (without prefix), queue entry id */
    const char *value;  /* list element, hash value, queue payload (NUL-terminated too) */
    size_t value_len;   /* bytes in value, excluding the NUL */
    int attempts;       /* queue: deliveries so far, this one included */
    const char *reason; /* dead letters: why the last attempt failed */
} store_item;

typedef struct store_result {
    store_status status;
    const char *error;   /* what failed, where and what to do; NULL when STORE_OK */
    int found;           /* get/hget: 1 when the key/field exists */
    int64_t integer;     /* per operation: counter value, count, 0/1 flag */
    double number;       /* store_incr_float(): the new value */
    const char *value;   /* get/hget (NULL when not found); queue_add/retry: the entry id */
    size_t value_len;
    const store_item *items; /* ranges, hashes, scans, claims, dead letters */
    size_t n_items;
} store_result;

typedef void (*store_cb)(const store_result *r, void *arg);

typedef struct store_options {
    const char *dir;          /* embedded: state directory (created 0700); the database is DIR/koko.db */
    const char *redis_url;    /* non-NULL selects Redis: redis://[:password@]host[:port][/db] or
                                 unix:/path/to.sock[?db=N] */
    const char *password_env; /* Redis: name of the environment variable holding the password
                                 (default REDIS_PASSWORD; a password in the URL wins) */
    const char *prefix;       /* Redis: prefix of every key (default "koko:") */
    const char *group;        /* Redis: consumer group of the queue stream (default "kokod") */
    int max_attempts;         /* queue: deliveries before an entry is dead-lettered (default 5) */
    int timeout_ms;           /* Redis: a connect or command unanswered this long drops the connection
                                 and fails what is pending (default 5000) */
    int backoff_max_ms;       /* Redis: ceiling of the reconnect backoff, which starts at 50 ms and
                                 doubles (default 5000) */
    int purge_interval_ms;    /* SQLite: how often expired keys are deleted (default 60000); they are
                                 invisible to reads from the moment they expire either way */
    int synchronous;          /* SQLite: STORE_SYNC_* (default STORE_SYNC_TIERED): which commits wait
                                 for an fsync (doc/state.md, "Durability tiers") */
} store_options;

/* SQLite commit durability (store_options.synchronous). */
enum {
    STORE_SYNC_TIERED = 0, /* a batch that accepts (queue_add, set_nx, queue_retry, del_prefix) is
                              fsync'ed (synchronous=FULL); bookkeeping-only batches are not (NORMAL) */
    STORE_SYNC_FULL = 1,   /* every batch is fsync'ed */
    STORE_SYNC_NORMAL = 2, /* no batch is fsync'ed (the WAL is synced at checkpoints only) */
};

/*
 * Open a store on BASE (borrowed; must outlive the store). OPT is copied.
 * SQLite: opens or creates OPT->dir/koko.db, sets WAL mode and the schema,
 * and starts the worker thread; failures (unwritable dir, corrupt file) are
 * returned here. Redis: parses the URL and starts connecting; an unreachable
 * server is NOT an error here — the store starts unhealthy and reconnects.
 * Returns NULL and writes a message into ERR (ERRLEN bytes) on failure.
 */
store *store_open(struct event_base *base, const store_options *opt, char *err, size_t errlen);

/*
 * Close S. Every operation whose callback has not run yet gets it
 * SYNCHRONOUSLY inside this call: those already finished with their real
 * result, the others with STORE_E_CLOSED; store calls made from those
 * callbacks are refused (-1). SQLite waits for the batch in progress to
 * commit (a write is never half-applied). Called from inside a store
 * callback, the close happens right after that callback returns. NULL: no-op.
 */
void store_close(store *s);

/* "sqlite" or "redis". */
const char *store_backend(const store *s);

/*
 * 1 when the backend is usable now, 0 when degraded (Redis disconnected or
 * reconnecting, SQLite's last commit failed). WHY (may be NULL) receives a
 * one-line reason either way ("connected to 127.0.0.1:6379 db 0",
 * "redis at 127.0.0.1:6379: Connection refused; reconnecting in 400 ms").
 */
int store_healthy(const store *s, char *why, size_t whylen);

/* Operations whose callback has not run yet. */
size_t store_pending(const store *s);

/*
 * Escape one key part taken from outside input (a contact id, an e-mail
 * address): every byte outside [A-Za-z0-9._@+-] becomes %XX, so ':', '*',
 * '?', '[' and spaces never reach a key raw. Returns a malloc'd string.
 */
char *store_key_part(const char *part);

/* ---- strings, with optional expiry (TTL_MS <= 0: none) ---- */

/* found = 1 and value when KEY holds a live string; found = 0 otherwise. */
int store_get(store *s, const char *key, store_cb cb, void *arg);
/* Set KEY to VAL (replacing any kind of value and any expiry). */
int store_set(store *s, const char *key, const void *val, size_t len, int64_t ttl_ms, store_cb cb, void *arg);
/* Set KEY only when it does not exist: integer = 1 when set, 0 when it
 * existed (de-duplication keys, reply idempotency markers). Atomic across
 * replicas sharing one Redis. */
int store_set_nx(store *s, const char *key, const void *val, size_t len, int64_t ttl_ms, store_cb cb, void *arg);
/* Delete KEY of any kind: integer = 1 when it existed. */
int store_del(store *s, const char *key, store_cb cb, void *arg);
/* Add DELTA to the integer in KEY (missing = 0): integer = the new value.
 * When TTL_MS > 0 and the key has no expiry yet (a new rate-limit bucket),
 * it gets TTL_MS — atomically with the increment. */
int store_incr(store *s, const char *key, int64_t delta, int64_t ttl_ms, store_cb cb, void *arg);
/* The same for a floating-point value: number = the new value. The stored
 * text is the shortest form ("1.5"); integers stay integers ("3"). */
int store_incr_float(store *s, const char *key, double delta, int64_t ttl_ms, store_cb cb, void *arg);
/* Give KEY (any kind) an expiry TTL_MS from now, or none when TTL_MS <= 0:
 * integer = 1 when the key exists, 0 otherwise. */
int store_expire(store *s, const char *key, int64_t ttl_ms, store_cb cb, void *arg);

/* ---- bounded lists (conversation history) ---- */

/* Append VAL at the tail of list KEY, then keep only its last MAX_LEN
 * elements (MAX_LEN <= 0: unbounded): integer = the length afterwards.
 * An existing expiry of KEY is kept. */
int store_list_push(store *s, const char *key, const void *val, size_t len, int64_t max_len, store_cb cb,
                    void *arg);
/* Elements START..STOP inclusive, oldest first; negative indexes count from
 * the tail (-1 = newest), as Redis LRANGE: items[i].value. A missing key is
 * an empty list. */
int store_list_range(store *s, const char *key, int64_t start, int64_t stop, store_cb cb, void *arg);

/* ---- hashes (ownership state, customer facts) ---- */

/* integer = 1 when FIELD is new, 0 when it was replaced. */
int store_hash_set(store *s, const char *key, const char *field, const void *val, size_t len, store_cb cb,
                   void *arg);
/* found/value as store_get. */
int store_hash_get(store *s, const char *key, const char *field, store_cb cb, void *arg);
/* integer = 1 when FIELD existed. The key disappears with its last field. */
int store_hash_del(store *s, const char *key, const char *field, store_cb cb, void *arg);
/* items[i].name/value for every field, sorted by field name. */
int store_hash_getall(store *s, const char *key, store_cb cb, void *arg);

/* ---- prefixes (GDPR export and forget) ---- */

/* items[i].name = every live key starting with PREFIX (any kind), sorted,
 * each once. The prefix is matched literally (no glob). "" = every key. */
int store_scan_prefix(store *s, const char *prefix, store_cb cb, void *arg);
/* Delete every key starting with PREFIX: integer = how many. Not atomic
 * against concurrent writers on Redis (keys written meanwhile may survive). */
int store_del_prefix(store *s, const char *prefix, store_cb cb, void *arg);

/* ---- the durable inbound queue ---- */

/*
 * Persist PAYLOAD: value = the new entry's id (a string; order of ids is
 * order of adds). When the callback reports STORE_OK the entry is durable
 * and the channel may be answered 200.
 */
int store_queue_add(store *s, const void *payload, size_t len, store_cb cb, void *arg);
/*
 * Lease up to MAX entries to CONSUMER (a name unique per replica, e.g.
 * "host:pid") for LEASE_MS: items[i].name = id, value = payload, attempts =
 * deliveries including this one, oldest first. Entries come from two places:
 * entries whose lease expired (their consumer crashed or died — XAUTOCLAIM-
 * style, whoever held them) and entries never delivered. Entries under a live
 * lease are never returned. An expired entry already delivered max_attempts
 * times is moved to the dead letters ("lease expired ...") instead, so a
 * message that crashes the daemon cannot crash it forever.
 */
int store_queue_claim(store *s, const char *consumer, int64_t lease_ms, int max, store_cb cb, void *arg);
/*
 * CONSUMER still works on ID: its lease runs LEASE_MS from now. integer = 1
 * when extended, 0 when the entry is no longer CONSUMER's (its lease ran out
 * and another consumer claimed it, or it was acked or dead-lettered): the
 * caller should stop working on it. A holder extends its leases well before
 * they expire (every lease/3), so that slow processing — a model taking
 * longer than the lease — does not hand the same message to a second
 * consumer; only a consumer that died or hangs lets its lease run out.
 */
int store_queue_extend(store *s, const char *id, const char *consumer, int64_t lease_ms, store_cb cb, void *arg);
/* Processing of ID is finished: remove it. integer = 1 when it was queued,
 * 0 when already gone (acked twice, or dead-lettered meanwhile). */
int store_queue_ack(store *s, const char *id, store_cb cb, void *arg);
/*
 * Processing of ID failed with REASON: when it has been delivered
 * max_attempts times it moves to the dead letters (integer = 1), otherwise
 * its lease ends now so the next claim retries it (integer = 0).
 * STORE_E_NOTFOUND when ID is not in the queue.
 */
int store_queue_fail(store *s, const char *id, const char *reason, store_cb cb, void *arg);
/* Up to MAX dead letters, oldest first: items[i].name = dead-letter id,
 * value = payload, attempts, reason; integer = how many there are in all. */
int store_queue_dead(store *s, int max, store_cb cb, void *arg);
/* Put dead letter DEAD_ID back into the queue with attempts reset: value =
 * its queue id (SQLite keeps the id, Redis gives a new one).
 * STORE_E_NOTFOUND when there is no such dead letter. */
int store_queue_retry(store *s, const char *dead_id, store_cb cb, void *arg);
/* integer = entries in the queue not yet acked (leased or not), dead letters
 * excluded. */
int store_queue_pending(store *s, store_cb cb, void *arg);
/* Up to MAX entries not yet acked (leased or not), oldest first: items[i].name
 * = id, value = payload; integer = how many there are in all. For GDPR export
 * and forget, which look for one customer's messages. */
int store_queue_list(store *s, int max, store_cb cb, void *arg);
/* Delete dead letter DEAD_ID for good: integer = 1 when it existed, 0 when
 * not (GDPR forget of the customer it carries). */
int store_queue_drop_dead(store *s, const char *dead_id, store_cb cb, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* KOKO_CORE_STORE_H */
