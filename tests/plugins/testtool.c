/*
 * tests/plugins/testtool.c — a `tool` test plugin for function calling.
 *
 * Declares add(a, b) → {"sum": a + b} and broken() → an error, and answers
 * later from a zero-delay timer, as every tool must. Counts its calls so
 * tests can see a round trip happened (webhook POST /webhook/<tenant>/testtool).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koko/host.h"
#include "koko/plugin.h"

typedef struct tool {
    const koko_host *host;
    koko_instance *inst;
    json_t *decls;
    int calls;
} tool;

typedef struct pending {
    koko_tool_fn done;
    void *arg;
    json_t *result;
    koko_status st;
} pending;

static void answer(void *arg)
{
    pending *p = arg;
    p->done(p->st, p->result, p->arg);
    json_decref(p->result);
    free(p);
}

static void tool_call(void *state, const char *name, const json_t *args, koko_tool_fn done, void *arg)
{
    tool *t = state;
    pending *p = calloc(1, sizeof *p);
    p->done = done;
    p->arg = arg;
    t->calls++;
    if (strcmp(name, "add") == 0 && json_is_number(json_object_get(args, "a")) &&
        json_is_number(json_object_get(args, "b"))) {
        p->st = KOKO_OK;
        p->result = json_pack("{s:f}", "sum", json_number_value(json_object_get(args, "a")) +
                                                  json_number_value(json_object_get(args, "b")));
    } else {
        p->st = KOKO_ERR_PERMANENT;
        p->result = json_pack("{s:s}", "error", strcmp(name, "add") == 0 ? "add needs numbers a and b"
                                                                          : "this tool always fails");
    }
    t->host->timer_start(t->inst, 0, answer, p);
}

static const json_t *tool_declarations(void *state) { return ((tool *)state)->decls; }

static void on_count(koko_request *req, void *arg)
{
    tool *t = arg;
    char body[64];
    snprintf(body, sizeof body, "{\"calls\":%d}", t->calls);
    t->host->respond(req, 200, body);
}

static void *tool_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    (void)cfg;
    (void)err;
    (void)errlen;
    tool *t = calloc(1, sizeof *t);
    t->host = host;
    t->inst = inst;
    t->decls = json_pack("[{s:s,s:s,s:{s:s,s:{s:{s:s},s:{s:s}},s:[s,s]}},{s:s,s:s,s:{s:s,s:{}}}]", "name", "add",
                         "description", "Add two numbers.", "parameters", "type", "object", "properties", "a",
                         "type", "number", "b", "type", "number", "required", "a", "b", "name", "broken",
                         "description", "A function that always fails.", "parameters", "type", "object",
                         "properties");
    host->route_add(inst, NULL, on_count, t);
    return t;
}

static void tool_destroy(void *state)
{
    tool *t = state;
    json_decref(t->decls);
    free(t);
}

static const koko_tool_ops ops = {.size = sizeof ops, .declarations = tool_declarations, .call = tool_call};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR, .abi_minor = KOKO_ABI_MINOR, .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE, .kind = KOKO_KIND_TOOL, .name = "testtool", .version = "1",
    .description = "test tool: add(a, b) and broken()", .init = tool_init, .destroy = tool_destroy, .ops = &ops,
};
