/*
 * plugins/chatwoot/rest.c — Chatwoot's REST API out: replies, handoff, typing.
 *
 * A cw_call is one REST request with its retries: 429, 5xx, timeouts and
 * connection failures are retried with exponential backoff and jitter (a
 * Retry-After header is honoured), other 4xx are not, and after max_attempts
 * the call gives up. Message posts carry source_id "koko:<idempotency key>";
 * after an ambiguous failure (timeout or 5xx: Chatwoot may have created the
 * message and lost the answer) the next attempt first lists the
 * conversation's messages and stops if ours is there, so a retry never
 * double-posts. A cw_delivery runs the calls of one deliver() in order:
 * the reply, or on handoff toggle_status open, assignments, labels, the
 * private note and the holding reply. Typing indicators are single,
 * fire-and-forget calls.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "chatwoot.h"

typedef void (*call_fn)(cw_call *k, koko_status st, const json_t *body, const char *error);

struct cw_call {
    cw *c;
    char *method;    /* "POST" or "GET" */
    char *path;      /* from /api/v1/... */
    char *body;      /* JSON, NULL for GET */
    char *source_id; /* message posts: look for it before re-posting after an ambiguous failure */
    int retry;       /* 0: one attempt only (typing) */
    int attempt;     /* attempts started */
    int verify;      /* the next attempt starts by listing the messages */
    int checking;    /* the transfer in flight is that listing */
    koko_http *http;
    koko_timer *timer;
    size_t body_len, body_off; /* message posts: the body as read by libcurl (body_read) */
    int sends;                 /* message posts: times libcurl began sending this attempt */
    char last_error[256];
    call_fn done;
    void *arg;
    cw_call *prev, *next;
};

#define MAX_STEPS 8

/* Message posts reuse a keep-alive connection idle for at most this many
 * seconds: well under the idle timeouts of the servers in front of Chatwoot
 * (puma 20 s, nginx 75 s), so the server rarely closes one as we send. */
#define CW_POST_REUSE_S 4

typedef struct step {
    const char *what; /* "reply", "private note", ... for messages */
    char *path, *body, *source_id;
} step;

struct cw_delivery {
    cw *c;
    koko_deliver_fn done;
    void *arg;
    step steps[MAX_STEPS];
    size_t n_steps, cur;
    koko_status st;
    char error[512];
    char conv[32];
    int inside;   /* deliver() has not returned yet */
    int finished; /* done is due */
    int verify_first; /* a redelivery: look for each post's source_id before posting */
    koko_timer *timer;
    cw_delivery *prev, *next;
    cw_delivery *wait_next; /* waiting for its conversation's typing call (typing_slot.waiting) */
};

/* ---- small helpers ---- */

static unsigned next_rand(cw *c)
{
    c->rand_state = c->rand_state * 1103515245u + 12345u;
    return c->rand_state >> 8;
}

static char *json_text(json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return s;
}

/* Seconds from a Retry-After header line (delta-seconds or an HTTP date), or -1. */
static long retry_after_s(const struct curl_slist *h)
{
    for (; h; h = h->next) {
        if (strncasecmp(h->data, "Retry-After:", 12) != 0)
            continue;
        const char *v = h->data + 12;
        v += strspn(v, " \t");
        char *end = NULL;
        long s = strtol(v, &end, 10);
        if (end != v && (*end == '\0' || *end == '\r' || *end == '\n' || *end == ' '))
            return s < 0 ? 0 : s;
        time_t t = curl_getdate(v, NULL);
        if (t > 0)
            return t > time(NULL) ? (long)(t - time(NULL)) : 0;
    }
    return -1;
}

/* A short, single-line excerpt of an error body for messages. */
static void body_excerpt(const char *body, char *out, size_t len)
{
    size_t j = 0;
    for (size_t i = 0; body && body[i] && j + 1 < len && i < 160; i++)
        out[j++] = (body[i] == '\n' || body[i] == '\r') ? ' ' : body[i];
    out[j] = '\0';
}

