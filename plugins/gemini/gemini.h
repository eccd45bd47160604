/*
 * plugins/gemini/gemini.h — internals shared by gemini.c (requests, function
 * calling, the answer) and cache.c (managed context caches). Not installed;
 * nothing here is exported from the .so.
 */
#ifndef KOKO_PLUGINS_GEMINI_H
#define KOKO_PLUGINS_GEMINI_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "koko/host.h"
#include "koko/plugin.h"
#include "llmcommon.h"

#define GEMINI_DEFAULT_MODEL "gemini-2.5-flash"
#define GEMINI_DEFAULT_BASE_URL "https://generativelanguage.googleapis.com"
#define GEMINI_DEFAULT_BUDGET_TOKENS 100000
#define GEMINI_DEFAULT_TTL_S 3600
#define GEMINI_MAX_CACHES 8   /* per instance; the least recently used beyond it is deleted */
#define GEMINI_RETIRED_HASHES 16
#define GEMINI_CREATE_RETRY_S 30 /* after a failed creation, requests go uncached this long */
#define GEMINI_LOCK_TTL_S 30     /* the "creating" lock a replica takes in the store before a create */
#define GEMINI_LOCK_WAIT_S 2     /* another replica holds it: uncached this long, then look again */
#define GEMINI_STATS_TTL_S (30 * 86400) /* the shared hit counters of a context outlive it this long */

typedef struct gemini gemini;
typedef struct gen gen;
typedef struct gcache gcache;
typedef struct grefresh grefresh;

/* One generate() call in progress. REQ is borrowed until DONE runs. */
struct gen {
    gemini *gm;
    const koko_llm_request *req;
    koko_llm_fn done;
    void *arg;
    int whole_kb;       /* the whole KB is sent (cached or inline), else the chunks */
    json_t *turns;      /* model function calls and our functionResponses so far; NULL until the first */
    json_t *responses;  /* functionResponse parts of the round in progress */
    size_t tools_pending;
    unsigned steps;     /* function-calling rounds done */
    char *cache_name;   /* the cachedContents/… this request names, or NULL */
    uint64_t cache_tokens;
    int cache_retried;  /* a 404 on the cache was handled once */
    gen *wnext;         /* next request waiting for the same cache creation */
    llm_call *call;
    koko_timer *timer;  /* a deferred finish */
    koko_status fin_st;
    char *error;
    uint64_t in, cached, out;
    char *text, *finish, *handoff_reason;
    int called_handoff;
    gen *prev, *next;
};

struct gemini {
    const koko_host *host;
    koko_instance *inst;
    llm_common_cfg cfg;
    llm_client *client;
    char *model, *base_url;
    char *key_header; /* "x-goog-api-key: …" — never logged */
    uint64_t budget_tokens;
    int cache_enabled;
    long ttl_s;
    uint64_t min_tokens;
    llm_price price;
    double unbilled_storage_usd; /* cache storage bought, not yet charged to an answer */
    gcache *caches;
    char *retired[GEMINI_RETIRED_HASHES]; /* context hashes superseded by a reload */
    size_t retired_next;
    grefresh *refreshes;
    gen *gens;
    int stopping, drained_called;
    koko_drained_fn drained;
};

/* gemini.c */
void gen_send(gen *g);  /* send with g->cache_name (if set) or plain */
void gen_route(gen *g); /* decide cache or plain, then send (or wait for the cache) */
void gen_free(gen *g);

/* cache.c */
/* Send G through the context cache for its context_hash, creating or
 * extending it as needed: 1 when G was sent or is waiting for the cache,
 * 0 when it should be sent plain (too small, retired, creation failing). */
int cache_attach(gemini *gm, gen *g);
/* A generateContent naming NAME got 404: forget NAME so the next use recreates it. */
void cache_gone(gemini *gm, const char *hash, const char *name);
/* CACHED prompt tokens were served by the cache for HASH. */
void cache_account(gemini *gm, const char *hash, uint64_t cached);
json_t *cache_info(void *state);
void cache_refresh(void *state, koko_deliver_fn done, void *arg);
/* Free every cache record (destroy: no host calls, no DELETE). */
void cache_free_all(gemini *gm);
/* Outstanding refreshes (they hold the instance from draining). */
size_t cache_refreshes(const gemini *gm);

#endif
