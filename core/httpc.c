/*
 * core/httpc.c — curl multi-socket on libevent, the hiperfifo.c pattern.
 *
 * curl tells us which sockets to watch (httpc_sock_cb) and when to wake it
 * (httpc_timer_cb); libevent tells curl what happened (httpc_sock_event,
 * httpc_timer_event). Finished transfers are picked up with
 * curl_multi_info_read and moved to a completion queue that a separate event
 * (done_ev) drains, so user callbacks never run inside a curl call or inside
 * httpc_submit, and may freely submit, cancel or free. A transfer is in
 * exactly one state: RUNNING (in a multi), QUEUED (result fixed, callback
 * pending) or DELIVERING (its callback is running).
 *
 * Shards: libcurl 7.88 (Debian 12) walks every connection to a host when a
 * transfer starts (looking for one to reuse) and, once more connections are
 * open than CURLMOPT_MAXCONNECTS, again whenever one ends (looking for the
 * oldest idle one to close). With 5,000 calls waiting on a slow model that is
 * 2 x 5,000^2 / 2 steps: ~14 % of kokod's CPU samples in `make bench-llm`.
 * So transfers go to up to HTTPC_MAX_SHARDS multi handles, each filled to
 * HTTPC_SHARD_FILL running transfers before the next one is opened: a quiet
 * daemon runs everything in shard 0 and reuses its connections; a burst
 * spreads, and a shard other than 0 is closed (with its idle connections) as
 * soon as its last transfer ends.
 */
#include "kokoconf.h"

#include "httpc.h"
#include "curlfn.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event_struct.h>

#define HTTPC_MAGIC 0x48545043u /* "HTPC" */
#define XFER_MAGIC 0x58464552u  /* "XFER" */
/* Transfers one multi handle runs before the next shard takes new ones
 * (httpc_set_shard_fill). */
#define HTTPC_SHARD_FILL 512
/* Shards at most; past HTTPC_MAX_SHARDS * HTTPC_SHARD_FILL running transfers
 * the least busy shard takes the next one. */
#define HTTPC_MAX_SHARDS 32
/* Idle connections shard 0 keeps for reuse, and the others while they live. */
#define HTTPC_MAXCONNECTS_FIRST 128L
#define HTTPC_MAXCONNECTS_OTHER 16L
/* Bound on the response header lines kept per transfer. */
#define HTTPC_MAX_HEADER_BYTES ((size_t)256 * 1024)

enum xfer_state { XFER_RUNNING, XFER_QUEUED, XFER_DELIVERING };
enum xfer_overflow { OVER_NONE, OVER_BODY, OVER_HEADERS, OVER_NOMEM };

/* One socket curl asked us to watch; attached to curl's socket via
 * curl_multi_assign and also listed in the client so httpc_free finds any
 * curl leaves behind. */
struct httpc_sock {
    struct event ev; /* its argument is the shard whose multi owns the socket */
    int added;
    struct httpc_sock *prev, *next;
};

struct httpc_xfer {
    uint32_t magic;
    enum xfer_state state;
    httpc *h;
    struct httpc_shard *shard; /* the multi it runs in, while in_multi */
    CURL *easy;
    struct curl_slist *req_headers;
    struct curl_slist *resp_headers;
    size_t resp_header_bytes;
    void *owner;
    httpc_cb cb;
    void *arg;
    char *body; /* body_cap > body_len whenever body != NULL: room for the NUL */
    size_t body_len, body_cap, max_body;
    int in_multi;
    enum xfer_overflow overflow;
    long status;
    int curl_code;
    int cancelled;
    int has_error;
    double start_ms, total_ms;
    char errbuf[CURL_ERROR_SIZE];
    /* the message for the callback, made only when there is one: thousands of
     * transfers wait at once, and most never fail */
    char *error;
    httpc_xfer *prev, *next; /* every transfer whose callback has not started */
    httpc_xfer *qnext;       /* completion queue */
};

/* One curl multi handle on the loop, with its timer. */
struct httpc_shard {
    httpc *h;
    CURLM *multi;
    struct event timer_ev;
    size_t running; /* transfers added to MULTI and not yet removed */
    int index;      /* in h->shard[] */
    struct httpc_sock *socks;
};