/* ---- one call with retries ---- */

static void call_free(cw_call *k)
{
    cw *c = k->c;
    if (k->prev)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    free(k->method);
    free(k->path);
    free(k->body);
    free(k->source_id);
    free(k);
    c->busy--;
}

static void call_finish(cw_call *k, koko_status st, const json_t *body, const char *error)
{
    cw *c = k->c;
    k->done(k, st, body, error);
    call_free(k);
    cw_idle_check(c);
}

static void call_attempt(cw_call *k);
static void on_http(const koko_http_result *r, void *arg);

static void on_retry_timer(void *arg)
{
    cw_call *k = arg;
    k->timer = NULL;
    call_attempt(k);
}

/* The attempt failed in a way worth retrying: wait and try again, or give up. */
static void call_retry(cw_call *k, const koko_http_result *r)
{
    cw *c = k->c;
    if (!k->retry || k->attempt >= c->cfg.max_attempts) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s %s: gave up after %d attempt%s: %s", k->method, k->path, k->attempt,
                 k->attempt == 1 ? "" : "s", k->last_error);
        call_finish(k, KOKO_ERR_TEMPORARY, NULL, msg);
        return;
    }
    uint64_t base = (uint64_t)c->cfg.retry_base_ms << (k->attempt - 1 < 16 ? k->attempt - 1 : 16);
    if (base > CW_RETRY_CAP_MS)
        base = CW_RETRY_CAP_MS;
    uint64_t delay = base / 2 + next_rand(c) % (base / 2 + 1); /* "equal jitter" */
    long ra = r ? retry_after_s(r->headers) : -1;
    if (ra >= 0) {
        uint64_t ra_ms = (uint64_t)ra * 1000u;
        if (ra_ms > CW_RETRY_AFTER_CAP_MS)
            ra_ms = CW_RETRY_AFTER_CAP_MS;
        if (ra_ms > delay)
            delay = ra_ms;
    }
    c->host->log(c->inst, KOKO_LOG_WARN, "%s %s failed (%s); attempt %d of %d in %" PRIu64 " ms", k->method, k->path,
                 k->last_error, k->attempt + 1, c->cfg.max_attempts, delay);
    k->timer = c->host->timer_start(c->inst, delay, on_retry_timer, k);
    if (!k->timer)
        call_finish(k, KOKO_ERR_TEMPORARY, NULL, "cannot schedule a retry (kokod is stopping?)");
}

/* Message posts must never be sent twice by libcurl itself: when a reused
 * keep-alive connection dies after the request went out and before any answer
 * came back, libcurl re-sends the request on a new connection. body_prereq
 * refuses that second send, and body_seek refuses a rewind of a body already
 * read (the body goes through this read callback, not CURLOPT_POSTFIELDS,
 * which libcurl would simply send again). The transfer then fails and
 * on_http() treats it like a timeout: the next attempt lists the conversation
 * first, so the post is made at most once while connections are reused. */
static size_t body_read(char *buf, size_t size, size_t nitems, void *arg)
{
    cw_call *k = arg;
    size_t n = size * nitems, left = k->body_len - k->body_off;
    if (n > left)
        n = left;
    memcpy(buf, k->body + k->body_off, n);
    k->body_off += n;
    return n;
}

static int body_seek(void *arg, curl_off_t offset, int origin)
{
    const cw_call *k = arg;
    return origin == SEEK_SET && offset == 0 && k->body_off == 0 ? CURL_SEEKFUNC_OK : CURL_SEEKFUNC_FAIL;
}

/* Called each time libcurl is about to send the request. A second call for
 * one transfer is libcurl re-sending on its own after a reused connection
 * died without an answer — and libcurl 7.88 does that without asking
 * body_seek even when the whole body went out (seen: the server had created
 * the message). So the second send is refused: the transfer fails, and
 * on_http treats it like a timeout (list the conversation, then re-post only
 * if the message is not there). */
