/*
 * test_schema.c - unit tests for core/schema.c, on YAML parsed by yamltree.
 *
 * A small configuration schema in the shape of koko.yaml (server, store,
 * tenants with an LLM chain) is declared as tables, the way core modules and
 * plugins declare theirs, and each check asserts the exact messages.
 */
#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"
#include "schema.h"
#include "yamltree.h"

static char *data_path(const char *name)
{
    const char *src = getenv("KOKO_SRCDIR");
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/tests/data/config/%s", src ? src : ".", name);
    return buf;
}

#define ck_errors(d, expected)                                                                    \
    do {                                                                                          \
        char *j_ = diag_join((d), "\n");                                                          \
        ck_assert_str_eq(j_, (expected));                                                         \
        free(j_);                                                                                 \
    } while (0)

/* ---- the schema under test ---- */

static const char *const llm_plugins[] = {"fallback", "gemini", "openai", NULL};

/* A custom check, as the plugin loader would write it. */
static int check_plugin(sc_ctx *ctx, const char *path, json_t *v)
{
    const char *name = json_string_value(v);
    for (const char *const *p = llm_plugins; *p; p++)
        if (strcmp(*p, name) == 0)
            return 0;
    const char *sug = sc_suggest(name, llm_plugins);
    if (sug)
        sc_error(ctx, path, "unknown plugin \"%s\"; did you mean \"%s\"? (available: fallback, gemini, openai)",
                 name, sug);
    else
        sc_error(ctx, path, "unknown plugin \"%s\" (available: fallback, gemini, openai)", name);
    (*(int *)ctx->user)++;
    return -1;
}

static const char *const backends[] = {"embedded", "redis", NULL};

static const sc_field plugin_name[] = {{.type = SC_STRING, .flags = SC_NONEMPTY, .check = check_plugin}};
static const sc_field a_string[] = {{.type = SC_STRING, .flags = SC_NONEMPTY}};

static const sc_field server_fields[] = {
    {.key = "listen", .type = SC_STRING, .doc = "address to listen on"},
    {.key = "port", .type = SC_INT, .flags = SC_REQUIRED | SC_RANGE, .min = 1, .max = 65535,
     .doc = "TCP port of the HTTP API"},
    {.key = "workers", .type = SC_INT, .flags = SC_RANGE, .min = 1, .max = 64},
    {.key = "token", .type = SC_STRING, .flags = SC_NULLABLE},
    {.key = "debug", .type = SC_BOOL},
    {0}};

static const sc_field store_fields[] = {
    {.key = "backend", .type = SC_STRING, .one_of = backends, .doc = "state backend"},
    {.key = "redis", .type = SC_OBJECT, .flags = SC_OPEN},
    {0}};

static const sc_field tenant_fields[] = {
    {.key = "name", .type = SC_STRING, .flags = SC_REQUIRED | SC_NONEMPTY, .doc = "display name"},
    {.key = "llm", .type = SC_LIST, .flags = SC_REQUIRED | SC_NONEMPTY, .item = plugin_name,
     .doc = "LLM backends, tried in order"},
    {.key = "languages", .type = SC_LIST, .item = a_string},
    {.key = "inbox", .type = SC_INT},
    {.key = "confidence", .type = SC_NUMBER, .flags = SC_RANGE, .min = 0, .max = 1},
    {.key = "enabled", .type = SC_ANY},
    {.key = "plain_no", .type = SC_STRING},
    {.key = "quoted_number", .type = SC_STRING},
    {0}};

static const sc_field tenant[] = {{.type = SC_OBJECT, .fields = tenant_fields}};

static const sc_field top_fields[] = {
    {.key = "server", .type = SC_OBJECT, .flags = SC_REQUIRED, .fields = server_fields},
    {.key = "store", .type = SC_OBJECT, .fields = store_fields},
    {.key = "defaults", .type = SC_ANY, .doc = "anchors for the tenants to merge"},
    {.key = "tenants", .type = SC_MAP, .flags = SC_REQUIRED | SC_NONEMPTY, .item = tenant},
    {0}};

static const sc_field koko_schema = {.type = SC_OBJECT, .fields = top_fields};

/* Parses text (must succeed) and validates it; returns the error count. */
static int validate_text(const char *text, diag *d, cfgdoc **out)
{
    diag *pd = diag_new();
    cfgdoc *doc = cfgdoc_parse_string("t.yaml", text, strlen(text), pd);
    char *j = diag_join(pd, "\n");
    ck_assert_msg(doc != NULL, "parse failed: %s", j);
    free(j);
    diag_free(pd);
    int calls = 0;
    int n = sc_validate(doc, d, "", cfgdoc_root(doc), &koko_schema, &calls);
    if (out)
        *out = doc;
    else
        cfgdoc_free(doc);
    return n;
}