struct httpc {
    uint32_t magic;
    struct event_base *base;
    struct httpc_shard *shard[HTTPC_MAX_SHARDS]; /* made on demand; [0] lives until httpc_free */
    struct event done_ev;
    httpc_xfer *all;
    httpc_xfer *q_head, *q_tail;
    size_t q_len;
    size_t max_body;
    size_t shard_fill; /* running transfers per shard before the next one takes new ones */
    int dispatching;    /* depth of httpc_done_event */
    int free_requested; /* httpc_free called from inside a callback */
    int freeing;        /* httpc_free_now running */
};

static double httpc_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static void httpc_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void httpc_seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void xfer_error(httpc_xfer *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void xfer_error(httpc_xfer *x, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0)
        msg = NULL;
    va_end(ap);
    free(x->error);
    x->error = msg;
    x->has_error = 1;
}

/* The transfer's URL for messages, without credentials: userinfo, query and
 * fragment are dropped (API keys often travel in the query). */
static void xfer_url(const httpc_xfer *x, char *out, size_t len)
{
    char *url = NULL;
    if (!x->easy || curl_easy_getinfo(x->easy, CURLINFO_EFFECTIVE_URL, &url) != CURLE_OK || !url) {
        snprintf(out, len, "(no URL)");
        return;
    }
    const char *sep = strstr(url, "://");
    const char *auth = sep ? sep + 3 : url;
    const char *auth_end = auth + strcspn(auth, "/?#");
    const char *host = auth;
    for (const char *p = auth; p < auth_end; p++)
        if (*p == '@')
            host = p + 1;
    size_t keep = strcspn(host, "?#");
    snprintf(out, len, "%.*s%.*s", (int)(auth - url), url, (int)keep, host);
}

/* ---- transfer list and completion queue ---- */

static void xfer_link(httpc *h, httpc_xfer *x)
{
    x->prev = NULL;
    x->next = h->all;
    if (h->all)
        h->all->prev = x;
    h->all = x;
}

static void xfer_unlink(httpc *h, httpc_xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        h->all = x->next;
    if (x->next)
        x->next->prev = x->prev;
    x->prev = x->next = NULL;
}

/* Fix the result and schedule the callback. Never calls it. */
static void xfer_queue(httpc_xfer *x)
{
    httpc *h = x->h;
    x->state = XFER_QUEUED;
    x->total_ms = httpc_now_ms() - x->start_ms;
    x->qnext = NULL;
    if (h->q_tail)
        h->q_tail->qnext = x;
    else
        h->q_head = x;
    h->q_tail = x;
    h->q_len++;
    if (!h->freeing)
        event_active(&h->done_ev, EV_TIMEOUT, 0);
}

static httpc_xfer *xfer_dequeue(httpc *h)
{
    httpc_xfer *x = h->q_head;
    if (!x)
        return NULL;
    h->q_head = x->qnext;
    if (!h->q_head)
        h->q_tail = NULL;
    h->q_len--;
    x->qnext = NULL;
    return x;
}

static void xfer_drop_response(httpc_xfer *x)
{
    free(x->body);
    x->body = NULL;
    x->body_len = x->body_cap = 0;
    curl_slist_free_all(x->resp_headers);
    x->resp_headers = NULL;
    x->resp_header_bytes = 0;
}

/* X's transfer is over: its easy handle and request headers go now rather than
 * after its callback, which may wait behind hundreds of others when a burst of
 * answers arrives (each handle holds about 8 KiB). */
static void xfer_release_easy(httpc_xfer *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy); /* before the header list: curl may point into it */
    x->easy = NULL;
    curl_slist_free_all(x->req_headers);
    x->req_headers = NULL;
}

static void xfer_mark_cancelled(httpc_xfer *x)
{
    x->cancelled = 1;
    x->status = 0;
    x->curl_code = CURLE_ABORTED_BY_CALLBACK;
    xfer_drop_response(x);
    xfer_error(x, "httpc: transfer cancelled");
}

/* Run the callback, then free the transfer with its easy handle and lists. */
static void xfer_deliver(httpc *h, httpc_xfer *x)
{
    xfer_unlink(h, x);
    x->state = XFER_DELIVERING;
    httpc_result r = {
        .status = x->status,
        .curl_code = x->curl_code,
        .cancelled = x->cancelled,
        .error = x->has_error ? (x->error ? x->error : "httpc: out of memory formatting the transfer's error")
                              : NULL,
        .body = x->body ? x->body : "",
        .body_len = x->body ? x->body_len : 0,
        .headers = x->resp_headers,
        .total_ms = x->total_ms,
    };
    x->cb(&r, x->arg);
    xfer_release_easy(x); /* when it never ran */
    xfer_drop_response(x);
    free(x->error);
    x->magic = 0;
    free(x);
}

