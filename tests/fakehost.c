/*
 * tests/fakehost.c — a fake koko_host for plugin unit tests (see fakehost.h).
 *
 * The vtable is the real shape of include/koko/host.h; its entries find their
 * fakehost through the instance pointer. Timers are libevent timers, HTTP is
 * core/httpc.c on the same event_base, post() goes through a self-pipe so it
 * is safe from any thread, and submit() answers through a zero-delay event,
 * so every callback a plugin registers runs later, on the loop, never from
 * inside the call that registered it.
 */
#define _GNU_SOURCE
#include "fakehost.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "httpc.h"

#define FAKEHOST_MAGIC 0x46414b45u /* "FAKE" */

struct koko_instance {
    uint32_t magic;
    fakehost *fh;
};

struct koko_timer {
    struct event *ev;
    fakehost *fh;
    koko_timer_fn fn;
    void *arg;
    struct koko_timer *prev, *next;
};

struct koko_http {
    fakehost *fh;
    koko_http_fn fn;
    void *arg;
    httpc_xfer *x;
};

struct koko_request {
    fakehost *fh;
    char *route;
    char *method;
    char *body;
    size_t body_len;
    char **headers; /* NULL-terminated "Name: value" */
    char *peer;
    struct koko_request *prev, *next;
};

typedef struct route {
    char *name;
    koko_route_fn fn;
    void *arg;
} route;

typedef struct posted {
    koko_post_fn fn;
    void *arg;
    struct posted *next;
} posted;

typedef struct submit_answer {
    fakehost *fh;
    struct event *ev;
    koko_submit_fn fn;
    void *arg;
    koko_submit_status st;
    char *error;
    struct submit_answer *prev, *next;
} submit_answer;

typedef struct submitted {
    koko_msg msg;
    char *strs[13];
    json_t *meta;
    json_t *headers;
    koko_attachment *att;
    char **att_strs; /* 3 per attachment: kind, url, content_type */
} submitted;



typedef struct tool_answer {
    fakehost *fh;
    struct event *ev;
    koko_tool_fn fn;
    void *arg;
    koko_status st;
    json_t *result;
    struct tool_answer *prev, *next;
} tool_answer;

typedef struct tool_record {
    char *name;
    json_t *args;
    void *job;
} tool_record;

/* The fake store behind kv_*: one per fakehost, or shared by several
 * (replicas of one plugin on one Redis). Keys are the plugin's own keys. */
typedef struct kv_entry {
    char *key;
    char *val;
    size_t len;
    double expires_ms; /* 0: none */
    struct kv_entry *next;
} kv_entry;

typedef struct fakekv {
    int refs;
    kv_entry *head;
} fakekv;

typedef struct kv_answer {
    fakehost *fh;
    struct event *ev;
    koko_kv_fn fn;
    void *arg;
    koko_kv_status st;
    char *error;
    int found;
    int64_t integer;
    char *value;
    size_t value_len;
    struct kv_answer *prev, *next;
} kv_answer;

typedef struct env_var {
    char *name, *value;
} env_var;

struct fakehost {
    struct koko_instance inst;
    char *tenant, *plugin, *base_dir;
    struct event_base *base;
    httpc *http;
    int echo;

    char **logs;
    koko_log_level *log_levels;
    size_t n_logs, cap_logs;

    env_var *env;
    size_t n_env;

    struct koko_timer *timers;
    size_t timers_started, timers_pending, timers_cancelled;
    size_t http_submitted;

    pthread_mutex_t post_lock;
    posted *posts, *posts_tail;
    size_t posts_pending; /* guarded by post_lock */
    int post_pipe[2];
    struct event *post_ev;

    route *routes;
    size_t n_routes;
    struct koko_request *open_reqs;
    size_t n_open_reqs;
    fakehost_response *responses;
    size_t n_responses;

    koko_submit_status submit_st;
    char *submit_error;
    submit_answer *answers;
    size_t n_answers;
    submitted **subs;
    size_t n_subs;

    fakehost_conv_event *convs;
    size_t n_convs;

    fakehost_tool_fn tool_fn;
    void *tool_arg;
    tool_answer *tool_answers;
    size_t n_tool_answers;
    tool_record *tools;
    size_t n_tools;

    fakekv *kv;
    koko_kv_status kv_fail;
    kv_answer *kv_answers;
    size_t n_kv_answers, kv_calls;

    size_t drained;
    int freeing;
};

/* ---- small helpers ---- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "fakehost: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) {
        fprintf(stderr, "fakehost: out of memory\n");
        abort();
    }
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "fakehost: out of memory (%zu bytes)\n", n);
        abort();
    }
    return q;
}

static char *xstrdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    return memcpy(xmalloc(n), s, n);
}

static fakehost *host_of(koko_instance *inst, const char *fn)
{
    if (!inst || inst->magic != FAKEHOST_MAGIC) {
        fprintf(stderr, "fakehost: %s: called with an invalid instance pointer (plugin bug)\n", fn);
        abort();
    }
    return inst->fh;
}

/* ---- plugin loading ---- */

