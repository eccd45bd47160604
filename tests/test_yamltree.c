/*
 * test_yamltree.c - unit tests for core/yamltree.c and core/diag.c.
 *
 * Each error case asserts the exact message an operator would read
 * (FILE:LINE:COL: path: message); files live in tests/data/config/, found
 * through $KOKO_SRCDIR (default "."). Check forks per test, so setenv here
 * does not leak between tests.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diag.h"
#include "yamltree.h"

static char *data_path(const char *name)
{
    const char *src = getenv("KOKO_SRCDIR");
    /* a few rotating buffers, so two paths can be used in one call */
    static char bufs[4][4096];
    static int next;
    char *buf = bufs[next++ % 4];
    snprintf(buf, 4096, "%s/tests/data/config/%s", src ? src : ".", name);
    return buf;
}

static cfgdoc *parse(const char *text, diag *d)
{
    return cfgdoc_parse_string("t.yaml", text, strlen(text), d);
}

/* All messages joined with '\n', compared exactly. */
#define ck_errors(d, expected)                                                                    \
    do {                                                                                          \
        char *j_ = diag_join((d), "\n");                                                          \
        ck_assert_str_eq(j_, (expected));                                                         \
        free(j_);                                                                                 \
    } while (0)

/* Parses text expecting failure with exactly the given messages. */
static void expect_fail(const char *text, const char *expected)
{
    diag *d = diag_new();
    cfgdoc *doc = parse(text, d);
    ck_assert_ptr_null(doc);
    ck_errors(d, expected);
    diag_free(d);
}

/* ---- diag ---- */

START_TEST(test_diag_format)
{
    diag *d = diag_new();
    diag_add(d, "f.yaml", 12, 15, "tenants.demo.llm[1]", "unknown plugin \"%s\"", "gemnii");
    diag_add(d, "f.yaml", 0, 0, NULL, "empty configuration");
    diag_add(d, "f.yaml", 3, 0, "", "line only");
    diag_add(d, NULL, 3, 4, "a.b", "no file");
    diag_add(d, NULL, 0, 0, NULL, "bare %d", 7);
    ck_assert_uint_eq(diag_count(d), 5);
    ck_assert_str_eq(diag_get(d, 0), "f.yaml:12:15: tenants.demo.llm[1]: unknown plugin \"gemnii\"");
    ck_assert_str_eq(diag_get(d, 1), "f.yaml: empty configuration");
    ck_assert_str_eq(diag_get(d, 2), "f.yaml:3: line only");
    ck_assert_str_eq(diag_get(d, 3), "a.b: no file");
    ck_assert_str_eq(diag_get(d, 4), "bare 7");
    ck_assert_ptr_null(diag_get(d, 5));
    char *j = diag_join(d, " | ");
    ck_assert_str_eq(j, "f.yaml:12:15: tenants.demo.llm[1]: unknown plugin \"gemnii\" | "
                        "f.yaml: empty configuration | f.yaml:3: line only | a.b: no file | bare 7");
    free(j);
    diag_clear(d);
    ck_assert_uint_eq(diag_count(d), 0);
    j = diag_join(d, NULL);
    ck_assert_str_eq(j, "");
    free(j);
    diag_free(d);
    diag_free(NULL);
}
END_TEST

/* ---- good documents ---- */