static int body_prereq(void *arg, char *conn_primary_ip, char *conn_local_ip, int conn_primary_port,
                       int conn_local_port)
{
    (void)conn_primary_ip;
    (void)conn_local_ip;
    (void)conn_primary_port;
    (void)conn_local_port;
    cw_call *k = arg;
    return k->sends++ == 0 ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT;
}

/* Start one transfer of K (the listing when K->checking). */
static void call_send(cw_call *k)
{
    cw *c = k->c;
    const char *method = k->checking ? "GET" : k->method;
    char *url = NULL;
    if (asprintf(&url, "%s%s", c->cfg.base_url, k->path) < 0)
        url = NULL;
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL, *t;
    char *tok = NULL;
    if (asprintf(&tok, "api_access_token: %s", c->cfg.api_token) < 0)
        tok = NULL;
    int ok = url && e && tok;
    ok = ok && (t = curl_slist_append(h, tok)) && (h = t);
    ok = ok && (t = curl_slist_append(h, "Accept: application/json")) && (h = t);
    ok = ok && (t = curl_slist_append(h, "Expect:")) && (h = t);
    if (ok && strcmp(method, "POST") == 0)
        ok = (t = curl_slist_append(h, "Content-Type: application/json; charset=utf-8")) && (h = t);
    if (ok) {
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->cfg.timeout_ms);
        if (strcmp(method, "POST") == 0) {
            const char *b = k->body ? k->body : "{}";
            if (k->source_id && k->body) {
                k->body_len = strlen(k->body);
                k->body_off = 0;
                k->sends = 0;
                curl_easy_setopt(e, CURLOPT_POST, 1L);
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)k->body_len);
                curl_easy_setopt(e, CURLOPT_READFUNCTION, body_read);
                curl_easy_setopt(e, CURLOPT_READDATA, k);
                curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, body_seek);
                curl_easy_setopt(e, CURLOPT_SEEKDATA, k);
                curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, body_prereq);
                curl_easy_setopt(e, CURLOPT_PREREQDATA, k);
                /* a connection idle for longer may be one the server is closing */
                curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, (long)CW_POST_REUSE_S);
            } else {
                curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(b));
                curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, b);
            }
        } else {
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        }
    }
    if (tok) {
        memset(tok, 0, strlen(tok));
        free(tok);
    }
    free(url);
    if (!ok) {
        curl_slist_free_all(h);
        if (e)
            curl_easy_cleanup(e);
        snprintf(k->last_error, sizeof k->last_error, "out of memory");
        call_retry(k, NULL);
        return;
    }
    k->http = c->host->http_submit(c->inst, e, h, on_http, k);
    if (!k->http) {
        snprintf(k->last_error, sizeof k->last_error, "the host refused the transfer (kokod is stopping?)");
        call_retry(k, NULL);
    }
}

static void call_attempt(cw_call *k)
{
    k->attempt++;
    k->checking = k->verify && k->source_id;
    call_send(k);
}

/* Does the message listing BODY hold a message with K's source_id? */
static int listing_has(const cw_call *k, const char *body, size_t len)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    const json_t *arr = json_object_get(doc, "payload");
    if (!json_is_array(arr))
        arr = doc;
    int found = 0;
    size_t i;
    const json_t *m;
    json_array_foreach(arr, i, m)
    {
        const char *sid = json_string_value(json_object_get(m, "source_id"));
        if (sid && strcmp(sid, k->source_id) == 0)
            found = 1;
    }
    json_decref(doc);
    return found;
}