const koko_plugin *fakehost_load_plugin(const char *path, void **handle, char *err, size_t errlen)
{
    *handle = NULL;
    if (!path || !*path) {
        snprintf(err, errlen, "no plugin path given");
        return NULL;
    }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(err, errlen, "dlopen %s: %s", path, dlerror());
        return NULL;
    }
    const koko_plugin *p = dlsym(h, KOKO_PLUGIN_SYMBOL);
    if (!p) {
        snprintf(err, errlen, "%s: no symbol %s", path, KOKO_PLUGIN_SYMBOL);
        dlclose(h);
        return NULL;
    }
    *handle = h;
    return p;
}

/* ---- log, getenv, tenant, base_dir ---- */

static const char *level_name(koko_log_level lvl)
{
    switch (lvl) {
    case KOKO_LOG_ERROR: return "error";
    case KOKO_LOG_WARN: return "warn";
    case KOKO_LOG_INFO: return "info";
    default: return "debug";
    }
}

static void fh_log(koko_instance *inst, koko_log_level lvl, const char *fmt, ...)
{
    fakehost *fh = host_of(inst, "log");
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *line = NULL;
    if (asprintf(&line, "%s: %s", level_name(lvl), msg) < 0)
        abort();
    if (fh->n_logs == fh->cap_logs) {
        fh->cap_logs = fh->cap_logs ? fh->cap_logs * 2 : 16;
        fh->logs = xrealloc(fh->logs, fh->cap_logs * sizeof *fh->logs);
        fh->log_levels = xrealloc(fh->log_levels, fh->cap_logs * sizeof *fh->log_levels);
    }
    fh->logs[fh->n_logs] = line;
    fh->log_levels[fh->n_logs] = lvl;
    fh->n_logs++;
    if (fh->echo)
        fprintf(stderr, "%s/%s: %s\n", fh->tenant, fh->plugin, line);
}

static const char *fh_getenv(koko_instance *inst, const char *name)
{
    fakehost *fh = host_of(inst, "getenv");
    for (size_t i = 0; name && i < fh->n_env; i++)
        if (strcmp(fh->env[i].name, name) == 0)
            return fh->env[i].value;
    return NULL;
}

static const char *fh_tenant(koko_instance *inst)
{
    return host_of(inst, "tenant")->tenant;
}

static const char *fh_base_dir(koko_instance *inst)
{
    return host_of(inst, "base_dir")->base_dir;
}

/* ---- HTTP ---- */

static void http_done(const httpc_result *r, void *arg)
{
    koko_http *h = arg;
    fakehost *fh = h->fh;
    if (!fh->freeing) {
        koko_http_result res = {
            .size = sizeof res,
            .status = r->status,
            .curl_code = r->curl_code,
            .cancelled = r->cancelled,
            .error = r->error,
            .body = r->body,
            .body_len = r->body_len,
            .headers = r->headers,
            .total_ms = r->total_ms,
        };
        h->fn(&res, h->arg);
    }
    free(h);
}

static koko_http *fh_http_submit(koko_instance *inst, CURL *easy, struct curl_slist *headers,
                                 koko_http_fn done, void *arg)
{
    fakehost *fh = host_of(inst, "http_submit");
    if (!easy || !done) {
        curl_slist_free_all(headers);
        if (easy)
            curl_easy_cleanup(easy);
        return NULL;
    }
    koko_http *h = xcalloc(1, sizeof *h);
    h->fh = fh;
    h->fn = done;
    h->arg = arg;
    h->x = httpc_submit(fh->http, easy, headers, &fh->inst, http_done, h);
    if (!h->x) {
        free(h);
        return NULL;
    }
    fh->http_submitted++;
    return h;
}

static void fh_http_cancel(koko_http *h)
{
    if (h && h->x)
        httpc_cancel(h->x);
}

/* ---- timers ---- */

static void timer_unlink(struct koko_timer *t)
{
    fakehost *fh = t->fh;
    if (t->prev)
        t->prev->next = t->next;
    else
        fh->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
    fh->timers_pending--;
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct koko_timer *t = arg;
    timer_unlink(t);
    koko_timer_fn fn = t->fn;
    void *a = t->arg;
    event_free(t->ev);
    free(t);
    fn(a);
}

static koko_timer *fh_timer_start(koko_instance *inst, uint64_t ms, koko_timer_fn fn, void *arg)
{
    fakehost *fh = host_of(inst, "timer_start");
    if (!fn)
        return NULL;
    struct koko_timer *t = xcalloc(1, sizeof *t);
    t->fh = fh;
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(fh->base, timer_fire, t);
    if (!t->ev) {
        free(t);
        return NULL;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->ev, &tv);
    t->next = fh->timers;
    if (fh->timers)
        fh->timers->prev = t;
    fh->timers = t;
    fh->timers_started++;
    fh->timers_pending++;
    return t;
}

static void fh_timer_cancel(koko_timer *t)
{
    if (!t)
        return;
    t->fh->timers_cancelled++;
    timer_unlink(t);
    event_free(t->ev);
    free(t);
}

/* ---- routes and requests ---- */

static int fh_route_add(koko_instance *inst, const char *name, koko_route_fn fn, void *arg)
{
    fakehost *fh = host_of(inst, "route_add");
    if (!fn)
        return -1;
    if (!name)
        name = fh->plugin;
    for (size_t i = 0; i < fh->n_routes; i++)
        if (strcmp(fh->routes[i].name, name) == 0) {
            fh_log(inst, KOKO_LOG_ERROR, "route_add: route \"%s\" registered twice", name);
            return -1;
        }
    fh->routes = xrealloc(fh->routes, (fh->n_routes + 1) * sizeof *fh->routes);
    fh->routes[fh->n_routes++] = (route){xstrdup(name), fn, arg};
    return 0;
}