START_TEST(test_good_file)
{
    unsetenv("KOKO_TEST_PORT");
    unsetenv("KOKO_TEST_TOKEN");
    diag *d = diag_new();
    cfgdoc *doc = cfgdoc_parse_file(data_path("good.yaml"), d);
    ck_errors(d, "");
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(cfgdoc_file(doc), data_path("good.yaml"));
    json_t *root = cfgdoc_root(doc);
    ck_assert(json_is_object(root));
    /* env default, typed after expansion */
    json_t *port = json_object_get(json_object_get(root, "server"), "port");
    ck_assert(json_is_integer(port));
    ck_assert_int_eq(json_integer_value(port), 5001);
    /* quoted: a string, even when empty */
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(root, "server"), "token")), "");
    json_t *demo = json_object_get(json_object_get(root, "tenants"), "demo");
    json_t *acme = json_object_get(json_object_get(root, "tenants"), "acme");
    /* merge key brings the defaults; explicit keys win */
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(demo, "llm"), 1)), "fallback");
    ck_assert_uint_eq(json_array_size(json_object_get(acme, "llm")), 1);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(acme, "languages"), 2)), "no");
    ck_assert_str_eq(json_string_value(json_object_get(acme, "plain_no")), "no");
    ck_assert_str_eq(json_string_value(json_object_get(acme, "quoted_number")), "42");
    ck_assert_int_eq(json_integer_value(json_object_get(demo, "inbox")), 7);
    ck_assert(json_real_value(json_object_get(demo, "confidence")) == 0.6);

    int line, col;
    ck_assert_int_eq(cfgdoc_loc(doc, "server.port", &line, &col), 0);
    ck_assert_int_eq(line, 4);
    ck_assert_int_eq(col, 9);
    ck_assert_int_eq(cfgdoc_key_loc(doc, "server.port", &line, &col), 0);
    ck_assert_int_eq(line, 4);
    ck_assert_int_eq(col, 3);
    ck_assert_int_eq(cfgdoc_loc(doc, "tenants.acme.plain_no", &line, &col), 0);
    ck_assert_int_eq(line, 26);
    ck_assert_int_eq(col, 15);
    /* a merged value reports where it was written: in the defaults */
    ck_assert_int_eq(cfgdoc_loc(doc, "tenants.demo.llm[1]", &line, &col), 0);
    ck_assert_int_eq(line, 12);
    ck_assert_int_eq(col, 17);
    /* a mapping under a key is located at its key */
    ck_assert_int_eq(cfgdoc_loc(doc, "tenants.acme", &line, &col), 0);
    ck_assert_int_eq(line, 20);
    ck_assert_int_eq(col, 3);
    /* absent: nearest ancestor */
    ck_assert_int_eq(cfgdoc_loc(doc, "tenants.acme.nothing.deeper[3]", &line, &col), 1);
    ck_assert_int_eq(line, 20);
    ck_assert_int_eq(col, 3);
    ck_assert_int_eq(cfgdoc_loc(doc, "tenants.acme.llm[9]", &line, &col), 1);
    ck_assert_int_eq(line, 23);
    ck_assert_int_eq(cfgdoc_loc(doc, "", &line, &col), 0);
    ck_assert_int_eq(line, 2);
    ck_assert_int_eq(col, 1);
    ck_assert(cfgdoc_is_expanded(doc, "server.port"));
    ck_assert(!cfgdoc_is_expanded(doc, "server.listen"));

    diag *e = diag_new();
    cfgdoc_error(doc, e, "tenants.demo.llm[1]", "unknown plugin \"%s\"", "x");
    cfgdoc_key_error(doc, e, "tenants.acme.plain_no", "bad key");
    char want[8192];
    snprintf(want, sizeof want, "%s:12:17: tenants.demo.llm[1]: unknown plugin \"x\"\n"
                                "%s:26:5: tenants.acme.plain_no: bad key",
             data_path("good.yaml"), data_path("good.yaml"));
    ck_errors(e, want);
    diag_free(e);
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_plain_typing)
{
    diag *d = diag_new();
    cfgdoc *doc = parse("s: [no, yes, on, off, y, n, NO, Yes, 0b1, 1_000, 0x, 1e, inf, nan, 2001-01-01]\n"
                        "b: [true, True, TRUE, false, False, FALSE]\n"
                        "n: [null, Null, NULL, ~]\n"
                        "empty:\n"
                        "i: [0, -17, +3, 0x1F, 0o17, 9223372036854775807, -9223372036854775808, 012]\n"
                        "f: [1.5, -.5, 6.02e23, 1., 1e3]\n"
                        "q: ['true', \"null\", '12', \"1.5\", !!str 7, ! 8]\n"
                        "block: |\n  42\n",
                        d);
    ck_errors(d, "");
    ck_assert_ptr_nonnull(doc);
    json_t *r = cfgdoc_root(doc), *v;
    size_t i;
    json_array_foreach(json_object_get(r, "s"), i, v) ck_assert_msg(json_is_string(v), "s[%zu]", i);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "s"), 0)), "no");
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "s"), 8)), "0b1");
    json_array_foreach(json_object_get(r, "b"), i, v) ck_assert(json_is_boolean(v));
    ck_assert(json_is_true(json_array_get(json_object_get(r, "b"), 2)));
    ck_assert(json_is_false(json_array_get(json_object_get(r, "b"), 5)));
    ck_assert_uint_eq(json_array_size(json_object_get(r, "n")), 4);
    ck_assert(json_is_null(json_object_get(r, "empty")));
    json_array_foreach(json_object_get(r, "n"), i, v) ck_assert(json_is_null(v));
    static const long long ints[] = {0, -17, 3, 31, 15, 9223372036854775807LL, -9223372036854775807LL - 1, 12};
    json_array_foreach(json_object_get(r, "i"), i, v) {
        ck_assert_msg(json_is_integer(v), "i[%zu]", i);
        ck_assert_int_eq(json_integer_value(v), ints[i]);
    }
    static const double reals[] = {1.5, -0.5, 6.02e23, 1.0, 1000.0};
    json_array_foreach(json_object_get(r, "f"), i, v) {
        ck_assert_msg(json_is_real(v), "f[%zu]", i);
        ck_assert(json_real_value(v) == reals[i]);
    }
    json_array_foreach(json_object_get(r, "q"), i, v) ck_assert_msg(json_is_string(v), "q[%zu]", i);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(r, "q"), 4)), "7");
    ck_assert_str_eq(json_string_value(json_object_get(r, "block")), "42\n");
    ck_assert_str_eq(cfgdoc_text(doc, "i[3]"), "0x1F");
    ck_assert_ptr_null(cfgdoc_text(doc, "s[0]"));
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_anchors_aliases)
{
    diag *d = diag_new();
    cfgdoc *doc = parse("base: &b\n"
                        "  model: gemini\n"
                        "  retries: 3\n"
                        "list: &l [a, b]\n"
                        "copy: *b\n"
                        "again: *l\n"
                        "extra: &o {retries: 5, timeout: 30}\n"
                        "merged:\n"
                        "  <<: [*b, *o]\n"
                        "  model: openai\n",
                        d);
    ck_errors(d, "");
    ck_assert_ptr_nonnull(doc);
    json_t *r = cfgdoc_root(doc);
    ck_assert(json_equal(json_object_get(r, "copy"), json_object_get(r, "base")));
    ck_assert(json_object_get(r, "copy") != json_object_get(r, "base")); /* a copy, not shared */
    ck_assert(json_equal(json_object_get(r, "again"), json_object_get(r, "list")));
    json_t *m = json_object_get(r, "merged");
    ck_assert_str_eq(json_string_value(json_object_get(m, "model")), "openai");
    ck_assert_int_eq(json_integer_value(json_object_get(m, "retries")), 3); /* first merge wins */
    ck_assert_int_eq(json_integer_value(json_object_get(m, "timeout")), 30);
    ck_assert_uint_eq(json_object_size(m), 3);
    ck_assert_ptr_null(json_object_get(m, "<<"));
    int line, col;
    /* the alias itself is at the alias; what is inside it, where it was written */
    cfgdoc_loc(doc, "copy", &line, &col);
    ck_assert_int_eq(line, 5);
    ck_assert_int_eq(col, 1);
    cfgdoc_loc(doc, "copy.retries", &line, &col);
    ck_assert_int_eq(line, 3);
    ck_assert_int_eq(col, 12);
    cfgdoc_loc(doc, "again[1]", &line, &col);
    ck_assert_int_eq(line, 4);
    ck_assert_int_eq(col, 14);
    cfgdoc_loc(doc, "merged.timeout", &line, &col);
    ck_assert_int_eq(line, 7);
    ck_assert_int_eq(col, 33);
    cfgdoc_free(doc);
    diag_free(d);

    expect_fail("a: *nope\nb: &r [1, *r]\n",
                "t.yaml:1:4: a: unknown alias *nope (define the anchor first, with &nope)\n"
                "t.yaml:2:11: b[1]: unknown alias *r (define the anchor first, with &r)");
    expect_fail("a: &x 5\nb:\n  <<: *x\n",
                "t.yaml:3:3: b.<<: the merge key << takes a mapping or a list of mappings "
                "(usually aliases: <<: *base or <<: [*a, *b]), not a number");
}
END_TEST

