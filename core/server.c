/*
 * server.c — HTTP listener, dispatch table, auth, limits and JSON errors.
 *
 * Requests are dispatched from one table (path, methods, auth, handler).
 * The configured body limit is enforced here with a JSON 413; libevent's own
 * limit is set higher (4x, at least 1 MiB) only as a memory ceiling, past
 * which libevent itself answers 413 and closes the connection.
 */
#include "kokoconf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "api.h"
#include "gen.h"
#include "kokod.h"
#include "log.h"
#include "server.h"
#include "util.h"

struct server {
    kokod *kd;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    int port;
    size_t inflight;
};

enum { M_GET = EVHTTP_REQ_GET | EVHTTP_REQ_HEAD, M_POST = EVHTTP_REQ_POST, M_DELETE = EVHTTP_REQ_DELETE };

typedef void (*api_fn)(kokod *kd, koko_request *r);

static const struct endpoint {
    const char *path;
    int prefix;        /* path is a prefix (webhooks) */
    unsigned methods;
    const char *allow; /* for 405's Allow header */
    int auth;          /* bearer token when configured */
    api_fn fn;
} endpoints[] = {
    {"/health", 0, M_GET, "GET, HEAD", 0, api_health},
    {"/api/chat", 0, M_POST, "POST", 1, api_chat},
    {"/query", 0, M_POST, "POST", 1, api_query},
    {"/projects", 0, M_GET, "GET, HEAD", 1, api_projects},
    {"/stats", 0, M_GET, "GET, HEAD", 1, api_stats},
    {"/metrics", 0, M_GET, "GET, HEAD", 1, api_metrics},
    {"/cache/", 1, M_GET | M_POST, "GET, POST", 1, api_cache},
    {"/memory/", 1, M_GET | M_POST | M_DELETE, "GET, POST, DELETE", 1, api_memory},
    {"/webhook/", 1, M_POST, "POST", 0, api_webhook},
};

static const char *method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET: return "GET";
    case EVHTTP_REQ_POST: return "POST";
    case EVHTTP_REQ_HEAD: return "HEAD";
    case EVHTTP_REQ_PUT: return "PUT";
    case EVHTTP_REQ_DELETE: return "DELETE";
    case EVHTTP_REQ_OPTIONS: return "OPTIONS";
    case EVHTTP_REQ_TRACE: return "TRACE";
    case EVHTTP_REQ_CONNECT: return "CONNECT";
    case EVHTTP_REQ_PATCH: return "PATCH";
    }
    return "?";
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    }
    return "";
}

/* Request headers evhttp reads when it sends the reply (keep-alive or close). */
static int needed_for_reply(const char *key)
{
    return strcasecmp(key, "Connection") == 0 || strcasecmp(key, "Proxy-Connection") == 0;
}

void server_req_shed(koko_request *r)
{
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
    struct evkeyvalq *h = evhttp_request_get_input_headers(r->req);
    for (;;) {
        struct evkeyval *kv = h ? TAILQ_FIRST(h) : NULL;
        while (kv && needed_for_reply(kv->key))
            kv = TAILQ_NEXT(kv, next);
        if (!kv)
            break;
        char *key = xstrdup(kv->key);
        evhttp_remove_header(h, key); /* the first of that name: KV, as those before it are kept */
        free(key);
    }
}

static void request_free(koko_request *r)
{
    if (r->gen)
        gen_release(r->gen);
    r->srv->inflight--;
    free(r->body);
    free(r->path);
    free(r);
}

void server_respond_raw(koko_request *r, int status, const char *content_type, const char *body, size_t len)
{
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    if (evhttp_request_get_command(r->req) != EVHTTP_REQ_HEAD)
        evbuffer_add(out, body, len);
    evhttp_send_reply(r->req, status, reason(status), out);
    evbuffer_free(out);
    double ms = util_now_ms_f() - r->started_ms;
    log_debug("http", "%s %s %s → %d (%.2f ms)", r->peer, r->method, r->path, status, ms);
    request_free(r);
}

void server_respond(koko_request *r, int status, const char *json_body)
{
    if (!json_body)
        json_body = "{}";
    server_respond_raw(r, status, "application/json", json_body, strlen(json_body));
}

void server_respond_json(koko_request *r, int status, json_t *doc)
{
    char *s = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(10));
    json_decref(doc);
    server_respond(r, status, s ? s : "{}");
    free(s);
}

void server_respond_error(koko_request *r, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    server_respond_json(r, status, json_pack("{s:s}", "error", msg));
}

const char *server_req_method(koko_request *r) { return r->method; }

const char *server_req_header(koko_request *r, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(r->req), name);
}

const char *server_req_body(koko_request *r, size_t *len)
{
    if (len)
        *len = r->body_len;
    return r->body ? r->body : "";
}

const char *server_req_peer(koko_request *r) { return r->peer; }