static const char *fh_req_method(koko_request *req)
{
    return req->method;
}

static const char *fh_req_header(koko_request *req, const char *name)
{
    size_t n = strlen(name);
    for (char **h = req->headers; *h; h++)
        if (strncasecmp(*h, name, n) == 0 && (*h)[n] == ':') {
            const char *v = *h + n + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            return v;
        }
    return NULL;
}

static const char *fh_req_body(koko_request *req, size_t *len)
{
    if (len)
        *len = req->body_len;
    return req->body;
}

static const char *fh_req_peer(koko_request *req)
{
    return req->peer;
}

static void request_free(koko_request *req)
{
    fakehost *fh = req->fh;
    if (req->prev)
        req->prev->next = req->next;
    else
        fh->open_reqs = req->next;
    if (req->next)
        req->next->prev = req->prev;
    fh->n_open_reqs--;
    for (char **h = req->headers; *h; h++)
        free(*h);
    free(req->headers);
    free(req->route);
    free(req->method);
    free(req->body);
    free(req->peer);
    free(req);
}

static void fh_respond(koko_request *req, int status, const char *json_body)
{
    fakehost *fh = req->fh;
    fh->responses = xrealloc(fh->responses, (fh->n_responses + 1) * sizeof *fh->responses);
    fh->responses[fh->n_responses++] =
        (fakehost_response){xstrdup(req->route), status, xstrdup(json_body ? json_body : "")};
    request_free(req);
}

int fakehost_request(fakehost *fh, const char *name, const char *method, const char *body,
                     const char *const *headers, const char *peer)
{
    const route *r = NULL;
    for (size_t i = 0; i < fh->n_routes; i++)
        if (strcmp(fh->routes[i].name, name) == 0)
            r = &fh->routes[i];
    if (!r)
        return -1;
    koko_request *req = xcalloc(1, sizeof *req);
    req->fh = fh;
    req->route = xstrdup(name);
    req->method = xstrdup(method ? method : "POST");
    req->body = xstrdup(body ? body : "");
    req->body_len = strlen(req->body);
    req->peer = xstrdup(peer ? peer : "127.0.0.1");
    size_t n = 0;
    while (headers && headers[n])
        n++;
    req->headers = xcalloc(n + 1, sizeof *req->headers);
    for (size_t i = 0; i < n; i++)
        req->headers[i] = xstrdup(headers[i]);
    req->next = fh->open_reqs;
    if (fh->open_reqs)
        fh->open_reqs->prev = req;
    fh->open_reqs = req;
    fh->n_open_reqs++;
    r->fn(req, r->arg);
    return 0;
}

/* ---- submit ---- */

static void answer_unlink(submit_answer *a)
{
    fakehost *fh = a->fh;
    if (a->prev)
        a->prev->next = a->next;
    else
        fh->answers = a->next;
    if (a->next)
        a->next->prev = a->prev;
    fh->n_answers--;
}

static void answer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    submit_answer *a = arg;
    answer_unlink(a);
    a->fn(a->st, a->error, a->arg);
    event_free(a->ev);
    free(a->error);
    free(a);
}

static void fh_submit(koko_instance *inst, const koko_msg *msg, koko_submit_fn done, void *arg)
{
    fakehost *fh = host_of(inst, "submit");
    submitted *s = xcalloc(1, sizeof *s);
    size_t sz = msg->size < sizeof s->msg ? msg->size : sizeof s->msg;
    memcpy(&s->msg, msg, sz);
    s->msg.size = sizeof s->msg;
    const char **fields[] = {&s->msg.tenant,     &s->msg.channel, &s->msg.msg_id,
                             &s->msg.conversation_id, &s->msg.contact_id, &s->msg.inbox,
                             &s->msg.text,       &s->msg.language, &s->msg.subject,
                             &s->msg.from,       &s->msg.content_type, &s->msg.skip,
                             &s->msg.handoff};
    s->msg.tenant = fh->tenant;
    s->msg.channel = fh->plugin;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        s->strs[i] = xstrdup(*fields[i]);
        *fields[i] = s->strs[i];
    }
    s->meta = s->msg.meta ? json_deep_copy(s->msg.meta) : NULL;
    s->msg.meta = s->meta;
    /* ABI 1.1 fields a 1.0 producer did not send are zero (memcpy above stopped at its size) */
    s->headers = s->msg.headers ? json_deep_copy(s->msg.headers) : NULL;
    s->msg.headers = s->headers;
    if (s->msg.attachments && s->msg.n_attachments) {
        size_t n = s->msg.n_attachments;
        s->att = xcalloc(n, sizeof *s->att);
        s->att_strs = xcalloc(3 * n, sizeof *s->att_strs);
        for (size_t i = 0; i < n; i++) {
            const koko_attachment *a = &s->msg.attachments[i];
            s->att[i].size = a->size;
            s->att[i].kind = s->att_strs[3 * i] = xstrdup(a->kind);
            s->att[i].url = s->att_strs[3 * i + 1] = xstrdup(a->url);
            s->att[i].content_type = s->att_strs[3 * i + 2] = xstrdup(a->content_type);
        }
        s->msg.attachments = s->att;
    } else {
        s->msg.attachments = NULL;
        s->msg.n_attachments = 0;
    }
    fh->subs = xrealloc(fh->subs, (fh->n_subs + 1) * sizeof *fh->subs);
    fh->subs[fh->n_subs++] = s;
    if (!done)
        return;
    submit_answer *a = xcalloc(1, sizeof *a);
    a->fh = fh;
    a->fn = done;
    a->arg = arg;
    a->st = fh->submit_st;
    a->error = xstrdup(fh->submit_error);
    a->ev = evtimer_new(fh->base, answer_fire, a);
    if (!a->ev)
        abort();
    struct timeval tv = {0, 0};
    evtimer_add(a->ev, &tv);
    a->next = fh->answers;
    if (fh->answers)
        fh->answers->prev = a;
    fh->answers = a;
    fh->n_answers++;
}

