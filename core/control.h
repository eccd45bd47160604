/*
 * control.h — the Unix control socket kokoctl talks to (server.control, mode 0600).
 *
 * Protocol: the client sends one JSON object on one line,
 *   {"cmd": "status", "args": {...}}
 * and receives one JSON object on one line, then the connection closes:
 *   {"ok": true, "data": ...}   or   {"ok": false, "error": "...", "errors": ["..."]}
 * Commands: status, reload, plugins, tenants, routes, route, chat, stats.
 * (doc/kokoctl.8 lists each command's arguments and answer.)
 */
#ifndef CORE_CONTROL_H
#define CORE_CONTROL_H

#include <jansson.h>

struct kokod;
typedef struct control control;
typedef struct ctl_req ctl_req;

control *control_new(struct kokod *kd, const char *path, char *err, size_t errlen);
void control_free(control *c);

/* Answer a command (DATA stolen) — now or later — and close the connection. */
void control_ok(ctl_req *q, json_t *data);
void control_fail(ctl_req *q, const char *error, json_t *errors /* stolen, may be NULL */);

#endif