/* Take X's easy handle out of its multi handle. */
static void xfer_remove(httpc_xfer *x)
{
    if (!x->in_multi)
        return;
    curl_multi_remove_handle(x->shard->multi, x->easy);
    x->shard->running--;
    x->in_multi = 0;
}

/* Take X out of curl with CODE as its outcome and queue its callback. */
static void xfer_finish(httpc_xfer *x, CURLcode code)
{
    xfer_remove(x);
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    x->status = status;
    x->curl_code = (int)code;

    char url[512];
    xfer_url(x, url, sizeof url);
    switch (x->overflow) {
    case OVER_BODY:
        xfer_error(x, "httpc: %s: response body larger than %zu bytes (ask for less, or raise the limit)",
                   url, x->max_body);
        break;
    case OVER_HEADERS:
        xfer_error(x, "httpc: %s: response headers larger than %zu bytes", url,
                   HTTPC_MAX_HEADER_BYTES);
        break;
    case OVER_NOMEM:
        xfer_error(x, "httpc: %s: out of memory while receiving the response", url);
        break;
    case OVER_NONE:
        if (code != CURLE_OK)
            xfer_error(x, "httpc: %s: %s (curl error %d)", url,
                       x->errbuf[0] ? x->errbuf : curl_easy_strerror(code), (int)code);
        break;
    }
    if (x->overflow != OVER_NONE && code == CURLE_OK)
        x->curl_code = CURLE_WRITE_ERROR;
    if (x->curl_code != CURLE_OK)
        xfer_drop_response(x);
    xfer_release_easy(x);
    xfer_queue(x);
}

/* ---- curl -> libevent ---- */

static void httpc_check_done(struct httpc_shard *s)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(s->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result; /* msg dies with remove_handle */
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        httpc_xfer *x = (httpc_xfer *)(void *)priv;
        if (!x || x->magic != XFER_MAGIC || x->state != XFER_RUNNING)
            continue;
        xfer_finish(x, code);
    }
}

/* curl_multi_socket_action failed (only when one of our callbacks ran out of
 * memory): curl may never finish what S holds, so fail it all now rather
 * than leave callbacks hanging. */
static void httpc_fail_running(struct httpc_shard *s, CURLMcode mc)
{
    for (httpc_xfer *x = s->h->all; x; x = x->next) {
        if (x->state != XFER_RUNNING || x->shard != s)
            continue;
        xfer_error(x, "httpc: curl multi failed: %s", curl_multi_strerror(mc));
        x->overflow = OVER_NONE;
        xfer_remove(x);
        x->status = 0;
        x->curl_code = CURLE_OUT_OF_MEMORY;
        xfer_drop_response(x);
        xfer_release_easy(x);
        xfer_queue(x);
    }
}

static void shard_retire_if_idle(struct httpc_shard *s);

static void httpc_action(struct httpc_shard *s, curl_socket_t fd, int ev_bitmask)
{
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(s->multi, fd, ev_bitmask, &running);
    httpc_check_done(s);
    if (mc != CURLM_OK)
        httpc_fail_running(s, mc);
    shard_retire_if_idle(s); /* S may be gone now */
}

static void httpc_sock_event(evutil_socket_t fd, short what, void *arg)
{
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    httpc_action(arg, fd, action);
}

