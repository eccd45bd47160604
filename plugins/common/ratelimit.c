/*
 * plugins/common/ratelimit.c — queueing token-bucket limiter (see ratelimit.h).
 *
 * Both buckets start full (a fresh instance may use its whole minute at once,
 * as Google's and OpenAI's per-minute quotas allow). The head of the queue
 * decides when the timer fires next: the time until both buckets hold what
 * it needs. Grants never reorder the queue.
 */
#include "ratelimit.h"

#include <stdlib.h>
#include <time.h>

struct rl_wait {
    uint64_t tokens;
    rl_fn fn;
    void *arg;
    rl_wait *next;
};

struct rl {
    const koko_host *host;
    koko_instance *inst;
    double rpm, tpm;       /* capacities (per minute); <= 0: unlimited */
    double reqs, toks;     /* current levels */
    double last_ms;        /* when the levels were last refilled */
    rl_wait *head, *tail;
    size_t n;
    koko_timer *timer;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

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

/* Milliseconds until a request for TOKENS fits; 0 when it fits now. */
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

static void on_timer(void *arg);

static void schedule(rl *r)
{
    if (r->timer || !r->head)
        return;
    double w = wait_for(r, r->head->tokens);
    uint64_t ms = (uint64_t)w + 1; /* round up: never wake before the bucket holds enough */
    r->timer = r->host->timer_start(r->inst, ms, on_timer, r);
}

static void on_timer(void *arg)
{
    rl *r = arg;
    r->timer = NULL;
    refill(r);
    while (r->head && wait_for(r, r->head->tokens) <= 0) {
        rl_wait *w = r->head;
        r->head = w->next;
        if (!r->head)
            r->tail = NULL;
        r->n--;
        take(r, w->tokens);
        rl_fn fn = w->fn;
        void *a = w->arg;
        free(w);
        fn(a); /* may acquire again: the queue is consistent here */
    }
    schedule(r);
}

rl *rl_new(const koko_host *host, koko_instance *inst, double rpm, double tpm)
{
    rl *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->host = host;
    r->inst = inst;
    r->rpm = rpm;
    r->tpm = tpm;
    r->reqs = rpm > 0 ? rpm : 0;
    r->toks = tpm > 0 ? tpm : 0;
    r->last_ms = now_ms();
    return r;
}

void rl_free(rl *r)
{
    if (!r)
        return;
    while (r->head) {
        rl_wait *w = r->head;
        r->head = w->next;
        free(w);
    }
    free(r);
}

rl_wait *rl_acquire(rl *r, uint64_t tokens, rl_fn fn, void *arg)
{
    refill(r);
    if (!r->head && wait_for(r, tokens) <= 0) {
        take(r, tokens);
        return NULL;
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
    schedule(r);
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
