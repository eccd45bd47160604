/*
 * tests/test_httpc.c — core/httpc against a real HTTP server.
 *
 * A small evhttp server runs on 127.0.0.1 (ephemeral port) in the SAME
 * event_base as the client, so any call that blocked the loop would hang the
 * test. Paths: /json (200 + headers), /500, /slow (reply after 2 s, for
 * timeouts and cancellation), /big (100000 bytes), /echo (POST, checks a
 * request header). Every callback records how often it ran and whether it ran
 * inside httpc_submit(), which must never happen.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "httpc.h"

#define BIG_SIZE 100000
#define SLOW_MS 2000

/* ---- the server ---- */

struct slow_reply {
    struct event *ev;
    struct evhttp_request *req;
    struct slow_reply *next;
};

static struct event_base *g_base;
static struct evhttp *g_http;
static int g_port;
static char g_url[64];
static struct slow_reply *g_slow;
static httpc *g_h;

static void reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
}

static void on_json(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", "application/json");
    evhttp_add_header(out, "X-Test", "yes");
    reply(req, 200, "{\"ok\":true}");
}

static void on_500(struct evhttp_request *req, void *arg)
{
    (void)arg;
    reply(req, 500, "{\"error\":\"boom\"}");
}

static void on_big(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    char chunk[1000];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < BIG_SIZE / 1000; i++)
        evbuffer_add(b, chunk, sizeof chunk);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void slow_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct slow_reply *s = arg;
    for (struct slow_reply **p = &g_slow; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            break;
        }
    reply(s->req, 200, "slow");
    event_free(s->ev);
    free(s);
}

static void on_slow(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct slow_reply *s = calloc(1, sizeof *s);
    ck_assert_ptr_nonnull(s);
    s->req = req;
    s->ev = evtimer_new(g_base, slow_fire, s);
    struct timeval tv = {SLOW_MS / 1000, (SLOW_MS % 1000) * 1000};
    evtimer_add(s->ev, &tv);
    s->next = g_slow;
    g_slow = s;
}

/* POST only, and only with the request header the client must send. */
static void on_echo(struct evhttp_request *req, void *arg)
{
    (void)arg;
    if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
        reply(req, 405, "POST only");
        return;
    }
    const char *tok = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Koko-Token");
    if (!tok || strcmp(tok, "t0ken") != 0) {
        reply(req, 401, "missing token");
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    char len[32];
    snprintf(len, sizeof len, "%zu", evbuffer_get_length(in));
    evhttp_add_header(evhttp_request_get_output_headers(req), "X-Echo-Len", len);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_buffer(b, in);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static void server_start(void)
{
    g_http = evhttp_new(g_base);
    ck_assert_ptr_nonnull(g_http);
    evhttp_set_allowed_methods(g_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST);
    evhttp_set_cb(g_http, "/json", on_json, NULL);
    evhttp_set_cb(g_http, "/500", on_500, NULL);
    evhttp_set_cb(g_http, "/big", on_big, NULL);
    evhttp_set_cb(g_http, "/slow", on_slow, NULL);
    evhttp_set_cb(g_http, "/echo", on_echo, NULL);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(g_http, "127.0.0.1", 0);
    ck_assert_ptr_nonnull(bs);
    struct sockaddr_in sa;
    socklen_t salen = sizeof sa;
    ck_assert_int_eq(getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &salen), 0);
    g_port = ntohs(sa.sin_port);
    snprintf(g_url, sizeof g_url, "http://127.0.0.1:%d", g_port);
}

static void server_stop(void)
{
    while (g_slow) {
        struct slow_reply *s = g_slow;
        g_slow = s->next;
        event_free(s->ev);
        reply(s->req, 200, "slow"); /* frees the request, also when its client left */
        free(s);
    }
    evhttp_free(g_http);
    g_http = NULL;
}

/* ---- loop helpers ---- */

static int g_done;      /* callbacks run so far */
static int g_in_submit; /* 1 while inside httpc_submit */
static int g_expired;

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    g_expired = 1;
}

/* Run the loop until g_done reaches TARGET or MS milliseconds pass. */
static void run_until(int target, int ms)
{
    struct event *dl = evtimer_new(g_base, deadline_cb, NULL);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    g_expired = 0;
    evtimer_add(dl, &tv);
    while (g_done < target && !g_expired)
        event_base_loop(g_base, EVLOOP_ONCE);
    event_free(dl);
}