static void httpc_timer_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    httpc_action(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void httpc_sock_free(struct httpc_shard *s, struct httpc_sock *sk)
{
    if (sk->added)
        event_del(&sk->ev); /* fine on an fd curl already closed */
    if (sk->prev)
        sk->prev->next = sk->next;
    else
        s->socks = sk->next;
    if (sk->next)
        sk->next->prev = sk->prev;
    free(sk);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching socket S. */
static int httpc_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct httpc_shard *s = userp;
    struct httpc_sock *sk = socketp;
    (void)easy;

    if (what == CURL_POLL_REMOVE) {
        /* The socket may be closed already; curl forgets SOCKETP itself. */
        if (sk)
            httpc_sock_free(s, sk);
        return 0;
    }
    if (!sk) {
        sk = calloc(1, sizeof *sk);
        if (!sk)
            return -1;
        sk->next = s->socks;
        if (s->socks)
            s->socks->prev = sk;
        s->socks = sk;
        if (curl_multi_assign(s->multi, fd, sk) != CURLM_OK) {
            httpc_sock_free(s, sk);
            return -1;
        }
    } else if (sk->added) {
        event_del(&sk->ev);
        sk->added = 0;
    }
    short kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) | ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (event_assign(&sk->ev, s->h->base, fd, kind, httpc_sock_event, s) != 0 || event_add(&sk->ev, NULL) != 0)
        return -1;
    sk->added = 1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 fires on the next loop
 * iteration (never from inside this callback, which curl calls from
 * curl_multi_add_handle and friends). */
static int httpc_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct httpc_shard *s = userp;
    (void)multi;
    if (timeout_ms < 0) {
        evtimer_del(&s->timer_ev);
        return 0;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    return evtimer_add(&s->timer_ev, &tv) == 0 ? 0 : -1;
}

/* ---- easy handle callbacks (run inside curl: no user code here) ---- */

static size_t httpc_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    httpc_xfer *x = userdata;
    size_t n = size * nmemb;
    if (n > x->max_body - x->body_len) {
        x->overflow = OVER_BODY;
        return 0;
    }
    size_t need = x->body_len + n + 1;
    if (need > x->body_cap) {
        size_t cap = x->body_cap ? x->body_cap : 1024;
        while (cap < need)
            cap *= 2;
        if (cap > x->max_body + 1)
            cap = x->max_body + 1;
        char *nb = realloc(x->body, cap);
        if (!nb) {
            x->overflow = OVER_NOMEM;
            return 0;
        }
        x->body = nb;
        x->body_cap = cap;
    }
    memcpy(x->body + x->body_len, ptr, n);
    x->body_len += n;
    x->body[x->body_len] = '\0';
    return n;
}

static size_t httpc_header_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
    httpc_xfer *x = userdata;
    size_t total = size * nitems;
    size_t len = total;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* A new response begins (redirect, 100 Continue): keep only the last. */
        curl_slist_free_all(x->resp_headers);
        x->resp_headers = NULL;
        x->resp_header_bytes = 0;
        return total;
    }
    if (len == 0 || !memchr(buf, ':', len))
        return total;
    if (len > HTTPC_MAX_HEADER_BYTES - x->resp_header_bytes) {
        x->overflow = OVER_HEADERS;
        return 0;
    }
    char *line = malloc(len + 1);
    if (!line) {
        x->overflow = OVER_NOMEM;
        return 0;
    }
    memcpy(line, buf, len);
    line[len] = '\0';
    struct curl_slist *nl = curl_slist_append(x->resp_headers, line);
    free(line);
    if (!nl) {
        x->overflow = OVER_NOMEM;
        return 0;
    }
    x->resp_headers = nl;
    x->resp_header_bytes += len;
    return total;
}

/* ---- completion dispatch ---- */

static void httpc_free_now(httpc *h);

static void httpc_done_event(evutil_socket_t fd, short what, void *arg)
{
    httpc *h = arg;
    (void)fd;
    (void)what;
    /* Only what was queued before this round: callbacks that queue more
     * (failed submits, cancels) get the next round, so the loop breathes. */
    size_t n = h->q_len;
    h->dispatching++;
    while (n-- > 0 && !h->free_requested) {
        httpc_xfer *x = xfer_dequeue(h);
        if (!x)
            break;
        xfer_deliver(h, x);
    }
    h->dispatching--;
    if (h->free_requested) {
        if (h->dispatching == 0)
            httpc_free_now(h);
        return;
    }
    if (h->q_head)
        event_active(&h->done_ev, EV_TIMEOUT, 0);
}

/* ---- public API ---- */

httpc *httpc_new(struct event_base *base, char *err, size_t errlen)
{
    if (!base) {
        httpc_seterr(err, errlen, "httpc_new: no event_base given");
        return NULL;
    }
    httpc *h = calloc(1, sizeof *h);
    if (!h) {
        httpc_seterr(err, errlen, "httpc_new: out of memory");
        return NULL;
    }
    h->magic = HTTPC_MAGIC;
    h->base = base;
    h->max_body = HTTPC_DEFAULT_MAX_BODY;
    h->shard_fill = HTTPC_SHARD_FILL;
    if (event_assign(&h->done_ev, base, -1, 0, httpc_done_event, h) != 0) {
        httpc_seterr(err, errlen, "httpc_new: setting up the libevent events failed");
        free(h);
        return NULL;
    }
    /* libcurl and the multi handles come with the first transfer (curlfn.h) */
    return h;
}

