/*
 * bench/llm_load.c — the load half of the LLM benchmark (bench/llm_load.sh).
 *
 *   llm_load fake [-p PORT] [-d DELAY_MS] [-2 -c CERT_FILE [-s MAX_STREAMS]]
 *       A minimal Gemini API in C for load: cachedContents create/patch/delete,
 *       and generateContent answered after DELAY_MS (1000) from a timer, so
 *       thousands of slow answers cost it nothing but sockets. With -2 it
 *       serves HTTPS with HTTP/2 (ALPN h2), as Gemini does, at most
 *       MAX_STREAMS (100, Google's limit) calls in flight per connection,
 *       with a certificate for 127.0.0.1 made at start and written to
 *       CERT_FILE (kokod's ca_file). GET
 *       /_stats → {"generate","cached","creates","peak_inflight","connections",
 *       "protocol"}. tests/fakes/fake_gemini.py
 *       is the faithful fake; this one exists because its thread per request
 *       cannot hold 5,000 delayed requests at once.
 *   llm_load drive -u URL -n N [-t TENANT] [-P KOKOD_PID] [-T TIMEOUT_S]
 *       Opens N connections at once, each sending one POST /api/chat (its own
 *       conversation), and reports wall time (first send → last answer),
 *       status and backend counts, latency percentiles and, with -P, kokod's
 *       peak RSS (VmHWM) and its most threads seen (/proc/PID/task, sampled
 *       every 50 ms).
 * One thread, libevent's evhttp on both sides.
 */
#include "kokoconf.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <dirent.h>
#include <jansson.h>
#ifdef HAVE_NGHTTP2
#include <event2/bufferevent_ssl.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- fake ---- */

typedef struct fake {
    struct event_base *base;
    long delay_ms;
    int h2;               /* -2: HTTPS with HTTP/2 instead of plain HTTP/1.1 */
    void *tls;            /* h2: the SSL_CTX */
    uint32_t max_streams; /* h2: SETTINGS_MAX_CONCURRENT_STREAMS */
    unsigned long generate, cached, creates, inflight, peak, connections; /* connections: h2 only */
    unsigned long next_id;
} fake;

/* Who a request came from and gets its answer: an HTTP/1.1 request (evhttp)
 * or an HTTP/2 stream (h2c mode, below). */
typedef struct h2conn h2conn;
typedef struct target {
    struct evhttp_request *req; /* HTTP/1.1 */
    h2conn *hc;                 /* HTTP/2: the connection (referenced) and the stream */
    int32_t stream;
} target;

typedef struct delayed {
    fake *f;
    target to;
    struct event *ev;
    char *body;
} delayed;

static void h2_reply(h2conn *hc, int32_t stream, int code, const char *body);
static void h2_ref(h2conn *hc);
static void h2_unref(h2conn *hc);

static void fake_reply(const target *to, int code, const char *body)
{
    if (to->hc) {
        h2_reply(to->hc, to->stream, code, body);
        return;
    }
    struct evhttp_request *req = to->req;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=UTF-8");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
}

static void on_delayed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    delayed *d = arg;
    d->f->inflight--;
    fake_reply(&d->to, 200, d->body);
    if (d->to.hc)
        h2_unref(d->to.hc);
    event_free(d->ev);
    free(d->body);
    free(d);
}

/* Characters of every "text" in V, the way fake_gemini.py counts tokens (chars / 4). */
static size_t text_chars(const json_t *v)
{
    size_t n = 0;
    if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach ((json_t *)v, k, x)
            n += strcmp(k, "text") == 0 && json_is_string(x) ? json_string_length(x) : text_chars(x);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach (v, i, x)
            n += text_chars(x);
    }
    return n;
}

#define CACHE_TOKENS_MAX 64
static unsigned long cache_tokens[CACHE_TOKENS_MAX]; /* by id: the fake's caches never expire */