/* Run the loop for MS milliseconds, whatever happens. */
static void run_for(int ms)
{
    run_until(1 << 30, ms);
}

static CURL *easy_for(const char *path)
{
    CURL *e = curl_easy_init();
    ck_assert_ptr_nonnull(e);
    char url[256];
    snprintf(url, sizeof url, "%s%s", g_url, path);
    ck_assert_int_eq(curl_easy_setopt(e, CURLOPT_URL, url), CURLE_OK);
    return e;
}

typedef struct rec {
    int calls;
    int ran_in_submit;
    long status;
    int curl_code;
    int cancelled;
    int has_error;
    char error[512];
    char body[256];
    size_t body_len;
    char hdr_xtest[64];
    char hdr_echo_len[32];
    double total_ms;
} rec;

static void rec_fill(rec *c, const httpc_result *r)
{
    c->calls++;
    g_done++;
    if (g_in_submit)
        c->ran_in_submit = 1;
    c->status = r->status;
    c->curl_code = r->curl_code;
    c->cancelled = r->cancelled;
    c->has_error = r->error != NULL;
    snprintf(c->error, sizeof c->error, "%s", r->error ? r->error : "");
    ck_assert_ptr_nonnull(r->body);
    ck_assert_int_eq(r->body[r->body_len], '\0');
    snprintf(c->body, sizeof c->body, "%s", r->body);
    c->body_len = r->body_len;
    for (const struct curl_slist *l = r->headers; l; l = l->next) {
        if (strncasecmp(l->data, "X-Test: ", 8) == 0)
            snprintf(c->hdr_xtest, sizeof c->hdr_xtest, "%s", l->data + 8);
        if (strncasecmp(l->data, "X-Echo-Len: ", 12) == 0)
            snprintf(c->hdr_echo_len, sizeof c->hdr_echo_len, "%s", l->data + 12);
    }
    c->total_ms = r->total_ms;
}

static void rec_cb(const httpc_result *r, void *arg)
{
    rec_fill(arg, r);
}

static httpc_xfer *submit(CURL *e, struct curl_slist *hdrs, void *owner, httpc_cb cb, void *arg)
{
    g_in_submit = 1;
    httpc_xfer *x = httpc_submit(g_h, e, hdrs, owner, cb, arg);
    g_in_submit = 0;
    return x;
}

static void setup(void)
{
    g_base = event_base_new();
    ck_assert_ptr_nonnull(g_base);
    server_start();
    char err[256] = "";
    g_h = httpc_new(g_base, err, sizeof err);
    ck_assert_msg(g_h != NULL, "httpc_new: %s", err);
    g_done = 0;
}

static void teardown(void)
{
    httpc_free(g_h);
    g_h = NULL;
    server_stop();
    event_base_free(g_base);
    g_base = NULL;
}

/* ---- tests ---- */

START_TEST(test_get_json)
{
    rec c = {0};
    ck_assert_ptr_nonnull(submit(easy_for("/json"), NULL, NULL, rec_cb, &c));
    ck_assert_int_eq(c.calls, 0);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 1);
    run_until(1, 5000);
    run_for(50);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.ran_in_submit, 0);
    ck_assert_int_eq(c.status, 200);
    ck_assert_int_eq(c.curl_code, CURLE_OK);
    ck_assert_int_eq(c.cancelled, 0);
    ck_assert_int_eq(c.has_error, 0);
    ck_assert_str_eq(c.body, "{\"ok\":true}");
    ck_assert_uint_eq(c.body_len, 11);
    ck_assert_str_eq(c.hdr_xtest, "yes");
    ck_assert(c.total_ms > 0.0);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

START_TEST(test_status_500)
{
    rec c = {0};
    submit(easy_for("/500"), NULL, NULL, rec_cb, &c);
    run_until(1, 5000);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.status, 500);
    ck_assert_int_eq(c.curl_code, CURLE_OK);
    ck_assert_int_eq(c.has_error, 0);
    ck_assert_str_eq(c.body, "{\"error\":\"boom\"}");
}
END_TEST

