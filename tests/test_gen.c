/*
 * test_gen.c — unit tests for generations (core/gen.c) and reload
 * (kokod_reload in core/kokod.c) on a real kokod built in-process
 * (tests/inproc.c).
 *
 * A good reload bumps the generation and carries over unchanged plugin
 * instances (the very same koko_instance); a changed plugin config gets a
 * new instance and the old one is drained and destroyed; a bad reload
 * returns -1 with every problem and leaves the old generation serving;
 * an old generation lives exactly as long as something holds it — also an
 * in-flight /api/chat, which finishes in the generation (and the .so) it
 * started in while a new request is answered by the replaced plugin.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen.h"
#include "inproc.h"
#include "instance.h"
#include "kokod.h"
#include "pipeline.h"
#include "server.h"
#include "testutil.h"
#include "util.h"

/* ---- a kokod in this process ---- */

static const char *tmp_root;
static char cfg_path[512];
static char plug_dir[512];

static void setup(void)
{
    tmp_root = inproc_dirs("gen", cfg_path, sizeof cfg_path, plug_dir, sizeof plug_dir);
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/echo.so", tu_env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(dst, sizeof dst, "%s/echo.so", plug_dir);
    tu_install_file(src, dst);
}

/* The configuration: tenant demo answering through echo with DELAY_MS;
 * LLM is the chain (e.g. "echo" or "nope"). */
static void write_config(long delay_ms, const char *llm)
{
    tu_write_text(cfg_path,
                  "base_dir: %s\n"
                  "server:\n"
                  "  listen: 127.0.0.1:0\n"
                  "  control: ctl.sock\n"
                  "  drain_timeout_ms: 3000\n"
                  "state: {dir: state}\n"
                  "log: {level: error}\n"
                  "tenants:\n"
                  "  demo:\n"
                  "    languages: [en, hu]\n"
                  "    llm: [%s]\n"
                  "    backends:\n"
                  "      echo: {delay_ms: %ld}\n"
                  "    handoff: {min_confidence: 0}\n",
                  tmp_root, llm, delay_ms);
}

static kokod *start_nolisten(void)
{
    return inproc_new(cfg_path, plug_dir);
}

static kokod *start(void)
{
    return inproc_start(cfg_path, plug_dir);
}

/* ---- helpers ---- */

static koko_instance *demo_echo(const kokod *kd)
{
    tenant *t = gen_tenant(kd->current, "demo");
    ck_assert_ptr_nonnull(t);
    koko_instance *inst = tenant_backend(t, "echo");
    ck_assert_ptr_nonnull(inst);
    return inst;
}

/* Run the loop until no instance is draining (5 s at most). */
static void run_until_drained(kokod *kd)
{
    for (int i = 0; i < 5000 && instance_draining() > 0; i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_uint_eq(instance_draining(), 0);
}

static json_t *reload_ok(kokod *kd)
{
    diag *d = diag_new();
    json_t *changes = NULL;
    int rc = kokod_reload(kd, d, &changes);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(rc == 0, "reload refused: %s", errs);
    free(errs);
    ck_assert_uint_eq(diag_count(d), 0);
    diag_free(d);
    ck_assert_ptr_nonnull(changes);
    return changes;
}

static json_int_t jint(const json_t *doc, const char *a, const char *b)
{
    return json_integer_value(json_object_get(b ? json_object_get(doc, a) : doc, b ? b : a));
}

static const char *reply_of(const inproc_call *c)
{
    static char buf[512];
    json_t *doc = json_loads(c->resp ? c->resp : "", 0, NULL);
    ck_assert_msg(doc != NULL, "not JSON: %s", c->resp ? c->resp : "(empty)");
    snprintf(buf, sizeof buf, "%s", json_string_value(json_object_get(doc, "reply")));
    json_decref(doc);
    return buf;
}

static const char *chat_body = "{\"tenant\": \"demo\", \"message\": \"are you there\", \"language\": \"en\"}";

/* ---- tests ---- */

START_TEST(test_reload_unchanged)
{
    write_config(0, "echo");
    kokod *kd = start_nolisten();
    ck_assert_uint_eq(kd->current->id, 1);
    ck_assert_uint_eq(gen_alive(), 1);
    generation *g1 = kd->current;
    koko_instance *inst = demo_echo(kd);
    plugin_lib *lib = inst->lib;
    ck_assert_int_eq(inst->refs, 1);

    json_t *ch = reload_ok(kd);
    ck_assert_ptr_ne(kd->current, g1);
    ck_assert_uint_eq(kd->current->id, 2);
    ck_assert_int_eq(jint(ch, "generation", NULL), 2);
    ck_assert_int_eq(jint(ch, "instances", "kept"), 1);
    ck_assert_int_eq(jint(ch, "instances", "new"), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(ch, "plugins"), "loaded")), 0);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(ch, "tenants"), "changed")), 0);
    json_decref(ch);
    /* the same instance, now only held by generation 2 */
    ck_assert_ptr_eq(demo_echo(kd), inst);
    ck_assert_ptr_eq(inst->lib, lib);
    ck_assert_int_eq(inst->refs, 1);
    ck_assert_int_eq(inst->st, INST_RUNNING);
    ck_assert_uint_eq(gen_alive(), 1); /* nobody held generation 1 */
    ck_assert_uint_eq(instance_draining(), 0);
    ck_assert_uint_eq(kd->reloads_ok, 1);

    json_t *ch3 = reload_ok(kd);
    ck_assert_uint_eq(kd->current->id, 3);
    ck_assert_ptr_eq(demo_echo(kd), inst);
    json_decref(ch3);
    kokod_free(kd);
    ck_assert_uint_eq(gen_alive(), 0);
}
END_TEST

