/*
 * test_config.c — unit tests for core/config.c (config_load): a good file's
 * fields, and each kind of bad file with the exact messages an operator
 * reads ("FILE:LINE:COL: path: message").
 *
 * Fixtures live in tests/data/core/ and use ${KOKO_TEST_BASE} (that folder)
 * and ${KOKO_TEST_STATE} (a temporary folder) so plugin copies never land in
 * the source tree. The plugin search folder is a temporary folder of links
 * to a fixed set of plugins, so "available: ..." lists are exact.
 */
#include <check.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "diag.h"
#include "loader.h"
#include "testutil.h"

static char plug_dir[512];
static char state_dir[512];
static char base_dir[1024]; /* tests/data/core in the source tree */

static void setup(void)
{
    const char *tmp_root = tu_tmp_make("config");
    snprintf(plug_dir, sizeof plug_dir, "%s/plugins", tmp_root);
    snprintf(state_dir, sizeof state_dir, "%s/state", tmp_root);
    ck_assert_int_eq(mkdir(plug_dir, 0700), 0);
    static const char *const names[] = {"echo", "chankind", "failinit", "testchan"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        tu_link_test_plugin(plug_dir, names[i]);
    tu_link_plugin(plug_dir, "fallback", tu_env_or("KOKO_FALLBACK_SO", "plugins/fallback/.libs/fallback.so"));
    snprintf(base_dir, sizeof base_dir, "%s/tests/data/core", tu_env_or("KOKO_SRCDIR", "."));
    setenv("KOKO_TEST_BASE", base_dir, 1);
    setenv("KOKO_TEST_STATE", state_dir, 1);
}

static const char *fixture(const char *name)
{
    static char buf[2048];
    snprintf(buf, sizeof buf, "%s/%s", base_dir, name);
    return buf;
}

/* Files left in the plugin cache (state/plugins). */
static int cache_files(void)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/plugins", state_dir);
    return tu_count_entries(dir);
}

/*
 * Loads fixture NAME expecting failure with exactly EXPECTED: each line is
 * prefixed with the fixture's full path where it starts with ':' (so the
 * expectations stay readable), lines are joined with '\n'.
 */
static void expect_errors(const char *name, const char *const *lines)
{
    char file[2048];
    snprintf(file, sizeof file, "%s", fixture(name));
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    core_config *c = config_load(file, extra, 1, ld, d);
    ck_assert_ptr_null(c);
    char want[16384] = "";
    size_t off = 0;
    for (size_t i = 0; lines[i]; i++)
        off += (size_t)snprintf(want + off, sizeof want - off, "%s%s%s", i ? "\n" : "",
                                lines[i][0] == ':' ? file : "", lines[i]);
    char *got = diag_join(d, "\n");
    ck_assert_str_eq(got, want);
    free(got);
    diag_free(d);
    loader_free(ld);
    ck_assert_int_eq(cache_files(), 0); /* nothing loaded stays behind */
}

#define AVAILABLE "chankind, echo, failinit, fallback, testchan"

/* ---- good files ---- */