static int bearer_ok(koko_request *r, const char *token)
{
    const char *h = server_req_header(r, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    return util_secret_eq(h, token);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    server *s = arg;
    kokod *kd = s->kd;
    koko_request *r = xcalloc(1, sizeof *r);
    r->req = req;
    r->srv = s;
    r->started_ms = util_now_ms_f();
    r->method = method_name(evhttp_request_get_command(req));
    s->inflight++;
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    if (conn) {
        char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(conn, &addr, &port);
        snprintf(r->peer, sizeof r->peer, "%s:%u", addr ? addr : "?", port);
    }
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    r->path = evhttp_uridecode(raw && *raw ? raw : "/", 0, NULL);
    if (!r->path)
        r->path = xstrdup("/");

    if (kd->stopping) {
        server_respond_error(r, 503, "kokod is shutting down; retry against another replica or later");
        return;
    }
    r->gen = kd->current;
    gen_ref(r->gen);

    const struct endpoint *ep = NULL;
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++) {
        const struct endpoint *e = &endpoints[i];
        if (e->prefix ? strncmp(r->path, e->path, strlen(e->path)) == 0 : strcmp(r->path, e->path) == 0) {
            ep = e;
            break;
        }
    }
    if (!ep) {
        server_respond_error(r, 404, "no such path: %s", r->path);
        return;
    }
    if (!(evhttp_request_get_command(req) & ep->methods)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", ep->allow);
        server_respond_error(r, 405, "method %s not allowed on %s (allowed: %s)", r->method, r->path, ep->allow);
        return;
    }
    const core_config *cfg = r->gen->cfg;
    if (ep->auth && cfg->api_token && !bearer_ok(r, cfg->api_token)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer realm=\"kokod\"");
        server_respond_error(r, 401, "missing or wrong bearer token: send \"Authorization: Bearer <server.api_token>\"");
        return;
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > cfg->max_body) {
        server_respond_error(r, 413, "request body is %zu bytes, more than server.max_body (%zu)", len, cfg->max_body);
        return;
    }
    r->body = xmalloc(len + 1);
    evbuffer_remove(in, r->body, len);
    r->body[len] = '\0';
    r->body_len = len;
    ep->fn(kd, r);
}

static size_t hard_body_cap(size_t max_body)
{
    size_t cap = max_body * 4;
    return cap < (1u << 20) ? (1u << 20) : cap;
}

server *server_new(kokod *kd, const char *host, int port, char *err, size_t errlen)
{
    server *s = xcalloc(1, sizeof *s);
    s->kd = kd;
    s->http = evhttp_new(kd->base);
    if (!s->http) {
        snprintf(err, errlen, "cannot create the HTTP server");
        free(s);
        return NULL;
    }
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_DELETE | EVHTTP_REQ_PATCH | EVHTTP_REQ_OPTIONS);
    evhttp_set_max_body_size(s->http, (ev_ssize_t)hard_body_cap(kd->current->cfg->max_body));
    evhttp_set_max_headers_size(s->http, 64 * 1024);
    evhttp_set_timeout(s->http, 60);
    evhttp_set_gencb(s->http, on_request, s);
    const char *bind_host = host;
    char hostbuf[128];
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']' && hl - 2 < sizeof hostbuf) {
        memcpy(hostbuf, host + 1, hl - 2);
        hostbuf[hl - 2] = '\0';
        bind_host = hostbuf;
    }
    /* a deep accept queue: webhook bursts must not see refused connections, and a
     * burst of new clients must not wait out a 1 s SYN retransmission (1,024 here
     * left a third of `make bench-llm`'s 5,000 connections to a second and a third
     * wave); the kernel caps it at net.core.somaxconn (4,096 on Debian 12) */
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE},
                           *ai = NULL;
    char portbuf[8];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    struct evconnlistener *lst = NULL;
    if (evutil_getaddrinfo(bind_host, portbuf, &hints, &ai) == 0 && ai) {
        lst = evconnlistener_new_bind(kd->base, NULL, NULL,
                                      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 65535,
                                      ai->ai_addr, (int)ai->ai_addrlen);
        evutil_freeaddrinfo(ai);
    }
    s->sock = lst ? evhttp_bind_listener(s->http, lst) : NULL;
    if (!s->sock) {
        if (lst)
            evconnlistener_free(lst);
        snprintf(err, errlen, "cannot listen on %s:%d (in use, or not an address of this machine): "
                              "change server.listen", host, port);
        evhttp_free(s->http);
        free(s);
        return NULL;
    }
    evutil_socket_t fd = evhttp_bound_socket_get_fd(s->sock);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        s->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    return s;
}

int server_port(const server *s) { return s->port; }
size_t server_inflight(const server *s) { return s->inflight; }

void server_set_max_body(server *s, size_t max_body)
{
    evhttp_set_max_body_size(s->http, (ev_ssize_t)hard_body_cap(max_body));
}

void server_close_listener(server *s)
{
    if (s->sock) {
        evhttp_del_accept_socket(s->http, s->sock);
        s->sock = NULL;
    }
}

void server_free(server *s)
{
    if (!s)
        return;
    evhttp_free(s->http);
    free(s);
}