void fakehost_set_submit_status(fakehost *fh, koko_submit_status st, const char *error)
{
    fh->submit_st = st;
    free(fh->submit_error);
    fh->submit_error = xstrdup(error);
}

size_t fakehost_submit_count(const fakehost *fh)
{
    return fh->n_subs;
}

const koko_msg *fakehost_submitted(const fakehost *fh, size_t i)
{
    return i < fh->n_subs ? &fh->subs[i]->msg : NULL;
}

/* ---- conversation (ABI 1.1) ---- */

static void fh_conversation(koko_instance *inst, const char *conversation_id, koko_conv_event ev,
                            const char *detail)
{
    fakehost *fh = host_of(inst, "conversation");
    fh->convs = xrealloc(fh->convs, (fh->n_convs + 1) * sizeof *fh->convs);
    fh->convs[fh->n_convs++] = (fakehost_conv_event){xstrdup(conversation_id), ev, xstrdup(detail)};
}

size_t fakehost_conversation_count(const fakehost *fh)
{
    return fh->n_convs;
}

const fakehost_conv_event *fakehost_conversation_get(const fakehost *fh, size_t i)
{
    return i < fh->n_convs ? &fh->convs[i] : NULL;
}

/* ---- post ---- */

static int fh_post(koko_instance *inst, koko_post_fn fn, void *arg)
{
    if (!inst || inst->magic != FAKEHOST_MAGIC || !fn)
        return -1;
    fakehost *fh = inst->fh;
    posted *p = malloc(sizeof *p);
    if (!p)
        return -1;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&fh->post_lock);
    if (fh->posts_tail)
        fh->posts_tail->next = p;
    else
        fh->posts = p;
    fh->posts_tail = p;
    fh->posts_pending++;
    pthread_mutex_unlock(&fh->post_lock);
    char b = 1;
    ssize_t w;
    do
        w = write(fh->post_pipe[1], &b, 1);
    while (w < 0 && errno == EINTR);
    /* EAGAIN: the pipe is full, so the reader is already woken. */
    return 0;
}

static void post_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    fakehost *fh = arg;
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&fh->post_lock);
    posted *p = fh->posts;
    fh->posts = fh->posts_tail = NULL;
    pthread_mutex_unlock(&fh->post_lock);
    while (p) {
        posted *next = p->next;
        p->fn(p->arg);
        free(p);
        pthread_mutex_lock(&fh->post_lock);
        fh->posts_pending--;
        pthread_mutex_unlock(&fh->post_lock);
        p = next;
    }
}

/* ---- tool_call (ABI 1.2) ---- */

static void tool_answer_unlink(tool_answer *a)
{
    fakehost *fh = a->fh;
    if (a->prev)
        a->prev->next = a->next;
    else
        fh->tool_answers = a->next;
    if (a->next)
        a->next->prev = a->prev;
    fh->n_tool_answers--;
}

static void tool_answer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tool_answer *a = arg;
    tool_answer_unlink(a);
    a->fn(a->st, a->result, a->arg);
    json_decref(a->result);
    event_free(a->ev);
    free(a);
}

static void fh_tool_call(koko_instance *inst, void *job, const char *name, const json_t *args, koko_tool_fn done,
                         void *arg)
{
    fakehost *fh = host_of(inst, "tool_call");
    fh->tools = xrealloc(fh->tools, (fh->n_tools + 1) * sizeof *fh->tools);
    fh->tools[fh->n_tools++] = (tool_record){xstrdup(name ? name : ""), args ? json_deep_copy(args) : NULL, job};
    if (!done)
        return;
    tool_answer *a = xcalloc(1, sizeof *a);
    a->fh = fh;
    a->fn = done;
    a->arg = arg;
    a->st = KOKO_OK;
    if (name && strcmp(name, "handoff_to_human") == 0)
        a->result = json_pack("{s:b,s:s}", "ok", 1, "note", "a human colleague will take over after your answer");
    else if (fh->tool_fn)
        a->result = fh->tool_fn(name ? name : "", args, &a->st, fh->tool_arg);
    else
        a->result = json_pack("{s:s}", "error", "no such function");
    if (!a->result)
        a->result = json_pack("{s:s}", "error", "the tool returned nothing");
    a->ev = evtimer_new(fh->base, tool_answer_fire, a);
    if (!a->ev)
        abort();
    struct timeval tv = {0, 0};
    evtimer_add(a->ev, &tv);
    a->next = fh->tool_answers;
    if (fh->tool_answers)
        fh->tool_answers->prev = a;
    fh->tool_answers = a;
    fh->n_tool_answers++;
}