static void fake_generate(fake *f, const target *to, json_t *b)
{
    const char *cname = json_string_value(json_object_get(b, "cachedContent"));
    unsigned long ctok = 0;
    if (cname) {
        unsigned long id = strtoul(cname + strcspn(cname, "0123456789"), NULL, 10);
        ctok = id < CACHE_TOKENS_MAX ? cache_tokens[id] : 0;
        f->cached++;
    }
    unsigned long prompt = text_chars(b) / 4 + ctok;
    f->generate++;
    char cached[64] = "", body[512];
    if (ctok)
        snprintf(cached, sizeof cached, ",\"cachedContentTokenCount\":%lu", ctok);
    snprintf(body, sizeof body,
             "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Here is the answer.\"}]},"
             "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":%lu,"
             "\"candidatesTokenCount\":6,\"totalTokenCount\":%lu%s}}",
             prompt, prompt + 6, cached);
    if (f->delay_ms <= 0) {
        fake_reply(to, 200, body);
        return;
    }
    delayed *d = calloc(1, sizeof *d);
    d->f = f;
    d->to = *to;
    if (to->hc)
        h2_ref(to->hc);
    d->body = strdup(body);
    d->ev = evtimer_new(f->base, on_delayed, d);
    struct timeval tv = {f->delay_ms / 1000, (f->delay_ms % 1000) * 1000};
    evtimer_add(d->ev, &tv);
    if (++f->inflight > f->peak)
        f->peak = f->inflight;
}

static void fake_cache_doc(char *buf, size_t n, unsigned long id, unsigned long tokens)
{
    time_t exp = time(NULL) + 3600;
    struct tm tm;
    char t[40];
    gmtime_r(&exp, &tm);
    strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(buf, n, "{\"name\":\"cachedContents/c%lu\",\"model\":\"models/gemini-2.5-flash\",\"expireTime\":\"%s\","
             "\"usageMetadata\":{\"totalTokenCount\":%lu}}", id, t, tokens);
}

/* One request: METHOD (EVHTTP_REQ_*), PATH, the parsed body B (NULL when none
 * or not JSON; borrowed). The answer goes to TO, now or after the delay. */
static void fake_handle(fake *f, const target *to, int m, const char *path, json_t *b)
{
    char buf[512];
    if (!path) {
        fake_reply(to, 404, "{}");
    } else if (m == EVHTTP_REQ_POST && strstr(path, ":generateContent")) {
        fake_generate(f, to, b);
    } else if (m == EVHTTP_REQ_POST && strcmp(path, "/v1beta/cachedContents") == 0) {
        unsigned long id = ++f->next_id, tok = text_chars(b) / 4;
        json_t *tools = json_object_get(b, "tools");
        char *td = tools ? json_dumps(tools, JSON_COMPACT) : NULL;
        tok += td ? strlen(td) / 4 : 0;
        free(td);
        if (id < CACHE_TOKENS_MAX)
            cache_tokens[id] = tok;
        f->creates++;
        fake_cache_doc(buf, sizeof buf, id, tok);
        fake_reply(to, 200, buf);
    } else if (strncmp(path, "/v1beta/cachedContents/c", 24) == 0 && (m == EVHTTP_REQ_PATCH || m == EVHTTP_REQ_GET)) {
        unsigned long id = strtoul(path + 24, NULL, 10);
        fake_cache_doc(buf, sizeof buf, id, id < CACHE_TOKENS_MAX ? cache_tokens[id] : 0);
        fake_reply(to, 200, buf);
    } else if (strncmp(path, "/v1beta/cachedContents/c", 24) == 0 && m == EVHTTP_REQ_DELETE) {
        fake_reply(to, 200, "{}");
    } else if (strcmp(path, "/_stats") == 0) {
        snprintf(buf, sizeof buf,
                 "{\"generate\":%lu,\"cached\":%lu,\"creates\":%lu,\"peak_inflight\":%lu,\"connections\":%lu,"
                 "\"protocol\":\"%s\"}",
                 f->generate, f->cached, f->creates, f->peak, f->connections, f->h2 ? "h2" : "http/1.1");
        fake_reply(to, 200, buf);
    } else {
        fake_reply(to, 404, "{\"error\":{\"code\":404,\"status\":\"NOT_FOUND\",\"message\":\"no such method\"}}");
    }
}