START_TEST(test_timeout)
{
    rec c = {0};
    CURL *e = easy_for("/slow");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 200L);
    submit(e, NULL, NULL, rec_cb, &c);
    run_until(1, 5000);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.curl_code, CURLE_OPERATION_TIMEDOUT);
    ck_assert_int_eq(c.status, 0);
    ck_assert_int_eq(c.cancelled, 0);
    ck_assert_msg(strstr(c.error, "timed out") != NULL, "error: %s", c.error);
    ck_assert_msg(strstr(c.error, "/slow") != NULL, "error names the URL: %s", c.error);
    ck_assert(c.total_ms >= 150.0 && c.total_ms < 1500.0);
}
END_TEST

START_TEST(test_body_limit)
{
    rec over = {0}, exact = {0}, dflt = {0};
    httpc_set_max_body(g_h, 1000);
    submit(easy_for("/big"), NULL, NULL, rec_cb, &over);
    httpc_set_max_body(g_h, BIG_SIZE);
    submit(easy_for("/big"), NULL, NULL, rec_cb, &exact);
    httpc_set_max_body(g_h, 0);
    submit(easy_for("/big"), NULL, NULL, rec_cb, &dflt);
    run_until(3, 5000);
    ck_assert_int_eq(over.calls, 1);
    ck_assert_int_eq(over.curl_code, CURLE_WRITE_ERROR);
    ck_assert_msg(strstr(over.error, "response body larger than 1000 bytes") != NULL, "error: %s",
                  over.error);
    ck_assert_uint_eq(over.body_len, 0);
    ck_assert_int_eq(exact.curl_code, CURLE_OK);
    ck_assert_uint_eq(exact.body_len, BIG_SIZE);
    ck_assert_int_eq(dflt.curl_code, CURLE_OK);
    ck_assert_uint_eq(dflt.body_len, BIG_SIZE);
}
END_TEST

START_TEST(test_refused)
{
    /* A port that was free a moment ago and has no listener now. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t salen = sizeof sa;
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &salen), 0);
    close(fd);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x?key=SECRET", ntohs(sa.sin_port));
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, url);
    rec c = {0};
    int watched = event_base_get_num_events(g_base, EVENT_BASE_COUNT_ADDED);
    submit(e, NULL, NULL, rec_cb, &c);
    run_until(1, 5000);
    run_for(20);
    /* curl's CURL_POLL_REMOVE released the socket's event (and the timer). */
    ck_assert_int_eq(event_base_get_num_events(g_base, EVENT_BASE_COUNT_ADDED), watched);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.curl_code, CURLE_COULDNT_CONNECT);
    ck_assert_int_eq(c.status, 0);
    ck_assert_int_eq(c.has_error, 1);
    ck_assert_msg(strstr(c.error, "SECRET") == NULL, "query leaked into error: %s", c.error);
}
END_TEST

