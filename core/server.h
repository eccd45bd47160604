/*
 * server.h — kokod's HTTP interface (libevent evhttp).
 *
 * One listener (server.listen, loopback by default) serving /health, the
 * JSON API (bearer token), /metrics and the channel webhooks that plugins
 * register (/webhook/<tenant>/<name>, authenticated by the plugin). Every
 * 4xx/5xx carries {"error": "..."}. The listener survives reloads; a request
 * holds the generation it was routed in until it is answered.
 */
#ifndef CORE_SERVER_H
#define CORE_SERVER_H

#include <event2/http.h>
#include <jansson.h>

#include "koko/host.h"

struct kokod;
struct generation;
typedef struct server server;

/* An inbound request being answered asynchronously (also koko_request for plugins). */
struct koko_request {
    struct evhttp_request *req;
    server *srv;
    struct generation *gen; /* held until answered */
    char *body;             /* NUL-terminated copy of the body */
    size_t body_len;
    char *path;             /* decoded path */
    const char *method;
    char peer[64];
    double started_ms;
};

server *server_new(struct kokod *kd, const char *host, int port, char *err, size_t errlen);
/* Stop accepting new connections (graceful stop); requests in flight finish. */
void server_close_listener(server *s);
void server_free(server *s);
/* Apply a new server.max_body after a reload. */
void server_set_max_body(server *s, size_t max_body);
/* Requests accepted and not yet answered. */
size_t server_inflight(const server *s);
/* The port actually bound (for port 0 in tests). */
int server_port(const server *s);

/* koko_host request accessors (see koko/host.h). */
const char *server_req_method(koko_request *r);
const char *server_req_header(koko_request *r, const char *name);
const char *server_req_body(koko_request *r, size_t *len);
const char *server_req_peer(koko_request *r);
/* R is read: drop its body copy and the request headers a reply does not need
 * (all but Connection and Proxy-Connection), for a request that then waits long
 * (a model's answer), thousands at once. server_req_body/_header see none after. */
void server_req_shed(koko_request *r);
void server_respond(koko_request *r, int status, const char *json_body);
/* Answer with a JSON document (stolen) and free R. */
void server_respond_json(koko_request *r, int status, json_t *doc);
/* Answer {"error": fmt...} and free R. */
void server_respond_error(koko_request *r, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Answer with a non-JSON body (text/plain etc.) and free R. */
void server_respond_raw(koko_request *r, int status, const char *content_type, const char *body, size_t len);

#endif
