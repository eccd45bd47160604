/*
 * tests/test_fallback.c — the `fallback` LLM backend, loaded as kokod loads it.
 *
 * The plugin .so named by $KOKO_FALLBACK_SO is dlopened (RTLD_NOW|RTLD_LOCAL)
 * and driven through tests/fakehost: descriptor, grounded answers with their
 * source label, holding messages with handoff, language fallbacks, config
 * validation, trimming, deferral and drain. The persona is the demo tenant's
 * memory/demo/identity.json, found through $KOKO_SRCDIR. A second suite checks
 * the fake host itself (timers, post, HTTP, routes, submit), since other
 * plugin tests build on it.
 */
#include <check.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <jansson.h>

#include "fakehost.h"
#include "koko/host.h"
#include "koko/plugin.h"

static const koko_plugin *plug;
static void *plug_handle;
static json_t *persona;    /* memory/demo/identity.json */
static json_t *decisions;  /* [] */
static json_t *tools;      /* [] */

/* ---- harness ---- */

typedef struct got {
    int calls;
    koko_status status;
    char *text;
    int handoff;
    char *reason;
    double confidence;
    char *model;
    uint64_t tokens_in, tokens_cached, tokens_out;
    size_t n_cited;
    size_t cited0;
    int has_error;
} got;

static void got_clear(got *g)
{
    free(g->text);
    free(g->reason);
    free(g->model);
    memset(g, 0, sizeof *g);
}

static void on_done(const koko_llm_result *r, void *arg)
{
    got *g = arg;
    g->calls++;
    if (g->calls > 1)
        return;
    g->status = r->status;
    g->has_error = r->error != NULL;
    g->text = r->text ? strdup(r->text) : NULL;
    g->handoff = r->handoff;
    g->reason = r->handoff_reason ? strdup(r->handoff_reason) : NULL;
    g->confidence = r->confidence;
    g->model = r->model ? strdup(r->model) : NULL;
    g->tokens_in = r->tokens_in;
    g->tokens_cached = r->tokens_cached;
    g->tokens_out = r->tokens_out;
    g->n_cited = r->n_cited;
    g->cited0 = r->n_cited ? r->cited[0] : (size_t)-1;
}

typedef struct fixture {
    fakehost *fh;
    void *state;
} fixture;

/* Create an instance with config JSON (NULL = {}); fails the test on error. */
static fixture start(const char *cfg_json)
{
    fixture fx = {fakehost_new("demo", "fallback"), NULL};
    ck_assert_ptr_nonnull(fx.fh);
    json_error_t jerr;
    json_t *cfg = json_loads(cfg_json ? cfg_json : "{}", 0, &jerr);
    ck_assert_msg(cfg != NULL, "bad test config: %s", jerr.text);
    char err[256] = "";
    fx.state = plug->init(fakehost_host(), fakehost_instance(fx.fh), cfg, err, sizeof err);
    json_decref(cfg);
    ck_assert_msg(fx.state != NULL, "init failed: %s", err);
    return fx;
}

static void finish(fixture *fx)
{
    plug->stop(fx->state, fakehost_drained);
    ck_assert_int_eq(fakehost_run(fx->fh, 2000), 0);
    ck_assert_uint_eq(fakehost_drained_count(fx->fh), 1);
    plug->destroy(fx->state);
    fakehost_free(fx->fh);
}

static const char *const langs_hu_en[] = {"hu", "en"};

typedef struct ask_opts {
    const char *language;
    const char *const *languages;
    size_t n_languages;
    const koko_chunk *chunks;
    size_t n_chunks;
    int want_handoff;
    const json_t *persona; /* NULL = the demo persona */
} ask_opts;

static const koko_llm_ops *llm_ops(void)
{
    return plug->ops;
}

/* One generate() call; checks it answered later and exactly once. */
static got ask(fixture *fx, ask_opts o)
{
    koko_llm_request req = {
        .size = sizeof req,
        .tenant = "demo",
        .conversation_id = "c1",
        .language = o.language,
        .languages = o.languages ? o.languages : langs_hu_en,
        .n_languages = o.languages ? o.n_languages : 2,
        .text = "Mennyi a kiszállási díj?",
        .chunks = o.chunks,
        .n_chunks = o.n_chunks,
        .persona = o.persona ? o.persona : persona,
        .decisions = decisions,
        .tools = tools,
        .route = "default",
        .want_handoff = o.want_handoff,
    };
    got g;
    memset(&g, 0, sizeof g);
    llm_ops()->generate(fx->state, &req, on_done, &g);
    ck_assert_msg(g.calls == 0, "done ran synchronously inside generate()");
    ck_assert_int_eq(fakehost_run(fx->fh, 2000), 0);
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.status, KOKO_OK);
    ck_assert(!g.has_error);
    ck_assert_str_eq(g.model, "fallback");
    ck_assert(g.tokens_in == 0 && g.tokens_cached == 0 && g.tokens_out == 0);
    ck_assert(g.confidence >= 0.0 && g.confidence <= 1.0);
    ck_assert_ptr_nonnull(g.text);
    return g;
}

