/*
 * cw_bench.c — the Chatwoot channel's benchmark tool (bench/chatwoot.sh).
 *
 * One program, three modes, all on loopback:
 *   gen   writes N signed message_created webhooks (Chatwoot's payload shape, a new message
 *         and conversation id each, X-Chatwoot-Signature/-Timestamp computed now) as raw
 *         HTTP requests for bench/chatwoot.lua to replay with wrk (wrk's Lua cannot HMAC);
 *   rest  a fake Chatwoot REST API that answers at once and counts what kokod posts:
 *         replies per conversation (so duplicates show), private notes, typing, status;
 *   e2e   both at once: sends signed webhooks at a fixed rate over keep-alive connections
 *         and times, per conversation, webhook sent -> reply POST received.
 * Usage: see usage() below. Exit 0 when the run happened (whatever the figures), 1 when it
 * could not run, 2 on a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define PAYLOAD_MAX 4096
#define MAX_CONV_ID (1LL << 26) /* the REST receiver counts replies for conversation ids below this */

/* Questions the demo tenant answers from its KB without a handoff (checked with /api/chat). */
static const char *const questions[] = {
    "Mennyibe kerül a kiszállás?",
    "What are your opening hours?",
    "Hogyan foglalhatok időpontot?",
    "How much is the call-out fee?",
    "Milyen fizetési módokat fogadtok el?",
    "Do you work in the suburbs around Budapest?",
    "Meddig van nyitva a műhely szombaton?",
    "How long is the warranty on a repair?",
    "Which payment methods do you accept?",
};
#define N_QUESTIONS (sizeof questions / sizeof questions[0])

/* gen -e: the webhook's "event"; bench/accept.sh sends message_updated, which the channel
 * verifies and parses like message_created but answers without queueing anything */
static const char *webhook_event = "message_created";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- signed webhooks ---- */

/* One message_created webhook, as Chatwoot v4 sends it for a website-widget contact
 * (Message#webhook_data + "event"; see tests/fakes/chatwoot_payloads.py). */
typedef struct webhook {
    char body[PAYLOAD_MAX];
    size_t len;
    char ts[24];
    char sig[72];       /* "sha256=<64 hex>" */
    char delivery[40];  /* X-Chatwoot-Delivery, unique */
} webhook;

static int webhook_make(webhook *w, const char *secret, long long id, long long account)
{
    time_t t = time(NULL);
    struct tm tm;
    char iso[40];
    gmtime_r(&t, &tm);
    strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
    long long now = (long long)t, contact = 100 + id % 5000;
    const char *q = questions[id % N_QUESTIONS];
    char who[400];
    snprintf(who, sizeof who,
             "{\"id\":%lld,\"name\":\"Kiss Anna %lld\",\"avatar\":\"\",\"identifier\":null,"
             "\"email\":\"anna%lld@example.com\",\"phone_number\":null,\"thumbnail\":\"\","
             "\"additional_attributes\":{},\"custom_attributes\":{}}",
             contact, contact, contact);
    int n = snprintf(
        w->body, sizeof w->body,
        "{\"account\":{\"id\":%lld,\"name\":\"Acme Kft.\"},\"additional_attributes\":{},\"content_attributes\":{},"
        "\"content_type\":\"text\",\"content\":\"%s\",\"conversation\":{\"additional_attributes\":{},"
        "\"can_reply\":true,\"channel\":\"Channel::WebWidget\",\"contact_inbox\":{\"id\":%lld,\"contact_id\":%lld,"
        "\"inbox_id\":1,\"source_id\":\"cw-%lld\",\"hmac_verified\":false,\"pubsub_token\":\"p%lld\"},\"id\":%lld,"
        "\"inbox_id\":1,\"messages\":[{\"id\":%lld,\"content\":\"%s\",\"account_id\":%lld,\"inbox_id\":1,"
        "\"conversation_id\":%lld,\"message_type\":0,\"created_at\":%lld,\"private\":false,\"content_type\":\"text\","
        "\"source_id\":null,\"sender\":%s}],\"labels\":[],\"meta\":{\"sender\":%s,\"assignee\":null,"
        "\"assignee_type\":null,\"team\":null,\"hmac_verified\":false},\"status\":\"pending\","
        "\"custom_attributes\":{},\"snoozed_until\":null,\"unread_count\":1,\"first_reply_created_at\":null,"
        "\"priority\":null,\"waiting_since\":%lld,\"agent_last_seen_at\":0,\"contact_last_seen_at\":0,"
        "\"last_activity_at\":%lld,\"timestamp\":%lld,\"created_at\":%lld,\"updated_at\":%lld.0},"
        "\"created_at\":\"%s\",\"id\":%lld,\"inbox\":{\"id\":1,\"name\":\"Webshop chat\"},"
        "\"message_type\":\"incoming\",\"private\":false,\"sender\":%s,\"source_id\":null,"
        "\"event\":\"%s\"}",
        account, q, 40 + contact, contact, contact, contact, id, id, q, account, id, now, who, who, now, now, now,
        now - 60, now, iso, id, who, webhook_event);
    if (n < 0 || (size_t)n >= sizeof w->body)
        return -1;
    w->len = (size_t)n;
    snprintf(w->ts, sizeof w->ts, "%lld", now);
    /* HMAC-SHA256(secret, "<timestamp>.<body>"), the way Chatwoot signs */
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    char *data = malloc(strlen(w->ts) + 1 + w->len);
    if (!data)
        return -1;
    size_t tl = strlen(w->ts);
    memcpy(data, w->ts, tl);
    data[tl] = '.';
    memcpy(data + tl + 1, w->body, w->len);
    unsigned char *ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)data, tl + 1 + w->len,
                             mac, &maclen);
    free(data);
    if (!ok || maclen != 32)
        return -1;
    memcpy(w->sig, "sha256=", 7);
    for (unsigned i = 0; i < maclen; i++)
        snprintf(w->sig + 7 + 2 * i, 3, "%02x", mac[i]);
    snprintf(w->delivery, sizeof w->delivery, "b0c0b0c0-0000-4000-8000-%012lld", id);
    return 0;
}

