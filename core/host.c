/*
 * host.c — the koko_host vtable: what plugins may ask of kokod.
 *
 * Each entry checks the instance it is given (magic number) and tags the
 * resource it creates with it, so instance.c can cancel everything an
 * instance left behind before its destroy().
 */
#include "kokoconf.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "curlfn.h"
#include "instance.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "server.h"
#include "util.h"

static koko_instance *checked(koko_instance *inst, const char *fn)
{
    if (!inst || inst->magic != INSTANCE_MAGIC) {
        log_error("host", "%s: called with an invalid instance pointer (plugin bug)", fn);
        return NULL;
    }
    return inst;
}

static void host_log(koko_instance *inst, koko_log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(lvl, checked(inst, "log") ? inst->prefix : "plugin", fmt, ap);
    va_end(ap);
}

static const char *host_getenv(koko_instance *inst, const char *name)
{
    (void)inst;
    return name ? getenv(name) : NULL;
}

static const char *host_tenant(koko_instance *inst)
{
    return checked(inst, "tenant") ? inst->tenant : "";
}

static const char *host_base_dir(koko_instance *inst)
{
    if (!checked(inst, "base_dir") || !inst->kd->current)
        return ".";
    return inst->kd->current->cfg->base_dir;
}

/* ---- HTTP ---- */

struct koko_http {
    koko_http_fn fn;
    void *arg;
    httpc_xfer *x;
};

static void http_done(const httpc_result *r, void *arg)
{
    koko_http *h = arg;
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
    free(h);
}

static koko_http *host_http_submit(koko_instance *inst, CURL *easy, struct curl_slist *headers,
                                   koko_http_fn done, void *arg)
{
    if (!checked(inst, "http_submit") || !easy || !done) {
        if (curlfn_loaded() || curlfn_load((char[128]){0}, 128) == 0) {
            curl_slist_free_all(headers);
            if (easy)
                curl_easy_cleanup(easy);
        }
        return NULL;
    }
    koko_http *h = xcalloc(1, sizeof *h);
    h->fn = done;
    h->arg = arg;
    h->x = httpc_submit(inst->kd->http, easy, headers, inst, http_done, h);
    if (!h->x) { /* out of memory or shutting down: DONE will not run */
        free(h);
        return NULL;
    }
    return h;
}

static void host_http_cancel(koko_http *h)
{
    if (h && h->x)
        httpc_cancel(h->x);
}

/* ---- timers ---- */

static void timer_unlink(koko_timer *t)
{
    koko_instance *inst = t->inst;
    if (t->prev)
        t->prev->next = t->next;
    else
        inst->timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    koko_timer *t = arg;
    timer_unlink(t);
    koko_timer_fn fn = t->fn;
    void *a = t->arg;
    event_free(t->ev);
    free(t);
    fn(a);
}

static koko_timer *host_timer_start(koko_instance *inst, uint64_t ms, koko_timer_fn fn, void *arg)
{
    if (!checked(inst, "timer_start") || !fn || inst->st == INST_DEAD)
        return NULL;
    koko_timer *t = xcalloc(1, sizeof *t);
    t->inst = inst;
    t->fn = fn;
    t->arg = arg;
    t->ev = evtimer_new(inst->kd->base, timer_fire, t);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->ev, &tv);
    t->next = inst->timers;
    if (inst->timers)
        inst->timers->prev = t;
    inst->timers = t;
    return t;
}

static void host_timer_cancel(koko_timer *t)
{
    if (!t)
        return;
    timer_unlink(t);
    event_free(t->ev);
    free(t);
}

/* ---- routes ---- */

static int host_route_add(koko_instance *inst, const char *name, koko_route_fn fn, void *arg)
{
    if (!checked(inst, "route_add") || !fn)
        return -1;
    if (!name)
        name = inst->desc->name;
    if (instance_route(inst, name)) {
        log_error(inst->prefix, "route_add: route \"%s\" registered twice", name);
        return -1;
    }
    inst_route *r = xcalloc(1, sizeof *r);
    r->name = xstrdup(name);
    r->fn = fn;
    r->arg = arg;
    r->next = inst->routes;
    inst->routes = r;
    return 0;
}

/* ---- submit, post ---- */

static void host_submit(koko_instance *inst, const koko_msg *msg, koko_submit_fn done, void *arg)
{
    if (!checked(inst, "submit"))
        return;
    pipeline_submit(inst->kd->pipe, inst, msg, done, arg);
}

static int host_post(koko_instance *inst, koko_post_fn fn, void *arg)
{
    if (!inst || !fn)
        return -1;
    kokod *kd = inst->kd;
    post_item *p = malloc(sizeof *p);
    if (!p)
        return -1;
    p->fn = fn;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&kd->post_lock);
    if (kd->posted_tail)
        kd->posted_tail->next = p;
    else
        kd->posted = p;
    kd->posted_tail = p;
    pthread_mutex_unlock(&kd->post_lock);
    event_active(kd->post_ev, EV_READ, 0);
    return 0;
}

static void host_conversation(koko_instance *inst, const char *conversation_id, koko_conv_event ev,
                              const char *detail)
{
    if (!checked(inst, "conversation"))
        return;
    pipeline_conversation(inst->kd->pipe, inst, conversation_id, ev, detail);
}

static void host_tool_call(koko_instance *inst, void *job, const char *name, const json_t *args, koko_tool_fn done,
                           void *arg)
{
    if (!checked(inst, "tool_call"))
        return;
    pipeline_tool_call(inst, job, name, args, done, arg);
}

static const char *host_chunk_excerpt(koko_instance *inst, void *job, size_t i)
{
    if (!checked(inst, "chunk_excerpt"))
        return NULL;
    return pipeline_chunk_excerpt(inst, job, i);
}

const koko_host core_host = {
    .size = sizeof(koko_host),
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .log = host_log,
    .getenv = host_getenv,
    .tenant = host_tenant,
    .base_dir = host_base_dir,
    .http_submit = host_http_submit,
    .http_cancel = host_http_cancel,
    .timer_start = host_timer_start,
    .timer_cancel = host_timer_cancel,
    .route_add = host_route_add,
    .req_method = server_req_method,
    .req_header = server_req_header,
    .req_body = server_req_body,
    .req_peer = server_req_peer,
    .respond = server_respond,
    .submit = host_submit,
    .post = host_post,
    .conversation = host_conversation,
    .tool_call = host_tool_call,
    .chunk_excerpt = host_chunk_excerpt,
};