static void on_http(const koko_http_result *r, void *arg)
{
    cw_call *k = arg;
    cw *c = k->c;
    k->http = NULL;
    if (r->cancelled) {
        call_finish(k, KOKO_ERR_CANCELLED, NULL, "cancelled");
        return;
    }
    const char *what = k->checking ? "GET" : k->method;
    char ex[200];
    body_excerpt(r->body, ex, sizeof ex);
    int failed = r->curl_code != CURLE_OK || r->status == 0;
    if (failed)
        snprintf(k->last_error, sizeof k->last_error, "%s", r->error ? r->error : "no response");
    else if (r->status < 200 || r->status >= 300)
        snprintf(k->last_error, sizeof k->last_error, "HTTP %ld%s%s", r->status, *ex ? ": " : "", ex);
    int ok = !failed && r->status >= 200 && r->status < 300;
    int retryable = failed || r->status == 429 || r->status >= 500;
    if (ok && k->checking) {
        k->checking = 0;
        if (listing_has(k, r->body, r->body_len)) {
            c->host->log(c->inst, KOKO_LOG_INFO, "%s %s: already posted (source_id %s found); not posting again",
                         k->method, k->path, k->source_id);
            call_finish(k, KOKO_OK, NULL, NULL);
            return;
        }
        k->verify = 0;
        call_send(k); /* same attempt: the earlier try did not create it */
        return;
    }
    if (ok) {
        json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
        call_finish(k, KOKO_OK, doc, NULL);
        json_decref(doc);
        return;
    }
    if (!retryable) {
        char msg[400];
        snprintf(msg, sizeof msg, "%s %s: %s", what, k->path, k->last_error);
        if (r->status == 401)
            c->host->log(c->inst, KOKO_LOG_ERROR,
                         "Chatwoot refused api_token (HTTP 401): check api_token and that "
                         "the agent bot or agent is in the inbox");
        call_finish(k, KOKO_ERR_PERMANENT, NULL, msg);
        return;
    }
    /* A timeout or 5xx may have created the message: check before re-posting. 429 never did. */
    if (!k->checking && k->source_id && r->status != 429)
        k->verify = 1;
    k->checking = 0;
    call_retry(k, r);
}

/* Start a call; DONE runs later, exactly once. Takes PATH and BODY. RETRY:
 * CALL_RETRY retries failures, CALL_VERIFY first looks whether SOURCE_ID was
 * posted already. -1 (and DONE never runs) when out of memory. */
#define CALL_RETRY 1
#define CALL_VERIFY 2
static int call_start(cw *c, const char *method, char *path, char *body, const char *source_id, int retry, call_fn done,
                      void *arg)
{
    cw_call *k = calloc(1, sizeof *k);
    if (!k || !(k->method = strdup(method)) || !path || (source_id && !(k->source_id = strdup(source_id)))) {
        if (k) {
            free(k->method);
            free(k->source_id);
        }
        free(k);
        free(path);
        free(body);
        return -1;
    }
    k->c = c;
    k->path = path;
    k->body = body;
    k->retry = retry & CALL_RETRY;
    k->verify = (retry & CALL_VERIFY) && source_id;
    k->done = done;
    k->arg = arg;
    k->next = c->calls;
    if (c->calls)
        c->calls->prev = k;
    c->calls = k;
    c->busy++;
    call_attempt(k);
    return 0;
}

/* ---- deliveries ---- */

static void step_free(step *s)
{
    free(s->path);
    free(s->body);
    free(s->source_id);
    memset(s, 0, sizeof *s);
}

static void delivery_free(cw_delivery *d)
{
    cw *c = d->c;
    if (d->prev)
        d->prev->next = d->next;
    else
        c->deliveries = d->next;
    if (d->next)
        d->next->prev = d->prev;
    for (size_t i = 0; i < d->n_steps; i++)
        step_free(&d->steps[i]);
    free(d);
    c->busy--;
}

