/*
 * gen.h — a generation: everything built from one configuration.
 *
 * Tenants with their knowledge base, persona and routing table, and the
 * plugin instances they use. The daemon serves from `current`; every piece
 * of in-flight work holds a reference to the generation it started in and
 * finishes there. A reload builds a whole new generation beside the running
 * one (reusing unchanged instances), swaps the pointer on the loop thread,
 * and the old one is destroyed when its last reference is dropped — or at
 * the drain deadline, when its remaining transfers are cancelled.
 */
#ifndef CORE_GEN_H
#define CORE_GEN_H

#include <stdint.h>
#include <jansson.h>

#include "config.h"
#include "diag.h"
#include "instance.h"
#include "kb.h"
#include "router.h"

struct kokod;

/* What every prompt of one route (or of the tenant's defaults) shares, built
 * with the generation: tool declarations are borrowed from instances that
 * live as long as it, persona and KB are fixed per generation. */
typedef struct prompt_ctx {
    json_t *tools;               /* handoff_to_human + the tools' declarations (koko_llm_request.tools) */
    char hash[17];               /* koko_llm_request.context_hash: fingerprint, persona, KB, tools */
} prompt_ctx;

typedef struct tenant {
    const tenant_cfg *cfg;       /* borrowed from the generation's config */
    const char *name;
    const char *const *languages;
    size_t n_languages;
    kb *kb;
    const char **chunk_lang;     /* language of each chunk of kb (static codes, NULL = unknown) */
    char *knowledge;             /* the whole KB as "[file › heading]\ntext" blocks, for LLM contexts */
    json_t *persona;             /* identity.json ({} when none) */
    json_t *decisions;           /* decisions.json ([] when none) */
    koko_instance **channels;
    size_t n_channels;
    koko_instance **chain;       /* the default llm chain, in order */
    size_t n_chain;
    koko_instance **backends;    /* every llm instance (chain and routes) */
    size_t n_backends;
    koko_instance **tools;
    size_t n_tools;
    router *router;
    prompt_ctx ctx;              /* the tenant's defaults (no route matched) */
    prompt_ctx *route_ctx;       /* one per route of router, same order */
    const char **route_chunk_lang[32]; /* chunk languages of route kbs (first 32 routes) */
    double min_confidence;       /* handoff below this */
    const json_t *handoff_phrases; /* lang → [phrases], borrowed from the config */
    unsigned history_turns;
    double monthly_usd;          /* budget; 0 = none */
    unsigned memory_budget_tokens; /* customer_memory.budget_tokens: facts in a prompt (0: none) */
    int memory_extract;          /* customer_memory.extract */
    char fingerprint[17];        /* hash of config subtree, KB and memory files: "changed?" */
} tenant;

typedef struct generation {
    uint64_t id;
    int refs;
    struct kokod *kd;
    core_config *cfg;
    tenant *tenants;
    size_t n_tenants;
    char *plugins_json;          /* ["name", ...] of the plugins this configuration uses, for /health */
    int64_t built_at;            /* unix time */
    struct event *drain_ev;      /* retired: the drain deadline */
    double build_ms;
} generation;

/* Build generation ID from CFG (taking ownership of CFG, also on failure),
 * reusing OLD's unchanged instances. NULL with errors in D. */
generation *gen_build(struct kokod *kd, uint64_t id, core_config *cfg, const generation *old, diag *d);
void gen_ref(generation *g);
void gen_release(generation *g);
tenant *gen_tenant(const generation *g, const char *name);
/* Language of chunk C of K (T's or one of its routes' kb), or NULL. */
const char *tenant_chunk_lang(const tenant *t, const kb *k, const kb_chunk *c);
/* Find backend NAME among T's llm instances. */
koko_instance *tenant_backend(const tenant *t, const char *name);
/* G was replaced: at its drain deadline (DRAIN_MS) cancel the transfers of
 * the instances only it still uses, so their callbacks run (cancelled) and
 * the work holding G finishes. */
void gen_retire(generation *g, unsigned drain_ms);
/* Generations built and not yet destroyed (for tests and status). */
size_t gen_alive(void);
/* JSON summary of what changed from OLD to NEW: {"tenants":{"added":[],"removed":[],"changed":[]},
 * "plugins":{"loaded":[],"unloaded":[]}, "instances":{"kept":N,"new":N}}. */
json_t *gen_diff(const generation *old, const generation *neu);

#endif