/* gen: N raw requests into FILE, each preceded by a line with its length in bytes. */
static int run_gen(const char *file, const char *secret, const char *tenant, long long base, long long n,
                   long long account)
{
    FILE *f = fopen(file, "wb");
    if (!f) {
        fprintf(stderr, "cw_bench gen: cannot write %s: %s\n", file, strerror(errno));
        return 1;
    }
    static webhook w;
    static char req[PAYLOAD_MAX + 1024];
    for (long long i = 0; i < n; i++) {
        if (webhook_make(&w, secret, base + i, account) != 0) {
            fprintf(stderr, "cw_bench gen: cannot build webhook %lld (payload too large or out of memory)\n", i);
            fclose(f);
            return 1;
        }
        int len = snprintf(req, sizeof req,
                           "POST /webhook/%s/chatwoot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           "Content-Type: application/json\r\nUser-Agent: rest-client/2.1.0 (linux x86_64) ruby/3.3.3\r\n"
                           "X-Chatwoot-Delivery: %s\r\nX-Chatwoot-Signature: %s\r\nX-Chatwoot-Timestamp: %s\r\n"
                           "Content-Length: %zu\r\n\r\n%s",
                           tenant, w.delivery, w.sig, w.ts, w.len, w.body);
        if (len < 0 || (size_t)len >= sizeof req || fprintf(f, "%d\n", len) < 0 || fwrite(req, 1, (size_t)len, f) != (size_t)len) {
            fprintf(stderr, "cw_bench gen: cannot write %s: %s\n", file, strerror(errno));
            fclose(f);
            return 1;
        }
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "cw_bench gen: cannot write %s: %s\n", file, strerror(errno));
        return 1;
    }
    return 0;
}

/* ---- the fake Chatwoot REST API ---- */

typedef struct rest {
    const char *token;
    uint8_t *per_conv;  /* reply posts seen per conversation id (saturating) */
    char **source_id;   /* per conversation id: the source_id of its first reply, for GET listings */
    size_t cap;
    /* e2e: arrival time of the first reply for conversations base .. base + n - 1 */
    double *first_reply;
    long long base, n;
    uint64_t replies, dup_replies, notes, typing, status, assign, labels, gets, other, unauthorized;
    uint64_t next_id;
} rest;

static void rest_answer(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *out = evbuffer_new();
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=utf-8");
    if (out)
        evbuffer_add(out, body, strlen(body));
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", out);
    if (out)
        evbuffer_free(out);
}