static void expect_errors(const char *text, const char *expected)
{
    diag *d = diag_new();
    int n = validate_text(text, d, NULL);
    ck_errors(d, expected);
    ck_assert_int_eq(n, (int)diag_count(d));
    diag_free(d);
}

/* ---- tests ---- */

START_TEST(test_good_file)
{
    unsetenv("KOKO_TEST_PORT");
    unsetenv("KOKO_TEST_TOKEN");
    diag *d = diag_new();
    cfgdoc *doc = cfgdoc_parse_file(data_path("good.yaml"), d);
    ck_assert_ptr_nonnull(doc);
    int calls = 0;
    ck_assert_int_eq(sc_validate(doc, d, "", cfgdoc_root(doc), &koko_schema, &calls), 0);
    ck_errors(d, "");
    ck_assert_int_eq(calls, 0);
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_unknown_key)
{
    expect_errors("server: {port: 80, prot: 81, colour: blue}\ntenants: {a: {name: A, llm: [gemini], LLM: [x]}}\n",
                  "t.yaml:1:20: server.prot: unknown key \"prot\"; did you mean \"port\"? "
                  "(known keys: listen, port, workers, token, debug)\n"
                  "t.yaml:1:30: server.colour: unknown key \"colour\" "
                  "(known keys: listen, port, workers, token, debug)\n"
                  "t.yaml:2:39: tenants.a.LLM: unknown key \"LLM\"; did you mean \"llm\"? "
                  "(known keys: name, llm, languages, inbox, confidence, enabled, plain_no, quoted_number)");
    /* SC_OPEN mappings let unknown keys through */
    expect_errors("server: {port: 80}\nstore: {redis: {anything: 1}}\ntenants: {a: {name: A, llm: [gemini]}}\n", "");
}
END_TEST

START_TEST(test_wrong_type)
{
    expect_errors("server:\n  port: 80\n  listen: 8080\n  debug: yes\n"
                  "tenants:\n  a:\n    name: A\n    llm: 5\n    languages: [en, 7]\n    inbox: 2.5\n"
                  "  b: [not, a, mapping]\n",
                  "t.yaml:3:11: server.listen: expected a string, got a number (write \"8080\" in quotes to make it text)\n"
                  "t.yaml:4:10: server.debug: expected true or false, got a string\n"
                  "t.yaml:8:10: tenants.a.llm: expected a list of strings, got a number\n"
                  "t.yaml:9:21: tenants.a.languages[1]: expected a string, got a number "
                  "(write \"7\" in quotes to make it text)\n"
                  "t.yaml:10:12: tenants.a.inbox: expected an integer, got a number with a fraction\n"
                  "t.yaml:11:3: tenants.b: expected a mapping, got a list");
}
END_TEST

START_TEST(test_missing_required)
{
    expect_errors("store:\n  backend: redis\n"
                  "tenants:\n  demo:\n    languages: [hu]\n",
                  "t.yaml:4:3: tenants.demo: missing required key \"name\" (display name)\n"
                  "t.yaml:4:3: tenants.demo: missing required key \"llm\" (LLM backends, tried in order)\n"
                  "t.yaml:1:1: missing required key \"server\"");
}
END_TEST

START_TEST(test_range_and_enum)
{
    expect_errors("server: {port: 70000, workers: 0}\nstore: {backend: redsi}\n"
                  "tenants:\n  a: {name: '', llm: [], confidence: 1.5}\n  b: {name: B, llm: [gemnii, xyz]}\n",
                  "t.yaml:1:16: server.port: 70000 is out of range (1 to 65535)\n"
                  "t.yaml:1:32: server.workers: 0 is out of range (1 to 64)\n"
                  "t.yaml:2:18: store.backend: \"redsi\" is not one of: embedded, redis; did you mean \"redis\"?\n"
                  "t.yaml:4:13: tenants.a.name: must not be empty\n"
                  "t.yaml:4:17: tenants.a.llm: must not be empty\n"
                  "t.yaml:4:38: tenants.a.confidence: 1.5 is out of range (0 to 1)\n"
                  "t.yaml:5:22: tenants.b.llm[0]: unknown plugin \"gemnii\"; did you mean \"gemini\"? "
                  "(available: fallback, gemini, openai)\n"
                  "t.yaml:5:30: tenants.b.llm[1]: unknown plugin \"xyz\" (available: fallback, gemini, openai)");
    expect_errors("server: {port: 1}\nstore: {backend: sqlite}\ntenants: {a: {name: A, llm: [openai]}}\n",
                  "t.yaml:2:18: store.backend: \"sqlite\" is not one of: embedded, redis");
}
END_TEST