#define MANY 500
START_TEST(test_many_concurrent)
{
    static rec c[MANY];
    memset(c, 0, sizeof c);
    const char *paths[] = {"/json", "/500", "/big"};
    for (int i = 0; i < MANY; i++)
        ck_assert_ptr_nonnull(submit(easy_for(paths[i % 3]), NULL, NULL, rec_cb, &c[i]));
    ck_assert_uint_eq(httpc_pending(g_h, NULL), MANY);
    run_until(MANY, 15000);
    run_for(50);
    for (int i = 0; i < MANY; i++) {
        ck_assert_int_eq(c[i].calls, 1);
        ck_assert_int_eq(c[i].ran_in_submit, 0);
        ck_assert_int_eq(c[i].curl_code, CURLE_OK);
        ck_assert_int_eq(c[i].status, i % 3 == 1 ? 500 : 200);
        if (i % 3 == 2)
            ck_assert_uint_eq(c[i].body_len, BIG_SIZE);
    }
    ck_assert_int_eq(g_done, MANY);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

/* Shards of 4: ten slow transfers open three multi handles; cancelling the
 * third shard's two closes it at once, the second closes with its last
 * answer, the first stays (and serves the next transfer). */
START_TEST(test_shards)
{
    static rec c[10];
    memset(c, 0, sizeof c);
    httpc_xfer *x[10];
    httpc_set_shard_fill(g_h, 4);
    ck_assert_uint_eq(httpc_shard_count(g_h), 0);
    for (int i = 0; i < 10; i++)
        ck_assert_ptr_nonnull(x[i] = submit(easy_for("/slow"), NULL, NULL, rec_cb, &c[i]));
    ck_assert_uint_eq(httpc_shard_count(g_h), 3);
    run_for(200); /* all ten are at the server now */
    ck_assert_int_eq(g_done, 0);
    httpc_cancel(x[8]);
    ck_assert_uint_eq(httpc_shard_count(g_h), 3);
    httpc_cancel(x[9]);
    ck_assert_uint_eq(httpc_shard_count(g_h), 2);
    run_until(10, 10000);
    run_for(50);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(c[i].calls, 1);
        ck_assert_int_eq(c[i].ran_in_submit, 0);
        ck_assert_int_eq(c[i].cancelled, i >= 8);
        if (i < 8) {
            ck_assert_int_eq(c[i].curl_code, CURLE_OK);
            ck_assert_str_eq(c[i].body, "slow");
        }
    }
    ck_assert_uint_eq(httpc_shard_count(g_h), 1);
    rec j = {0};
    ck_assert_ptr_nonnull(submit(easy_for("/json"), NULL, NULL, rec_cb, &j));
    ck_assert_uint_eq(httpc_shard_count(g_h), 1);
    run_until(11, 5000);
    ck_assert_int_eq(j.status, 200);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

/* Freeing the client with transfers in three shards: every callback runs
 * (cancelled), and nothing leaks (the sanitizer build). */
START_TEST(test_free_with_shards)
{
    static rec c[9];
    memset(c, 0, sizeof c);
    httpc_set_shard_fill(g_h, 3);
    for (int i = 0; i < 9; i++)
        ck_assert_ptr_nonnull(submit(easy_for("/slow"), NULL, NULL, rec_cb, &c[i]));
    ck_assert_uint_eq(httpc_shard_count(g_h), 3);
    run_for(100);
    httpc_free(g_h);
    g_h = NULL;
    for (int i = 0; i < 9; i++) {
        ck_assert_int_eq(c[i].calls, 1);
        ck_assert_int_eq(c[i].cancelled, 1);
    }
}
END_TEST

START_TEST(test_cancel_before_run)
{
    rec c = {0};
    httpc_xfer *x = submit(easy_for("/json"), NULL, NULL, rec_cb, &c);
    httpc_cancel(x);
    httpc_cancel(x); /* idempotent */
    ck_assert_int_eq(c.calls, 0);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 1);
    run_until(1, 5000);
    run_for(100);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.cancelled, 1);
    ck_assert_int_eq(c.status, 0);
    ck_assert_int_ne(c.curl_code, CURLE_OK);
    ck_assert_str_eq(c.error, "httpc: transfer cancelled");
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

static httpc_xfer *g_to_cancel;

static void cancel_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    httpc_cancel(g_to_cancel);
}

START_TEST(test_cancel_in_flight)
{
    rec c = {0};
    g_to_cancel = submit(easy_for("/slow"), NULL, NULL, rec_cb, &c);
    struct event *t = evtimer_new(g_base, cancel_later, NULL);
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(t, &tv);
    run_until(1, 5000);
    run_for(50);
    event_free(t);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.cancelled, 1);
    ck_assert(c.total_ms >= 90.0 && c.total_ms < SLOW_MS);
}
END_TEST

/* A transfer whose result is already queued (curl refused a NULL handle)
 * and is then cancelled reports the cancellation, once. */
START_TEST(test_cancel_when_queued)
{
    rec c = {0};
    httpc_xfer *x = submit(NULL, NULL, NULL, rec_cb, &c);
    ck_assert_ptr_nonnull(x);
    httpc_cancel(x);
    run_until(1, 5000);
    run_for(50);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.cancelled, 1);
}
END_TEST

START_TEST(test_refused_handle_reported_later)
{
    rec null_easy = {0}, bad_scheme = {0};
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_URL, "nosuchproto://127.0.0.1/");
    ck_assert_ptr_nonnull(submit(NULL, NULL, NULL, rec_cb, &null_easy));
    ck_assert_ptr_nonnull(submit(e, NULL, NULL, rec_cb, &bad_scheme));
    ck_assert_int_eq(g_done, 0);
    run_until(2, 5000);
    ck_assert_int_eq(null_easy.calls, 1);
    ck_assert_int_eq(null_easy.ran_in_submit, 0);
    ck_assert_int_ne(null_easy.curl_code, CURLE_OK);
    ck_assert_int_eq(null_easy.has_error, 1);
    ck_assert_int_eq(bad_scheme.calls, 1);
    ck_assert_int_eq(bad_scheme.curl_code, CURLE_UNSUPPORTED_PROTOCOL);
}
END_TEST