static void rest_count(rest *r, struct evhttp_request *req)
{
    char body[512];
    snprintf(body, sizeof body,
             "{\"replies\":%" PRIu64 ",\"dup_replies\":%" PRIu64 ",\"notes\":%" PRIu64 ",\"typing\":%" PRIu64
             ",\"status\":%" PRIu64 ",\"assign\":%" PRIu64 ",\"labels\":%" PRIu64 ",\"gets\":%" PRIu64
             ",\"other\":%" PRIu64 ",\"unauthorized\":%" PRIu64 "}",
             r->replies, r->dup_replies, r->notes, r->typing, r->status, r->assign, r->labels, r->gets, r->other,
             r->unauthorized);
    rest_answer(req, 200, body);
}

/* Make room for conversation id CONV in the per-conversation arrays; 0 when there is. */
static int rest_room(rest *r, long long conv)
{
    if (conv < 0 || conv >= MAX_CONV_ID)
        return -1;
    if ((size_t)conv < r->cap)
        return 0;
    size_t cap = r->cap ? r->cap : 65536;
    while (cap <= (size_t)conv)
        cap *= 2;
    uint8_t *p = realloc(r->per_conv, cap);
    if (!p)
        return -1;
    r->per_conv = p;
    char **s = realloc(r->source_id, cap * sizeof *s);
    if (!s)
        return -1; /* per_conv is bigger than cap now, which is harmless */
    r->source_id = s;
    memset(p + r->cap, 0, cap - r->cap);
    memset(s + r->cap, 0, (cap - r->cap) * sizeof *s);
    r->cap = cap;
    return 0;
}

/* The value of "source_id" in a JSON BODY of LEN bytes, as a new string; NULL when absent. */
static char *source_id_of(const char *body, size_t len)
{
    const char *k = body ? memmem(body, len, "\"source_id\":\"", 13) : NULL;
    if (!k)
        return NULL;
    k += 13;
    const char *end = memchr(k, '"', len - (size_t)(k - body));
    return end ? strndup(k, (size_t)(end - k)) : NULL;
}

/* A reply (a non-private message) for conversation CONV arrived at T. */
static void rest_reply(rest *r, long long conv, double t, const char *body, size_t len)
{
    r->replies++;
    if (rest_room(r, conv) == 0) {
        if (r->per_conv[conv] > 0)
            r->dup_replies++;
        if (r->per_conv[conv] < 255)
            r->per_conv[conv]++;
        if (!r->source_id[conv])
            r->source_id[conv] = source_id_of(body, len);
    }
    if (r->first_reply && conv >= r->base && conv < r->base + r->n && r->first_reply[conv - r->base] == 0)
        r->first_reply[conv - r->base] = t;
}

/* GET .../messages: the reply we hold for CONV, so a retry after an ambiguous failure finds it. */
static void rest_listing(rest *r, struct evhttp_request *req, long long conv)
{
    char out[400];
    r->gets++;
    if (conv >= 0 && (size_t)conv < r->cap && r->source_id[conv] && strlen(r->source_id[conv]) < 200)
        snprintf(out, sizeof out,
                 "{\"meta\":{},\"payload\":[{\"id\":%lld,\"conversation_id\":%lld,\"message_type\":1,"
                 "\"private\":false,\"source_id\":\"%s\"}]}",
                 conv, conv, r->source_id[conv]);
    else
        snprintf(out, sizeof out, "{\"meta\":{},\"payload\":[]}");
    rest_answer(req, 200, out);
}

static void rest_free(rest *r)
{
    for (size_t i = 0; r->source_id && i < r->cap; i++)
        free(r->source_id[i]);
    free(r->source_id);
    free(r->per_conv);
}

