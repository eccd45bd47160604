/*
 * router.h — a tenant's routing table: ordered routes, first match wins.
 *
 * A route's `match` holds when ALL of its given conditions hold: channel,
 * inbox, language (exact), keywords (any of them starts a word of the text,
 * compared case- and accent-insensitively: "visszaterites" matches
 * "Visszatérítést kérek"), regex (POSIX extended, case-insensitive, on the
 * raw text). A matching route overrides the tenant's defaults: llm chain,
 * tools, kb subset, persona, or handoff: true (straight to a human).
 */
#ifndef CORE_ROUTER_H
#define CORE_ROUTER_H

#include <regex.h>
#include <stddef.h>
#include <jansson.h>

#include "diag.h"
#include "kb.h"
#include "yamltree.h"

struct koko_instance;
struct tenant;
struct kokod;

typedef struct route {
    char *name;
    /* match */
    char *channel, *inbox, *language;
    char **keywords;  /* normalised (lower-case, accents folded) */
    size_t n_keywords;
    char *regex_src;
    regex_t re;
    int has_re;
    /* overrides */
    struct koko_instance **chain; /* NULL = tenant default */
    size_t n_chain;
    struct koko_instance **tools; /* valid when has_tools */
    size_t n_tools;
    int has_tools;
    char **kb_dirs;               /* NULL = tenant default */
    size_t n_kb_dirs;
    kb *kb;                       /* owned; NULL = tenant default */
    char *persona_path;
    json_t *persona;              /* NULL = tenant default */
    int handoff;
} route;

typedef struct router {
    route *routes;
    size_t n;
} router;

typedef struct route_input {
    const char *channel; /* "api" for /api/chat */
    const char *inbox;
    const char *language;
    const char *text;
} route_input;

/* Config-time checks of tenants.T.routes (keys, types, regex, names of
 * backends/tools/kb folders the tenant has). Returns the number of errors. */
int router_validate(const cfgdoc *doc, diag *d, const char *path, const json_t *routes,
                    const json_t *tenant_node);

/* Build T's router from its config (instances and KB already built in T).
 * NULL with errors in D. */
router *router_build(const char *base_dir, struct tenant *t, const json_t *routes, diag *d);
void router_free(router *r);

/* First route that matches, or NULL (tenant defaults). *INDEX gets its position. */
const route *router_match(const router *r, const route_input *in, size_t *index);
/* Why each route matched or not: [{"route","matched",“reasons”:[...]}]. Caller decrefs. */
json_t *router_explain(const router *r, const route_input *in);
/* 1 when PHRASE (normalised: lower-case, accents folded) starts a word of
 * NORM (normalised the same way). Used for keywords and handoff phrases. */
int router_phrase_in(const char *norm, const char *phrase);
/* TEXT normalised for router_phrase_in (caller frees). */
char *router_normalise(const char *text);

/* The table as JSON for `kokoctl routes`. Caller decrefs. */
json_t *router_describe(const router *r);

#endif
