/*
 * core/httpc.h — the daemon's one asynchronous HTTP client.
 *
 * Plugins build ordinary libcurl easy handles; httpc drives them with the curl
 * multi-socket API on kokod's single libevent event_base (the wiring of curl's
 * docs/examples/hiperfifo.c). Nothing here blocks the loop, and no user
 * callback ever runs from inside a curl call or from inside httpc_submit():
 * completions are queued and delivered from their own event. The host's
 * http_submit/http_cancel (include/koko/host.h) are thin wrappers over this.
 *
 * libcurl is loaded, and curl_global_init'ed, by the first httpc_submit()
 * (core/curlfn.h): a daemon whose plugins never make a transfer never maps
 * it. That first submit must happen on the loop thread before any plugin
 * thread uses libcurl (curl_global_init is not thread-safe).
 *
 * Threading: every function is for the loop thread of the event_base only.
 */
#ifndef KOKO_CORE_HTTPC_H
#define KOKO_CORE_HTTPC_H

#include <stddef.h>

#include <curl/curl.h>
#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct httpc httpc;           /* one per event_base: curl multi handles (shards) */
typedef struct httpc_xfer httpc_xfer; /* one outstanding transfer */

#define HTTPC_DEFAULT_MAX_BODY ((size_t)16 * 1024 * 1024)

/*
 * Outcome of one transfer. Everything is borrowed for the callback's duration
 * only: copy what you keep.
 *
 * - completed exchange (any HTTP status): curl_code == CURLE_OK, status set,
 *   error NULL, body/headers of the final response (after redirects or
 *   "100 Continue" only the last response's headers are kept).
 * - failure (connect, timeout, TLS, body over the limit, ...): curl_code is
 *   the CURLcode (CURLE_WRITE_ERROR for the body limit), error says why,
 *   status is what arrived (often 0), body is "".
 * - cancelled: cancelled == 1, curl_code == CURLE_ABORTED_BY_CALLBACK,
 *   status 0, body "", headers NULL, error "transfer cancelled". This holds
 *   even when the transfer had finished but its callback had not yet run.
 */
typedef struct httpc_result {
    long status;                      /* HTTP status, 0 when no response */
    int curl_code;                    /* CURLcode */
    int cancelled;                    /* 1 when cancelled (httpc_cancel/_cancel_owner/_free) */
    const char *error;                /* reason when curl_code != CURLE_OK or cancelled, else NULL */
    const char *body;                 /* response body, NUL-terminated, never NULL */
    size_t body_len;                  /* bytes in body, excluding the NUL */
    const struct curl_slist *headers; /* response header lines "Name: value", may be NULL */
    double total_ms;                  /* wall time from httpc_submit() to completion */
} httpc_result;

/* Runs exactly once per accepted transfer, on the loop thread, later. It may
 * free ARG, submit new transfers, cancel other transfers, and call
 * httpc_free() (see there). The transfer's handle is invalid once it returns. */
typedef void (*httpc_cb)(const httpc_result *r, void *arg);

/*
 * Create the client on BASE (borrowed; must outlive the client). Returns NULL
 * and writes a message into ERR (ERRLEN bytes, may be NULL/0) on failure.
 */
httpc *httpc_new(struct event_base *base, char *err, size_t errlen);

/*
 * Start EASY on the loop. httpc TAKES OWNERSHIP of EASY and of HEADERS (the
 * request header list, may be NULL; httpc sets it as CURLOPT_HTTPHEADER) and
 * frees both as soon as the transfer is over, before CB runs. The caller sets
 * everything else (URL, method, body, timeouts) before submitting and must
 * not touch EASY after.
 * httpc sets, and so owns, CURLOPT_WRITEFUNCTION/WRITEDATA,
 * CURLOPT_HEADERFUNCTION/HEADERDATA, CURLOPT_PRIVATE, CURLOPT_ERRORBUFFER,
 * CURLOPT_NOSIGNAL. An easy handle must be submitted once only.
 *
 * OWNER is an opaque tag (a plugin instance) for httpc_pending() and
 * httpc_cancel_owner(); it may be NULL. CB(result, ARG) runs exactly once,
 * always later on the loop thread — never inside this call, also when curl
 * refuses the handle (the refusal is then reported through CB).
 *
 * Returns the transfer's handle, valid until CB has returned. Returns NULL
 * only when out of memory, when CB is NULL, or when H is being freed; then
 * EASY and HEADERS have already been freed and CB will never run.
 */
httpc_xfer *httpc_submit(httpc *h, CURL *easy, struct curl_slist *headers, void *owner,
                         httpc_cb cb, void *arg);

/*
 * Cancel X: its callback runs later with cancelled = 1. Idempotent, and safe
 * between completion and the callback (the result becomes "cancelled"). A
 * no-op from inside X's own callback. Never call it after X's callback ran.
 */
void httpc_cancel(httpc_xfer *x);

/* Cancel every transfer of OWNER whose callback has not run yet; returns how
 * many were newly cancelled. Callbacks run later, as for httpc_cancel(). */
size_t httpc_cancel_owner(httpc *h, void *owner);

/* Transfers of OWNER (NULL: of everyone) whose callback has not run yet,
 * cancelled ones included: an owner may free itself when this reaches 0. */
size_t httpc_pending(const httpc *h, const void *owner);

/* Response bodies larger than BYTES fail with "response body larger than
 * BYTES bytes". 0 restores HTTPC_DEFAULT_MAX_BODY. Applies to new transfers. */
void httpc_set_max_body(httpc *h, size_t bytes);

/*
 * Shards. libcurl 7.88 (Debian 12) walks every connection to a host when a
 * transfer starts and, past CURLMOPT_MAXCONNECTS open ones, whenever one ends:
 * quadratic with thousands of calls waiting on a slow model. So httpc runs
 * transfers in up to 32 curl multi handles, the first with room taking the
 * next transfer: FILL transfers each (0 restores the default, 512), so a quiet
 * daemon uses one and reuses its connections. A shard other than the first is
 * closed, with its idle connections, when its last transfer ends. Applies to
 * new transfers.
 */
void httpc_set_shard_fill(httpc *h, size_t fill);

/* Multi handles open now (0 before the first transfer; for tests and /health). */
size_t httpc_shard_count(const httpc *h);

/*
 * Cancel everything still pending and free the client. The callbacks of all
 * transfers whose callback had not run yet run SYNCHRONOUSLY inside this call,
 * with cancelled = 1 (httpc_submit() returns NULL while they run). Called
 * from inside an httpc callback, the freeing (and those callbacks) happens
 * right after that callback returns. NULL is a no-op.
 */
void httpc_free(httpc *h);

#ifdef __cplusplus
}
#endif

#endif /* KOKO_CORE_HTTPC_H */