START_TEST(test_dotted_keys)
{
    diag *d = diag_new();
    cfgdoc *doc = parse("prices:\n  gemini-1.5-flash:\n    input: 0.075\n  gemini-1:\n    x: 1\n", d);
    ck_assert_ptr_nonnull(doc);
    int line, col;
    ck_assert_int_eq(cfgdoc_loc(doc, "prices.gemini-1.5-flash.input", &line, &col), 0);
    ck_assert_int_eq(line, 3);
    ck_assert_int_eq(cfgdoc_loc(doc, "prices.gemini-1.x", &line, &col), 0);
    ck_assert_int_eq(line, 5);
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

/* ---- environment ---- */

START_TEST(test_env_expansion)
{
    setenv("KOKO_T_PORT", "8080", 1);
    setenv("KOKO_T_EMPTY", "", 1);
    setenv("KOKO_T_SECRET", "hunter2", 1);
    setenv("KOKO_T_FLAG", "true", 1);
    setenv("KOKO_T_BIG", "123456789012345678901234567890", 1);
    unsetenv("KOKO_T_UNSET");
    diag *d = diag_new();
    cfgdoc *doc = parse("port: ${KOKO_T_PORT}\n"
                        "qport: \"${KOKO_T_PORT}\"\n"
                        "dflt: ${KOKO_T_UNSET:-5001}\n"
                        "empty_dflt: ${KOKO_T_EMPTY:-x y}\n"
                        "empty_set: \"${KOKO_T_EMPTY}\"\n"
                        "mixed: 'Bearer ${KOKO_T_SECRET}!'\n"
                        "literal: $${KOKO_T_SECRET} and $5 and $$\n"
                        "flag: ${KOKO_T_FLAG}\n"
                        "big: ${KOKO_T_BIG}\n"
                        "${KOKO_T_PORT}: key is not expanded\n",
                        d);
    ck_errors(d, "");
    ck_assert_ptr_nonnull(doc);
    json_t *r = cfgdoc_root(doc);
    ck_assert(json_is_integer(json_object_get(r, "port")));
    ck_assert_int_eq(json_integer_value(json_object_get(r, "port")), 8080);
    ck_assert_str_eq(json_string_value(json_object_get(r, "qport")), "8080");
    ck_assert_int_eq(json_integer_value(json_object_get(r, "dflt")), 5001);
    ck_assert_str_eq(json_string_value(json_object_get(r, "empty_dflt")), "x y");
    ck_assert_str_eq(json_string_value(json_object_get(r, "empty_set")), "");
    ck_assert_str_eq(json_string_value(json_object_get(r, "mixed")), "Bearer hunter2!");
    ck_assert_str_eq(json_string_value(json_object_get(r, "literal")), "${KOKO_T_SECRET} and $5 and $$");
    ck_assert(json_is_true(json_object_get(r, "flag")));
    ck_assert_str_eq(json_string_value(json_object_get(r, "big")), "123456789012345678901234567890");
    ck_assert_str_eq(json_string_value(json_object_get(r, "${KOKO_T_PORT}")), "key is not expanded");
    ck_assert(cfgdoc_is_expanded(doc, "port"));
    ck_assert(cfgdoc_is_expanded(doc, "qport"));
    ck_assert(cfgdoc_is_expanded(doc, "mixed"));
    ck_assert(cfgdoc_is_expanded(doc, "dflt"));
    ck_assert(!cfgdoc_is_expanded(doc, "literal"));
    ck_assert(!cfgdoc_is_expanded(doc, "nosuchkey"));
    ck_assert_str_eq(cfgdoc_text(doc, "port"), "8080");
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_env_unset)
{
    unsetenv("KOKO_TEST_UNSET_PORT");
    unsetenv("KOKO_TEST_UNSET_TOKEN");
    unsetenv("KOKO_TEST_UNSET_LISTEN");
    diag *d = diag_new();
    const char *path = data_path("unset_env.yaml");
    ck_assert_ptr_null(cfgdoc_parse_file(path, d));
    char want[8192];
    snprintf(want, sizeof want,
             "%s:2:9: server.port: environment variable KOKO_TEST_UNSET_PORT is not set "
             "(set it, or write ${KOKO_TEST_UNSET_PORT:-default})\n"
             "%s:3:10: server.token: environment variable KOKO_TEST_UNSET_TOKEN is not set "
             "(set it, or write ${KOKO_TEST_UNSET_TOKEN:-default})",
             path, path);
    ck_errors(d, want);
    diag_free(d);

    expect_fail("a: ${}\nb: ${1X}\nc: ${OK\nd:\n- ${A:-x\n",
                "t.yaml:1:4: a: malformed ${...} reference: write ${NAME} or ${NAME:-default} "
                "(NAME of letters, digits and _), or $${ for a literal ${\n"
                "t.yaml:2:4: b: malformed ${...} reference: write ${NAME} or ${NAME:-default} "
                "(NAME of letters, digits and _), or $${ for a literal ${\n"
                "t.yaml:3:4: c: malformed ${...} reference: write ${NAME} or ${NAME:-default} "
                "(NAME of letters, digits and _), or $${ for a literal ${\n"
                "t.yaml:5:3: d[0]: malformed ${...} reference: write ${NAME} or ${NAME:-default} "
                "(NAME of letters, digits and _), or $${ for a literal ${");
}
END_TEST

START_TEST(test_env_never_echoed)
{
    setenv("KOKO_T_SECRET", "hunter2", 1);
    setenv("KOKO_T_BAD_UTF8", "\xff\xfe", 1);
    diag *d = diag_new();
    ck_assert_ptr_null(parse("a: ${KOKO_T_BAD_UTF8}\nb:\n  - ${KOKO_T_SECRET}\n  - ${KOKO_T_NOT_THERE_EITHER}\n", d));
    ck_errors(d, "t.yaml:1:4: a: the value from the environment is not valid UTF-8\n"
                 "t.yaml:4:5: b[1]: environment variable KOKO_T_NOT_THERE_EITHER is not set "
                 "(set it, or write ${KOKO_T_NOT_THERE_EITHER:-default})");
    char *j = diag_join(d, "\n");
    ck_assert_ptr_null(strstr(j, "hunter2"));
    free(j);
    diag_free(d);
}
END_TEST

/* ---- errors ---- */

START_TEST(test_syntax_error)
{
    diag *d = diag_new();
    const char *path = data_path("syntax_error.yaml");
    ck_assert_ptr_null(cfgdoc_parse_file(path, d));
    char want[8192];
    snprintf(want, sizeof want,
             "%s:4:1: syntax error: did not find expected ',' or ']' "
             "(while parsing a flow sequence at line 3)",
             path);
    ck_errors(d, want);
    diag_free(d);
    expect_fail("a: {x: ${HOME}}\n",
                "t.yaml:1:9: syntax error: did not find expected ',' or '}' (while parsing a flow "
                "mapping); inside [ ] or { } write a ${NAME} reference in quotes: \"${NAME}\"");
    expect_fail("a: b: c\n", "t.yaml:1:5: syntax error: mapping values are not allowed in this context");
    expect_fail("a: 1\n b: 2\n",
                "t.yaml:2:3: syntax error: mapping values are not allowed in this context");
    expect_fail("a: \"unterminated\n",
                "t.yaml:2:1: syntax error: found unexpected end of stream "
                "(while scanning a quoted scalar at line 1)");
    d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_string("t.yaml", "a: 1\0\n", 6, d));
    ck_errors(d, "t.yaml:1:5: syntax error: control characters are not allowed (byte 0x00)");
    diag_free(d);
}
END_TEST