START_TEST(test_reload_changed_config)
{
    write_config(0, "echo");
    kokod *kd = start_nolisten();
    koko_instance *old = demo_echo(kd);
    write_config(5, "echo");
    json_t *ch = reload_ok(kd);
    ck_assert_int_eq(jint(ch, "instances", "kept"), 0);
    ck_assert_int_eq(jint(ch, "instances", "new"), 1);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(ch, "tenants"), "changed")), 1);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(json_object_get(ch, "tenants"), "changed"), 0)),
                     "demo");
    json_decref(ch);
    koko_instance *neu = demo_echo(kd);
    ck_assert_ptr_ne(neu, old);
    ck_assert_int_eq(json_integer_value(json_object_get(neu->cfg, "delay_ms")), 5);
    ck_assert_int_eq(neu->st, INST_RUNNING);
    /* the old instance is stopped and destroyed from the loop */
    ck_assert_uint_eq(instance_draining(), 1);
    run_until_drained(kd);
    ck_assert_uint_eq(gen_alive(), 1);
    /* same .so: one library shared by both configs, refcount back to one user */
    ck_assert_int_eq(neu->lib->refs, 2); /* the config's reference + the instance's */
    kokod_free(kd);
}
END_TEST

START_TEST(test_reload_bad)
{
    write_config(0, "echo");
    kokod *kd = start_nolisten();
    generation *g1 = kd->current;
    koko_instance *inst = demo_echo(kd);
    write_config(0, "nope");
    diag *d = diag_new();
    json_t *changes = (json_t *)1;
    ck_assert_int_eq(kokod_reload(kd, d, &changes), -1);
    ck_assert_ptr_null(changes);
    ck_assert_uint_eq(diag_count(d), 1);
    char want[2048];
    snprintf(want, sizeof want, "%s:11:11: tenants.demo.llm[0]: unknown plugin \"nope\" (available: echo)", cfg_path);
    ck_assert_str_eq(diag_get(d, 0), want);
    diag_free(d);
    /* the old generation keeps serving, untouched */
    ck_assert_ptr_eq(kd->current, g1);
    ck_assert_uint_eq(kd->current->id, 1);
    ck_assert_ptr_eq(demo_echo(kd), inst);
    ck_assert_int_eq(inst->refs, 1);
    ck_assert_uint_eq(gen_alive(), 1);
    ck_assert_uint_eq(kd->reloads_failed, 1);
    ck_assert_uint_eq(kd->reloads_ok, 0);

    /* a build failure (init fails) after a good parse is refused the same way; the
     * position is that of the tenant's backends: section (failinit has no entry there) */
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/failinit.so", tu_env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(dst, sizeof dst, "%s/failinit.so", plug_dir);
    tu_install_file(src, dst);
    write_config(0, "echo, failinit");
    d = diag_new();
    ck_assert_int_eq(kokod_reload(kd, d, &changes), -1);
    ck_assert_uint_eq(diag_count(d), 1);
    snprintf(want, sizeof want,
             "%s:12:5: tenants.demo.backends.failinit: plugin \"failinit\" failed to initialise: cannot reach the "
             "model server (test)",
             cfg_path);
    ck_assert_str_eq(diag_get(d, 0), want);
    diag_free(d);
    ck_assert_ptr_eq(kd->current, g1);
    ck_assert_ptr_eq(demo_echo(kd), inst);
    ck_assert_int_eq(inst->refs, 1); /* the refused generation's reference was dropped */
    ck_assert_uint_eq(gen_alive(), 1);
    run_until_drained(kd);
    ck_assert_int_eq(inst->st, INST_RUNNING);

    /* and the next good reload works */
    write_config(0, "echo");
    json_t *ch = reload_ok(kd);
    ck_assert_int_eq(jint(ch, "generation", NULL), 2);
    json_decref(ch);
    ck_assert_ptr_eq(demo_echo(kd), inst);
    kokod_free(kd);
}
END_TEST