#define HU_EXCERPT "Kiszállási díj Budapesten belül 6 000 Ft, a városhatáron kívül kilométerenként 150 Ft."
#define EN_EXCERPT "The call-out fee within Budapest is HUF 6,000; outside the city it is HUF 150 per km."
#define HU_HOLD "Köszönöm a kérdését, kollégánk hamarosan válaszol."
#define EN_HOLD "Thank you for your question, a colleague will reply shortly."

static const koko_chunk hu_strong = {"kb/demo/arak.md", "Árak › Kiszállás",
                                     "Árak. " HU_EXCERPT " Egyéb szöveg.", HU_EXCERPT, 5.0, 0.8};
static const koko_chunk en_strong = {"kb/demo/prices.md", "Prices › Call-out",
                                     "Prices. " EN_EXCERPT, EN_EXCERPT, 4.5, 0.75};
static const koko_chunk hu_weak = {"kb/demo/arak.md", "Árak › Kiszállás", HU_EXCERPT, HU_EXCERPT, 0.6, 0.9};
static const koko_chunk hu_thin = {"kb/demo/arak.md", "Árak › Kiszállás", HU_EXCERPT, HU_EXCERPT, 6.0, 0.3};

/* ---- the descriptor ---- */

START_TEST(test_descriptor)
{
    ck_assert_uint_eq(plug->abi_major, KOKO_ABI_MAJOR);
    ck_assert_uint_le(plug->abi_minor, KOKO_ABI_MINOR);
    ck_assert_uint_eq(plug->size, sizeof(koko_plugin));
    ck_assert_str_eq(plug->signature, KOKO_ABI_SIGNATURE);
    ck_assert_int_eq(plug->kind, KOKO_KIND_LLM);
    ck_assert_str_eq(plug->name, "fallback");
    ck_assert_ptr_nonnull(plug->version);
    ck_assert_ptr_nonnull(plug->description);
    ck_assert_ptr_nonnull(plug->validate);
    ck_assert_ptr_nonnull(plug->init);
    ck_assert_ptr_nonnull(plug->stop);
    ck_assert_ptr_nonnull(plug->destroy);
    const koko_llm_ops *ops = llm_ops();
    ck_assert(KOKO_OPS_HAS(ops, koko_llm_ops, generate));
    ck_assert_ptr_nonnull(ops->generate);
}
END_TEST

/* ---- grounded answers ---- */

START_TEST(test_strong_hu)
{
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1});
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Forrás: Árak › Kiszállás)");
    ck_assert_int_eq(g.handoff, 0);
    ck_assert_ptr_null(g.reason);
    ck_assert_uint_eq(g.n_cited, 1);
    ck_assert_uint_eq(g.cited0, 0);
    /* coverage * score / (score + 3) = 0.8 * 5 / 8 */
    ck_assert_double_eq_tol(g.confidence, 0.5, 1e-9);
    ck_assert_uint_eq(fakehost_timers_started(fx.fh), 1);
    got_clear(&g);
    finish(&fx);
}
END_TEST