START_TEST(test_tabs)
{
    diag *d = diag_new();
    const char *path = data_path("tabs.yaml");
    ck_assert_ptr_null(cfgdoc_parse_file(path, d));
    char want[8192];
    snprintf(want, sizeof want,
             "%s:2:1: syntax error: found character that cannot start any token "
             "(while scanning for the next token); tabs cannot be used for indentation, use spaces",
             path);
    ck_errors(d, want);
    diag_free(d);
    /* a tab after the colon is separation, not indentation */
    d = diag_new();
    cfgdoc *doc = parse("a:\t1\n", d);
    ck_assert_ptr_nonnull(doc);
    ck_assert_int_eq(json_integer_value(json_object_get(cfgdoc_root(doc), "a")), 1);
    cfgdoc_free(doc);
    diag_free(d);
}
END_TEST

START_TEST(test_duplicate_key)
{
    diag *d = diag_new();
    const char *path = data_path("dup_key.yaml");
    ck_assert_ptr_null(cfgdoc_parse_file(path, d));
    char want[8192];
    snprintf(want, sizeof want, "%s:4:3: server.port: duplicate key \"port\" (first defined at line 2)",
             path);
    ck_errors(d, want);
    diag_free(d);
    expect_fail("a: [{x: 1, x: 2}]\nb: 1\nb: 2\n",
                "t.yaml:1:12: a[0].x: duplicate key \"x\" (first defined at line 1)\n"
                "t.yaml:3:1: b: duplicate key \"b\" (first defined at line 2)");
}
END_TEST