START_TEST(test_multiple_errors_file)
{
    diag *d = diag_new();
    const char *path = data_path("schema_bad.yaml");
    cfgdoc *doc = cfgdoc_parse_file(path, d);
    ck_assert_ptr_nonnull(doc);
    int calls = 0;
    int n = sc_validate(doc, d, "", cfgdoc_root(doc), &koko_schema, &calls);
    const char *lines[] = {
        "3:3: server.prot: unknown key \"prot\"; did you mean \"port\"? (known keys: listen, port, workers, token, debug)",
        "4:12: server.workers: 500 is out of range (1 to 64)",
        "1:1: server: missing required key \"port\" (TCP port of the HTTP API)",
        "6:12: store.backend: \"sqlite\" is not one of: embedded, redis",
        "10:19: tenants.demo.llm[1]: unknown plugin \"gemnii\"; did you mean \"gemini\"? (available: fallback, gemini, openai)",
        "12:10: tenants.acme.llm: expected a list of strings, got a number",
        "13:21: tenants.acme.languages[1]: expected a string, got a number (write \"7\" in quotes to make it text)",
        "11:3: tenants.acme: missing required key \"name\" (display name)",
    };
    size_t nl = sizeof lines / sizeof *lines;
    char want[8192] = "";
    for (size_t i = 0; i < nl; i++) {
        size_t l = strlen(want);
        snprintf(want + l, sizeof want - l, "%s%s:%s", i ? "\n" : "", path, lines[i]);
    }
    ck_errors(d, want);
    ck_assert_int_eq(n, (int)nl);
    ck_assert_int_eq(calls, 1);
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_env_values)
{
    setenv("KOKO_T_PORT", "8080", 1);
    setenv("KOKO_T_WORKERS", "999", 1);
    setenv("KOKO_T_BACKEND", "s3cr3t-backend", 1);
    setenv("KOKO_T_TOKEN", "123456", 1);
    setenv("KOKO_T_DEBUG", "true", 1);
    setenv("KOKO_T_NAN", "12abc", 1);
    /* quoted: strings from the environment, converted to the declared types */
    diag *d = diag_new();
    cfgdoc *doc = NULL;
    int n = validate_text("server:\n  port: \"${KOKO_T_PORT}\"\n  token: ${KOKO_T_TOKEN}\n"
                          "  debug: '${KOKO_T_DEBUG}'\n"
                          "tenants: {a: {name: A, llm: [gemini], confidence: '${KOKO_T_CONF:-0.5}'}}\n",
                          d, &doc);
    ck_errors(d, "");
    ck_assert_int_eq(n, 0);
    json_t *conf = json_object_get(json_object_get(json_object_get(cfgdoc_root(doc), "tenants"), "a"),
                                   "confidence");
    ck_assert(json_is_real(conf) && json_real_value(conf) == 0.5);
    json_t *server = json_object_get(cfgdoc_root(doc), "server");
    ck_assert(json_is_integer(json_object_get(server, "port")));
    ck_assert_int_eq(json_integer_value(json_object_get(server, "port")), 8080);
    ck_assert(json_is_string(json_object_get(server, "token"))); /* plain 123456 typed int, back to text */
    ck_assert_str_eq(json_string_value(json_object_get(server, "token")), "123456");
    ck_assert(json_is_true(json_object_get(server, "debug")));
    cfgdoc_free(doc);
    diag_free(d);

    /* values from the environment are never echoed */
    d = diag_new();
    n = validate_text("server:\n  port: ${KOKO_T_PORT}\n  workers: ${KOKO_T_WORKERS}\n"
                      "  listen: [\"${KOKO_T_BACKEND}\"]\n"
                      "store: {backend: \"${KOKO_T_BACKEND}\"}\n"
                      "tenants:\n  a:\n    name: A\n    llm: [gemini]\n    inbox: \"${KOKO_T_NAN}\"\n",
                      d, NULL);
    ck_errors(d, "t.yaml:3:12: server.workers: the value from the environment is out of range (1 to 64)\n"
                 "t.yaml:4:3: server.listen: expected a string, got a list\n"
                 "t.yaml:5:18: store.backend: the value from the environment is not one of: embedded, redis\n"
                 "t.yaml:10:12: tenants.a.inbox: expected an integer, got a string (from the environment)");
    ck_assert_int_eq(n, 4);
    char *j = diag_join(d, "\n");
    ck_assert_ptr_null(strstr(j, "999"));
    ck_assert_ptr_null(strstr(j, "s3cr3t"));
    ck_assert_ptr_null(strstr(j, "12abc"));
    free(j);
    diag_free(d);
}
END_TEST