START_TEST(test_strong_en)
{
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "en", .chunks = &en_strong, .n_chunks = 1});
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Source: Prices › Call-out)");
    ck_assert_int_eq(g.handoff, 0);
    ck_assert_uint_eq(g.n_cited, 1);
    ck_assert_uint_eq(g.cited0, 0);
    ck_assert_double_eq_tol(g.confidence, 0.75 * 4.5 / 7.5, 1e-9);
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* Several strong chunks: the first that looks like the request's language wins. */
START_TEST(test_language_preference)
{
    fixture fx = start(NULL);
    const koko_chunk en_then_hu[] = {en_strong, hu_strong};
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = en_then_hu, .n_chunks = 2});
    ck_assert_uint_eq(g.cited0, 1);
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);

    g = ask(&fx, (ask_opts){.language = "en", .chunks = en_then_hu, .n_chunks = 2});
    ck_assert_uint_eq(g.cited0, 0);
    got_clear(&g);

    const koko_chunk hu_then_en[] = {hu_strong, en_strong};
    g = ask(&fx, (ask_opts){.language = "en", .chunks = hu_then_en, .n_chunks = 2});
    ck_assert_uint_eq(g.cited0, 1);
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Source: Prices › Call-out)");
    got_clear(&g);

    /* The matching chunk is too weak: the best strong one is used anyway. */
    koko_chunk en_ok_hu_weak[] = {en_strong, hu_weak};
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = en_ok_hu_weak, .n_chunks = 2});
    ck_assert_uint_eq(g.cited0, 0);
    ck_assert_int_eq(g.handoff, 0);
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Forrás: Prices › Call-out)");
    got_clear(&g);

    /* A chunk without excerpt falls back to its text. */
    koko_chunk no_excerpt = hu_strong;
    no_excerpt.excerpt = "  ";
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &no_excerpt, .n_chunks = 1});
    ck_assert_str_eq(g.text, "Árak. " HU_EXCERPT " Egyéb szöveg.\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* ---- holding messages ---- */

START_TEST(test_weak_holding)
{
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_weak, .n_chunks = 1});
    ck_assert_str_eq(g.text, HU_HOLD);
    ck_assert_int_eq(g.handoff, 1);
    ck_assert_str_eq(g.reason, "no knowledge-base passage strong enough (best score 0.6 < 1.0)");
    ck_assert_uint_eq(g.n_cited, 0);
    ck_assert_double_eq(g.confidence, 0.0);
    got_clear(&g);

    g = ask(&fx, (ask_opts){.language = "en", .chunks = &hu_weak, .n_chunks = 1});
    ck_assert_str_eq(g.text, EN_HOLD);
    ck_assert_int_eq(g.handoff, 1);
    ck_assert_str_eq(g.reason, "no knowledge-base passage strong enough (best score 0.6 < 1.0)");
    got_clear(&g);

    g = ask(&fx, (ask_opts){.language = "en", .chunks = &hu_thin, .n_chunks = 1});
    ck_assert_str_eq(g.text, EN_HOLD);
    ck_assert_str_eq(g.reason, "no knowledge-base passage strong enough (best coverage 0.30 < 0.45)");
    got_clear(&g);

    g = ask(&fx, (ask_opts){.language = "hu"});
    ck_assert_str_eq(g.text, HU_HOLD);
    ck_assert_str_eq(g.reason, "no knowledge-base passage found");
    got_clear(&g);
    finish(&fx);
}
END_TEST

START_TEST(test_language_not_in_persona)
{
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "de", .chunks = &hu_weak, .n_chunks = 1});
    ck_assert_str_eq(g.text, HU_HOLD);
    ck_assert_int_eq(g.handoff, 1);
    got_clear(&g);

    static const char *const en_first[] = {"en", "hu"};
    g = ask(&fx, (ask_opts){.language = "de", .languages = en_first, .n_languages = 2, .chunks = &hu_weak,
                            .n_chunks = 1});
    ck_assert_str_eq(g.text, EN_HOLD);
    got_clear(&g);

    /* No language on the request at all: the tenant's first language. */
    g = ask(&fx, (ask_opts){.language = NULL, .languages = en_first, .n_languages = 2});
    ck_assert_str_eq(g.text, EN_HOLD);
    got_clear(&g);

    /* The source label follows the same rule. */
    g = ask(&fx, (ask_opts){.language = "de", .chunks = &en_strong, .n_chunks = 1});
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Forrás: Prices › Call-out)");
    got_clear(&g);
    finish(&fx);
}
END_TEST

START_TEST(test_want_handoff)
{
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "en", .chunks = &en_strong, .n_chunks = 1, .want_handoff = 1});
    ck_assert_str_eq(g.text, EN_HOLD);
    ck_assert_int_eq(g.handoff, 1);
    ck_assert_str_eq(g.reason, "handoff requested");
    ck_assert_uint_eq(g.n_cited, 0);
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* A producer built before want_handoff existed: the field is not read. */
START_TEST(test_short_request)
{
    fixture fx = start(NULL);
    koko_llm_request req = {
        .size = offsetof(koko_llm_request, want_handoff),
        .language = "en",
        .languages = langs_hu_en,
        .n_languages = 2,
        .chunks = &en_strong,
        .n_chunks = 1,
        .persona = persona,
        .decisions = decisions,
        .tools = tools,
        .want_handoff = 1,
    };
    got g;
    memset(&g, 0, sizeof g);
    llm_ops()->generate(fx.state, &req, on_done, &g);
    ck_assert_int_eq(g.calls, 0);
    ck_assert_int_eq(fakehost_run(fx.fh, 2000), 0);
    ck_assert_int_eq(g.calls, 1);
    ck_assert_int_eq(g.handoff, 0);
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Source: Prices › Call-out)");
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* ---- texts from config and built-ins ---- */