START_TEST(test_bad_keys_and_values)
{
    expect_fail("? [a]\n: 1\n? {b: 1}\n: 2\n*x : 3\n",
                "t.yaml:1:3: a key must be a plain name, not a list\n"
                "t.yaml:3:3: a key must be a plain name, not a mapping\n"
                "t.yaml:5:1: an alias cannot be used as a key");
    expect_fail("\"\": 1\n~: 2\nnull: 3\n",
                "t.yaml:1:1: empty key (every value needs a name before the ':')\n"
                "t.yaml:2:1: empty key (every value needs a name before the ':')\n"
                "t.yaml:3:1: empty key (every value needs a name before the ':')");
    expect_fail("a: !secret x\nb: !!int 5\nc: 99999999999999999999\nd: -.inf\ne: \"x\\0y\"\n",
                "t.yaml:1:4: a: unsupported tag \"!secret\" (only !!str is understood here)\n"
                "t.yaml:2:4: b: unsupported tag \"tag:yaml.org,2002:int\" (only !!str is understood here)\n"
                "t.yaml:3:4: c: number 99999999999999999999 is too large (put it in quotes to keep it as text)\n"
                "t.yaml:4:4: d: -.inf is not a finite number, which JSON cannot hold "
                "(put it in quotes to keep it as text)\n"
                "t.yaml:5:4: e: text contains a NUL character");
}
END_TEST

