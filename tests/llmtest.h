/*
 * tests/llmtest.h — helpers shared by test_gemini.c and test_openai.c: start a
 * fake upstream (a script in tests/fakes/) as a child process on a free loopback
 * port (through tests/fakesrv.c), talk to its control endpoints, build
 * koko_llm_requests, and run an LLM plugin's generate() on the fake host's loop
 * until its callback. Static functions, so each test includes it once.
 */
#ifndef KOKO_TESTS_LLMTEST_H
#define KOKO_TESTS_LLMTEST_H

#define _GNU_SOURCE
#include <check.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "fakehost.h"
#include "fakesrv.h"
#include "koko/host.h"
#include "koko/plugin.h"

static pid_t lt_fake_pid;
static char lt_fake_url[128];

/* Starts tests/fakes/SCRIPT_NAME (with EXTRA arguments, NULL-terminated) and
 * records its pid and base URL; the test program cannot run without it. */
static void lt_fake_start(const char *script_name, const char *const *extra)
{
    if (fakesrv_start(script_name, extra, &lt_fake_pid, lt_fake_url, sizeof lt_fake_url) != 0) {
        fakesrv_stop(&lt_fake_pid);
        exit(1);
    }
}

static void lt_fake_stop(void)
{
    fakesrv_stop(&lt_fake_pid);
}

/* A blocking control call to the fake; the parsed body (caller decrefs). */
static json_t *lt_fake(const char *method, const char *path, const char *body)
{
    return fakesrv_call(lt_fake_url, method, path, body);
}

static void lt_fake_ok(const char *method, const char *path, const char *body)
{
    json_decref(lt_fake(method, path, body));
}

/* Requests recorded by the fake whose METHOD and path suffix match (NULL = any). */
static size_t lt_count(const char *method, const char *path_sub)
{
    json_t *all = lt_fake("GET", "/_requests", NULL);
    size_t i, n = 0;
    json_t *r;
    json_array_foreach (all, i, r) {
        const char *m = json_string_value(json_object_get(r, "method"));
        const char *p = json_string_value(json_object_get(r, "path"));
        if ((!method || strcmp(m, method) == 0) && (!path_sub || strstr(p, path_sub)))
            n++;
    }
    json_decref(all);
    return n;
}

static double lt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* ---- requests ---- */

typedef struct lt_req {
    koko_llm_request req;
    json_t *persona, *decisions, *tools, *facts;
    char *kb;
    koko_chunk chunks[2];
    koko_turn hist[2];
    const char *langs[2];
    int job; /* its address is the job handle */
} lt_req;

/* A knowledge base of N sections (~110 characters each); seed SEED changes every word. */
static char *lt_kb(int n, int seed)
{
    char *kb = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&kb, &len);
    if (!f)
        abort();
    for (int i = 0; i < n; i++)
        fprintf(f,
                "[kb/demo/services.md › Service %d]\nService %d (edition %d) costs %d EUR and takes %d "
                "minutes at the customer's home.\n\n",
                i, i, seed, 20 + i, 30 + i % 60);
    if (fclose(f) != 0)
        abort();
    return kb;
}

/* A request in LANG for TEXT. With KB (taken) the whole knowledge is offered under HASH. */
static lt_req *lt_req_new(const char *lang, const char *text, char *kb, const char *hash)
{
    lt_req *r = calloc(1, sizeof *r);
    r->persona = json_pack("{s:s,s:s,s:{s:s,s:s},s:[s]}", "name", "Kokó", "company", "Kokó Szerviz Kft.", "tone",
                           "hu", "Barátságos", "en", "Friendly", "never", "Never promise discounts.");
    r->decisions = json_pack("[{s:s,s:s,s:s}]", "text", "We do not send technicians outside Pest county.", "date",
                             "2026-03-02", "author", "Nagy Éva");
    r->tools = json_pack("[{s:s,s:s,s:{s:s,s:{s:{s:s}},s:[s]}},{s:s,s:s,s:{s:s,s:{s:{s:s}}}}]", "name",
                         "handoff_to_human", "description", "Hand the conversation to a human colleague.",
                         "parameters", "type", "object", "properties", "reason", "type", "string", "required",
                         "reason", "name", "test_weather", "description", "The weather (test tool).", "parameters",
                         "type", "object", "properties", "q", "type", "string");
    r->kb = kb;
    r->chunks[0] = (koko_chunk){"kb/demo/pricing.md", "Árak › Kiszállás", "Kiszállási díj: 8000 Ft.",
                                "Kiszállási díj: 8000 Ft.", 5.5, 0.8};
    r->chunks[1] = (koko_chunk){"kb/demo/hours.md", "Nyitvatartás", "Hétfőtől péntekig 8-17.", "8-17", 2.0, 0.3};
    r->hist[0] = (koko_turn){"user", "Jó napot!"};
    r->hist[1] = (koko_turn){"assistant", "Üdvözlöm! Miben segíthetek?"};
    r->langs[0] = "hu";
    r->langs[1] = "en";
    r->req = (koko_llm_request){
        .size = sizeof r->req,
        .tenant = "demo",
        .conversation_id = "c1",
        .language = lang,
        .languages = r->langs,
        .n_languages = 2,
        .text = text,
        .history = r->hist,
        .n_history = 2,
        .chunks = r->chunks,
        .n_chunks = 2,
        .persona = r->persona,
        .decisions = r->decisions,
        .tools = r->tools,
        .route = "default",
        .knowledge = kb,
        .knowledge_bytes = kb ? strlen(kb) : 0,
        .context_hash = hash ? hash : "0000000000000000",
        .customer_facts = NULL,
        .job = &r->job,
    };
    return r;
}

