/*
 * bare_evhttp.c — the ceiling for the GET /health benchmark (bench/run.sh).
 *
 * The least an evhttp server can do per request on one thread with the same libevent
 * and the same server settings as kokod (core/server.c): answer GET /health with a
 * fixed JSON document of the size kokod sends, plus the same two response headers.
 * run.sh copies kokod's real /health body into a file and passes it with -b, so both
 * servers write the same bytes; kokod's rate divided by this one is the overhead of
 * everything kokod does beyond the HTTP library (routing, JSON building, logging).
 *
 * Usage: bare_evhttp [-p PORT] [-b BODY_FILE]   (PORT 0 = any free port)
 * Prints "bare_evhttp listening on http://127.0.0.1:PORT" once ready; SIGTERM/SIGINT stop it.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

/* The shape of kokod's /health answer, for a run without -b. */
static const char default_body[] = "{\"status\":\"ok\",\"version\":\"0.1.0\",\"generation\":1,\"uptime_s\":3,"
                                   "\"plugins\":[\"fallback\"],\"tenants\":1,\"inflight\":1,"
                                   "\"reloads\":{\"ok\":0,\"failed\":0},\"generations_alive\":1}";

typedef struct bare {
    const char *body;
    size_t body_len;
} bare;

static void bare_on_request(struct evhttp_request *req, void *arg)
{
    const bare *b = arg;
    const char *uri = evhttp_request_get_uri(req);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET || !uri || strcmp(uri, "/health") != 0) {
        evhttp_send_error(req, HTTP_NOTFOUND, NULL);
        return;
    }
    struct evbuffer *out = evbuffer_new();
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Cache-Control", "no-store");
    evbuffer_add(out, b->body, b->body_len);
    evhttp_send_reply(req, HTTP_OK, "OK", out);
    evbuffer_free(out);
}

static void bare_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

/* Read all of PATH into a new NUL-terminated buffer the caller frees; NULL on error. */
static char *bare_slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0, got;
    if (!f)
        return NULL;
    do {
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = n + 4096 + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, 4096, f);
        n += got;
    } while (got > 0);
    if (ferror(f)) {
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    int port = 0, opt, rc = 1;
    const char *body_file = NULL;
    char *loaded = NULL;
    bare b = {default_body, sizeof default_body - 1};

    while ((opt = getopt(argc, argv, "p:b:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'b': body_file = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-p PORT] [-b BODY_FILE]\n", argv[0]);
            return 2;
        }
    }
    if (port < 0 || port > 65535) {
        fprintf(stderr, "bare_evhttp: port %d is out of range: use 0..65535\n", port);
        return 2;
    }
    if (body_file) {
        loaded = bare_slurp(body_file, &b.body_len);
        if (!loaded) {
            fprintf(stderr, "bare_evhttp: cannot read the body file %s: %s\n", body_file, strerror(errno));
            return 1;
        }
        b.body = loaded;
    }
    signal(SIGPIPE, SIG_IGN);

    struct event_base *base = event_base_new();
    struct evhttp *http = base ? evhttp_new(base) : NULL;
    struct event *sigterm = NULL, *sigint = NULL;
    if (!http) {
        fprintf(stderr, "bare_evhttp: cannot create the event base or HTTP server\n");
        goto out;
    }
    /* the same limits kokod sets, so both servers parse requests the same way */
    evhttp_set_max_headers_size(http, 64 * 1024);
    evhttp_set_max_body_size(http, 4 * 1024 * 1024);
    evhttp_set_timeout(http, 60);
    evhttp_set_gencb(http, bare_on_request, &b);
    struct evhttp_bound_socket *sock = evhttp_bind_socket_with_handle(http, "127.0.0.1", (ev_uint16_t)port);
    if (!sock) {
        fprintf(stderr, "bare_evhttp: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        goto out;
    }
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    if (getsockname(evhttp_bound_socket_get_fd(sock), (struct sockaddr *)&sa, &sl) != 0) {
        fprintf(stderr, "bare_evhttp: getsockname: %s\n", strerror(errno));
        goto out;
    }
    sigterm = evsignal_new(base, SIGTERM, bare_on_signal, base);
    sigint = evsignal_new(base, SIGINT, bare_on_signal, base);
    if (!sigterm || !sigint || evsignal_add(sigterm, NULL) != 0 || evsignal_add(sigint, NULL) != 0) {
        fprintf(stderr, "bare_evhttp: cannot install the signal handlers\n");
        goto out;
    }
    printf("bare_evhttp listening on http://127.0.0.1:%u (%zu-byte body)\n", ntohs(sa.sin_port), b.body_len);
    fflush(stdout);
    rc = event_base_dispatch(base) < 0 ? 1 : 0;

out:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (http)
        evhttp_free(http);
    if (base)
        event_base_free(base);
    free(loaded);
    return rc;
}