static void fake_request(struct evhttp_request *req, void *arg)
{
    fake *f = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    json_t *b = n ? json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)n), n, 0, NULL) : NULL;
    target to = {.req = req};
    fake_handle(f, &to, (int)evhttp_request_get_command(req),
                evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req)), b);
    json_decref(b);
}

#ifdef HAVE_NGHTTP2
/* ---- HTTPS with HTTP/2 (ALPN "h2"), as Gemini's front end serves it: many
 * calls share one connection, at most max_streams at once each (Google's
 * allows 100). The certificate is made at start-up for 127.0.0.1 and written
 * where -c says, for kokod's ca_file. ---- */

struct h2conn {
    fake *f;
    struct bufferevent *bev;
    nghttp2_session *s;
    int refs;   /* the connection itself + delayed answers pointing at it */
    int closed; /* the socket is gone: delayed answers are dropped */
};

typedef struct h2stream {
    int method;
    char path[512];
    char *body;
    size_t len, cap;
    char *out; /* the answer being sent */
    size_t out_len, out_off;
} h2stream;

static void h2_ref(h2conn *hc)
{
    hc->refs++;
}

static void h2_unref(h2conn *hc)
{
    if (--hc->refs == 0) {
        nghttp2_session_del(hc->s);
        free(hc);
    }
}

/* Hand everything nghttp2 wants to send to the socket. */
static void h2_flush(h2conn *hc)
{
    const uint8_t *data;
    ssize_t n;
    while (!hc->closed && (n = nghttp2_session_mem_send(hc->s, &data)) > 0)
        bufferevent_write(hc->bev, data, (size_t)n);
}

static void h2_close(h2conn *hc)
{
    if (hc->closed)
        return;
    hc->closed = 1;
    bufferevent_free(hc->bev);
    hc->bev = NULL;
    h2_unref(hc);
}

static ssize_t h2_read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                            nghttp2_data_source *src, void *arg)
{
    (void)s;
    (void)id;
    (void)arg;
    h2stream *st = src->ptr;
    size_t left = st->out_len - st->out_off;
    if (len > left)
        len = left;
    memcpy(buf, st->out + st->out_off, len);
    st->out_off += len;
    if (st->out_off == st->out_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)len;
}

static void h2_reply(h2conn *hc, int32_t stream, int code, const char *body)
{
    if (hc->closed)
        return;
    h2stream *st = nghttp2_session_get_stream_user_data(hc->s, stream);
    if (!st) /* reset by the client meanwhile */
        return;
    char status[8];
    snprintf(status, sizeof status, "%d", code);
    nghttp2_nv hdrs[] = {
        {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/json; charset=UTF-8", 12, 31, NGHTTP2_NV_FLAG_NONE},
    };
    st->out = strdup(body);
    st->out_len = strlen(body);
    st->out_off = 0;
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = h2_read_body};
    nghttp2_submit_response(hc->s, stream, hdrs, 2, &prd);
    h2_flush(hc);
}

static int h2_on_begin_headers(nghttp2_session *s, const nghttp2_frame *fr, void *arg)
{
    (void)arg;
    if (fr->hd.type == NGHTTP2_HEADERS && fr->headers.cat == NGHTTP2_HCAT_REQUEST)
        nghttp2_session_set_stream_user_data(s, fr->hd.stream_id, calloc(1, sizeof(h2stream)));
    return 0;
}

