/*
 * tests/plugins/echo.c — an `llm` test plugin: answers "echo[TAG]: <text>".
 *
 * Config: delay_ms (answer after that long), fail (answer KOKO_ERR_TEMPORARY),
 * handoff (ask for a human), confidence (0..1), call {name, args} (call that
 * function through koko_host.tool_call first and append its result:
 * "echo[v1]: text | add → {"sum": 5.0}"), cost_usd (reported per answer). Built twice with different
 * ECHO_TAG values so tests can replace the .so with different content.
 * Also built with ECHO_NAME/ECHO_KIND overrides for loader tests.
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "koko/host.h"
#include "koko/plugin.h"

#ifndef ECHO_TAG
#define ECHO_TAG "v1"
#endif
#ifndef ECHO_NAME
#define ECHO_NAME "echo"
#endif

typedef struct echo {
    const koko_host *host;
    koko_instance *inst;
    long delay_ms;
    int fail, handoff;
    double confidence;
    json_t *call; /* {name, args} or NULL */
    double cost_usd;
    int pending;
    int stopping;
    koko_drained_fn drained;
} echo;

typedef struct pending {
    echo *e;
    char *text;
    char *tool_note; /* " | name → result" once the function answered */
    koko_llm_fn done;
    void *arg;
} pending;

static int echo_validate(const json_t *cfg, koko_diag *d)
{
    int n = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)cfg, k, v)
    {
        if (strcmp(k, "delay_ms") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                d->error(d, k, "expected a whole number of milliseconds >= 0");
                n++;
            }
        } else if (strcmp(k, "fail") == 0 || strcmp(k, "handoff") == 0) {
            if (!json_is_boolean(v)) {
                d->error(d, k, "expected true or false");
                n++;
            }
        } else if (strcmp(k, "call") == 0) {
            if (!json_is_string(json_object_get(v, "name"))) {
                d->error(d, "call.name", "expected the name of a function");
                n++;
            }
        } else if (strcmp(k, "cost_usd") == 0) {
            if (!json_is_number(v)) {
                d->error(d, k, "expected a number of USD");
                n++;
            }
        } else if (strcmp(k, "confidence") == 0) {
            if (!json_is_number(v)) {
                d->error(d, k, "expected a number between 0 and 1");
                n++;
            }
        } else {
            d->error(d, k, "unknown key \"%s\" (known: delay_ms, fail, handoff, confidence, call, cost_usd)", k);
            n++;
        }
    }
    return n;
}

static void *echo_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    echo *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->host = host;
    e->inst = inst;
    e->delay_ms = (long)json_integer_value(json_object_get(cfg, "delay_ms"));
    e->fail = json_is_true(json_object_get(cfg, "fail"));
    e->handoff = json_is_true(json_object_get(cfg, "handoff"));
    const json_t *c = json_object_get(cfg, "confidence");
    e->confidence = c ? json_number_value(c) : -1;
    e->call = json_incref(json_object_get(cfg, "call"));
    e->cost_usd = json_number_value(json_object_get(cfg, "cost_usd"));
    return e;
}

static void answer(void *arg)
{
    pending *p = arg;
    echo *e = p->e;
    size_t len = strlen(p->text) + (p->tool_note ? strlen(p->tool_note) : 0) + 32;
    char *reply = malloc(len);
    snprintf(reply, len, "echo[" ECHO_TAG "]: %s%s", p->text, p->tool_note ? p->tool_note : "");
    koko_llm_result res = {
        .size = sizeof res,
        .status = e->fail ? KOKO_ERR_TEMPORARY : KOKO_OK,
        .error = e->fail ? "echo configured to fail" : NULL,
        .text = reply,
        .handoff = e->handoff,
        .handoff_reason = e->handoff ? "echo configured to hand off" : NULL,
        .confidence = e->confidence,
        .model = "echo-" ECHO_TAG,
        .tokens_in = 10,
        .tokens_out = 5,
        .cost_usd = e->fail ? 0 : e->cost_usd,
    };
    p->done(&res, p->arg);
    free(reply);
    free(p->text);
    free(p->tool_note);
    free(p);
    if (--e->pending == 0 && e->stopping && e->drained)
        e->drained(e->inst);
}

static void tool_answered(koko_status st, json_t *result, void *arg)
{
    pending *p = arg;
    char *r = json_dumps(result, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
    const char *name = json_string_value(json_object_get(p->e->call, "name"));
    size_t len = strlen(name) + (r ? strlen(r) : 4) + 32;
    p->tool_note = malloc(len);
    snprintf(p->tool_note, len, " | %s%s → %s", name, st == KOKO_OK ? "" : " (failed)", r ? r : "null");
    free(r);
    p->e->host->timer_start(p->e->inst, (uint64_t)p->e->delay_ms, answer, p);
}

static void echo_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    echo *e = state;
    pending *p = calloc(1, sizeof *p);
    p->e = e;
    p->text = strdup(req->text ? req->text : "");
    p->done = done;
    p->arg = arg;
    e->pending++;
    if (e->call && KOKO_HAS_FIELD(req, koko_llm_request, job) && e->host->size >= offsetof(koko_host, tool_call) + sizeof(void *)) {
        json_t *args = json_object_get(e->call, "args");
        json_t *empty = args ? NULL : json_object();
        e->host->tool_call(e->inst, req->job, json_string_value(json_object_get(e->call, "name")),
                           args ? args : empty, tool_answered, p);
        json_decref(empty);
        return;
    }
    e->host->timer_start(e->inst, (uint64_t)e->delay_ms, answer, p);
}

static void echo_stop(void *state, koko_drained_fn drained)
{
    echo *e = state;
    e->stopping = 1;
    e->drained = drained;
    if (e->pending == 0)
        drained(e->inst);
}

static void echo_destroy(void *state)
{
    echo *e = state;
    json_decref(e->call);
    free(e);
}

static const koko_llm_ops echo_ops = {.size = sizeof echo_ops, .generate = echo_generate};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
#ifdef ECHO_ABI_MAJOR
    .abi_major = ECHO_ABI_MAJOR,
#else
    .abi_major = KOKO_ABI_MAJOR,
#endif
#ifdef ECHO_ABI_MINOR
    .abi_minor = ECHO_ABI_MINOR,
#else
    .abi_minor = KOKO_ABI_MINOR,
#endif
    .size = sizeof(koko_plugin),
#ifdef ECHO_SIGNATURE
    .signature = ECHO_SIGNATURE,
#else
    .signature = KOKO_ABI_SIGNATURE,
#endif
#ifdef ECHO_KIND
    .kind = ECHO_KIND,
#else
    .kind = KOKO_KIND_LLM,
#endif
    .name = ECHO_NAME,
    .version = ECHO_TAG,
    .description = "test backend: echoes the question",
    .validate = echo_validate,
    .init = echo_init,
    .stop = echo_stop,
    .destroy = echo_destroy,
#ifdef ECHO_NO_OPS
    .ops = NULL,
#else
    .ops = &echo_ops,
#endif
};