START_TEST(test_builtin_texts)
{
    fixture fx = start(NULL);
    json_t *empty = json_object();
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_weak, .n_chunks = 1, .persona = empty});
    ck_assert_str_eq(g.text, HU_HOLD);
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "en", .persona = empty});
    ck_assert_str_eq(g.text, EN_HOLD);
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1, .persona = empty});
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);

    static const char *const de_first[] = {"de", "en"};
    g = ask(&fx, (ask_opts){.language = "de", .languages = de_first, .n_languages = 2, .chunks = &en_strong,
                            .n_chunks = 1, .persona = empty});
    ck_assert_str_eq(g.text, EN_EXCERPT "\n\n(Quelle: Prices › Call-out)");
    got_clear(&g);
    /* No built-in German holding message: English is the last resort. */
    g = ask(&fx, (ask_opts){.language = "de", .languages = de_first, .n_languages = 2, .persona = empty});
    ck_assert_str_eq(g.text, EN_HOLD);
    got_clear(&g);

    /* A persona whose entries have the wrong shape is ignored, not trusted. */
    json_t *odd = json_pack("{s:s, s:{s:i}}", "holding", "not an object", "source_label", "hu", 7);
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1, .persona = odd});
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "hu", .persona = odd});
    ck_assert_str_eq(g.text, HU_HOLD);
    got_clear(&g);
    json_decref(odd);
    json_decref(empty);
    finish(&fx);
}
END_TEST

START_TEST(test_config_texts)
{
    fixture fx = start("{\"texts\": {\"holding\": {\"hu\": \"Hamarosan jelentkezünk.\", "
                       "\"de\": \"Wir melden uns bald.\"}, \"source_label\": {\"hu\": \"Lásd\"}}}");
    json_t *empty = json_object();
    got g = ask(&fx, (ask_opts){.language = "hu", .persona = empty});
    ck_assert_str_eq(g.text, "Hamarosan jelentkezünk.");
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "de", .persona = empty});
    ck_assert_str_eq(g.text, "Wir melden uns bald.");
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1, .persona = empty});
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Lásd: Árak › Kiszállás)");
    got_clear(&g);
    /* The persona wins over config. */
    g = ask(&fx, (ask_opts){.language = "hu"});
    ck_assert_str_eq(g.text, HU_HOLD);
    got_clear(&g);
    json_decref(empty);
    finish(&fx);
}
END_TEST

START_TEST(test_config_thresholds)
{
    fixture fx = start("{\"min_score\": 0.5, \"min_coverage\": 0.85}");
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_weak, .n_chunks = 1});
    ck_assert_int_eq(g.handoff, 0);
    ck_assert_str_eq(g.text, HU_EXCERPT "\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1});
    ck_assert_int_eq(g.handoff, 1);
    ck_assert_str_eq(g.reason, "no knowledge-base passage strong enough (best coverage 0.80 < 0.85)");
    got_clear(&g);
    finish(&fx);

    fx = start("{\"min_score\": 6, \"min_coverage\": 0}");
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_strong, .n_chunks = 1});
    ck_assert_str_eq(g.reason, "no knowledge-base passage strong enough (best score 5.0 < 6.0)");
    got_clear(&g);
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &hu_thin, .n_chunks = 1});
    ck_assert_int_eq(g.handoff, 0);
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* ---- trimming ---- */

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

