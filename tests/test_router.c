/*
 * test_router.c — unit tests for core/router.c: route building, matching
 * (first match wins; channel, inbox, language, keywords, regex, all of them
 * ANDed), the explanations `kokoctl route` prints, the table `kokoctl
 * routes` prints, and the word-start phrase matcher shared with handoff
 * phrases.
 *
 * Routers are built from JSON for a hand-made tenant whose backends and
 * tools are plain koko_instance structs (nothing is loaded or started).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "instance.h"
#include "router.h"

static const koko_plugin echo_desc = {.kind = KOKO_KIND_LLM, .name = "echo"};
static const koko_plugin gemini_desc = {.kind = KOKO_KIND_LLM, .name = "gemini"};
static const koko_plugin cal_desc = {.kind = KOKO_KIND_TOOL, .name = "calendar"};

static koko_instance echo_inst = {.magic = INSTANCE_MAGIC, .desc = &echo_desc};
static koko_instance gemini_inst = {.magic = INSTANCE_MAGIC, .desc = &gemini_desc};
static koko_instance cal_inst = {.magic = INSTANCE_MAGIC, .desc = &cal_desc};
static koko_instance *backends[] = {&echo_inst, &gemini_inst};
static koko_instance *tools[] = {&cal_inst};
static const char *const langs[] = {"hu", "en"};

static tenant make_tenant(void)
{
    tenant t = {0};
    t.name = "demo";
    t.languages = langs;
    t.n_languages = 2;
    t.backends = backends;
    t.n_backends = 2;
    t.tools = tools;
    t.n_tools = 1;
    return t;
}

static router *build(const char *routes_json)
{
    json_error_t je;
    json_t *routes = json_loads(routes_json, 0, &je);
    ck_assert_msg(routes != NULL, "bad test JSON: %s", je.text);
    tenant t = make_tenant();
    diag *d = diag_new();
    router *r = router_build(".", &t, routes, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(diag_count(d) == 0, "%s", errs);
    free(errs);
    diag_free(d);
    json_decref(routes);
    return r;
}

/* Name of the route IN matches, or "(none)". */
static const char *match_name(const router *r, const char *channel, const char *inbox, const char *lang,
                              const char *text)
{
    route_input in = {.channel = channel, .inbox = inbox, .language = lang, .text = text};
    size_t idx = 999;
    const route *ro = router_match(r, &in, &idx);
    if (!ro) {
        ck_assert_uint_eq(idx, 999); /* untouched when nothing matches */
        return "(none)";
    }
    ck_assert_ptr_eq(ro, &r->routes[idx]);
    return ro->name;
}

#define MATCH(r, ch, ib, lg, txt) match_name((r), (ch), (ib), (lg), (txt))

/* ---- router_phrase_in / router_normalise ---- */

static int phrase_in(const char *text, const char *phrase)
{
    char *n = router_normalise(text);
    char *p = router_normalise(phrase);
    int rc = router_phrase_in(n, p);
    free(n);
    free(p);
    return rc;
}

START_TEST(test_normalise)
{
    char *s = router_normalise("Visszatérítést KÉREK, Ő ŰRHAJÓ!");
    ck_assert_str_eq(s, "visszateritest kerek, o urhajo!");
    free(s);
    s = router_normalise(NULL);
    ck_assert_str_eq(s, "");
    free(s);
    s = router_normalise("");
    ck_assert_str_eq(s, "");
    free(s);
}
END_TEST

START_TEST(test_phrase_in)
{
    ck_assert_int_eq(router_phrase_in("ember", "ember"), 1);            /* whole text */
    ck_assert_int_eq(router_phrase_in("egy ember kell", "ember"), 1);   /* middle */
    ck_assert_int_eq(router_phrase_in("beszelek emberrel", "ember"), 1); /* word start, longer word */
    ck_assert_int_eq(router_phrase_in("november", "ember"), 0);         /* inside a word: no */
    ck_assert_int_eq(router_phrase_in("novemberben", "ember"), 0);
    ck_assert_int_eq(router_phrase_in("november, ember", "ember"), 1);  /* second occurrence starts a word */
    ck_assert_int_eq(router_phrase_in("novemberember", "ember"), 0);
    ck_assert_int_eq(router_phrase_in("dec-ember", "ember"), 1);        /* punctuation separates */
    ck_assert_int_eq(router_phrase_in("(ember)", "ember"), 1);
    ck_assert_int_eq(router_phrase_in("3ember", "ember"), 0);           /* digits are word characters */
    ck_assert_int_eq(router_phrase_in("emb", "ember"), 0);              /* phrase longer than text */
    ck_assert_int_eq(router_phrase_in("", "ember"), 0);
    ck_assert_int_eq(router_phrase_in("ember", ""), 0);                 /* an empty phrase never matches */
    ck_assert_int_eq(router_phrase_in("", ""), 0);
    ck_assert_int_eq(router_phrase_in("kerek egy ember", "egy ember"), 1); /* phrases with spaces */
    ck_assert_int_eq(router_phrase_in("kerek hegy ember", "egy ember"), 0);
}
END_TEST