static void delivery_report(cw_delivery *d)
{
    cw *c = d->c;
    if (d->st != KOKO_OK)
        c->host->log(c->inst, KOKO_LOG_ERROR, "conversation %s: delivery failed: %s", d->conv, d->error);
    koko_deliver_fn done = d->done;
    void *arg = d->arg;
    koko_status st = d->st;
    char error[sizeof d->error];
    snprintf(error, sizeof error, "%s", d->error);
    delivery_free(d);
    done(st, st == KOKO_OK ? NULL : error, arg);
    cw_idle_check(c);
}

static void on_report_timer(void *arg)
{
    cw_delivery *d = arg;
    d->timer = NULL;
    delivery_report(d);
}

static void on_report_post(void *arg)
{
    delivery_report(arg);
}

/* All steps ran (or one was cancelled): report, never from inside deliver(). */
static void delivery_finish(cw_delivery *d)
{
    d->finished = 1;
    if (!d->inside) {
        delivery_report(d);
        return;
    }
    cw *c = d->c;
    d->timer = c->host->timer_start(c->inst, 0, on_report_timer, d);
    if (!d->timer && c->host->post(c->inst, on_report_post, d) != 0)
        c->host->log(c->inst, KOKO_LOG_ERROR, "conversation %s: cannot report the delivery (no timer)", d->conv);
}

static void delivery_next(cw_delivery *d);
static int typing_hold(cw *c, cw_delivery *d);

static void on_step_done(cw_call *k, koko_status st, const json_t *body, const char *error)
{
    (void)body;
    cw_delivery *d = k->arg;
    if (st != KOKO_OK && d->st == KOKO_OK) {
        d->st = st;
        snprintf(d->error, sizeof d->error, "%s: %s", d->steps[d->cur].what, error ? error : "failed");
    } else if (st == KOKO_ERR_CANCELLED) {
        d->st = st;
    }
    step_free(&d->steps[d->cur]);
    d->cur++;
    if (st == KOKO_ERR_CANCELLED)
        d->cur = d->n_steps;
    delivery_next(d);
}

static void delivery_next(cw_delivery *d)
{
    if (d->cur >= d->n_steps) {
        delivery_finish(d);
        return;
    }
    step *s = &d->steps[d->cur];
    char *path = s->path, *body = s->body;
    s->path = s->body = NULL;
    if (call_start(d->c, "POST", path, body, s->source_id, CALL_RETRY | (d->verify_first ? CALL_VERIFY : 0),
                   on_step_done, d) != 0) {
        if (d->st == KOKO_OK) {
            d->st = KOKO_ERR_TEMPORARY;
            snprintf(d->error, sizeof d->error, "%s: out of memory", s->what);
        }
        d->cur = d->n_steps;
        delivery_finish(d);
    }
}

static int add_step(cw_delivery *d, const char *what, const char *conv_path, const char *suffix, json_t *body,
                    const char *source_id)
{
    step *s = &d->steps[d->n_steps];
    s->what = what;
    if (asprintf(&s->path, "%s%s", conv_path, suffix) < 0)
        s->path = NULL;
    s->body = json_text(body);
    s->source_id = source_id ? strdup(source_id) : NULL;
    d->n_steps++;
    return s->path && s->body && (!source_id || s->source_id) ? 0 : -1;
}

/* ---- the private note ---- */

typedef struct buf {
    char *p;
    size_t len, cap;
    int oom;
} buf;