START_TEST(test_document_shape)
{
    diag *d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_file(data_path("empty.yaml"), d));
    ck_assert_ptr_null(cfgdoc_parse_file(data_path("comments_only.yaml"), d));
    char want[8192];
    snprintf(want, sizeof want, "%s: empty configuration\n%s: empty configuration",
             data_path("empty.yaml"), data_path("comments_only.yaml"));
    ck_errors(d, want);
    diag_free(d);
    expect_fail("---\n# nothing\n", "t.yaml: empty configuration");
    expect_fail("- a\n- b\n",
                "t.yaml:1:1: the configuration must be a mapping of keys to values at the top level, not a list");
    expect_fail("just text\n",
                "t.yaml:1:1: the configuration must be a mapping of keys to values at the top level, not a string");
    expect_fail("a: 1\n---\nb: 2\n",
                "t.yaml:2:1: more than one YAML document (a configuration is one document; "
                "remove this '---' and what follows, or merge them)");
    d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_file("/nonexistent/koko.yaml", d));
    ck_errors(d, "/nonexistent/koko.yaml: cannot open: No such file or directory");
    diag_free(d);
    d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_string(NULL, "", 0, d));
    ck_errors(d, "<string>: empty configuration");
    diag_free(d);
}
END_TEST

START_TEST(test_multiple_errors)
{
    unsetenv("KOKO_T_UNSET");
    expect_fail("a: ${KOKO_T_UNSET}\n"
                "b:\n"
                "  c: 1\n"
                "  c: 2\n"
                "d: [*nope, 1e999]\n",
                "t.yaml:1:4: a: environment variable KOKO_T_UNSET is not set "
                "(set it, or write ${KOKO_T_UNSET:-default})\n"
                "t.yaml:4:3: b.c: duplicate key \"c\" (first defined at line 3)\n"
                "t.yaml:5:5: d[0]: unknown alias *nope (define the anchor first, with &nope)\n"
                "t.yaml:5:12: d[1]: number 1e999 is too large (put it in quotes to keep it as text)");
}
END_TEST