START_TEST(test_nullable_and_any)
{
    expect_errors("server:\n  port: 80\n  token:\n  listen:\n"
                  "tenants: {a: {name: A, llm: [gemini], enabled: [1, {x: 2}]}}\n",
                  "t.yaml:4:10: server.listen: expected a string, got an empty value (null)");
}
END_TEST

START_TEST(test_without_doc)
{
    /* a tree that did not come from a file: messages carry the path only */
    json_t *v = json_pack("{s:{s:s}, s:{}}", "server", "port", "80", "tenants");
    diag *d = diag_new();
    int calls = 0;
    int n = sc_validate(NULL, d, "", v, &koko_schema, &calls);
    ck_errors(d, "server.port: expected an integer, got a string\n"
                 "tenants: must not be empty");
    ck_assert_int_eq(n, 2);
    diag_clear(d);
    /* a subtree with its own base path, e.g. one plugin's block */
    json_t *t = json_pack("{s:s, s:[s]}", "name", "X", "llm", "openia");
    ck_assert_int_eq(sc_validate(NULL, d, "tenants.x", t, tenant, &calls), 1);
    ck_errors(d, "tenants.x.llm[0]: unknown plugin \"openia\"; did you mean \"openai\"? "
                 "(available: fallback, gemini, openai)");
    json_decref(t);
    json_decref(v);
    diag_free(d);
}
END_TEST

START_TEST(test_range_lengths)
{
    static const sc_field f[] = {
        {.key = "code", .type = SC_STRING, .flags = SC_RANGE, .min = 2, .max = 3},
        {.key = "list", .type = SC_LIST, .flags = SC_RANGE, .min = 1, .max = 2},
        {.key = "low", .type = SC_INT, .flags = SC_RANGE, .min = 10, .max = LLONG_MAX},
        {.key = "high", .type = SC_NUMBER, .flags = SC_RANGE, .min = LLONG_MIN, .max = 5},
        {0}};
    static const sc_field spec = {.type = SC_OBJECT, .fields = f};
    diag *d = diag_new();
    const char *text = "code: abcd\nlist: [1, 2, 3]\nlow: 3\nhigh: 7.5\n";
    cfgdoc *doc = cfgdoc_parse_string("r.yaml", text, strlen(text), d);
    ck_assert_ptr_nonnull(doc);
    ck_assert_int_eq(sc_validate(doc, d, "", cfgdoc_root(doc), &spec, NULL), 4);
    ck_errors(d, "r.yaml:1:7: code: length 4 is out of range (2 to 3 characters)\n"
                 "r.yaml:2:1: list: 3 entries is out of range (1 to 2 entries)\n"
                 "r.yaml:3:6: low: 3 is out of range (at least 10)\n"
                 "r.yaml:4:7: high: 7.5 is out of range (at most 5)");
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_suggest)
{
    static const char *const c[] = {"fallback", "gemini", "openai", "llm", "languages", NULL};
    ck_assert_str_eq(sc_suggest("gemnii", c), "gemini");
    ck_assert_str_eq(sc_suggest("GEMINI", c), "gemini");
    ck_assert_str_eq(sc_suggest("openia", c), "openai");
    ck_assert_str_eq(sc_suggest("lm", c), "llm");
    ck_assert_str_eq(sc_suggest("langauges", c), "languages");
    ck_assert_ptr_null(sc_suggest("x", c));
    ck_assert_ptr_null(sc_suggest("claude", c));
    ck_assert_ptr_null(sc_suggest("fallbackfallback", c));
    ck_assert_ptr_null(sc_suggest("gemini", NULL));
    char buf[64];
    static const sc_field ints[] = {{.type = SC_INT}};
    static const sc_field l = {.type = SC_LIST, .item = ints};
    ck_assert_str_eq(sc_describe(&l, buf, sizeof buf), "a list of integers");
}
END_TEST

static Suite *schema_suite(void)
{
    Suite *s = suite_create("schema");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_good_file);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_wrong_type);
    tcase_add_test(tc, test_missing_required);
    tcase_add_test(tc, test_range_and_enum);
    tcase_add_test(tc, test_multiple_errors_file);
    tcase_add_test(tc, test_env_values);
    tcase_add_test(tc, test_nullable_and_any);
    tcase_add_test(tc, test_without_doc);
    tcase_add_test(tc, test_range_lengths);
    tcase_add_test(tc, test_suggest);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(schema_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