static void lt_req_free(lt_req *r)
{
    if (!r)
        return;
    json_decref(r->persona);
    json_decref(r->decisions);
    json_decref(r->tools);
    json_decref(r->facts);
    free(r->kb);
    free(r);
}

/* ---- results ---- */

typedef struct lt_out {
    int done, calls;
    koko_status st;
    char *text, *error, *model, *reason;
    int handoff, cache_hit;
    double confidence, cost;
    uint64_t in, cached, out;
    size_t n_cited;
    double at_ms;
} lt_out;

static void lt_on_result(const koko_llm_result *res, void *arg)
{
    lt_out *o = arg;
    o->calls++;
    o->done = 1;
    o->st = res->status;
    free(o->text);
    free(o->error);
    free(o->model);
    free(o->reason);
    o->text = res->text ? strdup(res->text) : NULL;
    o->error = res->error ? strdup(res->error) : NULL;
    o->model = res->model ? strdup(res->model) : NULL;
    o->reason = res->handoff_reason ? strdup(res->handoff_reason) : NULL;
    o->handoff = res->handoff;
    o->cache_hit = res->cache_hit;
    o->confidence = res->confidence;
    o->cost = res->cost_usd;
    o->in = res->tokens_in;
    o->cached = res->tokens_cached;
    o->out = res->tokens_out;
    o->n_cited = res->n_cited;
    o->at_ms = lt_now_ms();
}

static void lt_out_clear(lt_out *o)
{
    free(o->text);
    free(o->error);
    free(o->model);
    free(o->reason);
    memset(o, 0, sizeof *o);
}

/* ---- the plugin ---- */

typedef struct lt_plugin {
    const koko_plugin *p;
    void *handle;
    fakehost *fh;
    void *state;
} lt_plugin;

static const koko_plugin *lt_load(const char *env, const char *name, void **handle)
{
    char path[1024];
    const char *so = getenv(env);
    if (so)
        snprintf(path, sizeof path, "%s", so);
    else
        snprintf(path, sizeof path, "%s/plugins/%s/.libs/%s.so", getenv("KOKO_BUILDDIR") ? getenv("KOKO_BUILDDIR") : ".",
                 name, name);
    char err[512];
    const koko_plugin *p = fakehost_load_plugin(path, handle, err, sizeof err);
    if (!p) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return p;
}

/* Init PLUG with the JSON config CFG; fails the test on error. */
static void lt_init(lt_plugin *lp, const koko_plugin *p, const char *cfg_json)
{
    lp->p = p;
    lp->fh = fakehost_new("demo", p->name);
    json_error_t je;
    json_t *cfg = json_loads(cfg_json, 0, &je);
    ck_assert_msg(cfg != NULL, "bad test config: %s", je.text);
    char err[512] = "";
    lp->state = p->init(fakehost_host(), fakehost_instance(lp->fh), cfg, err, sizeof err);
    ck_assert_msg(lp->state != NULL, "init failed: %s", err);
    json_decref(cfg);
}

static void lt_fini(lt_plugin *lp)
{
    if (lp->p->stop) {
        lp->p->stop(lp->state, fakehost_drained);
        fakehost_run(lp->fh, 5000);
        ck_assert_uint_eq(fakehost_drained_count(lp->fh), 1);
    }
    fakehost_cancel_all(lp->fh);
    lp->p->destroy(lp->state);
    fakehost_free(lp->fh);
}

static const koko_llm_ops *lt_ops(const lt_plugin *lp)
{
    return lp->p->ops;
}

/* generate() and run the loop until its callback (10 s at most). */
static void lt_generate(lt_plugin *lp, lt_req *r, lt_out *o)
{
    lt_out_clear(o);
    lt_ops(lp)->generate(lp->state, &r->req, lt_on_result, o);
    ck_assert_int_eq(o->done, 0); /* never from inside generate() */
    ck_assert_int_eq(fakehost_run_until(lp->fh, &o->done, 10000), 0);
    ck_assert_int_eq(o->calls, 1);
}

#endif