static void buf_add(buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = (b->cap ? b->cap * 2 : 256) + n;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void sources_text(buf *b, const json_t *sources)
{
    size_t i, n = 0;
    const json_t *s;
    json_array_foreach(sources, i, s)
    {
        const char *file = json_string_value(json_object_get(s, "file"));
        const char *heading = json_string_value(json_object_get(s, "heading"));
        const json_t *score = json_object_get(s, "score");
        char line[64];
        if (!file)
            continue;
        buf_str(b, n++ ? "\n- " : "- ");
        buf_str(b, file);
        if (heading && *heading) {
            buf_str(b, " › ");
            buf_str(b, heading);
        }
        if (json_is_number(score)) {
            snprintf(line, sizeof line, " (%.2f)", json_number_value(score));
            buf_str(b, line);
        }
    }
    if (n == 0)
        buf_str(b, "—");
}

static const char *or_dash(const char *s)
{
    return s && *s ? s : "—";
}

/* The note template with its {fields} filled in; caller frees. */
static char *render_note(const cw *c, const koko_reply *r)
{
    const char *question =
        KOKO_HAS_FIELD(r, koko_reply, question) && r->question ? r->question : (r->msg ? r->msg->text : NULL);
    buf b = {0};
    const char *p = c->cfg.note;
    while (*p) {
        const char *open = strchr(p, '{');
        const char *close = open ? strchr(open, '}') : NULL;
        if (!open || !close) {
            buf_str(&b, p);
            break;
        }
        buf_add(&b, p, (size_t)(open - p));
        size_t n = (size_t)(close - open - 1);
        char conf[32];
#define IS(name) (n == strlen(name) && strncmp(open + 1, name, n) == 0)
        if (IS("reason"))
            buf_str(&b, or_dash(r->handoff_reason));
        else if (IS("question"))
            buf_str(&b, or_dash(question));
        else if (IS("draft"))
            buf_str(&b, or_dash(r->draft));
        else if (IS("sources"))
            sources_text(&b, r->sources);
        else if (IS("confidence")) {
            if (r->confidence >= 0)
                snprintf(conf, sizeof conf, "%.2f", r->confidence);
            else
                snprintf(conf, sizeof conf, "—");
            buf_str(&b, conf);
        } else if (IS("backend"))
            buf_str(&b, or_dash(r->backend));
        else if (IS("conversation"))
            buf_str(&b, or_dash(r->msg ? r->msg->conversation_id : NULL));
        else
            buf_add(&b, open, (size_t)(close - open + 1));
#undef IS
        p = close + 1;
    }
    if (!b.p && !b.oom)
        buf_str(&b, "");
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- deliver ---- */

static int digits(const char *s)
{
    if (!s || !*s || strlen(s) > 20)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* The conversation's current labels (from the webhook) plus the configured ones. */
static json_t *merged_labels(const cw *c, const json_t *meta)
{
    json_t *out = json_array();
    size_t i;
    const json_t *l;
    json_array_foreach(json_object_get(meta, "labels"), i, l) if (json_is_string(l))
        json_array_append(out, (json_t *)l);
    for (size_t j = 0; j < c->cfg.n_labels; j++) {
        int have = 0;
        json_array_foreach(out, i, l) if (strcmp(json_string_value(l), c->cfg.labels[j]) == 0) have = 1;
        if (!have)
            json_array_append_new(out, json_string(c->cfg.labels[j]));
    }
    return out;
}

static int build_steps(cw *c, cw_delivery *d, const koko_reply *r, const char *conv_path, const char *key)
{
    char sid[300], note_sid[320];
    snprintf(sid, sizeof sid, "koko:%s", key);
    snprintf(note_sid, sizeof note_sid, "koko:%s:note", key);
    int rc = 0;
    if (r->handoff) {
        rc |= add_step(d, "toggle_status", conv_path, "/toggle_status", json_pack("{s:s}", "status", "open"), NULL);
        if (c->cfg.team_id)
            rc |= add_step(d, "team assignment", conv_path, "/assignments",
                           json_pack("{s:I}", "team_id", (json_int_t)c->cfg.team_id), NULL);
        if (c->cfg.assignee_id)
            rc |= add_step(d, "agent assignment", conv_path, "/assignments",
                           json_pack("{s:I}", "assignee_id", (json_int_t)c->cfg.assignee_id), NULL);
        if (c->cfg.n_labels)
            rc |= add_step(d, "labels", conv_path, "/labels",
                           json_pack("{s:o}", "labels", merged_labels(c, r->msg ? r->msg->meta : NULL)), NULL);
        char *note = render_note(c, r);
        rc |= add_step(d, "private note", conv_path, "/messages",
                       note ? json_pack("{s:s,s:s,s:b,s:s}", "content", note, "message_type", "outgoing", "private", 1,
                                        "source_id", note_sid)
                            : NULL,
                       note_sid);
        free(note);
    }
    if (r->text && *r->text)
        rc |= add_step(d, "reply", conv_path, "/messages",
                       json_pack("{s:s,s:s,s:b,s:s}", "content", r->text, "message_type", "outgoing", "private", 0,
                                 "source_id", sid),
                       sid);
    return rc;
}

void cw_deliver(void *state, const koko_reply *r, koko_deliver_fn done, void *arg)
{
    cw *c = state;
    cw_delivery *d = calloc(1, sizeof *d);
    if (!d) {
        c->host->log(c->inst, KOKO_LOG_ERROR, "out of memory: reply not delivered");
        return; /* nothing can report it later without memory */
    }
    d->c = c;
    d->done = done;
    d->arg = arg;
    d->inside = 1;
    d->verify_first = KOKO_HAS_FIELD(r, koko_reply, redelivery) && r->redelivery;
    d->next = c->deliveries;
    if (c->deliveries)
        c->deliveries->prev = d;
    c->deliveries = d;
    c->busy++;

    const json_t *meta = r->msg ? r->msg->meta : NULL;
    const char *conv = json_string_value(json_object_get(meta, "conversation_id"));
    if (!conv && r->msg)
        conv = r->msg->conversation_id;
    const json_t *acc = json_object_get(meta, "account_id");
    long long account = json_is_integer(acc) ? (long long)json_integer_value(acc) : c->cfg.account_id;
    snprintf(d->conv, sizeof d->conv, "%s", conv ? conv : "?");
    const char *key = r->idempotency_key && *r->idempotency_key ? r->idempotency_key
                                                                : (r->msg && r->msg->msg_id ? r->msg->msg_id : "");
    char conv_path[128];
    if (!digits(conv)) {
        d->st = KOKO_ERR_PERMANENT;
        snprintf(d->error, sizeof d->error, "conversation id \"%.40s\" is not a Chatwoot conversation id",
                 conv ? conv : "");
    } else if (!*key) {
        d->st = KOKO_ERR_PERMANENT;
        snprintf(d->error, sizeof d->error, "no idempotency key and no message id: cannot post safely");
    } else {
        snprintf(conv_path, sizeof conv_path, "/api/v1/accounts/%lld/conversations/%s", account, conv);
        if (build_steps(c, d, r, conv_path, key) != 0) {
            d->st = KOKO_ERR_TEMPORARY;
            snprintf(d->error, sizeof d->error, "out of memory");
            for (size_t i = 0; i < d->n_steps; i++)
                step_free(&d->steps[i]);
            d->n_steps = 0;
        }
    }
    if (d->n_steps)
        c->host->log(c->inst, KOKO_LOG_DEBUG, "conversation %s: delivering %s%s", d->conv,
                     r->handoff ? "a handoff" : "a reply", r->handoff && r->text && *r->text ? " with a reply" : "");
    if (!(d->n_steps && typing_hold(c, d)))
        delivery_next(d);
    d->inside = 0;
}

/* ---- typing ----
 * Calls for one conversation go one at a time, so an "off" never overtakes
 * the "on" before it (the indicator would stay on); a state asked for while
 * one is in flight is sent next, and only the latest such state. */

struct typing_slot {
    cw *c;
    char conv[32];
    long long account;
    int pending; /* -1: nothing queued, else the state to send next */
    cw_delivery *waiting; /* replies held until the "on" in flight has landed */
    typing_slot *next;
};

static void typing_send(typing_slot *t, int on);

/* A reply waits for the typing call in flight in its conversation, so the
 * customer sees "typing…" before the answer, never after it. */
static int typing_hold(cw *c, cw_delivery *d)
{
    for (typing_slot *t = c->typing; t; t = t->next)
        if (strcmp(t->conv, d->conv) == 0) {
            cw_delivery **pp = &t->waiting;
            while (*pp)
                pp = &(*pp)->wait_next;
            *pp = d;
            return 1;
        }
    return 0;
}

static void typing_release(typing_slot *t)
{
    while (t->waiting) {
        cw_delivery *d = t->waiting;
        t->waiting = d->wait_next;
        d->wait_next = NULL;
        delivery_next(d);
    }
}

static void typing_slot_free(typing_slot *t)
{
    cw *c = t->c;
    for (typing_slot **p = &c->typing; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            break;
        }
    free(t);
}

static void on_typing_done(cw_call *k, koko_status st, const json_t *body, const char *error)
{
    (void)body;
    typing_slot *t = k->arg;
    cw *c = k->c;
    if (st != KOKO_OK && st != KOKO_ERR_CANCELLED)
        c->host->log(c->inst, KOKO_LOG_INFO, "conversation %s: typing indicator not changed: %s", t->conv,
                     error ? error : "failed");
    typing_release(t);
    if (t->pending >= 0 && st != KOKO_ERR_CANCELLED) {
        int on = t->pending;
        t->pending = -1;
        typing_send(t, on);
        return;
    }
    typing_slot_free(t);
}

static void typing_send(typing_slot *t, int on)
{
    cw *c = t->c;
    char *path = NULL;
    if (asprintf(&path, "/api/v1/accounts/%lld/conversations/%s/toggle_typing_status", t->account, t->conv) < 0)
        path = NULL;
    char *body = json_text(json_pack("{s:s}", "typing_status", on ? "on" : "off"));
    if (!path || !body || call_start(c, "POST", path, body, NULL, 0, on_typing_done, t) != 0) {
        if (!path || !body) {
            free(path);
            free(body);
        }
        c->host->log(c->inst, KOKO_LOG_WARN, "out of memory: typing indicator not sent");
        typing_slot_free(t);
    }
}

void cw_typing(void *state, const koko_msg *msg, int on)
{
    cw *c = state;
    const char *conv = json_string_value(json_object_get(msg ? msg->meta : NULL, "conversation_id"));
    if (!conv && msg)
        conv = msg->conversation_id;
    if (!digits(conv) || c->stopping)
        return;
    for (typing_slot *t = c->typing; t; t = t->next)
        if (strcmp(t->conv, conv) == 0) {
            t->pending = on ? 1 : 0;
            return;
        }
    typing_slot *t = calloc(1, sizeof *t);
    if (!t)
        return;
    const json_t *acc = json_object_get(msg->meta, "account_id");
    t->c = c;
    t->account = json_is_integer(acc) ? (long long)json_integer_value(acc) : c->cfg.account_id;
    snprintf(t->conv, sizeof t->conv, "%s", conv);
    t->pending = -1;
    t->next = c->typing;
    c->typing = t;
    typing_send(t, on);
}

/* ---- destroy ---- */

void cw_rest_free(cw *c)
{
    while (c->typing) {
        typing_slot *t = c->typing;
        c->typing = t->next;
        free(t);
    }
    while (c->calls) {
        cw_call *k = c->calls;
        k->done = NULL;
        c->calls = k->next;
        free(k->method);
        free(k->path);
        free(k->body);
        free(k->source_id);
        free(k);
    }
    while (c->deliveries) {
        cw_delivery *d = c->deliveries;
        c->deliveries = d->next;
        koko_deliver_fn done = d->done;
        void *arg = d->arg;
        for (size_t i = 0; i < d->n_steps; i++)
            step_free(&d->steps[i]);
        free(d);
        done(KOKO_ERR_CANCELLED, "the Chatwoot channel was stopped before the delivery finished", arg);
    }
}