START_TEST(test_trim_sentence)
{
    /* 20 sentences of 40 code points each (Hungarian, multi-byte letters). */
    const char *sent = "Ez egy hosszú mondat ékezetes betűkkel. ";
    ck_assert_uint_eq(utf8_chars(sent), 40);
    char longtext[2048] = "";
    for (int i = 0; i < 20; i++)
        strcat(longtext, sent);
    koko_chunk c = hu_strong;
    c.excerpt = longtext;
    fixture fx = start(NULL);
    got g = ask(&fx, (ask_opts){.language = "hu", .chunks = &c, .n_chunks = 1});
    /* 600 code points hold 15 sentences; the trailing space is dropped. */
    char want[2048] = "";
    for (int i = 0; i < 15; i++)
        strcat(want, sent);
    want[strlen(want) - 1] = '\0';
    strcat(want, "\n\n(Forrás: Árak › Kiszállás)");
    ck_assert_str_eq(g.text, want);
    got_clear(&g);
    finish(&fx);

    /* max_chars 100: two sentences (80 code points), not a cut inside the third. */
    fx = start("{\"max_chars\": 100}");
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &c, .n_chunks = 1});
    ck_assert_str_eq(g.text, "Ez egy hosszú mondat ékezetes betűkkel. Ez egy hosszú mondat ékezetes betűkkel."
                             "\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);

    /* A sentence end followed by a closing bracket counts; "6.5" does not end one. */
    c.excerpt = "Az ár 6.5 ezer forint (áfával együtt.) Utána jön egy nagyon hosszú mondat, amely nem fér bele "
                "a korlátba, mert túl sok szóból áll és sosem ér véget időben.";
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &c, .n_chunks = 1});
    ck_assert_str_eq(g.text, "Az ár 6.5 ezer forint (áfával együtt.)\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);

    /* No sentence end within the limit: cut after the last whole word that
     * leaves room for "…" (95 + 1 of the 113 code points). */
    c.excerpt = "egy két három négy öt hat hét nyolc kilenc tíz tizenegy tizenkettő tizenhárom tizennégy "
                "tizenöt tizenhat tizenhét";
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &c, .n_chunks = 1});
    ck_assert_str_eq(g.text, "egy két három négy öt hat hét nyolc kilenc tíz tizenegy tizenkettő tizenhárom "
                             "tizennégy tizenöt…\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);

    /* Short text: kept whole, surrounding whitespace dropped. */
    c.excerpt = "\n  Rövid válasz, pont nélkül  \n";
    g = ask(&fx, (ask_opts){.language = "hu", .chunks = &c, .n_chunks = 1});
    ck_assert_str_eq(g.text, "Rövid válasz, pont nélkül\n\n(Forrás: Árak › Kiszállás)");
    got_clear(&g);
    finish(&fx);
}
END_TEST

/* ---- deferral and drain ---- */

START_TEST(test_deferred_and_drain)
{
    fixture fx = start(NULL);
    koko_llm_request req = {.size = sizeof req, .language = "hu", .languages = langs_hu_en, .n_languages = 2,
                            .chunks = &hu_strong, .n_chunks = 1, .persona = persona,
                            .decisions = decisions, .tools = tools};
    got a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    llm_ops()->generate(fx.state, &req, on_done, &a);
    req.want_handoff = 1; /* the request is borrowed only: changing it later changes nothing */
    llm_ops()->generate(fx.state, &req, on_done, &b);
    req.chunks = NULL;
    ck_assert_int_eq(a.calls + b.calls, 0);
    ck_assert_uint_eq(fakehost_timers_pending(fx.fh), 2);

    plug->stop(fx.state, fakehost_drained);
    ck_assert_uint_eq(fakehost_drained_count(fx.fh), 0); /* answers still pending */
    ck_assert_int_eq(fakehost_run(fx.fh, 2000), 0);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(a.status, KOKO_OK);
    ck_assert_int_eq(a.handoff, 0);
    ck_assert_int_eq(b.handoff, 1);
    ck_assert_uint_eq(fakehost_drained_count(fx.fh), 1);
    ck_assert_uint_eq(fakehost_timers_cancelled(fx.fh), 0);
    got_clear(&a);
    got_clear(&b);
    plug->destroy(fx.state);
    fakehost_free(fx.fh);

    /* Nothing pending: drained runs from inside stop(). */
    fx = start(NULL);
    plug->stop(fx.state, fakehost_drained);
    ck_assert_uint_eq(fakehost_drained_count(fx.fh), 1);
    plug->destroy(fx.state);
    fakehost_free(fx.fh);

    /* The host cancelled the timers at its drain deadline: destroy frees the rest. */
    fx = start(NULL);
    memset(&a, 0, sizeof a);
    llm_ops()->generate(fx.state, &req, on_done, &a);
    fakehost_cancel_all(fx.fh);
    plug->destroy(fx.state);
    fakehost_free(fx.fh);
    ck_assert_int_eq(a.calls, 0);
}
END_TEST

/* ---- validate and init ---- */

static int validate_json(fakediag *fd, const char *json)
{
    json_error_t jerr;
    json_t *cfg = json_loads(json, JSON_DECODE_ANY, &jerr);
    ck_assert_msg(cfg != NULL, "bad test config: %s", jerr.text);
    fakediag_clear(fd);
    int n = plug->validate(cfg, fakediag_diag(fd));
    json_decref(cfg);
    ck_assert_uint_eq((size_t)n, fakediag_count(fd));
    return n;
}