/* Close shard S: its idle connections, its sockets and its timer. */
static void shard_free(struct httpc_shard *s)
{
    s->h->shard[s->index] = NULL;
    if (s->multi)
        curl_multi_cleanup(s->multi); /* may still report sockets through httpc_sock_cb */
    evtimer_del(&s->timer_ev);
    while (s->socks)
        httpc_sock_free(s, s->socks);
    free(s);
}

/* A shard other than 0 goes once its last transfer is out; never inside a
 * curl call (callers: after curl_multi_socket_action, and after a cancel). */
static void shard_retire_if_idle(struct httpc_shard *s)
{
    if (s->index != 0 && s->running == 0 && !s->h->freeing)
        shard_free(s);
}

/* Make shard I (loading libcurl on the very first). */
static struct httpc_shard *shard_new(httpc *h, int i, char *err, size_t errlen)
{
    if (curlfn_load(err, errlen) != 0)
        return NULL;
    struct httpc_shard *s = calloc(1, sizeof *s);
    if (!s) {
        httpc_seterr(err, errlen, "httpc: out of memory making a curl multi handle");
        return NULL;
    }
    s->h = h;
    s->index = i;
    s->multi = curl_multi_init();
    if (!s->multi) {
        httpc_seterr(err, errlen, "httpc: curl_multi_init failed (out of memory)");
        free(s);
        return NULL;
    }
    if (evtimer_assign(&s->timer_ev, h->base, httpc_timer_event, s) != 0 ||
        curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, httpc_sock_cb) != CURLM_OK ||
        curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s) != CURLM_OK ||
        curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, httpc_timer_cb) != CURLM_OK ||
        curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s) != CURLM_OK ||
        /* idle connections kept for reuse are bounded; open ones are not (5,000
         * conversations waiting on a slow model each hold one; kokod raises its
         * file limit at start) */
        curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS,
                          i == 0 ? HTTPC_MAXCONNECTS_FIRST : HTTPC_MAXCONNECTS_OTHER) != CURLM_OK) {
        httpc_seterr(err, errlen, "httpc: setting up the curl multi handle on libevent failed");
        curl_multi_cleanup(s->multi);
        free(s);
        return NULL;
    }
    h->shard[i] = s;
    return s;
}

/* The shard for the next transfer: the first with room, opening one where a
 * slot is free; when all are full, the least busy. */
static struct httpc_shard *shard_pick(httpc *h, char *err, size_t errlen)
{
    struct httpc_shard *best = NULL;
    for (int i = 0; i < HTTPC_MAX_SHARDS; i++) {
        struct httpc_shard *s = h->shard[i];
        if (!s)
            return shard_new(h, i, err, errlen);
        if (s->running < h->shard_fill)
            return s;
        if (!best || s->running < best->running)
            best = s;
    }
    return best;
}

void httpc_set_shard_fill(httpc *h, size_t fill)
{
    if (h && h->magic == HTTPC_MAGIC)
        h->shard_fill = fill ? fill : HTTPC_SHARD_FILL;
}

size_t httpc_shard_count(const httpc *h)
{
    size_t n = 0;
    if (h && h->magic == HTTPC_MAGIC)
        for (int i = 0; i < HTTPC_MAX_SHARDS; i++)
            n += h->shard[i] != NULL;
    return n;
}

void httpc_set_max_body(httpc *h, size_t bytes)
{
    if (h && h->magic == HTTPC_MAGIC)
        h->max_body = bytes ? bytes : HTTPC_DEFAULT_MAX_BODY;
}