START_TEST(test_phrase_in_utf8)
{
    /* the character before may be several bytes: a letter joins, a symbol separates */
    ck_assert_int_eq(router_phrase_in("\xce\xb1" "ember", "ember"), 0);         /* Greek alpha */
    ck_assert_int_eq(router_phrase_in("\xd0\xb6" "ember", "ember"), 0);         /* Cyrillic zhe */
    ck_assert_int_eq(router_phrase_in("\xf0\x9f\x98\x80" "ember", "ember"), 1); /* emoji */
    ck_assert_int_eq(router_phrase_in("\xe2\x80\x94" "ember", "ember"), 1);     /* em dash */
    ck_assert_int_eq(router_phrase_in("\xc2\xab" "ember\xc2\xbb", "ember"), 1); /* guillemets */
    /* accents are folded on both sides by the caller */
    ck_assert_int_eq(phrase_in("VISSZATÉRÍTÉST kérek", "visszatérítés"), 1);
    ck_assert_int_eq(phrase_in("visszaterites", "Visszatérítés"), 1);
    ck_assert_int_eq(phrase_in("Őember", "ember"), 0); /* an accented letter is still a letter */
    ck_assert_int_eq(phrase_in("Élő EMBERREL", "élő ember"), 1);
}
END_TEST

/* ---- router_match ---- */

START_TEST(test_precedence)
{
    router *r = build("[{\"name\": \"first\", \"match\": {\"keywords\": [\"refund\"]}},"
                      " {\"name\": \"second\", \"match\": {\"keywords\": [\"refund\", \"money\"]}},"
                      " {\"name\": \"third\", \"match\": {\"channel\": \"api\"}}]");
    ck_assert_uint_eq(r->n, 3);
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "I want a refund"), "first");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "where is my money"), "second");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "hello"), "third");
    ck_assert_str_eq(MATCH(r, "chatwoot", NULL, "en", "hello"), "(none)");
    route_input in = {.channel = "api", .text = "money back"};
    size_t idx = 0;
    ck_assert_ptr_eq(router_match(r, &in, &idx), &r->routes[1]);
    ck_assert_uint_eq(idx, 1);
    ck_assert_ptr_eq(router_match(r, &in, NULL), &r->routes[1]); /* INDEX may be NULL */
    router_free(r);

    /* no routes / no router: tenant defaults */
    r = build("[]");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "refund"), "(none)");
    router_free(r);
    route_input any = {.channel = "api", .text = "x"};
    ck_assert_ptr_null(router_match(NULL, &any, NULL));
}
END_TEST

START_TEST(test_conditions)
{
    router *r = build("[{\"name\": \"chan\", \"match\": {\"channel\": \"chatwoot\"}},"
                      " {\"name\": \"inbox\", \"match\": {\"inbox\": \"7\"}},"
                      " {\"name\": \"lang\", \"match\": {\"language\": \"hu\"}},"
                      " {\"name\": \"kw\", \"match\": {\"keywords\": [\"ember\", \"visszatérítés\"]}},"
                      " {\"name\": \"re\", \"match\": {\"regex\": \"order #[0-9]+\"}}]");
    ck_assert_str_eq(MATCH(r, "chatwoot", NULL, NULL, "x"), "chan");
    ck_assert_str_eq(MATCH(r, "chatwoo", NULL, NULL, "x"), "(none)"); /* exact, not prefix */
    ck_assert_str_eq(MATCH(r, "email", "7", NULL, "x"), "inbox");
    ck_assert_str_eq(MATCH(r, "email", "77", NULL, "x"), "(none)");
    ck_assert_str_eq(MATCH(r, NULL, NULL, NULL, "x"), "(none)");       /* absent input never matches */
    ck_assert_str_eq(MATCH(r, "api", NULL, "hu", "x"), "lang");
    ck_assert_str_eq(MATCH(r, "api", NULL, "HU", "x"), "(none)");     /* language: exact */
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "Emberrel beszélnék"), "kw");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "see you in November"), "(none)");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "VISSZATERITEST kérek"), "kw");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "Visszatérítés?"), "kw");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "where is ORDER #1234?"), "re"); /* case-insensitive */
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", "order #x"), "(none)");
    ck_assert_str_eq(MATCH(r, "api", NULL, "en", NULL), "(none)");   /* no text */
    ck_assert_int_eq(r->routes[4].has_re, 1);
    ck_assert_str_eq(r->routes[3].keywords[1], "visszaterites"); /* stored normalised */
    router_free(r);
}
END_TEST