void fakehost_set_tool(fakehost *fh, fakehost_tool_fn fn, void *arg)
{
    fh->tool_fn = fn;
    fh->tool_arg = arg;
}

size_t fakehost_tool_count(const fakehost *fh)
{
    return fh->n_tools;
}

const char *fakehost_tool_name(const fakehost *fh, size_t i)
{
    return i < fh->n_tools ? fh->tools[i].name : NULL;
}

const json_t *fakehost_tool_args(const fakehost *fh, size_t i)
{
    return i < fh->n_tools ? fh->tools[i].args : NULL;
}

void *fakehost_tool_job(const fakehost *fh, size_t i)
{
    return i < fh->n_tools ? fh->tools[i].job : NULL;
}

/* ---- kv (ABI 1.3) ---- */

static double kv_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static kv_entry **kv_find(fakekv *kv, const char *key)
{
    double now = kv_now_ms();
    kv_entry **pp = &kv->head;
    while (*pp) {
        kv_entry *e = *pp;
        if (e->expires_ms > 0 && e->expires_ms <= now) { /* expired: gone */
            *pp = e->next;
            free(e->key);
            free(e->val);
            free(e);
            continue;
        }
        if (strcmp(e->key, key) == 0)
            return pp;
        pp = &e->next;
    }
    return NULL;
}

static void kv_put(fakekv *kv, const char *key, const void *val, size_t len, int64_t ttl_ms)
{
    kv_entry **pp = kv_find(kv, key), *e;
    if (pp) {
        e = *pp;
        free(e->val);
    } else {
        e = xcalloc(1, sizeof *e);
        e->key = xstrdup(key);
        e->next = kv->head;
        kv->head = e;
    }
    e->val = xmalloc(len + 1);
    memcpy(e->val, val, len);
    e->val[len] = 0;
    e->len = len;
    e->expires_ms = ttl_ms > 0 ? kv_now_ms() + (double)ttl_ms : 0;
}

static void kv_delete(fakekv *kv, kv_entry **pp)
{
    kv_entry *e = *pp;
    *pp = e->next;
    free(e->key);
    free(e->val);
    free(e);
}

static void kv_unref(fakekv *kv)
{
    if (!kv || --kv->refs > 0)
        return;
    while (kv->head)
        kv_delete(kv, &kv->head);
    free(kv);
}

static void kv_answer_unlink(kv_answer *a)
{
    fakehost *fh = a->fh;
    if (a->prev)
        a->prev->next = a->next;
    else
        fh->kv_answers = a->next;
    if (a->next)
        a->next->prev = a->prev;
    fh->n_kv_answers--;
}

static void kv_answer_free(kv_answer *a)
{
    event_free(a->ev);
    free(a->error);
    free(a->value);
    free(a);
}

static void kv_answer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kv_answer *a = arg;
    kv_answer_unlink(a);
    koko_kv_result r = {.size = sizeof r, .status = a->st, .error = a->error, .found = a->found,
                        .integer = a->integer, .value = a->value, .value_len = a->value_len};
    a->fn(&r, a->arg);
    kv_answer_free(a);
}

/* Record the call; NULL when refused. The answer is filled by the caller. */
static kv_answer *kv_begin(koko_instance *inst, const char *fn, const char *key, koko_kv_fn done, void *arg)
{
    fakehost *fh = host_of(inst, fn);
    if (!key || !*key || strlen(key) > 512)
        return NULL;
    fh->kv_calls++;
    kv_answer *a = xcalloc(1, sizeof *a);
    a->fh = fh;
    a->fn = done;
    a->arg = arg;
    a->st = fh->kv_fail;
    if (a->st != KOKO_KV_OK)
        a->error = xstrdup("fakehost: the store fails (fakehost_kv_fail)");
    return a;
}

/* Answer A later (or drop it when nobody listens). */
static int kv_end(kv_answer *a)
{
    fakehost *fh = a->fh;
    if (!a->fn) {
        free(a->error);
        free(a->value);
        free(a);
        return 0;
    }
    a->ev = evtimer_new(fh->base, kv_answer_fire, a);
    if (!a->ev)
        abort();
    struct timeval tv = {0, 0};
    evtimer_add(a->ev, &tv);
    a->next = fh->kv_answers;
    if (fh->kv_answers)
        fh->kv_answers->prev = a;
    fh->kv_answers = a;
    fh->n_kv_answers++;
    return 0;
}

static int fh_kv_get(koko_instance *inst, const char *key, koko_kv_fn done, void *arg)
{
    kv_answer *a = kv_begin(inst, "kv_get", key, done, arg);
    if (!a)
        return -1;
    kv_entry **pp = a->st == KOKO_KV_OK ? kv_find(a->fh->kv, key) : NULL;
    if (pp) {
        a->found = 1;
        a->value = xmalloc((*pp)->len + 1);
        memcpy(a->value, (*pp)->val, (*pp)->len + 1);
        a->value_len = (*pp)->len;
    }
    return kv_end(a);
}

static int fh_kv_set(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                     koko_kv_fn done, void *arg)
{
    kv_answer *a = kv_begin(inst, "kv_set", key, done, arg);
    if (!a)
        return -1;
    if (a->st == KOKO_KV_OK)
        kv_put(a->fh->kv, key, val ? val : "", val ? len : 0, ttl_ms);
    return kv_end(a);
}

