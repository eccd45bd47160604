/*
 * plugins/common/ratelimit.c — queueing rate limiter, shared through the
 * store or local (see ratelimit.h).
 *
 * One queue serves both modes. Shared: the head of the queue is "probed" —
 * two kv_incr on the current window's counters — and granted when both new
 * values are within the window's budget; otherwise the increments are given
 * back and the head waits for the next window. Only one probe is in flight
 * at a time, so grants never reorder the queue. Local: token buckets that
 * start full (a fresh instance may use its whole minute at once, as Google's
 * and OpenAI's per-minute quotas allow); the head decides when the timer
 * fires next.
 */
#include "ratelimit.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct rl_wait {
    uint64_t tokens;
    rl_fn fn;
    void *arg;
    rl_wait *next;
};

typedef struct rl_probe {
    rl *r;
    rl_wait *w;          /* NULL once cancelled */
    uint64_t tokens;     /* what was added to the token counter */
    int64_t win;
    int answers;         /* of 2 */
    int failed;          /* a kv error: degrade */
    int cancelled;       /* the host is stopping the instance */
    char why[160];
    int64_t reqs, toks;  /* the counters after our increments */
} rl_probe;

struct rl {
    const koko_host *host;
    koko_instance *inst;
    double rpm, tpm;       /* capacities (per minute); <= 0: unlimited */
    long window_ms;
    int shared;            /* the host offers kv_* */
    double local_until;    /* monotonic ms: counting locally until then (a store error) */
    double reqs, toks;     /* local levels */
    double last_ms;        /* when the local levels were last refilled */
    rl_wait *head, *tail;
    size_t n;
    koko_timer *timer;
    rl_probe *probe;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- local token buckets ---- */

static void refill(rl *r)
{
    double now = now_ms();
    double dt = now - r->last_ms;
    r->last_ms = now;
    if (dt <= 0)
        return;
    if (r->rpm > 0) {
        r->reqs += dt * r->rpm / 60000.0;
        if (r->reqs > r->rpm)
            r->reqs = r->rpm;
    }
    if (r->tpm > 0) {
        r->toks += dt * r->tpm / 60000.0;
        if (r->toks > r->tpm)
            r->toks = r->tpm;
    }
}

/* Milliseconds until a request for TOKENS fits locally; 0 when it fits now. */
static double wait_for(const rl *r, uint64_t tokens)
{
    double w = 0;
    if (r->rpm > 0 && r->reqs < 1.0) {
        double t = (1.0 - r->reqs) * 60000.0 / r->rpm;
        if (t > w)
            w = t;
    }
    if (r->tpm > 0) {
        double need = (double)tokens > r->tpm ? r->tpm : (double)tokens;
        if (r->toks < need) {
            double t = (need - r->toks) * 60000.0 / r->tpm;
            if (t > w)
                w = t;
        }
    }
    return w;
}

static void take(rl *r, uint64_t tokens)
{
    if (r->rpm > 0)
        r->reqs -= 1.0;
    if (r->tpm > 0)
        r->toks -= (double)tokens > r->tpm ? r->tpm : (double)tokens;
}

/* ---- the queue ---- */

static int counting_shared(const rl *r)
{
    return r->shared && now_ms() >= r->local_until;
}

static rl_wait *dequeue(rl *r)
{
    rl_wait *w = r->head;
    r->head = w->next;
    if (!r->head)
        r->tail = NULL;
    r->n--;
    return w;
}

static void grant(rl *r)
{
    rl_wait *w = dequeue(r);
    rl_fn fn = w->fn;
    void *a = w->arg;
    free(w);
    fn(a); /* may acquire again: the queue is consistent here */
}

static void pump(rl *r);

static void on_timer(void *arg)
{
    rl *r = arg;
    r->timer = NULL;
    pump(r);
}

static void wake_in(rl *r, double ms)
{
    if (r->timer)
        return;
    r->timer = r->host->timer_start(r->inst, (uint64_t)ms + 1, on_timer, r);
}

/* ---- shared windows ---- */

static int64_t budget(double per_min, long window_ms)
{
    int64_t b = (int64_t)(per_min * (double)window_ms / 60000.0);
    return b < 1 ? 1 : b;
}

static void window_key(char *buf, size_t n, const rl *r, int64_t win, const char *axis)
{
    snprintf(buf, n, "rate:%ld:%" PRId64 ":%s", r->window_ms, win, axis);
}

static void probe_done(rl_probe *p)
{
    rl *r = p->r;
    rl_wait *w = p->w;
    r->probe = NULL;
    int64_t lr = r->rpm > 0 ? budget(r->rpm, r->window_ms) : 0;
    int64_t lt = r->tpm > 0 ? budget(r->tpm, r->window_ms) : 0;
    uint64_t tokens = p->tokens;
    if (p->cancelled) {
        free(p);
        return; /* the instance is being stopped: its waits are cancelled by the client */
    }
    if (p->failed) {
        r->host->log(r->inst, KOKO_LOG_WARN,
                     "rate limit: the store failed (%s); counting this replica's requests locally for %ld ms",
                     p->why, r->window_ms);
        r->local_until = now_ms() + (double)r->window_ms;
        refill(r);
        free(p);
        pump(r);
        return;
    }
    int ok_req = r->rpm <= 0 || p->reqs <= lr;
    int ok_tok = r->tpm <= 0 || p->toks <= lt || (p->toks > 0 && (uint64_t)p->toks == tokens); /* the first in its window */
    int granted = w && ok_req && ok_tok;
    if (!granted) { /* give the increments back: another request may fit */
        char key[96];
        if (r->rpm > 0) {
            window_key(key, sizeof key, r, p->win, "req");
            r->host->kv_incr(r->inst, key, -1, 2 * (int64_t)r->window_ms, NULL, NULL);
        }
        if (r->tpm > 0 && tokens > 0) {
            window_key(key, sizeof key, r, p->win, "tok");
            r->host->kv_incr(r->inst, key, -(int64_t)tokens, 2 * (int64_t)r->window_ms, NULL, NULL);
        }
    }
    free(p);
    if (granted) {
        grant(r);
        pump(r);
    } else if (w) { /* full: the head waits for the next window */
        int64_t now = wall_ms();
        wake_in(r, (double)((now / r->window_ms + 1) * r->window_ms - now));
    } else {
        pump(r);
    }
}

static void on_counted(const koko_kv_result *res, void *arg, int axis_req)
{
    rl_probe *p = arg;
    p->answers++;
    if (res->status == KOKO_KV_E_CANCELLED) {
        p->cancelled = 1;
    } else if (res->status != KOKO_KV_OK) {
        p->failed = 1;
        snprintf(p->why, sizeof p->why, "%s", res->error ? res->error : "store error");
    } else if (axis_req) {
        p->reqs = res->integer;
    } else {
        p->toks = res->integer;
    }
    if (p->answers == 2)
        probe_done(p);
}

static void on_req_counted(const koko_kv_result *res, void *arg)
{
    on_counted(res, arg, 1);
}

static void on_tok_counted(const koko_kv_result *res, void *arg)
{
    on_counted(res, arg, 0);
}

/* Count the head in the current window's counters; probe_done decides. */
static void probe(rl *r)
{
    rl_probe *p = calloc(1, sizeof *p);
    if (!p) { /* out of memory: let it through rather than lose it */
        grant(r);
        return;
    }
    p->r = r;
    p->w = r->head;
    p->tokens = r->head->tokens;
    p->win = wall_ms() / r->window_ms;
    r->probe = p;
    int64_t ttl = 2 * (int64_t)r->window_ms;
    char key[96];
    /* an axis without a limit answers itself (as counted, value 0) */
    p->answers = (r->rpm > 0 ? 0 : 1) + (r->tpm > 0 ? 0 : 1);
    if (r->rpm > 0) {
        window_key(key, sizeof key, r, p->win, "req");
        if (r->host->kv_incr(r->inst, key, 1, ttl, on_req_counted, p) != 0) {
            p->failed = 1;
            snprintf(p->why, sizeof p->why, "kv_incr refused");
            p->answers++;
        }
    }
    if (r->tpm > 0) {
        window_key(key, sizeof key, r, p->win, "tok");
        if (r->host->kv_incr(r->inst, key, (int64_t)p->w->tokens, ttl, on_tok_counted, p) != 0) {
            p->failed = 1;
            snprintf(p->why, sizeof p->why, "kv_incr refused");
            p->answers++;
        }
    }
    if (p->answers == 2) /* nothing went to the store: refused while stopping */
        probe_done(p);
}

/* Grant what can be granted, start the next probe, or arm the timer. */
static void pump(rl *r)
{
    while (r->head && !r->probe && !r->timer) {
        if (counting_shared(r)) {
            probe(r);
            return;
        }
        refill(r);
        double w = wait_for(r, r->head->tokens);
        if (w > 0) {
            wake_in(r, w);
            return;
        }
        take(r, r->head->tokens);
        grant(r);
    }
}

rl *rl_new(const koko_host *host, koko_instance *inst, double rpm, double tpm, long window_ms)
{
    rl *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->host = host;
    r->inst = inst;
    r->rpm = rpm;
    r->tpm = tpm;
    r->window_ms = window_ms > 0 ? window_ms : RL_DEFAULT_WINDOW_MS;
    r->shared = KOKO_HOST_HAS_KV(host);
    r->reqs = rpm > 0 ? rpm : 0;
    r->toks = tpm > 0 ? tpm : 0;
    r->last_ms = now_ms();
    return r;
}

void rl_free(rl *r)
{
    if (!r)
        return;
    while (r->head)
        free(dequeue(r));
    free(r->probe); /* the host answers no kv call after destroy() */
    free(r);
}

rl_wait *rl_acquire(rl *r, uint64_t tokens, rl_fn fn, void *arg)
{
    if (!r->head && !counting_shared(r)) {
        refill(r);
        if (wait_for(r, tokens) <= 0) {
            take(r, tokens);
            return NULL;
        }
    }
    rl_wait *w = calloc(1, sizeof *w);
    if (!w) { /* out of memory: let it through rather than lose it */
        take(r, tokens);
        return NULL;
    }
    w->tokens = tokens;
    w->fn = fn;
    w->arg = arg;
    if (r->tail)
        r->tail->next = w;
    else
        r->head = w;
    r->tail = w;
    r->n++;
    if (!r->probe && !r->timer)
        wake_in(r, 0); /* never grant from inside the caller's own call */
    return w;
}

void rl_cancel(rl *r, rl_wait *w)
{
    rl_wait **pp = &r->head, *prev = NULL;
    while (*pp && *pp != w) {
        prev = *pp;
        pp = &(*pp)->next;
    }
    if (!*pp)
        return;
    *pp = w->next;
    if (r->tail == w)
        r->tail = prev;
    r->n--;
    if (r->probe && r->probe->w == w)
        r->probe->w = NULL; /* its answer gives the increments back */
    free(w);
    if (!r->head && r->timer) {
        r->host->timer_cancel(r->timer);
        r->timer = NULL;
    }
}

size_t rl_queued(const rl *r)
{
    return r->n;
}

int rl_shared(const rl *r)
{
    return counting_shared(r);
}
