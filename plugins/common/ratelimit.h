/*
 * plugins/common/ratelimit.h — a per-tenant rate limiter that queues, shared
 * by every replica through the store.
 *
 * Limits are requests per minute and tokens per minute. A caller asks for one
 * request plus an estimate of its tokens; it is granted when both fit and
 * queued otherwise (first come, first served), never refused.
 *
 * Shared (the host has the 1.3 kv_* calls, i.e. kokod with its store): time
 * is cut into fixed windows of WINDOW_MS (default one minute) aligned on the
 * wall clock, so replicas agree on them; each window holds rpm × window/60 s
 * requests and tpm × window/60 s tokens, counted in two store counters
 * (kv_incr, TTL two windows) that every replica of the tenant adds to. A
 * request over either budget gives its increments back and waits for the next
 * window. A request asking for more tokens than a window holds is granted
 * when it is the first in its window, so it never waits forever.
 *
 * Local (no kv_* calls, or the store failed): two token buckets in memory,
 * each holding at most one minute's worth and refilled continuously. A store
 * error switches to them for one window, with a warning — never failing or
 * dropping the request — then the store is tried again.
 *
 * Compiled into each LLM plugin (never into the core); every function is for
 * the loop thread.
 */
#ifndef KOKO_PLUGINS_RATELIMIT_H
#define KOKO_PLUGINS_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "koko/host.h"

#define RL_DEFAULT_WINDOW_MS 60000

typedef struct rl rl;
typedef struct rl_wait rl_wait;
typedef void (*rl_fn)(void *arg);

/* A limiter for INST. RPM / TPM <= 0 mean "no limit" on that axis.
 * WINDOW_MS <= 0: one minute. HOST and INST are borrowed and must outlive
 * the limiter. */
rl *rl_new(const koko_host *host, koko_instance *inst, double rpm, double tpm, long window_ms);

/* Free the limiter from destroy(): queued waits are freed WITHOUT calling
 * their functions, and the host is not called (by then it has cancelled the
 * limiter's timer and answered its kv calls). */
void rl_free(rl *r);

/*
 * Take one request and TOKENS tokens. Returns NULL when granted now (the
 * caller proceeds at once; FN is not called) — only the local limiter can
 * tell at once. Otherwise returns a wait handle and FN(ARG) runs later,
 * exactly once, on the loop, when granted — unless rl_cancel() is called
 * first.
 */
rl_wait *rl_acquire(rl *r, uint64_t tokens, rl_fn fn, void *arg);

/* Withdraw a queued wait: its FN will not run. W must not have been granted. */
void rl_cancel(rl *r, rl_wait *w);

/* Waits still queued. */
size_t rl_queued(const rl *r);

/* 1 while the limiter counts in the store, 0 while it counts locally. */
int rl_shared(const rl *r);

#endif
