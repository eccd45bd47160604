/*
 * ctlcmd.h — the commands of the control socket (status, reload, plugins,
 * tenants, routes, route, chat, stats, cache, queue, queue_retry), one table,
 * one function each.
 */
#ifndef CORE_CTLCMD_H
#define CORE_CTLCMD_H

#include <jansson.h>
#include "control.h"

struct kokod;

/* Run command NAME with ARGS (borrowed, may be NULL); answers Q exactly once. */
void ctlcmd_dispatch(struct kokod *kd, ctl_req *q, const char *name, const json_t *args);

#endif
