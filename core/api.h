/*
 * api.h — the handlers behind kokod's HTTP paths (server.c dispatches).
 * Each answers R exactly once, now or later, through server_respond_*.
 */
#ifndef CORE_API_H
#define CORE_API_H

#include "server.h"

struct kokod;
struct tenant;

void api_health(struct kokod *kd, koko_request *r);
void api_chat(struct kokod *kd, koko_request *r);
void api_query(struct kokod *kd, koko_request *r);
void api_projects(struct kokod *kd, koko_request *r);
void api_stats(struct kokod *kd, koko_request *r);
void api_metrics(struct kokod *kd, koko_request *r);
void api_webhook(struct kokod *kd, koko_request *r);
void api_cache(struct kokod *kd, koko_request *r);
/* /memory/{tenant}[/customers/{contact}[/export]], /memory/{tenant}/extract, /memory/{tenant}/forget */
void api_memory(struct kokod *kd, koko_request *r);

/* Context caches of T's backends: {"tenant","caches":[...]}. Caller decrefs. */
json_t *api_cache_info(const struct tenant *t);
/* Ask each of T's backends to rebuild its caches; DONE(results [{"backend","ok","error"}], ARG)
 * runs once all have answered (later, or now when T has none). */
typedef void (*api_refresh_fn)(json_t *results, void *arg);
void api_cache_refresh(struct kokod *kd, const struct tenant *t, api_refresh_fn done, void *arg);

#endif