START_TEST(test_all_conditions_must_hold)
{
    router *r = build("[{\"name\": \"hu-cw-refund\", \"match\": {\"channel\": \"chatwoot\", \"inbox\": \"3\","
                      " \"language\": \"hu\", \"keywords\": [\"panasz\"], \"regex\": \"[0-9]{4}\"}}]");
    const char *t = "Panaszt tennék a 2024-es rendelés miatt";
    ck_assert_str_eq(MATCH(r, "chatwoot", "3", "hu", t), "hu-cw-refund");
    ck_assert_str_eq(MATCH(r, "email", "3", "hu", t), "(none)");
    ck_assert_str_eq(MATCH(r, "chatwoot", "4", "hu", t), "(none)");
    ck_assert_str_eq(MATCH(r, "chatwoot", "3", "en", t), "(none)");
    ck_assert_str_eq(MATCH(r, "chatwoot", "3", "hu", "Panaszt tennék a rendelés miatt"), "(none)");
    ck_assert_str_eq(MATCH(r, "chatwoot", "3", "hu", "Kérdésem van a 2024-es rendelésről"), "(none)");
    router_free(r);
}
END_TEST

/* ---- overrides, explain, describe ---- */

START_TEST(test_overrides_and_describe)
{
    router *r = build("[{\"name\": \"sales\", \"match\": {\"keywords\": [\"price\"]}, \"llm\": [\"gemini\", \"echo\"],"
                      " \"tools\": [\"calendar\"]},"
                      " {\"match\": {\"channel\": \"email\", \"regex\": \"^re:\"}, \"tools\": [], \"handoff\": true}]");
    const route *s = &r->routes[0];
    ck_assert_uint_eq(s->n_chain, 2);
    ck_assert_ptr_eq(s->chain[0], &gemini_inst);
    ck_assert_ptr_eq(s->chain[1], &echo_inst);
    ck_assert_int_eq(s->has_tools, 1);
    ck_assert_uint_eq(s->n_tools, 1);
    ck_assert_ptr_eq(s->tools[0], &cal_inst);
    ck_assert_int_eq(s->handoff, 0);
    const route *u = &r->routes[1];
    ck_assert_str_eq(u->name, "#2"); /* unnamed: its position */
    ck_assert_ptr_null(u->chain);
    ck_assert_int_eq(u->has_tools, 1); /* an empty list means "no tools", not "defaults" */
    ck_assert_uint_eq(u->n_tools, 0);
    ck_assert_int_eq(u->handoff, 1);

    json_t *got = router_describe(r);
    json_t *want = json_loads(
        "[{\"index\": 1, \"name\": \"sales\", \"match\": {\"keywords\": [\"price\"]},"
        "  \"overrides\": {\"llm\": [\"gemini\", \"echo\"], \"tools\": [\"calendar\"]}},"
        " {\"index\": 2, \"name\": \"#2\", \"match\": {\"channel\": \"email\", \"regex\": \"^re:\"},"
        "  \"overrides\": {\"tools\": [], \"handoff\": true}}]",
        0, NULL);
    ck_assert_ptr_nonnull(want);
    char *gs = json_dumps(got, JSON_SORT_KEYS), *ws = json_dumps(want, JSON_SORT_KEYS);
    ck_assert_str_eq(gs, ws);
    free(gs);
    free(ws);
    json_decref(got);
    json_decref(want);

    got = router_describe(NULL);
    ck_assert_uint_eq(json_array_size(got), 0);
    json_decref(got);
    router_free(r);
}
END_TEST