#define ck_assert_diag(fd, line) \
    ck_assert_msg(fakediag_find(fd, line) >= 0, "missing diagnostic: %s (first: %s)", line, \
                  fakediag_line(fd, 0) ? fakediag_line(fd, 0) : "none")

START_TEST(test_validate)
{
    fakediag *fd = fakediag_new();
    ck_assert_int_eq(validate_json(fd, "{}"), 0);
    ck_assert_int_eq(validate_json(fd, "{\"min_score\": 0, \"min_coverage\": 1, \"max_chars\": 80, "
                                       "\"texts\": {\"holding\": {\"hu\": \"x\", \"en\": \"y\"}, "
                                       "\"source_label\": {\"de\": \"Quelle\"}}}"),
                     0);
    ck_assert_int_eq(validate_json(fd, "{\"min_score\": 2.5, \"max_chars\": 4000}"), 0);

    ck_assert_int_eq(validate_json(fd, "{\"min_scor\": 3}"), 1);
    ck_assert_diag(fd, "min_scor: unknown key \"min_scor\" (known: min_score, min_coverage, max_chars, texts)");

    ck_assert_int_eq(validate_json(fd, "{\"min_score\": \"3\", \"min_coverage\": 1.5, \"max_chars\": 20}"), 3);
    ck_assert_diag(fd, "min_score: expected a number >= 0, got a string");
    ck_assert_diag(fd, "min_coverage: expected a number between 0 and 1, got 1.5");
    ck_assert_diag(fd, "max_chars: expected an integer between 80 and 4000, got 20");

    ck_assert_int_eq(validate_json(fd, "{\"min_score\": -1, \"min_coverage\": true, \"max_chars\": 100.5}"), 3);
    ck_assert_diag(fd, "min_score: expected a number >= 0, got -1");
    ck_assert_diag(fd, "min_coverage: expected a number between 0 and 1, got a boolean");
    ck_assert_diag(fd, "max_chars: expected an integer between 80 and 4000, got a real number");

    ck_assert_int_eq(validate_json(fd, "{\"max_chars\": 4001, \"min_coverage\": -0.1}"), 2);
    ck_assert_diag(fd, "max_chars: expected an integer between 80 and 4000, got 4001");
    ck_assert_diag(fd, "min_coverage: expected a number between 0 and 1, got -0.1");

    ck_assert_int_eq(validate_json(fd, "{\"texts\": []}"), 1);
    ck_assert_diag(fd, "texts: expected an object with \"holding\" and/or \"source_label\", got an array");

    ck_assert_int_eq(validate_json(fd, "{\"texts\": {\"greeting\": {}, \"holding\": \"hi\", "
                                       "\"source_label\": {\"HU\": \"x\", \"en\": \"\", \"de\": 3}}}"),
                     5);
    ck_assert_diag(fd, "texts.greeting: unknown key \"greeting\" (known: holding, source_label)");
    ck_assert_diag(fd, "texts.holding: expected an object mapping language codes to strings, got a string");
    ck_assert_diag(fd, "texts.source_label.HU: expected a language code of 2-3 lowercase letters (e.g. \"hu\")");
    ck_assert_diag(fd, "texts.source_label.en: expected a non-empty string, got an empty string");
    ck_assert_diag(fd, "texts.source_label.de: expected a non-empty string, got an integer");

    ck_assert_int_eq(validate_json(fd, "[1]"), 1);
    ck_assert_diag(fd, "expected an object (the fallback backend's settings), got an array");
    fakediag_free(fd);

    /* init refuses a bad config with the first problem. */
    fakehost *fh = fakehost_new("demo", "fallback");
    json_t *cfg = json_pack("{s:i, s:s}", "max_chars", 5, "colour", "red");
    char err[256] = "";
    void *st = plug->init(fakehost_host(), fakehost_instance(fh), cfg, err, sizeof err);
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(err, "fallback: invalid configuration: ") == err, "err: %s", err);
    ck_assert_msg(strstr(err, "max_chars: expected an integer between 80 and 4000, got 5") ||
                      strstr(err, "colour: unknown key \"colour\""),
                  "err: %s", err);
    json_decref(cfg);
    fakehost_free(fh);
}
END_TEST

/* ---- the fake host itself ---- */

static void count_fn(void *arg)
{
    ++*(int *)arg;
}

typedef struct http_got {
    int calls;
    long status;
    int cancelled;
    char body[64];
} http_got;

