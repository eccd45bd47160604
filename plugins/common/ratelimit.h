/*
 * plugins/common/ratelimit.h — a per-instance rate limiter that queues.
 *
 * Two token buckets, requests per minute and tokens per minute, each holding
 * at most one minute's worth and refilled continuously. A caller asks for one
 * request plus an estimate of its tokens: granted at once when both buckets
 * have room, otherwise queued (first come, first served) and granted later
 * from a host timer. Nothing is ever refused. Compiled into each LLM plugin
 * (never into the core); every function is for the loop thread.
 */
#ifndef KOKO_PLUGINS_RATELIMIT_H
#define KOKO_PLUGINS_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "koko/host.h"

typedef struct rl rl;
typedef struct rl_wait rl_wait;
typedef void (*rl_fn)(void *arg);

/* A limiter for INST. RPM / TPM <= 0 mean "no limit" on that axis.
 * HOST and INST are borrowed and must outlive the limiter. */
rl *rl_new(const koko_host *host, koko_instance *inst, double rpm, double tpm);

/* Free the limiter from destroy(): queued waits are freed WITHOUT calling
 * their functions, and the host is not called (by then it has cancelled the
 * limiter's timer; rl_cancel of every wait also cancels it). */
void rl_free(rl *r);

/*
 * Take one request and TOKENS tokens. Returns NULL when granted now (the
 * caller proceeds at once; FN is not called). Otherwise returns a wait handle
 * and FN(ARG) runs later, exactly once, on the loop, when granted — unless
 * rl_cancel() is called first. A request asking for more tokens than a whole
 * minute holds is granted when the bucket is full, so it never waits forever.
 */
rl_wait *rl_acquire(rl *r, uint64_t tokens, rl_fn fn, void *arg);

/* Withdraw a queued wait: its FN will not run. W must not have been granted. */
void rl_cancel(rl *r, rl_wait *w);

/* Waits still queued. */
size_t rl_queued(const rl *r);

#endif