static void rest_on_request(struct evhttp_request *req, void *arg)
{
    double t = now_s();
    rest *r = arg;
    const char *uri = evhttp_request_get_uri(req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (cmd == EVHTTP_REQ_GET && uri && strcmp(uri, "/_count") == 0) {
        rest_count(r, req);
        return;
    }
    const char *tok = evhttp_find_header(evhttp_request_get_input_headers(req), "api_access_token");
    if (!tok || strcmp(tok, r->token) != 0) {
        r->unauthorized++;
        rest_answer(req, 401, "{\"error\":\"Invalid Access Token\"}");
        return;
    }
    long long account = 0, conv = 0;
    char what[40] = "";
    if (!uri || sscanf(uri, "/api/v1/accounts/%lld/conversations/%lld/%39[a-z_]", &account, &conv, what) != 3) {
        r->other++;
        rest_answer(req, 404, "{\"error\":\"Resource could not be found\"}");
        return;
    }
    if (strcmp(what, "messages") == 0 && cmd == EVHTTP_REQ_GET) {
        rest_listing(r, req, conv);
        return;
    }
    if (cmd != EVHTTP_REQ_POST) {
        r->other++;
        rest_answer(req, 404, "{\"error\":\"Resource could not be found\"}");
        return;
    }
    if (strcmp(what, "messages") == 0) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        char *body = (char *)evbuffer_pullup(in, -1);
        int private_note = body && memmem(body, len, "\"private\":true", 14) != NULL;
        if (private_note)
            r->notes++;
        else
            rest_reply(r, conv, t, body, len);
        char out[160];
        snprintf(out, sizeof out,
                 "{\"id\":%" PRIu64 ",\"conversation_id\":%lld,\"message_type\":1,\"private\":%s,\"content_type\":\"text\"}",
                 ++r->next_id, conv, private_note ? "true" : "false");
        rest_answer(req, 200, out);
        return;
    }
    if (strcmp(what, "toggle_typing_status") == 0)
        r->typing++;
    else if (strcmp(what, "toggle_status") == 0)
        r->status++;
    else if (strcmp(what, "assignments") == 0)
        r->assign++;
    else if (strcmp(what, "labels") == 0)
        r->labels++;
    else
        r->other++;
    rest_answer(req, 200, "{}");
}

/* Listen on 127.0.0.1:PORT (0: any) with a deep accept queue: kokod opens a new connection
 * for every reply post, and evhttp's own listen(fd, 128) would drop SYNs in a burst (a 1 s
 * retransmit that would be the fake's fault, not kokod's). Prints the real port. NULL on failure. */
static struct evhttp *rest_listen(struct event_base *base, rest *r, int port, const char *who)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    int one = 1;
    evutil_socket_t fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 4096) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        fprintf(stderr, "cw_bench: cannot listen on 127.0.0.1:%d: %s\n", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct evhttp *http = evhttp_new(base);
    if (!http || !evhttp_accept_socket_with_handle(http, fd)) {
        fprintf(stderr, "cw_bench: cannot serve HTTP on 127.0.0.1:%d\n", port);
        if (http)
            evhttp_free(http);
        close(fd);
        return NULL;
    }
    evhttp_set_timeout(http, 60);
    evhttp_set_max_body_size(http, 1024 * 1024);
    evhttp_set_gencb(http, rest_on_request, r);
    printf("cw_bench %s: fake chatwoot listening on http://127.0.0.1:%d\n", who, ntohs(sa.sin_port));
    fflush(stdout);
    return http;
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static int run_rest(int port, const char *token)
{
    rest r = {.token = token};
    struct event_base *base = event_base_new();
    struct evhttp *http = base ? rest_listen(base, &r, port, "rest") : NULL;
    struct event *st = http ? evsignal_new(base, SIGTERM, on_stop_signal, base) : NULL;
    struct event *si = http ? evsignal_new(base, SIGINT, on_stop_signal, base) : NULL;
    int rc = 1;
    if (st && si && event_add(st, NULL) == 0 && event_add(si, NULL) == 0) {
        event_base_dispatch(base);
        rc = 0;
    }
    if (st)
        event_free(st);
    if (si)
        event_free(si);
    if (http)
        evhttp_free(http);
    if (base)
        event_base_free(base);
    rest_free(&r);
    return rc;
}

/* ---- e2e: fixed-rate sender + receiver ---- */

typedef struct wmsg {
    webhook w;
    double sched, sent, acked;
    int outcome; /* 0 none yet, 1 accepted, 2 duplicate, 3 other */
} wmsg;

typedef struct driver driver;

typedef struct conn {
    driver *d;
    struct evhttp_connection *ec;
    int busy;
} conn;

struct driver {
    struct event_base *base;
    const char *tenant;
    int kport;
    wmsg *m;
    long long n, next;
    double rate, t0, grace_s, end_at;
    conn *conns;
    int n_conns;
    struct event *tick;
    rest *r;
    long long acked, accepted, duplicate, other, errors;
    int printed_other;
};

typedef struct inflight {
    conn *c;
    long long i;
} inflight;

static void driver_pump(driver *d);

static void on_webhook_done(struct evhttp_request *req, void *arg)
{
    inflight *f = arg;
    conn *c = f->c;
    driver *d = c->d;
    wmsg *m = &d->m[f->i];
    m->acked = now_s();
    d->acked++;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    char body[200] = "";
    if (req) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_copyout(in, body, sizeof body - 1);
        body[len] = '\0';
    }
    if (code == 200 && strstr(body, "\"status\":\"accepted\""))
        m->outcome = 1, d->accepted++;
    else if (code == 200 && strstr(body, "\"duplicate\""))
        m->outcome = 2, d->duplicate++;
    else {
        m->outcome = 3, d->other++;
        if (!req)
            d->errors++;
        if (d->printed_other++ < 3)
            fprintf(stderr, "cw_bench e2e: webhook %lld answered %d %s\n", f->i, code, req ? body : "(connection failed)");
    }
    free(f);
    c->busy = 0;
    driver_pump(d);
}