START_TEST(test_good)
{
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    core_config *c = config_load(fixture("good.yaml"), extra, 1, ld, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(c != NULL, "%s", errs);
    free(errs);
    ck_assert_uint_eq(diag_count(d), 0);

    ck_assert_str_eq(c->file, fixture("good.yaml"));
    ck_assert_str_eq(c->base_dir, base_dir);
    ck_assert_str_eq(c->listen_host, "127.0.0.1");
    ck_assert_int_eq(c->listen_port, 5077);
    char want[2048];
    snprintf(want, sizeof want, "%s/run/ctl.sock", base_dir);
    ck_assert_str_eq(c->control_path, want); /* resolved against base_dir */
    ck_assert_ptr_null(c->api_token);
    ck_assert_uint_eq(c->max_body, CONFIG_DEFAULT_MAX_BODY);
    ck_assert_uint_eq(c->drain_ms, 500);
    ck_assert_str_eq(c->state_dir, state_dir); /* absolute: used as is */
    ck_assert_str_eq(c->log_level, "error");
    ck_assert_uint_ge(c->n_plugin_path, 2);
    ck_assert_str_eq(c->plugin_path[0], plug_dir); /* -P comes first */

    ck_assert_uint_eq(c->n_tenants, 2);
    const tenant_cfg *demo = config_tenant(c, "demo");
    ck_assert_ptr_nonnull(demo);
    ck_assert_str_eq(demo->path, "tenants.demo");
    ck_assert_uint_eq(demo->n_languages, 2);
    ck_assert_str_eq(demo->languages[0], "hu");
    ck_assert_str_eq(demo->languages[1], "en");
    ck_assert_uint_eq(demo->n_kb, 1);
    ck_assert_str_eq(demo->kb[0], "kb/faq");
    ck_assert_str_eq(demo->memory, "memory/good");
    ck_assert_uint_eq(demo->n_llm, 1); /* no llm: the chain defaults to [fallback] */
    ck_assert_str_eq(demo->llm[0], "fallback");
    ck_assert_ptr_null(demo->routes);
    ck_assert_ptr_null(demo->channels);

    const tenant_cfg *shop = config_tenant(c, "shop");
    ck_assert_ptr_nonnull(shop);
    ck_assert_uint_eq(shop->n_llm, 2);
    ck_assert_str_eq(shop->llm[0], "echo");
    ck_assert_str_eq(shop->llm[1], "fallback");
    ck_assert_ptr_null(shop->memory);
    ck_assert_uint_eq(json_array_size(shop->routes), 1);
    const json_t *ecfg = config_plugin_cfg(shop, KOKO_KIND_LLM, "echo");
    ck_assert_ptr_nonnull(ecfg);
    ck_assert_int_eq(json_integer_value(json_object_get(ecfg, "delay_ms")), 5);
    ck_assert_ptr_null(config_plugin_cfg(shop, KOKO_KIND_LLM, "fallback"));
    ck_assert_ptr_null(config_plugin_cfg(shop, KOKO_KIND_CHANNEL, "testchan")); /* named without config */
    char *p = config_plugin_path(shop, KOKO_KIND_CHANNEL, "testchan");
    ck_assert_str_eq(p, "tenants.shop.channels.testchan");
    free(p);
    p = config_plugin_path(shop, KOKO_KIND_LLM, "echo");
    ck_assert_str_eq(p, "tenants.shop.backends.echo");
    free(p);
    ck_assert_ptr_null(config_tenant(c, "nobody"));

    /* each plugin loaded once, whatever the number of tenants naming it */
    ck_assert_uint_eq(c->n_libs, 3);
    plugin_lib *fb = config_lib(c, "fallback"), *echo = config_lib(c, "echo"), *tc = config_lib(c, "testchan");
    ck_assert_ptr_nonnull(fb);
    ck_assert_ptr_nonnull(echo);
    ck_assert_ptr_nonnull(tc);
    ck_assert_int_eq(fb->refs, 1);
    ck_assert_int_eq(tc->desc->kind, KOKO_KIND_CHANNEL);
    ck_assert_ptr_null(config_lib(c, "chankind"));
    ck_assert_int_eq(cache_files(), 3);

    config_free(c, ld);
    ck_assert_int_eq(cache_files(), 0);
    diag_free(d);
    loader_free(ld);
}
END_TEST

START_TEST(test_shipped_config)
{
    /* etc/koko.yaml as shipped, with the fallback plugin found through -P */
    char file[2048], fbdir[2048];
    snprintf(file, sizeof file, "%s/etc/koko.yaml", tu_env_or("KOKO_SRCDIR", "."));
    snprintf(fbdir, sizeof fbdir, "%s", tu_env_or("KOKO_FALLBACK_SO", "plugins/fallback/.libs/fallback.so"));
    setenv("KOKO_BASE_DIR", tu_env_or("KOKO_SRCDIR", "."), 1);
    setenv("KOKO_STATE_DIR", state_dir, 1);
    unsetenv("KOKO_LISTEN");
    unsetenv("KOKO_API_TOKEN");
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {dirname(fbdir)};
    core_config *c = config_load(file, extra, 1, ld, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(c != NULL, "%s", errs);
    free(errs);
    ck_assert_str_eq(c->listen_host, "127.0.0.1");
    ck_assert_int_eq(c->listen_port, 5001);
    ck_assert_ptr_null(c->api_token); /* empty token = none */
    char want[2048];
    snprintf(want, sizeof want, "%s/var/kokod.sock", tu_env_or("KOKO_SRCDIR", "."));
    ck_assert_str_eq(c->control_path, want);
    ck_assert_str_eq(c->state_dir, state_dir);
    const tenant_cfg *demo = config_tenant(c, "demo");
    ck_assert_ptr_nonnull(demo);
    int has_fallback = 0;
    for (size_t i = 0; i < demo->n_llm; i++)
        has_fallback |= strcmp(demo->llm[i], "fallback") == 0;
    ck_assert(has_fallback);
    ck_assert_ptr_nonnull(config_lib(c, "fallback"));
    config_free(c, ld);
    diag_free(d);
    loader_free(ld);
}
END_TEST

START_TEST(test_env_overrides)
{
    /* the same file listening elsewhere with a token */
    char file[2048], fbdir[2048];
    snprintf(file, sizeof file, "%s/etc/koko.yaml", tu_env_or("KOKO_SRCDIR", "."));
    snprintf(fbdir, sizeof fbdir, "%s", tu_env_or("KOKO_FALLBACK_SO", "plugins/fallback/.libs/fallback.so"));
    setenv("KOKO_BASE_DIR", tu_env_or("KOKO_SRCDIR", "."), 1);
    setenv("KOKO_STATE_DIR", state_dir, 1);
    setenv("KOKO_LISTEN", "0.0.0.0:8080", 1);
    setenv("KOKO_API_TOKEN", "s3cret", 1);
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {dirname(fbdir)};
    core_config *c = config_load(file, extra, 1, ld, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(c != NULL, "%s", errs);
    free(errs);
    ck_assert_str_eq(c->listen_host, "0.0.0.0");
    ck_assert_int_eq(c->listen_port, 8080);
    ck_assert_str_eq(c->api_token, "s3cret");
    config_free(c, ld);
    diag_free(d);
    loader_free(ld);
}
END_TEST

/* ---- bad files: exact messages ---- */

START_TEST(test_missing_file)
{
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    ck_assert_ptr_null(config_load("/nonexistent-koko/koko.yaml", NULL, 0, ld, d));
    ck_assert_uint_eq(diag_count(d), 1);
    ck_assert_str_eq(diag_get(d, 0), "/nonexistent-koko/koko.yaml: cannot open: No such file or directory");
    diag_free(d);
    loader_free(ld);
}
END_TEST

START_TEST(test_unknown_plugin)
{
    const char *const want[] = {
        ":5:17: tenants.demo.llm[1]: unknown plugin \"gemnii\" (available: " AVAILABLE ")", NULL};
    expect_errors("bad_unknown_llm.yaml", want);
}
END_TEST

START_TEST(test_wrong_kind)
{
    const char *const want[] = {
        ":5:11: tenants.demo.llm[0]: plugin \"chankind\" is a channel plugin, not an llm plugin",
        ":7:7: tenants.demo.channels.echo: plugin \"echo\" is an llm plugin, not a channel plugin", NULL};
    expect_errors("bad_kind.yaml", want);
}
END_TEST

START_TEST(test_plugin_validate)
{
    const char *const want[] = {
        ":8:23: tenants.demo.backends.fallback.min_coverage: expected a number between 0 and 1, got 2", NULL};
    expect_errors("bad_validate.yaml", want);
}
END_TEST

START_TEST(test_unknown_key)
{
    /* exact up to the list of known keys, which grows with every tenant setting */
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    ck_assert_ptr_null(config_load(fixture("bad_tenant_key.yaml"), extra, 1, ld, d));
    ck_assert_uint_eq(diag_count(d), 1);
    char want[4096];
    snprintf(want, sizeof want,
             "%s:5:5: tenants.demo.histroy_turns: unknown key \"histroy_turns\"; did you mean \"history_turns\"? "
             "(known keys: languages, kb, memory, llm, backends, channels, tools, routes, handoff, ",
             fixture("bad_tenant_key.yaml"));
    const char *got = diag_get(d, 0);
    ck_assert_msg(strncmp(got, want, strlen(want)) == 0, "got: %s\nwant prefix: %s", got, want);
    ck_assert_msg(strstr(got + strlen(want), "history_turns") != NULL, "%s", got);
    ck_assert_int_eq(got[strlen(got) - 1], ')');
    diag_free(d);
    loader_free(ld);
}
END_TEST

START_TEST(test_bad_language)
{
    const char *const want[] = {
        ":4:21: tenants.demo.languages[1]: \"eng\" is not an ISO 639-1 language code (two lower-case letters: "
        "hu, en, de)",
        NULL};
    expect_errors("bad_lang.yaml", want);
}
END_TEST

START_TEST(test_kb_missing)
{
    char line[4096];
    snprintf(line, sizeof line,
             ":6:18: tenants.demo.kb[1]: folder %s/kb/missing does not exist (No such file or directory; "
             "relative paths resolve against base_dir \"%s\")",
             base_dir, base_dir);
    const char *const want[] = {line, NULL};
    expect_errors("bad_kb.yaml", want);
}
END_TEST

START_TEST(test_duplicate_backend)
{
    const char *const want[] = {":5:27: tenants.demo.llm[2]: backend \"echo\" appears twice in the chain", NULL};
    expect_errors("bad_dup.yaml", want);
}
END_TEST

START_TEST(test_listen_without_token)
{
    const char *const want[] = {
        ":2:11: server.listen: refusing to listen on 0.0.0.0 without server.api_token: set a token (e.g. "
        "api_token: \"${KOKO_API_TOKEN}\") or listen on 127.0.0.1",
        NULL};
    expect_errors("bad_listen.yaml", want);
}
END_TEST

START_TEST(test_bad_regex)
{
    const char *const want[] = {
        ":7:24: tenants.demo.routes[0].match.regex: invalid regular expression: Unmatched ( or \\( (POSIX "
        "extended syntax)",
        NULL};
    expect_errors("bad_regex.yaml", want);
}
END_TEST

START_TEST(test_route_tool)
{
    const char *const want[] = {
        ":8:17: tenants.demo.routes[0].tools[0]: tool \"calendar\" is not configured for this tenant (add it "
        "under tools:)",
        NULL};
    expect_errors("bad_route_tool.yaml", want);
}
END_TEST

START_TEST(test_route_language)
{
    const char *const want[] = {
        ":7:27: tenants.demo.routes[0].match.language: the tenant does not list language \"de\" in languages",
        NULL};
    expect_errors("bad_route_lang.yaml", want);
}
END_TEST

START_TEST(test_bad_identity)
{
    char line[4096];
    snprintf(line, sizeof line, "%s/memory/badjson/identity.json:4:12: invalid JSON: '}' expected near '\"greeting\"'",
             base_dir);
    const char *const want[] = {line, NULL};
    expect_errors("bad_identity.yaml", want);
}
END_TEST

START_TEST(test_many_errors)
{
    char kbline[4096];
    snprintf(kbline, sizeof kbline,
             ":7:10: tenants.demo.kb[0]: folder %s/kb/none does not exist (No such file or directory; relative "
             "paths resolve against base_dir \"%s\")",
             base_dir, base_dir);
    const char *const want[] = {
        kbline,
        ":8:11: tenants.demo.llm[0]: unknown plugin \"gemnii\" (available: " AVAILABLE ")",
        ":8:25: tenants.demo.llm[2]: backend \"echo\" appears twice in the chain",
        ":12:12: tenants.shop.channels.echo: plugin \"echo\" is an llm plugin, not a channel plugin",
        ":14:27: tenants.shop.routes[0].match.language: the tenant does not list language \"en\" in languages",
        NULL};
    expect_errors("bad_many.yaml", want);
}
END_TEST

START_TEST(test_many_schema_errors)
{
    const char *const want[] = {
        ":3:11: server.listen: expected HOST:PORT (e.g. 127.0.0.1:5001 or [::1]:5001), got \"localhost\"",
        ":4:13: server.max_body: 10 is out of range (1024 to 67108864)",
        ":8:17: tenants.demo.languages[0]: \"xx1\" is not an ISO 639-1 language code (two lower-case letters: "
        "hu, en, de)",
        ":9:20: tenants.demo.history_turns: expected an integer, got a string",
        NULL};
    expect_errors("bad_many_schema.yaml", want);
}
END_TEST

START_TEST(test_reuses_loader)
{
    /* two loads through one loader share the libraries (as reload does) */
    loader *ld = loader_new(NULL);
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    core_config *a = config_load(fixture("good.yaml"), extra, 1, ld, d);
    core_config *b = config_load(fixture("good.yaml"), extra, 1, ld, d);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_eq(config_lib(a, "echo"), config_lib(b, "echo"));
    ck_assert_int_eq(config_lib(a, "echo")->refs, 2);
    /* a failing load in between leaves the shared libraries alone */
    ck_assert_ptr_null(config_load(fixture("bad_many.yaml"), extra, 1, ld, d));
    ck_assert_int_eq(config_lib(a, "echo")->refs, 2);
    config_free(a, ld);
    ck_assert_int_eq(config_lib(b, "echo")->refs, 1);
    ck_assert_int_eq(cache_files(), 3);
    config_free(b, ld);
    ck_assert_int_eq(cache_files(), 0);
    diag_free(d);
    loader_free(ld);
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("load");
    tcase_add_checked_fixture(tc, setup, tu_tmp_remove);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_good);
    tcase_add_test(tc, test_shipped_config);
    tcase_add_test(tc, test_env_overrides);
    tcase_add_test(tc, test_missing_file);
    tcase_add_test(tc, test_unknown_plugin);
    tcase_add_test(tc, test_wrong_kind);
    tcase_add_test(tc, test_plugin_validate);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_bad_language);
    tcase_add_test(tc, test_kb_missing);
    tcase_add_test(tc, test_duplicate_backend);
    tcase_add_test(tc, test_listen_without_token);
    tcase_add_test(tc, test_bad_regex);
    tcase_add_test(tc, test_route_tool);
    tcase_add_test(tc, test_route_language);
    tcase_add_test(tc, test_bad_identity);
    tcase_add_test(tc, test_many_errors);
    tcase_add_test(tc, test_many_schema_errors);
    tcase_add_test(tc, test_reuses_loader);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(config_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