static int fh_kv_set_nx(koko_instance *inst, const char *key, const void *val, size_t len, int64_t ttl_ms,
                        koko_kv_fn done, void *arg)
{
    kv_answer *a = kv_begin(inst, "kv_set_nx", key, done, arg);
    if (!a)
        return -1;
    if (a->st == KOKO_KV_OK && !kv_find(a->fh->kv, key)) {
        kv_put(a->fh->kv, key, val ? val : "", val ? len : 0, ttl_ms);
        a->integer = 1;
    }
    return kv_end(a);
}

static int fh_kv_del(koko_instance *inst, const char *key, koko_kv_fn done, void *arg)
{
    kv_answer *a = kv_begin(inst, "kv_del", key, done, arg);
    if (!a)
        return -1;
    kv_entry **pp = a->st == KOKO_KV_OK ? kv_find(a->fh->kv, key) : NULL;
    if (pp) {
        kv_delete(a->fh->kv, pp);
        a->integer = 1;
    }
    return kv_end(a);
}

static int fh_kv_incr(koko_instance *inst, const char *key, int64_t delta, int64_t ttl_ms, koko_kv_fn done,
                      void *arg)
{
    kv_answer *a = kv_begin(inst, "kv_incr", key, done, arg);
    if (!a)
        return -1;
    if (a->st == KOKO_KV_OK) {
        kv_entry **pp = kv_find(a->fh->kv, key);
        char *end = NULL;
        long long cur = pp ? strtoll((*pp)->val, &end, 10) : 0;
        if (pp && (end == (*pp)->val || *end)) {
            a->st = KOKO_KV_E_TYPE;
            a->error = xstrdup("fakehost: the value is not an integer");
        } else {
            char buf[32];
            snprintf(buf, sizeof buf, "%lld", cur + (long long)delta);
            double exp = pp ? (*pp)->expires_ms : 0;
            kv_put(a->fh->kv, key, buf, strlen(buf), 0);
            kv_entry **np = kv_find(a->fh->kv, key);
            (*np)->expires_ms = exp > 0 ? exp : ttl_ms > 0 ? kv_now_ms() + (double)ttl_ms : 0;
            a->integer = cur + delta;
        }
    }
    return kv_end(a);
}

void fakehost_share_kv(fakehost *fh, fakehost *with)
{
    with->kv->refs++;
    kv_unref(fh->kv);
    fh->kv = with->kv;
}

void fakehost_kv_fail(fakehost *fh, koko_kv_status st)
{
    fh->kv_fail = st;
}

size_t fakehost_kv_calls(const fakehost *fh)
{
    return fh->kv_calls;
}

const char *fakehost_kv_peek(fakehost *fh, const char *key, size_t *len)
{
    kv_entry **pp = kv_find(fh->kv, key);
    if (len)
        *len = pp ? (*pp)->len : 0;
    return pp ? (*pp)->val : NULL;
}

void fakehost_kv_put(fakehost *fh, const char *key, const char *val, int64_t ttl_ms)
{
    kv_put(fh->kv, key, val, strlen(val), ttl_ms);
}

size_t fakehost_kv_count(fakehost *fh, const char *prefix)
{
    size_t n = 0, pl = strlen(prefix);
    for (kv_entry *e = fh->kv->head; e; e = e->next)
        if (strncmp(e->key, prefix, pl) == 0 && (e->expires_ms <= 0 || e->expires_ms > kv_now_ms()))
            n++;
    return n;
}

/* ---- the vtable ---- */

static const koko_host fake_host = {
    .size = sizeof(koko_host),
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .log = fh_log,
    .getenv = fh_getenv,
    .tenant = fh_tenant,
    .base_dir = fh_base_dir,
    .http_submit = fh_http_submit,
    .http_cancel = fh_http_cancel,
    .timer_start = fh_timer_start,
    .timer_cancel = fh_timer_cancel,
    .route_add = fh_route_add,
    .req_method = fh_req_method,
    .req_header = fh_req_header,
    .req_body = fh_req_body,
    .req_peer = fh_req_peer,
    .respond = fh_respond,
    .submit = fh_submit,
    .post = fh_post,
    .conversation = fh_conversation,
    .tool_call = fh_tool_call,
    .kv_get = fh_kv_get,
    .kv_set = fh_kv_set,
    .kv_set_nx = fh_kv_set_nx,
    .kv_del = fh_kv_del,
    .kv_incr = fh_kv_incr,
};

const koko_host *fakehost_host(void)
{
    return &fake_host;
}

/* ---- life cycle ---- */

