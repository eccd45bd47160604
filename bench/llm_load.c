/*
 * bench/llm_load.c — the load half of the LLM benchmark (bench/llm_load.sh).
 *
 *   llm_load fake [-p PORT] [-d DELAY_MS]
 *       A minimal Gemini API in C for load: cachedContents create/patch/delete,
 *       and generateContent answered after DELAY_MS (1000) from a timer, so
 *       thousands of slow answers cost it nothing but sockets. GET /_stats →
 *       {"generate","cached","creates","peak_inflight"}. tests/fakes/fake_gemini.py
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
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <dirent.h>
#include <jansson.h>
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
    unsigned long generate, cached, creates, inflight, peak;
    unsigned long next_id;
} fake;

typedef struct delayed {
    fake *f;
    struct evhttp_request *req;
    struct event *ev;
    char *body;
} delayed;

static void fake_reply(struct evhttp_request *req, int code, const char *body)
{
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json; charset=UTF-8");
    evhttp_send_reply(req, code, code == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
}

static json_t *request_json(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    return json_loadb((const char *)evbuffer_pullup(in, (ev_ssize_t)n), n, 0, NULL);
}

static void on_delayed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    delayed *d = arg;
    d->f->inflight--;
    fake_reply(d->req, 200, d->body);
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

static void fake_generate(fake *f, struct evhttp_request *req)
{
    json_t *b = request_json(req);
    const char *cname = json_string_value(json_object_get(b, "cachedContent"));
    unsigned long ctok = 0;
    if (cname) {
        unsigned long id = strtoul(cname + strcspn(cname, "0123456789"), NULL, 10);
        ctok = id < CACHE_TOKENS_MAX ? cache_tokens[id] : 0;
        f->cached++;
    }
    unsigned long prompt = text_chars(b) / 4 + ctok;
    json_decref(b);
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
        fake_reply(req, 200, body);
        return;
    }
    delayed *d = calloc(1, sizeof *d);
    d->f = f;
    d->req = req;
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

static void fake_request(struct evhttp_request *req, void *arg)
{
    fake *f = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char buf[512];
    if (!path) {
        fake_reply(req, 404, "{}");
    } else if (m == EVHTTP_REQ_POST && strstr(path, ":generateContent")) {
        fake_generate(f, req);
    } else if (m == EVHTTP_REQ_POST && strcmp(path, "/v1beta/cachedContents") == 0) {
        json_t *b = request_json(req);
        unsigned long id = ++f->next_id, tok = text_chars(b) / 4;
        json_t *tools = json_object_get(b, "tools");
        char *td = tools ? json_dumps(tools, JSON_COMPACT) : NULL;
        tok += td ? strlen(td) / 4 : 0;
        free(td);
        json_decref(b);
        if (id < CACHE_TOKENS_MAX)
            cache_tokens[id] = tok;
        f->creates++;
        fake_cache_doc(buf, sizeof buf, id, tok);
        fake_reply(req, 200, buf);
    } else if (strncmp(path, "/v1beta/cachedContents/c", 24) == 0 && (m == EVHTTP_REQ_PATCH || m == EVHTTP_REQ_GET)) {
        unsigned long id = strtoul(path + 24, NULL, 10);
        fake_cache_doc(buf, sizeof buf, id, id < CACHE_TOKENS_MAX ? cache_tokens[id] : 0);
        fake_reply(req, 200, buf);
    } else if (strncmp(path, "/v1beta/cachedContents/c", 24) == 0 && m == EVHTTP_REQ_DELETE) {
        fake_reply(req, 200, "{}");
    } else if (strcmp(path, "/_stats") == 0) {
        snprintf(buf, sizeof buf, "{\"generate\":%lu,\"cached\":%lu,\"creates\":%lu,\"peak_inflight\":%lu}",
                 f->generate, f->cached, f->creates, f->peak);
        fake_reply(req, 200, buf);
    } else {
        fake_reply(req, 404, "{\"error\":{\"code\":404,\"status\":\"NOT_FOUND\",\"message\":\"no such method\"}}");
    }
}

static void on_stop_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(arg);
}

static int run_fake(int port, long delay_ms)
{
    fake f = {.delay_ms = delay_ms};
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
    struct evhttp *http = evhttp_new(f.base);
    if (!http || !evhttp_accept_socket_with_handle(http, fd)) {
        fprintf(stderr, "llm_load fake: cannot serve HTTP on 127.0.0.1:%d\n", port);
        return 1;
    }
    evhttp_set_timeout(http, 120);
    evhttp_set_max_body_size(http, 16 * 1024 * 1024);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(http, fake_request, &f);
    printf("fake gemini listening on http://127.0.0.1:%d\n", ntohs(sa.sin_port));
    fflush(stdout);
    struct event *st = evsignal_new(f.base, SIGTERM, on_stop_signal, f.base);
    struct event *si = evsignal_new(f.base, SIGINT, on_stop_signal, f.base);
    event_add(st, NULL);
    event_add(si, NULL);
    event_base_dispatch(f.base);
    event_free(st);
    event_free(si);
    evhttp_free(http);
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
    fprintf(stderr, "usage: llm_load fake [-p PORT] [-d DELAY_MS]\n"
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
    int port = 0, n = 5000, pid = 0, timeout_s = 60, opt;
    long delay = 1000;
    const char *url = NULL, *tenant = "demo";
    optind = 2;
    while ((opt = getopt(argc, argv, "p:d:u:n:t:P:T:")) != -1) {
        switch (opt) {
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
        return run_fake(port, delay);
    if (strcmp(mode, "drive") == 0 && url && n > 0)
        return run_drive(url, n, tenant, pid, timeout_s);
    usage();
    return 2;
}