static int h2_on_header(nghttp2_session *s, const nghttp2_frame *fr, const uint8_t *name, size_t namelen,
                        const uint8_t *value, size_t valuelen, uint8_t flags, void *arg)
{
    (void)flags;
    (void)arg;
    h2stream *st = nghttp2_session_get_stream_user_data(s, fr->hd.stream_id);
    if (!st)
        return 0;
    if (namelen == 5 && memcmp(name, ":path", 5) == 0 && valuelen < sizeof st->path) {
        memcpy(st->path, value, valuelen);
        st->path[valuelen] = '\0';
        st->path[strcspn(st->path, "?")] = '\0';
    } else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        static const struct {
            const char *name;
            int m;
        } methods[] = {{"GET", EVHTTP_REQ_GET}, {"POST", EVHTTP_REQ_POST}, {"PATCH", EVHTTP_REQ_PATCH},
                       {"DELETE", EVHTTP_REQ_DELETE}};
        for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
            if (valuelen == strlen(methods[i].name) && memcmp(value, methods[i].name, valuelen) == 0)
                st->method = methods[i].m;
    }
    return 0;
}

static int h2_on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *arg)
{
    (void)flags;
    (void)arg;
    h2stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st)
        return 0;
    if (st->len + len > st->cap) {
        st->cap = (st->len + len) * 2;
        st->body = realloc(st->body, st->cap);
    }
    memcpy(st->body + st->len, data, len);
    st->len += len;
    return 0;
}

static int h2_on_frame(nghttp2_session *s, const nghttp2_frame *fr, void *arg)
{
    h2conn *hc = arg;
    if ((fr->hd.type != NGHTTP2_HEADERS && fr->hd.type != NGHTTP2_DATA) || !(fr->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    h2stream *st = nghttp2_session_get_stream_user_data(s, fr->hd.stream_id);
    if (!st)
        return 0;
    json_t *b = st->len ? json_loadb(st->body, st->len, 0, NULL) : NULL;
    target to = {.hc = hc, .stream = fr->hd.stream_id};
    fake_handle(hc->f, &to, st->method, st->path, b);
    json_decref(b);
    return 0;
}

static int h2_on_close(nghttp2_session *s, int32_t id, uint32_t code, void *arg)
{
    (void)code;
    (void)arg;
    h2stream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st) {
        nghttp2_session_set_stream_user_data(s, id, NULL);
        free(st->body);
        free(st->out);
        free(st);
    }
    return 0;
}

static void h2_on_read(struct bufferevent *bev, void *arg)
{
    h2conn *hc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    ssize_t used = nghttp2_session_mem_recv(hc->s, evbuffer_pullup(in, (ev_ssize_t)n), n);
    if (used < 0) {
        fprintf(stderr, "llm_load fake: HTTP/2: %s\n", nghttp2_strerror((int)used));
        h2_close(hc);
        return;
    }
    evbuffer_drain(in, (size_t)used);
    h2_flush(hc);
}

static void h2_on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        h2_close(arg);
}

static void h2_on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)sa;
    (void)salen;
    fake *f = arg;
    h2conn *hc = calloc(1, sizeof *hc);
    hc->f = f;
    hc->refs = 1;
    SSL *ssl = SSL_new(f->tls);
    hc->bev = ssl ? bufferevent_openssl_socket_new(f->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                   BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
                  : NULL;
    if (!hc->bev) {
        fprintf(stderr, "llm_load fake: cannot start TLS on a connection\n");
        evutil_closesocket(fd);
        free(hc);
        return;
    }
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, h2_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    nghttp2_session_server_new(&hc->s, cb, hc);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, f->max_streams}};
    nghttp2_submit_settings(hc->s, NGHTTP2_FLAG_NONE, iv, 1);
    f->connections++;
    bufferevent_setcb(hc->bev, h2_on_read, NULL, h2_on_event, hc);
    bufferevent_enable(hc->bev, EV_READ | EV_WRITE);
    h2_flush(hc);
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char h2[] = "\x02h2";
    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof h2 - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL; /* HTTP/2 only, as this fake speaks nothing else over TLS */
    return SSL_TLSEXT_ERR_OK;
}