START_TEST(test_explain)
{
    router *r = build("[{\"name\": \"cw\", \"match\": {\"channel\": \"chatwoot\", \"language\": \"hu\"}},"
                      " {\"name\": \"complaints\", \"match\": {\"keywords\": [\"panasz\", \"complaint\"]}},"
                      " {\"name\": \"orders\", \"match\": {\"inbox\": \"9\", \"regex\": \"order\"}},"
                      " {\"name\": \"also\", \"match\": {\"keywords\": [\"complaint\"]}}]");
    route_input in = {.channel = "api", .language = "hu", .text = "I have a COMPLAINT about my order"};
    json_t *got = router_explain(r, &in);
    json_t *want = json_loads(
        "[{\"route\": \"cw\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"channel api \u2260 chatwoot\", \"language hu = hu\"]},"
        " {\"route\": \"complaints\", \"matched\": true, \"chosen\": true,"
        "  \"reasons\": [\"keyword \\\"complaint\\\" found\"]},"
        " {\"route\": \"orders\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"inbox (none) \u2260 9\", \"regex /order/ matches\"]},"
        " {\"route\": \"also\", \"matched\": true, \"chosen\": false,"
        "  \"reasons\": [\"keyword \\\"complaint\\\" found\"]}]",
        0, NULL);
    ck_assert_ptr_nonnull(want);
    char *gs = json_dumps(got, JSON_SORT_KEYS), *ws = json_dumps(want, JSON_SORT_KEYS);
    ck_assert_str_eq(gs, ws);
    free(gs);
    free(ws);
    json_decref(got);
    json_decref(want);

    /* the choice agrees with router_match */
    size_t idx;
    ck_assert_ptr_eq(router_match(r, &in, &idx), &r->routes[1]);

    route_input miss = {.channel = "chatwoot", .inbox = "9", .language = "en", .text = "hello"};
    got = router_explain(r, &miss);
    json_t *want2 = json_loads(
        "[{\"route\": \"cw\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"channel chatwoot = chatwoot\", \"language en \u2260 hu\"]},"
        " {\"route\": \"complaints\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"none of the 2 keywords found\"]},"
        " {\"route\": \"orders\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"inbox 9 = 9\", \"regex /order/ does not match\"]},"
        " {\"route\": \"also\", \"matched\": false, \"chosen\": false,"
        "  \"reasons\": [\"none of the 1 keywords found\"]}]",
        0, NULL);
    gs = json_dumps(got, JSON_SORT_KEYS);
    ws = json_dumps(want2, JSON_SORT_KEYS);
    ck_assert_str_eq(gs, ws);
    free(gs);
    free(ws);
    json_decref(got);
    json_decref(want2);
    ck_assert_ptr_null(router_match(r, &miss, NULL));

    got = router_explain(NULL, &miss);
    ck_assert_uint_eq(json_array_size(got), 0);
    json_decref(got);
    router_free(r);
}
END_TEST

START_TEST(test_persona)
{
    const char *src = getenv("KOKO_SRCDIR");
    char base[2048];
    snprintf(base, sizeof base, "%s/tests/data/core", src && *src ? src : ".");
    json_t *routes = json_loads("[{\"name\": \"vip\", \"match\": {\"inbox\": \"1\"}, \"persona\": \"memory/good/identity.json\"},"
                                " {\"name\": \"broken\", \"match\": {\"inbox\": \"2\"},"
                                "  \"persona\": \"memory/badjson/identity.json\"},"
                                " {\"name\": \"typo\", \"match\": {\"inbox\": \"3\"},"
                                "  \"persona\": \"memory/badkey/identity.json\"}]",
                                0, NULL);
    ck_assert_ptr_nonnull(routes);
    tenant t = make_tenant();
    diag *d = diag_new();
    router *r = router_build(base, &t, routes, d);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(json_string_value(json_object_get(r->routes[0].persona, "name")), "Kokó");
    ck_assert_ptr_null(r->routes[1].persona);
    ck_assert_ptr_null(r->routes[2].persona);
    /* checked like identity.json: bad JSON with its position, then a misspelt key */
    ck_assert_uint_ge(diag_count(d), 2);
    char want[4096];
    snprintf(want, sizeof want, "%s/memory/badjson/identity.json:4:12: invalid JSON: '}' expected near '\"greeting\"'",
             base);
    ck_assert_str_eq(diag_get(d, 0), want);
    snprintf(want, sizeof want, "%s/memory/badkey/identity.json:3:", base);
    int typo = 0;
    for (size_t i = 1; i < diag_count(d); i++)
        typo |= strncmp(diag_get(d, i), want, strlen(want)) == 0 && strstr(diag_get(d, i), "handof") != NULL;
    ck_assert_msg(typo, "no error at %s naming \"handof\": %s", want, diag_get(d, 1));
    json_t *desc = router_describe(r);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(json_array_get(desc, 0), "overrides"),
                                                       "persona")),
                     "memory/good/identity.json");
    json_decref(desc);
    router_free(r);
    diag_free(d);
    json_decref(routes);
}
END_TEST

static Suite *router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("phrases");
    tcase_add_test(tc, test_normalise);
    tcase_add_test(tc, test_phrase_in);
    tcase_add_test(tc, test_phrase_in_utf8);
    suite_add_tcase(s, tc);
    tc = tcase_create("match");
    tcase_add_test(tc, test_precedence);
    tcase_add_test(tc, test_conditions);
    tcase_add_test(tc, test_all_conditions_must_hold);
    tcase_add_test(tc, test_overrides_and_describe);
    tcase_add_test(tc, test_explain);
    tcase_add_test(tc, test_persona);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(router_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