START_TEST(test_old_generation_held)
{
    write_config(0, "echo");
    kokod *kd = start_nolisten();
    generation *g1 = kd->current;
    gen_ref(g1); /* as an in-flight job would */
    write_config(7, "echo");
    json_t *ch = reload_ok(kd);
    json_decref(ch);
    ck_assert_uint_eq(gen_alive(), 2);
    ck_assert_int_eq(g1->refs, 1);
    koko_instance *old = tenant_backend(gen_tenant(g1, "demo"), "echo");
    ck_assert_ptr_ne(old, demo_echo(kd));
    ck_assert_int_eq(old->st, INST_RUNNING); /* still serving generation 1 */
    ck_assert_uint_eq(instance_draining(), 0);
    gen_release(g1);
    ck_assert_uint_eq(gen_alive(), 1);
    ck_assert_uint_eq(instance_draining(), 1);
    run_until_drained(kd);
    kokod_free(kd);
}
END_TEST

START_TEST(test_inflight_finishes_in_old_generation)
{
    write_config(400, "echo");
    kokod *kd = start();
    koko_instance *old = demo_echo(kd);
    char *old_hash = xstrdup(old->lib->hash);

    /* a request that will take 400 ms ... */
    inproc_call slow;
    memset(&slow, 0, sizeof slow);
    slow.port = server_port(kd->srv);
    slow.method = "POST";
    slow.path = "/api/chat";
    slow.body = chat_body;
    slow.body_len = strlen(chat_body);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, inproc_http_thread, &slow), 0);
    for (int i = 0; i < 5000 && pipeline_inflight(kd->pipe) == 0; i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_uint_eq(pipeline_inflight(kd->pipe), 1);
    ck_assert(!atomic_load(&slow.done));

    /* ... while the operator installs echo v2 and reloads */
    char v2[1024], dst[1024];
    snprintf(v2, sizeof v2, "%s/tests/plugins/v2/.libs/echo.so", tu_env_or("KOKO_BUILDDIR", "."));
    snprintf(dst, sizeof dst, "%s/echo.so", plug_dir);
    tu_install_file(v2, dst);
    json_t *ch = reload_ok(kd);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(ch, "plugins"), "loaded")), 1);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(ch, "plugins"), "unloaded")), 1);
    json_decref(ch);
    ck_assert_uint_eq(kd->current->id, 2);
    koko_instance *neu = demo_echo(kd);
    ck_assert_ptr_ne(neu, old);
    ck_assert_str_ne(neu->lib->hash, old_hash);
    ck_assert_str_eq(neu->desc->version, "v2");
    ck_assert_uint_eq(gen_alive(), 2); /* generation 1 is held by the job */
    ck_assert_int_eq(old->st, INST_RUNNING);

    inproc_wait(kd, &slow);
    pthread_join(th, NULL);
    ck_assert_int_eq(slow.status, 200);
    ck_assert_str_eq(reply_of(&slow), "echo[v1]: are you there"); /* the old .so answered */
    free(slow.resp);

    /* the job's end released generation 1; its instance drains away */
    for (int i = 0; i < 2000 && gen_alive() > 1; i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_uint_eq(gen_alive(), 1);
    run_until_drained(kd);
    ck_assert_uint_eq(server_inflight(kd->srv), 0);

    /* a new request is answered by the new .so */
    inproc_call fresh;
    inproc_request(kd, &fresh, "POST", "/api/chat", NULL, chat_body);
    ck_assert_int_eq(fresh.status, 200);
    ck_assert_str_eq(reply_of(&fresh), "echo[v2]: are you there");
    free(fresh.resp);
    free(old_hash);
    kokod_free(kd);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {test_reload_unchanged,
                            test_reload_changed_config,
                            test_reload_bad,
                            test_old_generation_held,
                            test_inflight_finishes_in_old_generation,
                            NULL};
    return inproc_run("gen", "reload", setup, tests);
}