/* A server context with a fresh P-256 key and a self-signed certificate for
 * 127.0.0.1 (also its own CA), written to CERT_PATH in PEM. */
static SSL_CTX *tls_context(const char *cert_path)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *out = NULL;
    int ok = ctx && key && x;
    if (ok) {
        X509_set_version(x, 2);
        ASN1_INTEGER_set(X509_get_serialNumber(x), (long)time(NULL));
        X509_gmtime_adj(X509_getm_notBefore(x), -3600);
        X509_gmtime_adj(X509_getm_notAfter(x), 86400);
        X509_set_pubkey(x, key);
        X509_NAME *name = X509_get_subject_name(x);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"127.0.0.1", -1, -1, 0);
        X509_set_issuer_name(x, name);
        X509V3_CTX v3;
        X509V3_set_ctx_nodb(&v3);
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
        const char *const exts[][2] = {{"subjectAltName", "IP:127.0.0.1"}, {"basicConstraints", "critical,CA:TRUE"}};
        for (size_t i = 0; ok && i < sizeof exts / sizeof exts[0]; i++) {
            X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
            ok = e && X509_add_ext(x, e, -1);
            X509_EXTENSION_free(e);
        }
        ok = ok && X509_sign(x, key, EVP_sha256()) > 0 && SSL_CTX_use_certificate(ctx, x) == 1 &&
             SSL_CTX_use_PrivateKey(ctx, key) == 1;
    }
    if (ok) {
        SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
        ok = (out = fopen(cert_path, "w")) && PEM_write_X509(out, x);
    }
    if (out && fclose(out) != 0)
        ok = 0;
    X509_free(x);
    EVP_PKEY_free(key);
    if (!ok) {
        fprintf(stderr, "llm_load fake: cannot make the TLS certificate (%s): ", cert_path);
        ERR_print_errors_fp(stderr);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}
#else
static void h2_reply(h2conn *hc, int32_t stream, int code, const char *body)
{
    (void)hc;
    (void)stream;
    (void)code;
    (void)body;
}

static void h2_ref(h2conn *hc)
{
    (void)hc;
}

static void h2_unref(h2conn *hc)
{
    (void)hc;
}
#endif

static int run_fake(int port, long delay_ms, int h2, uint32_t max_streams, const char *cert_path)
{
    fake f = {.delay_ms = delay_ms, .h2 = h2, .max_streams = max_streams};
    f.base = event_base_new();
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int one = 1;
    /* a deep accept queue: kokod may open hundreds of connections in one burst */
    evutil_socket_t fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 8192) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        fprintf(stderr, "llm_load fake: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        return 1;
    }
    struct evhttp *http = NULL;
    struct evconnlistener *lis = NULL;
    if (h2) {
#ifdef HAVE_NGHTTP2
        if (!cert_path) {
            fprintf(stderr, "llm_load fake: -2 needs -c CERT_FILE (where the certificate for kokod's ca_file goes)\n");
            return 2;
        }
        if (!(f.tls = tls_context(cert_path)))
            return 1;
        lis = evconnlistener_new(f.base, h2_on_accept, &f, LEV_OPT_CLOSE_ON_FREE, -1, fd);
        if (!lis) {
            fprintf(stderr, "llm_load fake: cannot serve HTTP/2 on 127.0.0.1:%d\n", port);
            return 1;
        }
#else
        fprintf(stderr, "llm_load fake: built without libnghttp2 (apt-get install libnghttp2-dev, then "
                        "configure again): no HTTP/2\n");
        return 1;
#endif
    } else {
        http = evhttp_new(f.base);
        if (!http || !evhttp_accept_socket_with_handle(http, fd)) {
            fprintf(stderr, "llm_load fake: cannot serve HTTP on 127.0.0.1:%d\n", port);
            return 1;
        }
        evhttp_set_timeout(http, 120);
        evhttp_set_max_body_size(http, 16 * 1024 * 1024);
        evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
        evhttp_set_gencb(http, fake_request, &f);
    }
    printf("fake gemini listening on %s://127.0.0.1:%d (%s)\n", h2 ? "https" : "http", ntohs(sa.sin_port),
           h2 ? "HTTPS, HTTP/2 only" : "HTTP/1.1");
    fflush(stdout);
    struct event *st = evsignal_new(f.base, SIGTERM, on_stop_signal, f.base);
    struct event *si = evsignal_new(f.base, SIGINT, on_stop_signal, f.base);
    event_add(st, NULL);
    event_add(si, NULL);
    event_base_dispatch(f.base);
    event_free(st);
    event_free(si);
    if (http)
        evhttp_free(http);
    if (lis)
        evconnlistener_free(lis);
