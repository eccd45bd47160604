/*
 * test_gen.c — unit tests for generations (core/gen.c) and reload
 * (kokod_reload in core/kokod.c) on a real kokod built in-process.
 *
 * A good reload bumps the generation and carries over unchanged plugin
 * instances (the very same koko_instance); a changed plugin config gets a
 * new instance and the old one is drained and destroyed; a bad reload
 * returns -1 with every problem and leaves the old generation serving;
 * an old generation lives exactly as long as something holds it — also an
 * in-flight /api/chat, which finishes in the generation (and the .so) it
 * started in while a new request is answered by the replaced plugin.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* nftw */
#endif
#include <check.h>
#include <curl/curl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen.h"
#include "instance.h"
#include "kokod.h"
#include "pipeline.h"
#include "server.h"
#include "util.h"

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

/* ---- a kokod in this process ---- */

static char tmp_root[256];
static char cfg_path[512];
static char plug_dir[512];

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Copy SRC to DST through a temporary file and rename, as an operator's
 * "install" would: a reader never sees a half-written file. */
static void install_plugin(const char *src, const char *dst)
{
    char err[256], tmp[1100];
    size_t len;
    char *data = util_read_file(src, 64u << 20, &len, err, sizeof err);
    ck_assert_msg(data != NULL, "test plugin: %s (run make check)", err);
    snprintf(tmp, sizeof tmp, "%s.new", dst);
    ck_assert_msg(util_write_file(tmp, data, len, 0755, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(rename(tmp, dst), 0);
    free(data);
}

/* Also registered with atexit: a failed assertion ends the test process
 * without running the checked teardown. */
static void teardown(void)
{
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmp_root[0] = '\0';
}

static void setup(void)
{
    snprintf(tmp_root, sizeof tmp_root, "/tmp/koko-test-gen-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
    atexit(teardown);
    snprintf(cfg_path, sizeof cfg_path, "%s/koko.yaml", tmp_root);
    snprintf(plug_dir, sizeof plug_dir, "%s/plugins", tmp_root);
    ck_assert_int_eq(mkdir(plug_dir, 0700), 0);
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/echo.so", env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(dst, sizeof dst, "%s/echo.so", plug_dir);
    install_plugin(src, dst);
}



/* The configuration: tenant demo answering through echo with DELAY_MS;
 * LLM is the chain (e.g. "echo" or "nope"). */
static void write_config(long delay_ms, const char *llm)
{
    FILE *f = fopen(cfg_path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
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
    fclose(f);
}

static kokod *start_nolisten(void)
{
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    kokod *kd = kokod_new(cfg_path, extra, 1, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(kd != NULL, "kokod_new: %s", errs);
    free(errs);
    diag_free(d);
    return kd;
}

static kokod *start(void)
{
    kokod *kd = start_nolisten();
    char err[512];
    ck_assert_msg(kokod_listen(kd, err, sizeof err) == 0, "kokod_listen: %s", err);
    ck_assert_int_gt(server_port(kd->srv), 0);
    return kd;
}

/* ---- one HTTP request from a helper thread ---- */

typedef struct http_call {
    int port;
    const char *method, *path, *token, *ctype;
    const char *body;
    size_t body_len;
    long status;
    char *resp;          /* body, malloc'd */
    size_t resp_len;
    char allow[128];     /* Allow header, if any */
    char www_auth[128];  /* WWW-Authenticate header, if any */
    char ctype_out[128]; /* Content-Type of the answer */
    char curl_err[CURL_ERROR_SIZE];
    atomic_int done;
} http_call;

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    http_call *c = arg;
    char *nb = realloc(c->resp, c->resp_len + sz * n + 1);
    if (!nb)
        return 0;
    c->resp = nb;
    memcpy(c->resp + c->resp_len, p, sz * n);
    c->resp_len += sz * n;
    c->resp[c->resp_len] = '\0';
    return sz * n;
}

static void copy_header(char *dst, size_t cap, const char *line, size_t len, const char *name)
{
    size_t nl = strlen(name);
    if (len > nl + 1 && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
        const char *v = line + nl + 1;
        while (*v == ' ')
            v++;
        size_t vl = len - (size_t)(v - line);
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
            vl--;
        snprintf(dst, cap, "%.*s", (int)vl, v);
    }
}

static size_t on_header(char *p, size_t sz, size_t n, void *arg)
{
    http_call *c = arg;
    copy_header(c->allow, sizeof c->allow, p, sz * n, "Allow");
    copy_header(c->www_auth, sizeof c->www_auth, p, sz * n, "WWW-Authenticate");
    copy_header(c->ctype_out, sizeof c->ctype_out, p, sz * n, "Content-Type");
    return sz * n;
}

static void *http_thread(void *arg)
{
    http_call *c = arg;
    CURL *h = curl_easy_init();
    char url[512], auth[256], ct[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", c->port, c->path);
    struct curl_slist *hdrs = NULL;
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        hdrs = curl_slist_append(hdrs, auth);
    }
    if (c->body) {
        snprintf(ct, sizeof ct, "Content-Type: %s", c->ctype ? c->ctype : "application/json");
        hdrs = curl_slist_append(hdrs, ct);
        hdrs = curl_slist_append(hdrs, "Expect:");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)c->body_len);
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, c->method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->curl_err);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (strcmp(c->method, "HEAD") == 0)
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &c->status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(h);
    atomic_store(&c->done, 1);
    return NULL;
}

/* Run KD's loop until C is answered (10 s at most). */
static void run_until_done(kokod *kd, http_call *c)
{
    for (int i = 0; i < 10000 && !atomic_load(&c->done); i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_msg(atomic_load(&c->done), "no answer to %s %s within 10 s", c->method, c->path);
}

/* Make one request and wait for its answer; the caller frees c->resp. */
static void request(kokod *kd, http_call *c, const char *method, const char *path, const char *token,
                    const char *body)
{
    memset(c, 0, sizeof *c);
    c->port = server_port(kd->srv);
    c->method = method;
    c->path = path;
    c->token = token;
    c->body = body;
    c->body_len = body ? strlen(body) : 0;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, http_thread, c), 0);
    run_until_done(kd, c);
    pthread_join(th, NULL);
    ck_assert_msg(c->status > 0, "request failed: %s", c->curl_err);
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

static const char *reply_of(const http_call *c)
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
    snprintf(src, sizeof src, "%s/failinit.so", env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(dst, sizeof dst, "%s/failinit.so", plug_dir);
    install_plugin(src, dst);
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
    http_call slow;
    memset(&slow, 0, sizeof slow);
    slow.port = server_port(kd->srv);
    slow.method = "POST";
    slow.path = "/api/chat";
    slow.body = chat_body;
    slow.body_len = strlen(chat_body);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, http_thread, &slow), 0);
    for (int i = 0; i < 5000 && pipeline_inflight(kd->pipe) == 0; i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_uint_eq(pipeline_inflight(kd->pipe), 1);
    ck_assert(!atomic_load(&slow.done));

    /* ... while the operator installs echo v2 and reloads */
    char v2[1024], dst[1024];
    snprintf(v2, sizeof v2, "%s/tests/plugins/v2/.libs/echo.so", env_or("KOKO_BUILDDIR", "."));
    snprintf(dst, sizeof dst, "%s/echo.so", plug_dir);
    install_plugin(v2, dst);
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

    run_until_done(kd, &slow);
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
    http_call fresh;
    request(kd, &fresh, "POST", "/api/chat", NULL, chat_body);
    ck_assert_int_eq(fresh.status, 200);
    ck_assert_str_eq(reply_of(&fresh), "echo[v2]: are you there");
    free(fresh.resp);
    free(old_hash);
    kokod_free(kd);
}
END_TEST

static Suite *gen_suite(void)
{
    Suite *s = suite_create("gen");
    TCase *tc = tcase_create("reload");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_reload_unchanged);
    tcase_add_test(tc, test_reload_changed_config);
    tcase_add_test(tc, test_reload_bad);
    tcase_add_test(tc, test_old_generation_held);
    tcase_add_test(tc, test_inflight_finishes_in_old_generation);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    SRunner *sr = srunner_create(gen_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