static void http_cb(const koko_http_result *r, void *arg)
{
    http_got *h = arg;
    h->calls++;
    h->status = r->status;
    h->cancelled = r->cancelled;
    snprintf(h->body, sizeof h->body, "%s", r->body ? r->body : "");
}

static void serve(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "{\"path\":\"%s\"}", evhttp_request_get_uri(req));
    evhttp_send_reply(req, 201, "Created", b);
    evbuffer_free(b);
}

static void route_fn(koko_request *req, void *arg)
{
    const koko_host *h = arg;
    char body[256];
    size_t len = 0;
    snprintf(body, sizeof body, "{\"m\":\"%s\",\"sig\":\"%s\",\"len\":%zu}", h->req_method(req),
             h->req_header(req, "x-signature") ? h->req_header(req, "x-signature") : "",
             (h->req_body(req, &len), len));
    h->respond(req, 200, body);
}

typedef struct sub_got {
    int calls;
    koko_submit_status st;
} sub_got;

static void submit_cb(koko_submit_status st, const char *error, void *arg)
{
    (void)error;
    sub_got *s = arg;
    s->calls++;
    s->st = st;
}

typedef struct post_arg {
    const koko_host *host;
    koko_instance *inst;
    int *counter;
} post_arg;

static void *poster(void *arg)
{
    post_arg *p = arg;
    for (int i = 0; i < 100; i++)
        p->host->post(p->inst, count_fn, p->counter);
    return NULL;
}

START_TEST(test_fakehost)
{
    fakehost *fh = fakehost_new("demo", "probe");
    const koko_host *h = fakehost_host();
    koko_instance *inst = fakehost_instance(fh);
    ck_assert_ptr_eq(fakehost_of(inst), fh);
    ck_assert_str_eq(h->tenant(inst), "demo");
    ck_assert_str_eq(h->base_dir(inst), ".");
    ck_assert_ptr_null(h->getenv(inst, "PATH"));
    fakehost_setenv(fh, "API_KEY", "k");
    ck_assert_str_eq(h->getenv(inst, "API_KEY"), "k");

    h->log(inst, KOKO_LOG_WARN, "hello %d", 42);
    ck_assert_str_eq(fakehost_log_line(fh, 0), "warn: hello 42");
    ck_assert_int_eq(fakehost_log_find(fh, "hello"), 0);

    /* timers: later, in order of expiry; cancelled ones never run */
    int fired = 0, never = 0;
    h->timer_start(inst, 5, count_fn, &fired);
    koko_timer *t = h->timer_start(inst, 1, count_fn, &never);
    h->timer_cancel(t);
    ck_assert_int_eq(fired, 0);
    ck_assert_int_eq(fakehost_run(fh, 2000), 0);
    ck_assert_int_eq(fired, 1);
    ck_assert_int_eq(never, 0);

    /* post from other threads */
    int posted = 0;
    post_arg pa = {h, inst, &posted};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, poster, &pa);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    ck_assert_int_eq(fakehost_run(fh, 2000), 0);
    ck_assert_int_eq(posted, 200);

    /* HTTP through the real client against a server on the same loop */
    struct evhttp *srv = evhttp_new(fakehost_base(fh));
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(srv, "127.0.0.1", 0);
    ck_assert_ptr_nonnull(bs);
    evhttp_set_gencb(srv, serve, NULL);
    struct sockaddr_in sin;
    socklen_t slen = sizeof sin;
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sin, &slen);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", ntohs(sin.sin_port));
    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url);
    http_got hg = {0};
    ck_assert_ptr_nonnull(h->http_submit(inst, easy, NULL, http_cb, &hg));
    ck_assert_int_eq(hg.calls, 0);
    ck_assert_int_eq(fakehost_run(fh, 5000), 0);
    ck_assert_int_eq(hg.calls, 1);
    ck_assert_int_eq(hg.status, 201);
    ck_assert_str_eq(hg.body, "{\"path\":\"/x\"}");
    /* cancelled transfer */
    easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url);
    http_got hc = {0};
    koko_http *x = h->http_submit(inst, easy, NULL, http_cb, &hc);
    h->http_cancel(x);
    ck_assert_int_eq(fakehost_run(fh, 5000), 0);
    ck_assert_int_eq(hc.calls, 1);
    ck_assert_int_eq(hc.cancelled, 1);
    ck_assert_uint_eq(fakehost_http_submitted(fh), 2);
    evhttp_free(srv);

    /* routes */
    ck_assert_int_eq(h->route_add(inst, NULL, route_fn, (void *)h), 0);
    ck_assert_int_eq(h->route_add(inst, "probe", route_fn, (void *)h), -1);
    const char *hdrs[] = {"X-Signature: abc", NULL};
    ck_assert_int_eq(fakehost_request(fh, "nope", "POST", "{}", NULL, NULL), -1);
    ck_assert_int_eq(fakehost_request(fh, "probe", "POST", "{\"a\":1}", hdrs, NULL), 0);
    ck_assert_uint_eq(fakehost_response_count(fh), 1);
    ck_assert_uint_eq(fakehost_requests_open(fh), 0);
    ck_assert_int_eq(fakehost_response_get(fh, 0)->status, 200);
    ck_assert_str_eq(fakehost_response_get(fh, 0)->body, "{\"m\":\"POST\",\"sig\":\"abc\",\"len\":7}");

    /* submit */
    koko_msg m = {.size = sizeof m, .msg_id = "m1", .conversation_id = "c1", .text = "szia"};
    sub_got sg = {0};
    h->submit(inst, &m, submit_cb, &sg);
    ck_assert_int_eq(sg.calls, 0);
    fakehost_set_submit_status(fh, KOKO_SUBMIT_DUPLICATE, NULL);
    sub_got sg2 = {0};
    h->submit(inst, &m, submit_cb, &sg2);
    ck_assert_int_eq(fakehost_run(fh, 2000), 0);
    ck_assert_int_eq(sg.calls, 1);
    ck_assert_int_eq(sg.st, KOKO_SUBMIT_ACCEPTED);
    ck_assert_int_eq(sg2.st, KOKO_SUBMIT_DUPLICATE);
    ck_assert_uint_eq(fakehost_submit_count(fh), 2);
    ck_assert_str_eq(fakehost_submitted(fh, 0)->tenant, "demo");
    ck_assert_str_eq(fakehost_submitted(fh, 0)->channel, "probe");
    ck_assert_str_eq(fakehost_submitted(fh, 0)->text, "szia");
    ck_assert_ptr_null(fakehost_submitted(fh, 0)->inbox);

    /* things left pending at free are dropped without calling back */
    int late = 0;
    h->timer_start(inst, 60000, count_fn, &late);
    h->submit(inst, &m, submit_cb, &sg);
    fakehost_free(fh);
    ck_assert_int_eq(late, 0);
    ck_assert_int_eq(sg.calls, 1);
}
END_TEST