static int driver_send(driver *d, conn *c, long long i)
{
    wmsg *m = &d->m[i];
    inflight *f = malloc(sizeof *f);
    struct evhttp_request *req = f ? evhttp_request_new(on_webhook_done, f) : NULL;
    if (!req) {
        free(f);
        return -1;
    }
    f->c = c;
    f->i = i;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char host[40], len[24], path[200];
    snprintf(host, sizeof host, "127.0.0.1:%d", d->kport);
    snprintf(len, sizeof len, "%zu", m->w.len);
    snprintf(path, sizeof path, "/webhook/%s/chatwoot", d->tenant);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Content-Length", len);
    evhttp_add_header(h, "X-Chatwoot-Delivery", m->w.delivery);
    evhttp_add_header(h, "X-Chatwoot-Signature", m->w.sig);
    evhttp_add_header(h, "X-Chatwoot-Timestamp", m->w.ts);
    evbuffer_add(evhttp_request_get_output_buffer(req), m->w.body, m->w.len);
    c->busy = 1;
    m->sent = now_s();
    if (evhttp_make_request(c->ec, req, EVHTTP_REQ_POST, path) != 0) {
        /* evhttp_make_request frees REQ on failure */
        free(f);
        c->busy = 0;
        return -1;
    }
    return 0;
}

/* Send everything that is due and has a free connection; re-arm the tick for the next one. */
static void driver_pump(driver *d)
{
    double t = now_s();
    while (d->next < d->n && d->m[d->next].sched <= t) {
        conn *free_conn = NULL;
        for (int k = 0; k < d->n_conns && !free_conn; k++)
            if (!d->conns[k].busy)
                free_conn = &d->conns[k];
        if (!free_conn)
            return; /* a response frees one and calls us again */
        if (driver_send(d, free_conn, d->next) != 0) {
            d->m[d->next].outcome = 3;
            d->other++;
            d->errors++;
            d->acked++;
        }
        d->next++;
    }
    if (d->next < d->n) {
        double wait = d->m[d->next].sched - t;
        struct timeval tv = {(time_t)wait, (suseconds_t)((wait - floor(wait)) * 1e6)};
        event_add(d->tick, &tv);
    } else if (!evtimer_pending(d->tick, NULL)) {
        struct timeval tv = {0, 10000}; /* all sent: on_tick watches for the replies */
        event_add(d->tick, &tv);
    }
}