/* ---- limits ---- */

START_TEST(test_oversize)
{
    size_t n = CFGDOC_MAX_BYTES + 1;
    char *big = malloc(n);
    ck_assert_ptr_nonnull(big);
    memset(big, '#', n);
    diag *d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_string("big.yaml", big, n, d));
    ck_errors(d, "big.yaml: configuration is too large (4194305 bytes; the limit is 4194304)");
    diag_clear(d);

    char path[] = "/tmp/koko_yamltree_big_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, big, n), (ssize_t)n);
    close(fd);
    ck_assert_ptr_null(cfgdoc_parse_file(path, d));
    unlink(path);
    char want[256];
    snprintf(want, sizeof want, "%s: configuration is too large (more than 4194304 bytes)", path);
    ck_errors(d, want);
    diag_free(d);
    free(big);
}
END_TEST

static char *nested(int levels, int flow)
{
    size_t cap = (size_t)levels * (flow ? 2 : (size_t)levels + 8) + 64, len = 0;
    char *s = malloc(cap);
    len += (size_t)sprintf(s + len, "x: ");
    if (flow) {
        for (int i = 0; i < levels; i++)
            s[len++] = '[';
        for (int i = 0; i < levels; i++)
            s[len++] = ']';
        s[len++] = '\n';
    } else {
        for (int i = 0; i < levels; i++) {
            s[len++] = '\n';
            for (int j = 0; j <= i; j++)
                s[len++] = ' ';
            s[len++] = 'k';
            s[len++] = ':';
        }
        s[len++] = ' ';
        s[len++] = '1';
        s[len++] = '\n';
    }
    s[len] = '\0';
    return s;
}