/* ---- main ---- */

static json_t *load_persona(void)
{
    const char *src = getenv("KOKO_SRCDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/memory/demo/identity.json", src && *src ? src : ".");
    json_error_t jerr;
    json_t *p = json_load_file(path, 0, &jerr);
    if (!p)
        fprintf(stderr, "test_fallback: cannot read %s: %s (set KOKO_SRCDIR to the source root)\n", path,
                jerr.text);
    return p;
}

int main(void)
{
    const char *so = getenv("KOKO_FALLBACK_SO");
    char err[512];
    plug = fakehost_load_plugin(so, &plug_handle, err, sizeof err);
    if (!plug) {
        fprintf(stderr, "test_fallback: %s (set KOKO_FALLBACK_SO to the built fallback.so)\n", err);
        return 1;
    }
    persona = load_persona();
    if (!persona)
        return 1;
    decisions = json_array();
    tools = json_array();

    Suite *s = suite_create("fallback");
    TCase *tc = tcase_create("plugin");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_descriptor);
    tcase_add_test(tc, test_strong_hu);
    tcase_add_test(tc, test_strong_en);
    tcase_add_test(tc, test_language_preference);
    tcase_add_test(tc, test_weak_holding);
    tcase_add_test(tc, test_language_not_in_persona);
    tcase_add_test(tc, test_want_handoff);
    tcase_add_test(tc, test_short_request);
    tcase_add_test(tc, test_builtin_texts);
    tcase_add_test(tc, test_config_texts);
    tcase_add_test(tc, test_config_thresholds);
    tcase_add_test(tc, test_trim_sentence);
    tcase_add_test(tc, test_deferred_and_drain);
    tcase_add_test(tc, test_validate);
    suite_add_tcase(s, tc);
    TCase *tf = tcase_create("fakehost");
    tcase_set_timeout(tf, 20);
    tcase_add_test(tf, test_fakehost);
    suite_add_tcase(s, tf);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    json_decref(persona);
    json_decref(decisions);
    json_decref(tools);
    dlclose(plug_handle);
    return failed ? 1 : 0;
}