fakehost *fakehost_new(const char *tenant, const char *plugin)
{
    fakehost *fh = xcalloc(1, sizeof *fh);
    fh->inst.magic = FAKEHOST_MAGIC;
    fh->inst.fh = fh;
    fh->tenant = xstrdup(tenant ? tenant : "demo");
    fh->plugin = xstrdup(plugin ? plugin : "plugin");
    fh->base_dir = xstrdup(".");
    fh->echo = getenv("FAKEHOST_VERBOSE") != NULL;
    fh->post_pipe[0] = fh->post_pipe[1] = -1;
    fh->kv = xcalloc(1, sizeof *fh->kv);
    fh->kv->refs = 1;
    pthread_mutex_init(&fh->post_lock, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct event_config *ecfg = event_config_new(); /* precise timers, as kokod's loop */
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    fh->base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    if (ecfg)
        event_config_free(ecfg);
    char err[256];
    if (!fh->base || !(fh->http = httpc_new(fh->base, err, sizeof err)) ||
        pipe2(fh->post_pipe, O_NONBLOCK | O_CLOEXEC) != 0 ||
        !(fh->post_ev = event_new(fh->base, fh->post_pipe[0], EV_READ | EV_PERSIST, post_drain, fh)) ||
        event_add(fh->post_ev, NULL) != 0) {
        fakehost_free(fh);
        return NULL;
    }
    return fh;
}

void fakehost_free(fakehost *fh)
{
    if (!fh)
        return;
    fh->freeing = 1;
    while (fh->timers) {
        struct koko_timer *t = fh->timers;
        timer_unlink(t);
        event_free(t->ev);
        free(t);
    }
    while (fh->answers) {
        submit_answer *a = fh->answers;
        answer_unlink(a);
        event_free(a->ev);
        free(a->error);
        free(a);
    }
    while (fh->tool_answers) {
        tool_answer *a = fh->tool_answers;
        tool_answer_unlink(a);
        event_free(a->ev);
        json_decref(a->result);
        free(a);
    }
    while (fh->kv_answers) {
        kv_answer *a = fh->kv_answers;
        kv_answer_unlink(a);
        kv_answer_free(a);
    }
    kv_unref(fh->kv);
    httpc_free(fh->http); /* callbacks run now, but http_done skips the plugin */
    while (fh->open_reqs)
        request_free(fh->open_reqs);
    if (fh->post_ev)
        event_free(fh->post_ev);
    for (posted *p = fh->posts, *n; p; p = n) {
        n = p->next;
        free(p);
    }
    for (int i = 0; i < 2; i++)
        if (fh->post_pipe[i] >= 0)
            close(fh->post_pipe[i]);
    if (fh->base)
        event_base_free(fh->base);
    curl_global_cleanup();
    pthread_mutex_destroy(&fh->post_lock);
    for (size_t i = 0; i < fh->n_logs; i++)
        free(fh->logs[i]);
    free(fh->logs);
    free(fh->log_levels);
    for (size_t i = 0; i < fh->n_env; i++) {
        free(fh->env[i].name);
        free(fh->env[i].value);
    }
    free(fh->env);
    for (size_t i = 0; i < fh->n_routes; i++)
        free(fh->routes[i].name);
    free(fh->routes);
    for (size_t i = 0; i < fh->n_responses; i++) {
        free(fh->responses[i].route);
        free(fh->responses[i].body);
    }
    free(fh->responses);
    for (size_t i = 0; i < fh->n_subs; i++) {
        for (size_t j = 0; j < sizeof fh->subs[i]->strs / sizeof fh->subs[i]->strs[0]; j++)
            free(fh->subs[i]->strs[j]);
        json_decref(fh->subs[i]->meta);
        json_decref(fh->subs[i]->headers);
        for (size_t j = 0; j < 3 * fh->subs[i]->msg.n_attachments; j++)
            free(fh->subs[i]->att_strs[j]);
        free(fh->subs[i]->att_strs);
        free(fh->subs[i]->att);
        free(fh->subs[i]);
    }
    free(fh->subs);
    for (size_t i = 0; i < fh->n_convs; i++) {
        free(fh->convs[i].conversation_id);
        free(fh->convs[i].detail);
    }
    free(fh->convs);
    for (size_t i = 0; i < fh->n_tools; i++) {
        free(fh->tools[i].name);
        json_decref(fh->tools[i].args);
    }
    free(fh->tools);
    free(fh->submit_error);
    free(fh->tenant);
    free(fh->plugin);
    free(fh->base_dir);
    free(fh);
}

koko_instance *fakehost_instance(fakehost *fh)
{
    return &fh->inst;
}

fakehost *fakehost_of(koko_instance *inst)
{
    return host_of(inst, "fakehost_of");
}

struct event_base *fakehost_base(fakehost *fh)
{
    return fh->base;
}

void fakehost_set_base_dir(fakehost *fh, const char *dir)
{
    free(fh->base_dir);
    fh->base_dir = xstrdup(dir ? dir : ".");
}

void fakehost_setenv(fakehost *fh, const char *name, const char *value)
{
    for (size_t i = 0; i < fh->n_env; i++)
        if (strcmp(fh->env[i].name, name) == 0) {
            free(fh->env[i].value);
            if (value) {
                fh->env[i].value = xstrdup(value);
            } else {
                free(fh->env[i].name);
                fh->env[i] = fh->env[--fh->n_env];
            }
            return;
        }
    if (!value)
        return;
    fh->env = xrealloc(fh->env, (fh->n_env + 1) * sizeof *fh->env);
    fh->env[fh->n_env++] = (env_var){xstrdup(name), xstrdup(value)};
}

/* ---- the loop ---- */

size_t fakehost_pending(const fakehost *fh)
{
    pthread_mutex_t *lock = (pthread_mutex_t *)&fh->post_lock;
    pthread_mutex_lock(lock);
    size_t posts = fh->posts_pending;
    pthread_mutex_unlock(lock);
    return fh->timers_pending + httpc_pending(fh->http, NULL) + posts + fh->n_answers + fh->n_tool_answers +
           fh->n_kv_answers;
}

static void deadline_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Run until DONE(fh, flag) or the deadline. */
static int run_loop(fakehost *fh, const volatile int *flag, unsigned timeout_ms)
{
    int expired = 0;
    struct event *deadline = evtimer_new(fh->base, deadline_fire, &expired);
    if (!deadline)
        return -1;
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)((timeout_ms % 1000) * 1000)};
    evtimer_add(deadline, &tv);
    int rc = -1;
    for (;;) {
        if (flag ? *flag != 0 : fakehost_pending(fh) == 0) {
            rc = 0;
            break;
        }
        if (expired)
            break;
        event_base_loop(fh->base, EVLOOP_ONCE);
    }
    event_free(deadline);
    return rc;
}