START_TEST(test_deep_nesting)
{
    /* root mapping + 63 lists = 64 levels: fine */
    char *ok = nested(CFGDOC_MAX_DEPTH - 1, 1);
    diag *d = diag_new();
    cfgdoc *doc = parse(ok, d);
    ck_errors(d, "");
    ck_assert_ptr_nonnull(doc);
    cfgdoc_free(doc);
    free(ok);
    /* one more level is refused, at the list that goes too deep */
    char *bad = nested(CFGDOC_MAX_DEPTH, 1);
    ck_assert_ptr_null(parse(bad, d));
    ck_assert_uint_eq(diag_count(d), 1);
    ck_assert_ptr_nonnull(strstr(diag_get(d, 0), "t.yaml:1:67: x[0][0]"));
    ck_assert_ptr_nonnull(strstr(diag_get(d, 0), "[0]: nesting is too deep (more than 64 levels)"));
    free(bad);
    diag_clear(d);
    /* block mappings count the same way */
    bad = nested(CFGDOC_MAX_DEPTH, 0);
    ck_assert_ptr_null(parse(bad, d));
    ck_assert_uint_eq(diag_count(d), 1);
    ck_assert_ptr_nonnull(strstr(diag_get(d, 0), ".k: nesting is too deep (more than 64 levels)"));
    free(bad);
    diag_clear(d);
    /* a hostile file far deeper than the limit stops early */
    bad = nested(100000, 1);
    ck_assert_ptr_null(parse(bad, d));
    ck_assert_uint_eq(diag_count(d), 1);
    free(bad);
    diag_clear(d);
    /* an alias may not smuggle depth past the limit */
    char *deep = nested(40, 1);
    char text[1024];
    snprintf(text, sizeof text, "a: &a %s", deep + 3);
    strcat(text, "b: [[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n");
    free(deep);
    ck_assert_ptr_null(parse(text, d));
    ck_assert_uint_eq(diag_count(d), 1);
    ck_assert_ptr_nonnull(strstr(diag_get(d, 0), "nesting is too deep (more than 64 levels)"));
    diag_free(d);
}
END_TEST

START_TEST(test_alias_bomb)
{
    /* "billion laughs": 10^12 nodes if expanded; refused at the node budget */
    char text[4096];
    size_t len = (size_t)sprintf(text, "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i <= 12; i++) {
        len += (size_t)sprintf(text + len, "a%d: &a%d [", i, i);
        for (int j = 0; j < 10; j++)
            len += (size_t)sprintf(text + len, "%s*a%d", j ? ", " : "", i - 1);
        len += (size_t)sprintf(text + len, "]\n");
    }
    diag *d = diag_new();
    ck_assert_ptr_null(parse(text, d));
    ck_errors(d, "t.yaml:6:25: a5[3]: too many nodes (more than 500000, counting the copies aliases "
                 "make); is an alias expanded inside itself many times?");
    diag_free(d);
}
END_TEST

START_TEST(test_node_limit)
{
    /* under the byte limit, but more nodes than a configuration has */
    size_t n = CFGDOC_MAX_NODES + 1, len = 0;
    char *text = malloc(4 * n + 8);
    ck_assert_ptr_nonnull(text);
    len += (size_t)sprintf(text, "l:\n");
    for (size_t i = 0; i < n; i++) {
        memcpy(text + len, "- 1\n", 4);
        len += 4;
    }
    ck_assert_uint_le(len, CFGDOC_MAX_BYTES);
    diag *d = diag_new();
    ck_assert_ptr_null(cfgdoc_parse_string("t.yaml", text, len, d));
    ck_errors(d, "t.yaml:500000:3: l[499998]: too many nodes (more than 500000)");
    diag_free(d);
    free(text);
}
END_TEST

static Suite *yamltree_suite(void)
{
    Suite *s = suite_create("yamltree");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_diag_format);
    tcase_add_test(tc, test_good_file);
    tcase_add_test(tc, test_plain_typing);
    tcase_add_test(tc, test_anchors_aliases);
    tcase_add_test(tc, test_dotted_keys);
    tcase_add_test(tc, test_env_expansion);
    tcase_add_test(tc, test_env_unset);
    tcase_add_test(tc, test_env_never_echoed);
    tcase_add_test(tc, test_syntax_error);
    tcase_add_test(tc, test_tabs);
    tcase_add_test(tc, test_duplicate_key);
    tcase_add_test(tc, test_bad_keys_and_values);
    tcase_add_test(tc, test_document_shape);
    tcase_add_test(tc, test_multiple_errors);
    tcase_add_test(tc, test_oversize);
    tcase_add_test(tc, test_deep_nesting);
    tcase_add_test(tc, test_alias_bomb);
    tcase_add_test(tc, test_node_limit);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(yamltree_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