httpc_xfer *httpc_submit(httpc *h, CURL *easy, struct curl_slist *headers, void *owner,
                         httpc_cb cb, void *arg)
{
    httpc_xfer *x = NULL;
    char lerr[256];
    if (!curlfn_loaded() && curlfn_load(lerr, sizeof lerr) != 0)
        return NULL; /* no libcurl in this process: then no plugin could have made EASY either */
    if (h && h->magic == HTTPC_MAGIC && !h->freeing && !h->free_requested && cb)
        x = calloc(1, sizeof *x);
    if (!x) {
        if (easy)
            curl_easy_cleanup(easy);
        curl_slist_free_all(headers);
        return NULL;
    }
    x->magic = XFER_MAGIC;
    x->state = XFER_RUNNING;
    x->h = h;
    x->easy = easy;
    x->req_headers = headers;
    x->owner = owner;
    x->cb = cb;
    x->arg = arg;
    x->max_body = h->max_body;
    x->start_ms = httpc_now_ms();
    xfer_link(h, x);

    if (!easy) {
        x->curl_code = CURLE_FAILED_INIT;
        xfer_error(x, "httpc: submit: no easy handle (did curl_easy_init fail?)");
        xfer_queue(x);
        return x;
    }
    CURLcode rc = CURLE_OK;
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_PRIVATE, (char *)x);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, httpc_write_cb);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, httpc_header_cb);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_HEADERDATA, x);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    /* answers are small JSON documents: curl's smallest receive buffer (1 KiB)
     * instead of its 16 KiB keeps thousands of waiting transfers light (5,000
     * waiting transfers: 125 MiB peak instead of 139 MiB with 4 KiB, bench-llm) */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 1024L);
    if (rc == CURLE_OK && headers)
        rc = curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    if (rc != CURLE_OK) {
        x->curl_code = (int)rc;
        xfer_error(x, "httpc: submit: curl_easy_setopt failed: %s", curl_easy_strerror(rc));
        xfer_queue(x);
        return x;
    }
    struct httpc_shard *s = shard_pick(h, lerr, sizeof lerr);
    if (!s) {
        x->curl_code = CURLE_FAILED_INIT;
        xfer_error(x, "%s", lerr);
        xfer_queue(x);
        return x;
    }
    CURLMcode mc = curl_multi_add_handle(s->multi, easy);
    if (mc != CURLM_OK) {
        x->curl_code = CURLE_FAILED_INIT;
        xfer_error(x, "httpc: submit: curl refused the handle: %s", curl_multi_strerror(mc));
        xfer_queue(x);
        shard_retire_if_idle(s);
        return x;
    }
    x->shard = s;
    s->running++;
    x->in_multi = 1;
    return x;
}

/* Returns 1 when X was newly cancelled. */
static int xfer_cancel(httpc_xfer *x)
{
    if (x->state == XFER_DELIVERING || x->cancelled)
        return 0;
    if (x->state == XFER_RUNNING) {
        struct httpc_shard *s = x->in_multi ? x->shard : NULL;
        xfer_remove(x);
        xfer_mark_cancelled(x);
        xfer_release_easy(x);
        xfer_queue(x);
        if (s)
            shard_retire_if_idle(s);
    } else {
        xfer_mark_cancelled(x); /* already queued: only the result changes */
    }
    return 1;
}

void httpc_cancel(httpc_xfer *x)
{
    if (x && x->magic == XFER_MAGIC)
        xfer_cancel(x);
}

size_t httpc_cancel_owner(httpc *h, void *owner)
{
    if (!h || h->magic != HTTPC_MAGIC)
        return 0;
    size_t n = 0;
    for (httpc_xfer *x = h->all; x; x = x->next) /* cancelling never unlinks */
        if (x->owner == owner)
            n += (size_t)xfer_cancel(x);
    return n;
}

size_t httpc_pending(const httpc *h, const void *owner)
{
    if (!h || h->magic != HTTPC_MAGIC)
        return 0;
    size_t n = 0;
    for (const httpc_xfer *x = h->all; x; x = x->next)
        if (!owner || x->owner == owner)
            n++;
    return n;
}

static void httpc_free_now(httpc *h)
{
    h->freeing = 1;
    for (httpc_xfer *x = h->all; x; x = x->next)
        xfer_cancel(x);
    /* Callbacks run here; anything they cancel is already queued, and they
     * cannot submit (httpc_submit returns NULL while freeing). */
    httpc_xfer *x;
    while ((x = xfer_dequeue(h)))
        xfer_deliver(h, x);
    event_del(&h->done_ev);
    for (int i = 0; i < HTTPC_MAX_SHARDS; i++)
        if (h->shard[i])
            shard_free(h->shard[i]);
    h->magic = 0;
    free(h);
}

void httpc_free(httpc *h)
{
    if (!h || h->magic != HTTPC_MAGIC || h->freeing)
        return;
    if (h->dispatching) {
        h->free_requested = 1;
        return;
    }
    httpc_free_now(h);
}