static long long replied(const driver *d)
{
    long long k = 0;
    for (long long i = 0; i < d->n; i++)
        k += d->r->first_reply[i] > 0;
    return k;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    driver *d = arg;
    if (d->next < d->n) {
        driver_pump(d);
        return;
    }
    /* everything sent: wait for the answers, then for the replies (at most grace_s) */
    double t = now_s();
    if (d->end_at == 0)
        d->end_at = t + d->grace_s;
    if ((d->acked == d->n && replied(d) >= d->accepted) || t >= d->end_at) {
        event_base_loopbreak(d->base);
        return;
    }
    struct timeval tv = {0, 10000};
    event_add(d->tick, &tv);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of N sorted values. */
static double pct(const double *v, long long n, double p)
{
    if (n == 0)
        return NAN;
    long long k = (long long)ceil(p * (double)n);
    if (k < 1)
        k = 1;
    if (k > n)
        k = n;
    return v[k - 1];
}

/* Poll FILE until it holds a port (at most 30 s): how the script tells us where kokod listens. */
static int wait_port_file(const char *file)
{
    for (int i = 0; i < 3000; i++) {
        FILE *f = fopen(file, "r");
        int port = 0;
        if (f) {
            int ok = fscanf(f, "%d", &port) == 1;
            fclose(f);
            if (ok && port > 0 && port < 65536)
                return port;
        }
        usleep(10000);
    }
    return -1;
}

static int run_e2e(const char *secret, const char *token, const char *tenant, const char *port_file, double rate,
                   double seconds, double warm_s, int n_conns, double grace_s, double target_ms, long long account)
{
    int rc = 1;
    driver d = {.tenant = tenant, .rate = rate, .grace_s = grace_s, .n_conns = n_conns};
    rest r = {.token = token, .base = 1000000};
    d.r = &r;
    /* the first W messages warm kokod up (connections opened, the state file
     * grown) and are reported apart; the run proper follows at the same rate */
    long long W = (long long)llround(rate * warm_s);
    d.n = W + (long long)llround(rate * seconds);
    struct event_config *cfg = event_config_new();
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    d.base = cfg ? event_base_new_with_config(cfg) : NULL;
    if (cfg)
        event_config_free(cfg);
    d.m = calloc((size_t)d.n, sizeof *d.m);
    r.first_reply = calloc((size_t)d.n, sizeof *r.first_reply);
    r.n = d.n;
    d.conns = calloc((size_t)n_conns, sizeof *d.conns);
    struct evhttp *http = NULL;
    if (!d.base || !d.m || !r.first_reply || !d.conns) {
        fprintf(stderr, "cw_bench e2e: out of memory for %lld messages\n", d.n);
        goto out;
    }
    if (!(http = rest_listen(d.base, &r, 0, "e2e")))
        goto out;
    d.kport = wait_port_file(port_file);
    if (d.kport < 0) {
        fprintf(stderr, "cw_bench e2e: no kokod port in %s after 30 s\n", port_file);
        goto out;
    }
    /* sign everything first: the timestamps are seconds old when sent, well inside ±300 s */
    for (long long i = 0; i < d.n; i++)
        if (webhook_make(&d.m[i].w, secret, r.base + i, account) != 0) {
            fprintf(stderr, "cw_bench e2e: cannot build webhook %lld\n", i);
            goto out;
        }
    for (int k = 0; k < n_conns; k++) {
        d.conns[k].d = &d;
        d.conns[k].ec = evhttp_connection_base_new(d.base, NULL, "127.0.0.1", (ev_uint16_t)d.kport);
        if (!d.conns[k].ec) {
            fprintf(stderr, "cw_bench e2e: cannot create connection %d\n", k);
            goto out;
        }
        evhttp_connection_set_timeout(d.conns[k].ec, 10);
    }
    d.tick = evtimer_new(d.base, on_tick, &d);
    if (!d.tick)
        goto out;
    d.t0 = now_s() + 0.05;
    for (long long i = 0; i < d.n; i++)
        d.m[i].sched = d.t0 + (double)i / rate;
    struct timeval first = {0, 50000};
    event_add(d.tick, &first);
    event_base_dispatch(d.base);

    /* ---- figures ---- */
    double *lat = calloc((size_t)d.n, sizeof *lat), *ack = calloc((size_t)d.n, sizeof *ack);
    double *late = calloc((size_t)d.n, sizeof *late);
    if (!lat || !ack || !late) {
        free(lat);
        free(ack);
        free(late);
        fprintf(stderr, "cw_bench e2e: out of memory for the figures\n");
        goto out;
    }
    long long nl = 0, na = 0, ns = 0, missing = 0, wl = 0;
    for (long long i = 0; i < W; i++) /* the warm-up's latencies, apart */
        if (r.first_reply[i] > 0 && d.m[i].sent > 0)
            late[wl++] = (r.first_reply[i] - d.m[i].sent) * 1e3;
    qsort(late, (size_t)wl, sizeof *late, cmp_double);
    double warm_p50 = pct(late, wl, 0.5), warm_p99 = pct(late, wl, 0.99), warm_max = wl ? late[wl - 1] : NAN;
    long long warm_missing = W - wl;
    for (long long i = W; i < d.n; i++) {
        wmsg *m = &d.m[i];
        if (m->sent > 0)
            late[ns++] = (m->sent - m->sched) * 1e3;
        if (m->acked > 0 && m->sent > 0)
            ack[na++] = (m->acked - m->sent) * 1e3;
        if (r.first_reply[i] > 0 && m->sent > 0)
            lat[nl++] = (r.first_reply[i] - m->sent) * 1e3;
        else if (m->outcome == 1)
            missing++;
    }
    qsort(lat, (size_t)nl, sizeof *lat, cmp_double);
    qsort(ack, (size_t)na, sizeof *ack, cmp_double);
    qsort(late, (size_t)ns, sizeof *late, cmp_double);
    double last_sent = 0, first_sent = W < d.n ? d.m[W].sched : d.t0;
    for (long long i = W; i < d.n; i++)
        if (d.m[i].sent > last_sent)
            last_sent = d.m[i].sent;
    double span = last_sent > first_sent ? last_sent - first_sent : 0;
    if (W > 0)
        printf("warm-up first (not in the figures below): %lld webhooks in %.1f s at the same rate, reply p50 %.3f ms, "
               "p99 %.3f ms, max %.3f ms, %lld unanswered\n",
               W, warm_s, warm_p50, warm_p99, warm_max, warm_missing);
    printf("%lld signed webhooks, one conversation each, at %.0f/s for %.1f s (achieved %.0f/s) over %d keep-alive "
           "connections\n",
           d.n - W, rate, seconds, span > 0 ? (double)(ns - 1) / span : 0.0, n_conns);
    printf("sender behind schedule: p99 %.3f ms, max %.3f ms\n", pct(late, ns, 0.99), ns ? late[ns - 1] : NAN);
    printf("webhook answers: %lld accepted (200 \"accepted\"), %lld duplicate, %lld other (%lld connection "
           "errors); answered in p50 %.3f ms, p99 %.3f ms, max %.3f ms\n",
           d.accepted, d.duplicate, d.other, d.errors, pct(ack, na, 0.5), pct(ack, na, 0.99),
           na ? ack[na - 1] : NAN);
    printf("replies: %lld of %lld accepted messages answered, %" PRIu64 " duplicate replies, %lld missing; "
           "%" PRIu64 " typing calls, %" PRIu64 " private notes, %" PRIu64 " status changes, %" PRIu64
           " listings (re-post checks), %" PRIu64 " unauthorized\n",
           nl + wl, d.accepted, r.dup_replies, missing + warm_missing, r.typing, r.notes, r.status, r.gets,
           r.unauthorized);
    double p99 = pct(lat, nl, 0.99);
    printf("webhook sent -> reply POST received: p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms\n",
           pct(lat, nl, 0.5), pct(lat, nl, 0.9), p99, nl ? lat[nl - 1] : NAN);
    /* the same latency second by second of the run: a drift shows as a rising p99 */
    printf("p99 by second of the run (ms):");
    for (long long sec = 0; W + sec * (long long)rate < d.n; sec++) {
        long long lo = W + sec * (long long)rate, hi = lo + (long long)rate, k = 0;
        for (long long i = lo; i < hi && i < d.n; i++)
            if (r.first_reply[i] > 0 && d.m[i].sent > 0)
                late[k++] = (r.first_reply[i] - d.m[i].sent) * 1e3; /* late[] is free again */
        qsort(late, (size_t)k, sizeof *late, cmp_double);
        printf(" %.1f", pct(late, k, 0.99));
    }
    printf("\n");
    /* CW_BENCH_SAMPLES=FILE: one line per message (index, sent s after start, webhook answer
     * ms, reply ms; -1 when there was none), to see where in the run the slow ones fall */
    const char *samples = getenv("CW_BENCH_SAMPLES");
    FILE *sf = samples && *samples ? fopen(samples, "w") : NULL;
    for (long long i = 0; sf && i < d.n; i++) {
        const wmsg *m = &d.m[i];
        fprintf(sf, "%lld %.6f %.3f %.3f\n", i, m->sent > 0 ? m->sent - d.t0 : -1.0,
                m->acked > 0 && m->sent > 0 ? (m->acked - m->sent) * 1e3 : -1.0,
                r.first_reply[i] > 0 && m->sent > 0 ? (r.first_reply[i] - m->sent) * 1e3 : -1.0);
    }
    if (sf)
        fclose(sf);
    int complete = d.accepted == d.n && nl == d.n - W && warm_missing == 0 && r.dup_replies == 0 && missing == 0;
    printf("p99 %.3f ms   target p99 < %.0f ms, every message answered exactly once   %s\n", p99, target_ms,
           complete && p99 < target_ms ? "PASS" : "MISS");
    free(lat);
    free(ack);
    free(late);
    rc = 0;
out:
    for (int k = 0; d.conns && k < n_conns; k++)
        if (d.conns[k].ec)
            evhttp_connection_free(d.conns[k].ec);
    if (d.tick)
        event_free(d.tick);
    if (http)
        evhttp_free(http);
    if (d.base)
        event_base_free(d.base);
    free(d.conns);
    free(d.m);
    free(r.first_reply);
    rest_free(&r);
    return rc;
}

static void usage(FILE *f, const char *argv0)
{
    fprintf(f,
            "usage: %s gen  -o FILE -n N [-b FIRST_ID] [-s SECRET] [-T TENANT] [-a ACCOUNT] [-e EVENT]\n"
            "       %s rest [-p PORT] [-k API_TOKEN]\n"
            "       %s e2e  -f KOKOD_PORT_FILE [-r RATE] [-d SECONDS] [-w WARMUP_S] [-c CONNECTIONS] [-g GRACE_S]\n"
            "               [-s SECRET] [-k API_TOKEN] [-T TENANT] [-a ACCOUNT] [-t TARGET_P99_MS]\n"
            "defaults: secret bench-secret, token bench-token, tenant demo, account 1, event message_created,\n"
            "rate 1000/s, 10 s, 8 connections, 5 s grace, target 5 ms. e2e prints its REST port, then waits\n"
            "for kokod's port in KOKOD_PORT_FILE.\n",
            argv0, argv0, argv0);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr, argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    const char *out = NULL, *secret = "bench-secret", *token = "bench-token", *tenant = "demo", *port_file = NULL;
    long long n = 0, first = 1, account = 1;
    int port = 0, conns = 8, opt;
    double rate = 1000, seconds = 10, warm = 0, grace = 5, target = 5;
    optind = 2;
    while ((opt = getopt(argc, argv, "o:n:b:s:T:a:p:k:f:r:d:w:c:g:t:e:h")) != -1) {
        switch (opt) {
        case 'o': out = optarg; break;
        case 'n': n = atoll(optarg); break;
        case 'b': first = atoll(optarg); break;
        case 's': secret = optarg; break;
        case 'T': tenant = optarg; break;
        case 'a': account = atoll(optarg); break;
        case 'p': port = atoi(optarg); break;
        case 'k': token = optarg; break;
        case 'f': port_file = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'w': warm = atof(optarg); break;
        case 'c': conns = atoi(optarg); break;
        case 'g': grace = atof(optarg); break;
        case 't': target = atof(optarg); break;
        case 'e': webhook_event = optarg; break;
        case 'h': usage(stdout, argv[0]); return 0;
        default: usage(stderr, argv[0]); return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(mode, "gen") == 0) {
        if (!out || n <= 0 || first <= 0) {
            fprintf(stderr, "cw_bench gen: needs -o FILE and -n N > 0 (and -b FIRST_ID > 0)\n");
            return 2;
        }
        return run_gen(out, secret, tenant, first, n, account);
    }
    if (strcmp(mode, "rest") == 0) {
        if (port < 0 || port > 65535) {
            fprintf(stderr, "cw_bench rest: port %d is out of range: use 0..65535\n", port);
            return 2;
        }
        return run_rest(port, token);
    }
    if (strcmp(mode, "e2e") == 0) {
        if (!port_file || rate <= 0 || seconds <= 0 || rate * seconds > 10e6 || conns < 1 || conns > 1024 ||
            grace < 0) {
            fprintf(stderr, "cw_bench e2e: needs -f PORT_FILE, a rate and duration > 0 (at most 10 million "
                            "messages) and 1..1024 connections\n");
            return 2;
        }
        return run_e2e(secret, token, tenant, port_file, rate, seconds, warm, conns, grace, target, account);
    }
    usage(stderr, argv[0]);
    return 2;
}