START_TEST(test_cancel_owner)
{
    int owner_a, owner_b;
    rec a[3] = {0}, b[2] = {0};
    for (int i = 0; i < 3; i++)
        submit(easy_for("/slow"), NULL, &owner_a, rec_cb, &a[i]);
    for (int i = 0; i < 2; i++)
        submit(easy_for("/json"), NULL, &owner_b, rec_cb, &b[i]);
    ck_assert_uint_eq(httpc_pending(g_h, &owner_a), 3);
    ck_assert_uint_eq(httpc_pending(g_h, &owner_b), 2);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 5);
    run_for(50); /* let the requests reach the server */
    ck_assert_uint_eq(httpc_cancel_owner(g_h, &owner_a), 3);
    ck_assert_uint_eq(httpc_cancel_owner(g_h, &owner_a), 0);
    ck_assert_uint_eq(httpc_pending(g_h, &owner_a), 3); /* callbacks not run yet */
    run_until(5, 1500);
    run_for(50);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(a[i].calls, 1);
        ck_assert_int_eq(a[i].cancelled, 1);
    }
    for (int i = 0; i < 2; i++) {
        ck_assert_int_eq(b[i].calls, 1);
        ck_assert_int_eq(b[i].cancelled, 0);
        ck_assert_int_eq(b[i].status, 200);
    }
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

static int g_submit_null;

static void submit_during_free_cb(const httpc_result *r, void *arg)
{
    rec_fill(arg, r);
    /* The client is going away: a new transfer is refused, its handle freed. */
    if (httpc_submit(g_h, easy_for("/json"), curl_slist_append(NULL, "A: b"), NULL, rec_cb, arg) == NULL)
        g_submit_null++;
}

START_TEST(test_free_with_pending)
{
    rec c[4] = {0};
    submit(easy_for("/slow"), NULL, NULL, rec_cb, &c[0]);
    submit(easy_for("/slow"), NULL, NULL, rec_cb, &c[1]);
    submit(easy_for("/json"), NULL, NULL, submit_during_free_cb, &c[2]);
    submit(NULL, NULL, NULL, rec_cb, &c[3]); /* queued, not yet delivered */
    g_submit_null = 0;
    httpc_free(g_h); /* callbacks run right here */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(c[i].calls, 1);
        ck_assert_int_eq(c[i].cancelled, 1);
    }
    ck_assert_int_eq(g_submit_null, 1);
    g_h = NULL;
    run_for(50);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(c[i].calls, 1);
}
END_TEST

static void free_from_cb(const httpc_result *r, void *arg)
{
    rec_fill(arg, r);
    httpc_free(g_h);
    g_h = NULL;
}

START_TEST(test_free_inside_callback)
{
    rec first = {0}, s1 = {0}, s2 = {0};
    submit(easy_for("/json"), NULL, NULL, free_from_cb, &first);
    submit(easy_for("/slow"), NULL, NULL, rec_cb, &s1);
    submit(easy_for("/slow"), NULL, NULL, rec_cb, &s2);
    run_until(3, 1500);
    ck_assert_ptr_null(g_h);
    ck_assert_int_eq(first.calls, 1);
    ck_assert_int_eq(first.status, 200);
    ck_assert_int_eq(s1.calls, 1);
    ck_assert_int_eq(s1.cancelled, 1);
    ck_assert_int_eq(s2.calls, 1);
    ck_assert_int_eq(s2.cancelled, 1);
}
END_TEST

START_TEST(test_post_with_headers)
{
    rec ok = {0}, denied = {0};
    static const char payload[] = "{\"question\":\"hello\"}";

    CURL *e = easy_for("/echo");
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, payload);
    struct curl_slist *hdrs = curl_slist_append(NULL, "X-Koko-Token: t0ken");
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    submit(e, hdrs, NULL, rec_cb, &ok);

    CURL *e2 = easy_for("/echo");
    curl_easy_setopt(e2, CURLOPT_POSTFIELDS, payload);
    submit(e2, NULL, NULL, rec_cb, &denied);

    run_until(2, 5000);
    ck_assert_int_eq(ok.status, 200);
    ck_assert_str_eq(ok.body, payload);
    char want[32];
    snprintf(want, sizeof want, "%zu", strlen(payload));
    ck_assert_str_eq(ok.hdr_echo_len, want);
    ck_assert_int_eq(denied.status, 401);
}
END_TEST

