/*
 * api.h — the handlers behind kokod's HTTP paths (server.c dispatches).
 * Each answers R exactly once, now or later, through server_respond_*.
 */
#ifndef CORE_API_H
#define CORE_API_H

#include "server.h"

struct kokod;

void api_health(struct kokod *kd, koko_request *r);
void api_chat(struct kokod *kd, koko_request *r);
void api_query(struct kokod *kd, koko_request *r);
void api_projects(struct kokod *kd, koko_request *r);
void api_stats(struct kokod *kd, koko_request *r);
void api_metrics(struct kokod *kd, koko_request *r);
void api_webhook(struct kokod *kd, koko_request *r);

#endif