#ifdef HAVE_NGHTTP2
    SSL_CTX_free(f.tls);
#endif
    event_base_free(f.base);
    return 0;
}

/* ---- driver ---- */

typedef struct driver {
    struct event_base *base;
    int n, done, ok, other, failed, gemini, fallback, handoff;
    double first_send, last_done;
    double *lat;
    int pid, max_tasks;
    struct event *sampler;
} driver;

typedef struct conv {
    driver *d;
    struct evhttp_connection *conn;
    double sent;
} conv;

static int count_tasks(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)))
        n += e->d_name[0] != '.';
    closedir(dir);
    return n;
}

static long status_kib(int pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *fp = fopen(path, "r");
    long v = -1;
    size_t fl = strlen(field);
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, field, fl) == 0 && line[fl] == ':')
            v = strtol(line + fl + 1, NULL, 10);
    if (fp)
        fclose(fp);
    return v;
}

static void on_sample(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    driver *d = arg;
    int t = count_tasks(d->pid);
    if (t > d->max_tasks)
        d->max_tasks = t;
}

static void on_answer(struct evhttp_request *req, void *arg)
{
    conv *c = arg;
    driver *d = c->d;
    double t = now_ms();
    d->lat[d->done++] = t - c->sent;
    d->last_done = t;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code == 200) {
        d->ok++;
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t n = evbuffer_get_length(in);
        json_t *a = json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)n), n, 0, NULL);
        const char *be = json_string_value(json_object_get(a, "backend"));
        if (be && strcmp(be, "gemini") == 0)
            d->gemini++;
        else if (be && strcmp(be, "fallback") == 0)
            d->fallback++;
        d->handoff += json_is_true(json_object_get(a, "handoff"));
        json_decref(a);
    } else if (code) {
        d->other++;
    } else {
        d->failed++;
    }
    if (d->done == d->n)
        event_base_loopbreak(d->base);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(const double *v, int n, double p)
{
    if (n == 0)
        return 0;
    int i = (int)(p / 100.0 * (n - 1) + 0.5);
    return v[i];
}