/* Each completion submits the next transfer, three deep. */
static void chain_cb(const httpc_result *r, void *arg)
{
    rec *c = arg;
    rec_fill(c, r);
    ck_assert_int_eq(r->status, 200);
    if (g_done < 3)
        ck_assert_ptr_nonnull(submit(easy_for("/json"), NULL, NULL, chain_cb, c));
}

START_TEST(test_submit_from_callback)
{
    rec c = {0};
    submit(easy_for("/json"), NULL, NULL, chain_cb, &c);
    run_until(3, 5000);
    run_for(50);
    ck_assert_int_eq(c.calls, 3);
    ck_assert_int_eq(c.ran_in_submit, 0);
}
END_TEST

static void cancel_other_cb(const httpc_result *r, void *arg)
{
    rec_fill(arg, r);
    httpc_cancel(g_to_cancel);
}

START_TEST(test_cancel_from_callback)
{
    rec fast = {0}, slow = {0};
    submit(easy_for("/json"), NULL, NULL, cancel_other_cb, &fast);
    g_to_cancel = submit(easy_for("/slow"), NULL, NULL, rec_cb, &slow);
    run_until(2, 1500);
    run_for(50);
    ck_assert_int_eq(fast.calls, 1);
    ck_assert_int_eq(fast.status, 200);
    ck_assert_int_eq(slow.calls, 1);
    ck_assert_int_eq(slow.cancelled, 1);
}
END_TEST

/* The callback frees its own context and pokes its own (still valid) handle. */
struct self_ctx {
    httpc_xfer *self;
    char *scratch;
};

static int g_self_done;

static void self_free_cb(const httpc_result *r, void *arg)
{
    struct self_ctx *ctx = arg;
    ck_assert_int_eq(r->status, 200);
    httpc_cancel(ctx->self); /* a no-op from inside its own callback */
    free(ctx->scratch);
    free(ctx);
    g_self_done++;
    g_done++;
}

START_TEST(test_callback_frees_context)
{
    g_self_done = 0;
    for (int i = 0; i < 4; i++) {
        struct self_ctx *ctx = calloc(1, sizeof *ctx);
        ctx->scratch = malloc(64);
        ctx->self = submit(easy_for("/json"), NULL, NULL, self_free_cb, ctx);
    }
    run_until(4, 5000);
    run_for(50);
    ck_assert_int_eq(g_self_done, 4);
}
END_TEST

START_TEST(test_api_misuse)
{
    char err[128] = "";
    ck_assert_ptr_null(httpc_new(NULL, err, sizeof err));
    ck_assert_msg(strstr(err, "event_base") != NULL, "err: %s", err);
    /* No callback: refused synchronously, handle and headers freed. */
    ck_assert_ptr_null(httpc_submit(g_h, easy_for("/json"), curl_slist_append(NULL, "A: b"), NULL,
                                    NULL, NULL));
    httpc_cancel(NULL);
    httpc_free(NULL);
    ck_assert_uint_eq(httpc_pending(g_h, NULL), 0);
}
END_TEST

static Suite *httpc_suite(void)
{
    Suite *s = suite_create("httpc");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_get_json);
    tcase_add_test(tc, test_status_500);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_body_limit);
    tcase_add_test(tc, test_refused);
    tcase_add_test(tc, test_many_concurrent);
    tcase_add_test(tc, test_shards);
    tcase_add_test(tc, test_free_with_shards);
    tcase_add_test(tc, test_cancel_before_run);
    tcase_add_test(tc, test_cancel_in_flight);
    tcase_add_test(tc, test_cancel_when_queued);
    tcase_add_test(tc, test_refused_handle_reported_later);
    tcase_add_test(tc, test_cancel_owner);
    tcase_add_test(tc, test_free_with_pending);
    tcase_add_test(tc, test_free_inside_callback);
    tcase_add_test(tc, test_post_with_headers);
    tcase_add_test(tc, test_submit_from_callback);
    tcase_add_test(tc, test_cancel_from_callback);
    tcase_add_test(tc, test_callback_frees_context);
    tcase_add_test(tc, test_api_misuse);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* the server may write to a client that timed out */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "test_httpc: curl_global_init failed\n");
        return 1;
    }
    SRunner *sr = srunner_create(httpc_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed == 0 ? 0 : 1;
}