int fakehost_run(fakehost *fh, unsigned timeout_ms)
{
    return run_loop(fh, NULL, timeout_ms);
}

int fakehost_run_until(fakehost *fh, const volatile int *flag, unsigned timeout_ms)
{
    return run_loop(fh, flag, timeout_ms);
}

void fakehost_cancel_all(fakehost *fh)
{
    while (fh->timers)
        fh_timer_cancel(fh->timers);
    httpc_cancel_owner(fh->http, &fh->inst);
    while (httpc_pending(fh->http, NULL) > 0)
        event_base_loop(fh->base, EVLOOP_ONCE);
    /* as kokod at the drain deadline: what the store has not answered is cancelled */
    while (fh->kv_answers) {
        kv_answer *a = fh->kv_answers;
        a->st = KOKO_KV_E_CANCELLED;
        free(a->error);
        a->error = xstrdup("cancelled: the instance was stopped");
        a->found = 0;
        event_del(a->ev);
        kv_answer_fire(-1, 0, a);
    }
}

/* ---- recorded facts ---- */

size_t fakehost_log_count(const fakehost *fh)
{
    return fh->n_logs;
}

const char *fakehost_log_line(const fakehost *fh, size_t i)
{
    return i < fh->n_logs ? fh->logs[i] : NULL;
}

koko_log_level fakehost_log_level(const fakehost *fh, size_t i)
{
    return i < fh->n_logs ? fh->log_levels[i] : KOKO_LOG_DEBUG;
}

long fakehost_log_find(const fakehost *fh, const char *needle)
{
    for (size_t i = 0; i < fh->n_logs; i++)
        if (strstr(fh->logs[i], needle))
            return (long)i;
    return -1;
}

void fakehost_log_clear(fakehost *fh)
{
    for (size_t i = 0; i < fh->n_logs; i++)
        free(fh->logs[i]);
    fh->n_logs = 0;
}

size_t fakehost_timers_started(const fakehost *fh)
{
    return fh->timers_started;
}

size_t fakehost_timers_pending(const fakehost *fh)
{
    return fh->timers_pending;
}

size_t fakehost_timers_cancelled(const fakehost *fh)
{
    return fh->timers_cancelled;
}

size_t fakehost_http_submitted(const fakehost *fh)
{
    return fh->http_submitted;
}

size_t fakehost_http_pending(const fakehost *fh)
{
    return httpc_pending(fh->http, NULL);
}

void fakehost_drained(koko_instance *inst)
{
    host_of(inst, "drained")->drained++;
}

size_t fakehost_drained_count(const fakehost *fh)
{
    return fh->drained;
}

size_t fakehost_route_count(const fakehost *fh)
{
    return fh->n_routes;
}

size_t fakehost_requests_open(const fakehost *fh)
{
    return fh->n_open_reqs;
}

size_t fakehost_response_count(const fakehost *fh)
{
    return fh->n_responses;
}

const fakehost_response *fakehost_response_get(const fakehost *fh, size_t i)
{
    return i < fh->n_responses ? &fh->responses[i] : NULL;
}

/* ---- fakediag ---- */

struct fakediag {
    koko_diag d; /* first: the plugin's koko_diag * is our fakediag * */
    char **lines;
    size_t n;
};

static void fakediag_error(koko_diag *d, const char *relpath, const char *fmt, ...)
{
    fakediag *fd = (fakediag *)d;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *line = NULL;
    int rc = relpath && *relpath ? asprintf(&line, "%s: %s", relpath, msg) : asprintf(&line, "%s", msg);
    if (rc < 0)
        abort();
    fd->lines = xrealloc(fd->lines, (fd->n + 1) * sizeof *fd->lines);
    fd->lines[fd->n++] = line;
}

fakediag *fakediag_new(void)
{
    fakediag *fd = xcalloc(1, sizeof *fd);
    fd->d.size = sizeof fd->d;
    fd->d.error = fakediag_error;
    fd->d.priv = fd;
    return fd;
}

void fakediag_clear(fakediag *fd)
{
    for (size_t i = 0; i < fd->n; i++)
        free(fd->lines[i]);
    fd->n = 0;
}

void fakediag_free(fakediag *fd)
{
    if (!fd)
        return;
    fakediag_clear(fd);
    free(fd->lines);
    free(fd);
}

koko_diag *fakediag_diag(fakediag *fd)
{
    return &fd->d;
}

size_t fakediag_count(const fakediag *fd)
{
    return fd->n;
}

const char *fakediag_line(const fakediag *fd, size_t i)
{
    return i < fd->n ? fd->lines[i] : NULL;
}

long fakediag_find(const fakediag *fd, const char *line)
{
    for (size_t i = 0; i < fd->n; i++)
        if (strcmp(fd->lines[i], line) == 0)
            return (long)i;
    return -1;
}