static int run_drive(const char *url, int n, const char *tenant, int pid, int timeout_s)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    if (!u || !evhttp_uri_get_host(u) || evhttp_uri_get_port(u) <= 0) {
        fprintf(stderr, "llm_load drive: -u wants http://HOST:PORT, got %s\n", url);
        return 2;
    }
    driver d = {.n = n, .pid = pid};
    d.base = event_base_new();
    d.lat = calloc((size_t)n, sizeof *d.lat);
    conv *cv = calloc((size_t)n, sizeof *cv);
    if (pid > 0) {
        d.sampler = event_new(d.base, -1, EV_PERSIST, on_sample, &d);
        struct timeval tv = {0, 50000};
        event_add(d.sampler, &tv);
        on_sample(-1, 0, &d);
    }
    struct event *limit = evtimer_new(d.base, on_stop_signal, d.base);
    struct timeval tl = {timeout_s, 0};
    event_add(limit, &tl);
    d.first_send = now_ms();
    for (int i = 0; i < n; i++) {
        conv *c = &cv[i];
        c->d = &d;
        c->conn = evhttp_connection_base_new(d.base, NULL, evhttp_uri_get_host(u), (unsigned short)evhttp_uri_get_port(u));
        evhttp_connection_set_timeout(c->conn, timeout_s);
        struct evhttp_request *req = evhttp_request_new(on_answer, c);
        char body[256];
        int bl = snprintf(body, sizeof body,
                          "{\"tenant\":\"%s\",\"message\":\"How long does delivery take to Debrecen? (%d)\","
                          "\"conversation_id\":\"load-%d\",\"language\":\"en\"}", tenant, i, i);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        evhttp_add_header(h, "Host", evhttp_uri_get_host(u));
        evhttp_add_header(h, "Content-Type", "application/json");
        evbuffer_add(evhttp_request_get_output_buffer(req), body, (size_t)bl);
        c->sent = now_ms();
        evhttp_make_request(c->conn, req, EVHTTP_REQ_POST, "/api/chat");
    }
    double queued = now_ms() - d.first_send;
    event_base_dispatch(d.base);
    double wall = (d.done ? d.last_done : now_ms()) - d.first_send;
    qsort(d.lat, (size_t)d.done, sizeof *d.lat, cmp_double);
    printf("conversations %d (all requests handed to libevent in %.0f ms); answered %d: 200 %d "
           "(backend gemini %d, fallback %d; handoff %d), other status %d, connection errors %d, unanswered %d\n",
           n, queued, d.done, d.ok, d.gemini, d.fallback, d.handoff, d.other, d.failed, n - d.done);
    printf("wall %.0f ms; latency p50 %.0f ms, p99 %.0f ms, max %.0f ms\n", wall, pct(d.lat, d.done, 50),
           pct(d.lat, d.done, 99), d.done ? d.lat[d.done - 1] : 0.0);
    if (pid > 0)
        printf("kokod pid %d: VmHWM %ld KiB, VmRSS %ld KiB, threads (max seen) %d\n", pid, status_kib(pid, "VmHWM"),
               status_kib(pid, "VmRSS"), d.max_tasks);
    printf("RESULT wall_ms=%.0f ok=%d n=%d gemini=%d hwm_kib=%ld threads=%d\n", wall, d.ok, n, d.gemini,
           pid > 0 ? status_kib(pid, "VmHWM") : -1L, d.max_tasks);
    for (int i = 0; i < n; i++)
        if (cv[i].conn)
            evhttp_connection_free(cv[i].conn);
    if (d.sampler)
        event_free(d.sampler);
    event_free(limit);
    free(cv);
    free(d.lat);
    evhttp_uri_free(u);
    event_base_free(d.base);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: llm_load fake [-p PORT] [-d DELAY_MS] [-2 -c CERT_FILE [-s MAX_STREAMS]]\n"
                    "       llm_load drive -u http://HOST:PORT -n N [-t TENANT] [-P KOKOD_PID] [-T TIMEOUT_S]\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    const char *mode = argv[1];
    int port = 0, n = 5000, pid = 0, timeout_s = 60, opt, h2 = 0;
    uint32_t max_streams = 100;
    long delay = 1000;
    const char *url = NULL, *tenant = "demo", *cert = NULL;
    optind = 2;
    while ((opt = getopt(argc, argv, "p:d:u:n:t:P:T:2s:c:")) != -1) {
        switch (opt) {
        case 'c': cert = optarg; break;
        case '2': h2 = 1; break;
        case 's': max_streams = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'p': port = atoi(optarg); break;
        case 'd': delay = atol(optarg); break;
        case 'u': url = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 't': tenant = optarg; break;
        case 'P': pid = atoi(optarg); break;
        case 'T': timeout_s = atoi(optarg); break;
        default: usage(); return 2;
        }
    }
    if (strcmp(mode, "fake") == 0)
        return run_fake(port, delay, h2, max_streams, cert);
    if (strcmp(mode, "drive") == 0 && url && n > 0)
        return run_drive(url, n, tenant, pid, timeout_s);
    usage();
    return 2;
}
