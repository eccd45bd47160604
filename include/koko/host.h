/*
 * koko/host.h — the services kokod offers its plugins.
 *
 * A plugin receives `const koko_host *` in init() and reaches the daemon only
 * through it (no symbol of kokod is visible to plugins). Every call takes the
 * caller's koko_instance, so the host knows which plugin in which tenant holds
 * each transfer, timer and route, logs with that prefix, and can cancel what
 * is left when the instance is stopped.
 *
 * Threading: every call is for the loop thread only, except post().
 * Callbacks: always run later, on the loop thread, never from inside the call
 * that registered them.
 *
 * Host vtable changelog (append-only):
 *   1.0  log, getenv, tenant, base_dir, http_submit/http_cancel,
 *        timer_start/timer_cancel, route_add, req_*, respond, submit, post.
 *   1.1  conversation (ownership events from channels).
 *   1.2  tool_call (function calling for LLM backends), chunk_excerpt.
 *   1.3  kv_get, kv_set, kv_set_nx, kv_del, kv_incr (plugin state in the store)
 */
#ifndef KOKO_HOST_H
#define KOKO_HOST_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <jansson.h>

#include "koko/message.h"
#include "koko/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum koko_log_level {
    KOKO_LOG_ERROR = 0,
    KOKO_LOG_WARN = 1,
    KOKO_LOG_INFO = 2,
    KOKO_LOG_DEBUG = 3,
} koko_log_level;

/* Result of an outbound HTTP transfer; borrowed for the callback's duration. */
typedef struct koko_http_result {
    uint32_t size;
    long status;          /* HTTP status; 0 when no response arrived */
    int curl_code;        /* CURLcode; CURLE_OK when a response arrived (any status) */
    int cancelled;        /* 1: cancelled (http_cancel, instance stopped) */
    const char *error;    /* reason when curl_code != CURLE_OK or cancelled */
    const char *body;     /* response body, NUL-terminated */
    size_t body_len;
    const struct curl_slist *headers; /* response header lines, may be NULL */
    double total_ms;
} koko_http_result;

typedef struct koko_http koko_http;   /* an outstanding transfer */
typedef struct koko_timer koko_timer; /* a pending timer */
typedef struct koko_request koko_request; /* an inbound HTTP request routed to a plugin */

typedef void (*koko_http_fn)(const koko_http_result *res, void *arg);
typedef void (*koko_timer_fn)(void *arg);
typedef void (*koko_route_fn)(koko_request *req, void *arg);
typedef void (*koko_post_fn)(void *arg);

/* Outcome of submit(): KOKO_SUBMIT_ACCEPTED once the message is queued,
 * KOKO_SUBMIT_DUPLICATE when (channel, msg_id) was seen before. */
typedef enum koko_submit_status {
    KOKO_SUBMIT_ACCEPTED = 0,
    KOKO_SUBMIT_DUPLICATE = 1,
    KOKO_SUBMIT_REJECTED = 2, /* invalid message or the daemon is stopping: do not acknowledge */
} koko_submit_status;
typedef void (*koko_submit_fn)(koko_submit_status st, const char *error, void *arg);

/* Conversation events a channel reports (ABI 1.1). The core keeps each
 * conversation's owner: bot → human (handoff, an agent replied, opened or
 * assigned it) → resolved; a customer writing in a resolved conversation
 * gives it back to the bot. The bot never answers where a human owns it. */
typedef enum koko_conv_event {
    KOKO_CONV_HUMAN = 1,    /* a human took it over */
    KOKO_CONV_RESOLVED = 2, /* closed */
    KOKO_CONV_BOT = 3,      /* handed back to the bot (e.g. Chatwoot status "pending") */
} koko_conv_event;

/* Outcome of a kv_* call (ABI 1.3). */
typedef enum koko_kv_status {
    KOKO_KV_OK = 0,
    KOKO_KV_E_UNAVAILABLE = 1, /* the store is unreachable (Redis down), or kokod runs without one:
                                  retry later or degrade to local state */
    KOKO_KV_E_CANCELLED = 2,   /* the instance was stopped (or the store closed) first */
    KOKO_KV_E_TYPE = 3,        /* kv_incr on a value that is not an integer */
    KOKO_KV_E_IO = 4,          /* the backend failed (disk full, Redis error reply) */
} koko_kv_status;

/* Result of a kv_* call; it and everything it points to is borrowed for the
 * callback's duration: copy what you keep. */
typedef struct koko_kv_result {
    uint32_t size;         /* sizeof(koko_kv_result) as built by the host */
    koko_kv_status status;
    const char *error;     /* what failed, NULL when KOKO_KV_OK */
    int found;             /* kv_get: 1 when the key holds a live value */
    int64_t integer;       /* kv_set_nx: 1 set / 0 existed; kv_del: 1 existed; kv_incr: the new value */
    const char *value;     /* kv_get: the value (NUL-terminated too), NULL when not found */
    size_t value_len;
} koko_kv_result;

typedef void (*koko_kv_fn)(const koko_kv_result *r, void *arg);

struct koko_host {
    uint32_t size; /* sizeof(koko_host) as built by the host: check before using a later field */
    uint16_t abi_major, abi_minor;

    /* Log one line, prefixed "tenant/plugin:". Never log secrets. */
    void (*log)(koko_instance *inst, koko_log_level lvl, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

    /* An environment variable (secrets), or NULL. Borrowed. */
    const char *(*getenv)(koko_instance *inst, const char *name);

    /* The tenant this instance serves, e.g. "demo". Borrowed, lives as long as the instance. */
    const char *(*tenant)(koko_instance *inst);

    /* The directory relative paths in the configuration are resolved against. Borrowed. */
    const char *(*base_dir)(koko_instance *inst);

    /*
     * Run the libcurl easy handle EASY on the loop. The host TAKES OWNERSHIP of
     * EASY and of HEADERS (the request header list, may be NULL: the host sets
     * it on the handle) and frees both when the transfer is over, before DONE
     * runs (so what the handle's own callbacks use may be freed in DONE). The host sets the
     * write/header callbacks itself; everything else (URL, method, body,
     * timeouts) is the plugin's. DONE runs exactly once, later — also on
     * error, timeout and cancellation. Returns a handle valid until DONE runs,
     * or NULL (out of memory, or kokod is stopping): then DONE will not run and
     * EASY and HEADERS are already freed.
     */
    koko_http *(*http_submit)(koko_instance *inst, CURL *easy, struct curl_slist *headers,
                              koko_http_fn done, void *arg);
    /* Cancel: DONE runs later with cancelled = 1. Safe to call once DONE is queued. */
    void (*http_cancel)(koko_http *h);

    /* One-shot timer: FN(ARG) after MS milliseconds, later on the loop. */
    koko_timer *(*timer_start)(koko_instance *inst, uint64_t ms, koko_timer_fn fn, void *arg);
    /* Cancel a timer that has not fired; FN will not run. Never call it on a fired timer. */
    void (*timer_cancel)(koko_timer *t);

    /*
     * Route "POST /webhook/<tenant>/<name>" (NAME = the plugin's name when
     * NULL) to FN. Call from init(). The route lives as long as the instance.
     * The host has already enforced the body limit; FN must answer with
     * respond() exactly once, now or later.
     */
    int (*route_add)(koko_instance *inst, const char *name, koko_route_fn fn, void *arg);
    const char *(*req_method)(koko_request *req);            /* "POST" */
    const char *(*req_header)(koko_request *req, const char *name); /* case-insensitive, or NULL */
    const char *(*req_body)(koko_request *req, size_t *len); /* NUL-terminated, borrowed */
    const char *(*req_peer)(koko_request *req);              /* client address, for logs */
    /* Answer REQ with STATUS and BODY (JSON). Frees REQ. BODY is copied. */
    void (*respond)(koko_request *req, int status, const char *json_body);

    /*
     * Hand a customer message to the pipeline. MSG is copied (the host fills
     * tenant and channel). DONE runs later with ACCEPTED once the message is
     * safely queued (acknowledge the channel only then), DUPLICATE when it was
     * seen already (acknowledge, do nothing), REJECTED otherwise.
     */
    void (*submit)(koko_instance *inst, const koko_msg *msg, koko_submit_fn done, void *arg);

    /* The one thread-safe call: run FN(ARG) soon on the loop thread. 0 = queued. */
    int (*post)(koko_instance *inst, koko_post_fn fn, void *arg);

    /* ---- 1.1 ---- */
    /* Report an ownership event for CONVERSATION_ID (borrowed). DETAIL is a short
     * reason for logs ("assigned to agent 7"), may be NULL. */
    void (*conversation)(koko_instance *inst, const char *conversation_id, koko_conv_event ev, const char *detail);

    /* ---- 1.2 ---- */
    /*
     * Run function NAME with ARGS (borrowed) for the request whose req->job is
     * JOB — only functions declared in that request's req->tools may run. The
     * core answers the built-in "handoff_to_human" {"reason"} itself (the
     * conversation will be handed over after the answer). DONE runs exactly
     * once, later, with the result object (borrowed for the callback) or an
     * error object {"error": "..."} that the backend should feed back to the
     * model rather than fail.
     */
    void (*tool_call)(koko_instance *inst, void *job, const char *name, const json_t *args, koko_tool_fn done,
                      void *arg);

    /*
     * The sentences of req->chunks[I] most relevant to the question (at most
     * ~600 bytes, whole sentences, table rows kept together), for the request
     * whose req->job is JOB. Computed on the first call (retrieval does not
     * pay for it when no backend quotes passages) and owned by the request:
     * valid until the backend's DONE runs. NULL when I is out of range.
     */
    const char *(*chunk_excerpt)(koko_instance *inst, void *job, size_t i);

    /* ---- 1.3 ---- */
    /*
     * Plugin state in kokod's store (SQLite, or a Redis shared by every
     * replica), so that nothing a plugin must remember lives only in its
     * process. KEY is the plugin's own name for the value: the host maps it
     * to the store key "{tenant}:plugin:{plugin}:{key}", each ':'-separated
     * part of KEY escaped with store_key_part() (doc/state.md), so a plugin
     * sees and touches only its own tenant's and its own name's keys, and
     * the same KEY names the same value in every replica and after a
     * restart. Values are byte strings (binary-safe). TTL_MS <= 0: no expiry.
     *
     * Each call returns 0 when accepted: DONE(result, ARG) then runs EXACTLY
     * ONCE, LATER, on the loop thread — also when the store fails (status
     * KOKO_KV_E_UNAVAILABLE / _IO), when kokod has no store, and when the
     * instance is stopped first: at its drain deadline the host answers what
     * is left with KOKO_KV_E_CANCELLED, before destroy(); no callback runs
     * after destroy(). DONE may be NULL: then nothing calls back (a write
     * whose outcome does not matter). -1: refused outright (KEY NULL or
     * empty or over 512 bytes, the instance stopped, kokod exiting); DONE
     * never runs. Arguments are copied before the call returns.
     *
     * kv_get:    found = 1 and value when KEY holds a live value.
     * kv_set:    set KEY to VAL (replacing any value and expiry).
     * kv_set_nx: set KEY only when it does not exist: integer = 1 when set,
     *            0 when it existed. Atomic across replicas (a lock, a claim).
     * kv_del:    integer = 1 when KEY existed.
     * kv_incr:   add DELTA to the integer in KEY (missing = 0): integer = the
     *            new value; TTL_MS > 0 is given to a key that has no expiry
     *            yet (a new counter), atomically with the increment.
     */
    int (*kv_get)(koko_instance *inst, const char *key, koko_kv_fn done, void *arg);
    int (*kv_set)(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                  koko_kv_fn done, void *arg);
    int (*kv_set_nx)(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                     koko_kv_fn done, void *arg);
    int (*kv_del)(koko_instance *inst, const char *key, koko_kv_fn done, void *arg);
    int (*kv_incr)(koko_instance *inst, const char *key, int64_t delta, int64_t ttl_ms, koko_kv_fn done,
                   void *arg);
};

/* 1 when HOST offers the 1.3 kv_* calls (a plugin built for 1.3 may be
 * loaded by a 1.2 host only if it checks this first). */
#define KOKO_HOST_HAS_KV(host) \
    ((host)->abi_minor >= 3 && (host)->size >= offsetof(koko_host, kv_incr) + sizeof(void *) && (host)->kv_incr)

#ifdef __cplusplus
}
#endif
#endif
