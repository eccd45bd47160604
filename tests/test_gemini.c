/*
 * tests/test_gemini.c — the `gemini` LLM backend, loaded as kokod loads it.
 *
 * The .so ($KOKO_GEMINI_SO, else $KOKO_BUILDDIR/plugins/gemini/.libs/gemini.so)
 * runs on tests/fakehost against tests/fakes/fake_gemini.py, started once per
 * run on a free loopback port and reset before each test. What the plugin
 * sent is read back from the fake's /_requests: cache creation counts, the
 * cachedContent / systemInstruction / tools exclusivity, PATCH and DELETE,
 * retries and their timing, function-call round trips.
 */
#include "llmtest.h"

#define KEY "test-key"

static const koko_plugin *plug;
static void *plug_handle;

static void setup(void)
{
    lt_fake_ok("POST", "/_reset", NULL);
}

/* A plugin instance against the fake; EXTRA is more JSON members ("" = none). */
static void start(lt_plugin *lp, const char *extra)
{
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"api_key\":\"%s\",\"base_url\":\"%s\",\"backoff_ms\":50,\"timeout_ms\":5000,"
             "\"prices\":{\"gemini-2.5-flash\":{\"input\":0.30,\"cached_input\":0.03,\"output\":2.50,"
             "\"cache_storage_per_hour\":1.00}}%s%s}",
             KEY, lt_fake_url, *extra ? "," : "", extra);
    lt_init(lp, plug, cfg);
}

/* The generateContent bodies the fake received, in order (caller decrefs). */
static json_t *gen_bodies(void)
{
    json_t *all = lt_fake("GET", "/_requests", NULL), *out = json_array();
    size_t i;
    json_t *r;
    json_array_foreach (all, i, r)
        if (strstr(json_string_value(json_object_get(r, "path")), ":generateContent"))
            json_array_append(out, json_object_get(r, "body"));
    json_decref(all);
    return out;
}

/* ---- validate ---- */

static int validate_count(const char *cfg_json, fakediag *fd)
{
    json_t *cfg = json_loads(cfg_json, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    fakediag_clear(fd);
    int n = plug->validate(cfg, fakediag_diag(fd));
    json_decref(cfg);
    return n;
}

START_TEST(test_validate)
{
    fakediag *fd = fakediag_new();
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\"}", fd), 0);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"model\":\"gemini-2.5-pro\",\"cache\":{\"enabled\":false,"
                                    "\"ttl_s\":600,\"min_tokens\":{\"gemini-2.5-pro\":4096}},\"rate\":"
                                    "{\"requests_per_min\":60,\"tokens_per_min\":100000},\"max_tool_steps\":3,"
                                    "\"temperature\":0.2,\"context_budget_tokens\":50000}",
                                    fd),
                     0);
    ck_assert_int_eq(validate_count("{}", fd), 1);
    ck_assert_int_ge(fakediag_find(fd, "api_key: missing: the Gemini API key is required (e.g. api_key: "
                                       "\"${GEMINI_API_KEY}\")"),
                     0);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"colour\":1}", fd), 1);
    ck_assert_ptr_nonnull(strstr(fakediag_line(fd, 0), "unknown key \"colour\" (known: api_key, model, base_url"));
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"cache\":{\"ttl_s\":0,\"size\":1}}", fd), 2);
    ck_assert_int_ge(fakediag_find(fd, "cache.ttl_s: expected a whole number of seconds from 1 to 604800"), 0);
    ck_assert_int_ge(fakediag_find(fd, "cache: unknown key \"size\" (known: enabled, ttl_s, min_tokens)"), 0);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"prices\":{\"m\":{\"input\":1}}}", fd), 1);
    ck_assert_int_ge(fakediag_find(fd, "prices.m: missing \"output\" (USD per 1M output tokens)"), 0);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"timeout_ms\":\"5s\",\"rate\":{\"requests_per_min\":0}}", fd),
                     2);
    ck_assert_int_ge(fakediag_find(fd, "timeout_ms: expected a whole number of milliseconds from 100 to 600000, got a string"), 0);
    ck_assert_int_ge(fakediag_find(fd, "rate.requests_per_min: expected a number greater than 0, got 0"), 0);
    fakediag_clear(fd);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"rate\":{\"requests_per_min\":6,\"window_ms\":50}}", fd), 1);
    ck_assert_int_ge(fakediag_find(fd, "rate.window_ms: expected an integer from 100 to 3600000 (milliseconds), got 50"), 0);
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"base_url\":\"ftp://x\"}", fd), 1);
    /* ca_file: a readable PEM file (a proxy or a private endpoint with its own CA) */
    char ca[64] = "/tmp/test_gemini_ca.XXXXXX";
    int cafd = mkstemp(ca);
    ck_assert_int_ge(cafd, 0);
    close(cafd);
    char cfg[256];
    snprintf(cfg, sizeof cfg, "{\"api_key\":\"k\",\"ca_file\":\"%s\"}", ca);
    ck_assert_int_eq(validate_count(cfg, fd), 0);
    unlink(ca);
    ck_assert_int_eq(validate_count(cfg, fd), 1);
    ck_assert_ptr_nonnull(strstr(fakediag_line(fd, 0), "ca_file: cannot read /tmp/test_gemini_ca."));
    ck_assert_ptr_nonnull(strstr(fakediag_line(fd, 0), "No such file or directory"));
    ck_assert_int_eq(validate_count("{\"api_key\":\"k\",\"ca_file\":true}", fd), 1);
    ck_assert_int_ge(fakediag_find(fd, "ca_file: expected the path of a PEM file of CA certificates, got a boolean"), 0);
    fakediag_free(fd);
}
END_TEST

/* ---- generate ---- */

START_TEST(test_happy_path_language)
{
    lt_plugin lp;
    start(&lp, "");
    lt_req *r = lt_req_new("hu", "Mennyi a kiszállási díj?", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_str_eq(o.text, "[hu] echo: Mennyi a kiszállási díj?");
    ck_assert_str_eq(o.model, "gemini-2.5-flash");
    ck_assert_uint_eq(o.n_cited, 2); /* chunks were the knowledge */
    ck_assert_uint_gt(o.in, 0);
    ck_assert_uint_eq(o.cached, 0);
    ck_assert_int_eq(o.cache_hit, 0);
    ck_assert(o.confidence > 0.8);
    ck_assert_int_eq(o.handoff, 0);
    json_t *b = gen_bodies();
    ck_assert_uint_eq(json_array_size(b), 1);
    json_t *body = json_array_get(b, 0);
    ck_assert_ptr_null(json_object_get(body, "cachedContent"));
    const char *sys = json_string_value(json_object_get(
        json_array_get(json_object_get(json_object_get(body, "systemInstruction"), "parts"), 0), "text"));
    ck_assert_ptr_nonnull(strstr(sys, "Kokó"));
    ck_assert_ptr_nonnull(strstr(sys, "Reply in Hungarian"));
    ck_assert_ptr_nonnull(strstr(sys, "outside Pest county"));
    ck_assert_ptr_nonnull(strstr(sys, "handoff_to_human"));
    ck_assert_ptr_nonnull(json_object_get(body, "tools"));
    json_t *contents = json_object_get(body, "contents");
    ck_assert_uint_eq(json_array_size(contents), 3); /* 2 history turns + the message */
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(contents, 1), "role")), "model");
    json_decref(b);
    json_t *reqs = lt_fake("GET", "/_requests", NULL);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(reqs, 0), "key")), KEY);
    ck_assert_ptr_null(strstr(json_string_value(json_object_get(json_array_get(reqs, 0), "query")), KEY));
    json_decref(reqs);
    /* English */
    lt_req *r2 = lt_req_new("en", "How much is the call-out fee?", NULL, NULL);
    lt_generate(&lp, r2, &o);
    ck_assert_str_eq(o.text, "[en] echo: How much is the call-out fee?");
    lt_out_clear(&o);
    lt_req_free(r);
    lt_req_free(r2);
    lt_fini(&lp);
}
END_TEST

static void assert_no_mix(void)
{
    json_t *b = gen_bodies();
    size_t i;
    json_t *body;
    json_array_foreach (b, i, body)
        if (json_object_get(body, "cachedContent")) {
            ck_assert_ptr_null(json_object_get(body, "systemInstruction"));
            ck_assert_ptr_null(json_object_get(body, "tools"));
            ck_assert_ptr_null(json_object_get(body, "toolConfig"));
        }
    json_decref(b);
}

START_TEST(test_cache_created_once_100)
{
    lt_plugin lp;
    start(&lp, "");
    enum { N = 100 };
    lt_req *r[N];
    lt_out o[N];
    memset(o, 0, sizeof o);
    char *kb = lt_kb(120, 1); /* ~13 KB: above the 1024-token minimum */
    for (int i = 0; i < N; i++) {
        r[i] = lt_req_new(i % 2 ? "en" : "hu", i % 2 ? "Opening hours?" : "Nyitvatartás?", NULL,
                          "aaaa000000000001");
        r[i]->req.knowledge = kb;
        r[i]->req.knowledge_bytes = strlen(kb);
    }
    /* the first half all at once (they wait for the one creation), then one by one */
    for (int i = 0; i < N / 2; i++)
        lt_ops(&lp)->generate(lp.state, &r[i]->req, lt_on_result, &o[i]);
    for (int i = 0; i < N / 2; i++)
        ck_assert_int_eq(fakehost_run_until(lp.fh, &o[i].done, 10000), 0);
    for (int i = N / 2; i < N; i++)
        lt_generate(&lp, r[i], &o[i]);
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(o[i].st, KOKO_OK);
        ck_assert_int_eq(o[i].cache_hit, 1);
        ck_assert_uint_gt(o[i].cached, 1000);
        ck_assert_uint_ge(o[i].in, o[i].cached);
        ck_assert_uint_eq(o[i].n_cited, 0); /* the whole KB was the knowledge */
        ck_assert_str_eq(o[i].text, i % 2 ? "[en] echo: Opening hours?" : "[hu] echo: Nyitvatartás?");
    }
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 1);
    ck_assert_uint_eq(lt_count("POST", ":generateContent"), N);
    assert_no_mix();
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    ck_assert_uint_eq(json_array_size(info), 1);
    json_t *c = json_array_get(info, 0);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "hits")), N);
    ck_assert_int_eq(json_integer_value(json_object_get(c, "tokens_saved")),
                     N * json_integer_value(json_object_get(c, "tokens")));
    ck_assert_str_eq(json_string_value(json_object_get(c, "model")), "gemini-2.5-flash");
    ck_assert(json_real_value(json_object_get(c, "usd_saved")) > 0);
    json_decref(info);
    for (int i = 0; i < N; i++) {
        lt_out_clear(&o[i]);
        lt_req_free(r[i]);
    }
    free(kb);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_ttl_extension)
{
    lt_plugin lp;
    start(&lp, "\"cache\":{\"ttl_s\":3}");
    lt_req *r = lt_req_new("en", "Hello", lt_kb(120, 2), "bbbb000000000001");
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.cache_hit, 1);
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    char *exp1 = strdup(json_string_value(json_object_get(json_array_get(info, 0), "expires")));
    json_decref(info);
    ck_assert_uint_eq(lt_count("PATCH", NULL), 0);
    usleep(2550 * 1000); /* less than 20 % of 3 s left */
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.cache_hit, 1);
    fakehost_run(lp.fh, 3000); /* the PATCH answer */
    ck_assert_uint_eq(lt_count("PATCH", "/v1beta/cachedContents/"), 1);
    json_t *reqs = lt_fake("GET", "/_requests", NULL);
    size_t i;
    json_t *q;
    json_array_foreach (reqs, i, q)
        if (strcmp(json_string_value(json_object_get(q, "method")), "PATCH") == 0) {
            ck_assert_str_eq(json_string_value(json_object_get(q, "query")), "updateMask=ttl");
            ck_assert_str_eq(json_string_value(json_object_get(json_object_get(q, "body"), "ttl")), "3s");
        }
    json_decref(reqs);
    info = lt_ops(&lp)->cache_info(lp.state);
    ck_assert_str_ne(json_string_value(json_object_get(json_array_get(info, 0), "expires")), exp1);
    json_decref(info);
    /* the extended cache is still good after the original expiry */
    usleep(800 * 1000);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.cache_hit, 1);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 1);
    free(exp1);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

static void run_both(lt_plugin *a, lt_plugin *b, lt_out *o, int n)
{
    double t0 = lt_now_ms();
    for (;;) {
        int done = 0;
        for (int i = 0; i < n; i++)
            done += o[i].done;
        if (done == n || lt_now_ms() - t0 > 10000)
            break;
        event_base_loop(fakehost_base(a->fh), EVLOOP_NONBLOCK);
        event_base_loop(fakehost_base(b->fh), EVLOOP_NONBLOCK);
        usleep(1000);
    }
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(o[i].done, 1);
}

/* The handle lives in the store: two replicas create one cache between them
 * (the loser of the lock goes uncached, then reuses it), and a replica
 * started later (a restart) reuses it without creating. */
START_TEST(test_cache_shared_by_replicas)
{
    lt_plugin a, b, c;
    start(&a, "");
    start(&b, "");
    fakehost_share_kv(b.fh, a.fh);
    char *kb = lt_kb(120, 7);
    enum { N = 8 };
    lt_req *r[N + 2];
    lt_out o[N + 2];
    memset(o, 0, sizeof o);
    for (int i = 0; i < N + 2; i++) {
        r[i] = lt_req_new("en", "Hello", NULL, "eeee000000000001");
        r[i]->req.knowledge = kb;
        r[i]->req.knowledge_bytes = strlen(kb);
    }
    for (int i = 0; i < N; i++) {
        lt_plugin *lp = i % 2 ? &b : &a;
        lt_ops(lp)->generate(lp->state, &r[i]->req, lt_on_result, &o[i]);
    }
    run_both(&a, &b, o, N);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(o[i].st, KOKO_OK);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 1);
    const char *stored = fakehost_kv_peek(a.fh, "cache:gemini-2.5-flash:eeee000000000001", NULL);
    ck_assert_ptr_nonnull(stored);
    ck_assert_ptr_nonnull(strstr(stored, "\"name\":\"cachedContents/"));
    ck_assert_ptr_nonnull(strstr(stored, "\"expires\":"));
    usleep(2100 * 1000); /* GEMINI_LOCK_WAIT_S: the loser looks in the store again */
    lt_generate(&b, r[N], &o[N]);
    ck_assert_int_eq(o[N].cache_hit, 1);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 1);
    lt_fini(&b);
    /* a later start of a replica: the handle comes from the store */
    start(&c, "");
    fakehost_share_kv(c.fh, a.fh);
    lt_generate(&c, r[N + 1], &o[N + 1]);
    ck_assert_int_eq(o[N + 1].st, KOKO_OK);
    ck_assert_int_eq(o[N + 1].cache_hit, 1);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 1);
    ck_assert_int_ge(fakehost_log_find(c.fh, "reusing context cache cachedContents/"), 0);
    fakehost_run(c.fh, 2000); /* the shared totals arrive */
    int hits = 0;
    for (int i = 0; i < N + 2; i++)
        hits += o[i].cache_hit;
    json_t *info = lt_ops(&c)->cache_info(c.state);
    json_t *ci = json_array_get(info, 0);
    ck_assert_int_eq(json_is_true(json_object_get(ci, "totals_shared")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(ci, "hits")), hits);
    ck_assert_int_eq(json_integer_value(json_object_get(ci, "hits_here")), 1);
    json_decref(info);
    for (int i = 0; i < N + 2; i++) {
        lt_out_clear(&o[i]);
        r[i]->req.knowledge = NULL;
        lt_req_free(r[i]);
    }
    free(kb);
    lt_fini(&c);
    lt_fini(&a);
}
END_TEST

START_TEST(test_recreate_after_expiry_and_404)
{
    lt_plugin lp;
    start(&lp, "\"cache\":{\"ttl_s\":1}");
    lt_req *r = lt_req_new("en", "Hello", lt_kb(120, 3), "cccc000000000001");
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.cache_hit, 1);
    usleep(1200 * 1000); /* expired */
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.cache_hit, 1);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 2);
    /* gone behind the plugin's back: generateContent answers 404, the plugin recreates */
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    char body[256];
    snprintf(body, sizeof body, "{\"name\":\"%s\"}", json_string_value(json_object_get(json_array_get(info, 0), "name")));
    json_decref(info);
    lt_fake_ok("POST", "/_expire", body);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.cache_hit, 1);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 3);
    ck_assert_int_ge(fakehost_log_find(lp.fh, "is gone (404)"), 0);
    /* the store holds the new handle, not the one that was gone */
    info = lt_ops(&lp)->cache_info(lp.state);
    const char *now_stored = fakehost_kv_peek(lp.fh, "cache:gemini-2.5-flash:cccc000000000001", NULL);
    ck_assert_ptr_nonnull(now_stored);
    ck_assert_ptr_nonnull(strstr(now_stored, json_string_value(json_object_get(json_array_get(info, 0), "name"))));
    json_decref(info);
    assert_no_mix();
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_context_change_deletes_old)
{
    lt_plugin lp;
    start(&lp, "");
    lt_req *a = lt_req_new("en", "Hello", lt_kb(120, 4), "dddd00000000000a");
    lt_req *b = lt_req_new("en", "Hello", lt_kb(130, 5), "dddd00000000000b");
    lt_out o = {0};
    lt_generate(&lp, a, &o);
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    char *old = strdup(json_string_value(json_object_get(json_array_get(info, 0), "name")));
    json_decref(info);
    lt_generate(&lp, b, &o); /* a reload: new KB, new hash */
    ck_assert_int_eq(o.cache_hit, 1);
    fakehost_run(lp.fh, 3000);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 2);
    ck_assert_uint_eq(lt_count("DELETE", old + strlen("cachedContents/")), 1);
    info = lt_ops(&lp)->cache_info(lp.state);
    ck_assert_uint_eq(json_array_size(info), 1);
    ck_assert_str_ne(json_string_value(json_object_get(json_array_get(info, 0), "name")), old);
    json_decref(info);
    json_t *live = lt_fake("GET", "/_caches", NULL);
    ck_assert_uint_eq(json_array_size(live), 1);
    json_decref(live);
    /* a straggler of the old generation goes uncached instead of rebuilding the old cache */
    lt_generate(&lp, a, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.cache_hit, 0);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 2);
    assert_no_mix();
    free(old);
    lt_out_clear(&o);
    lt_req_free(a);
    lt_req_free(b);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_small_kb_and_budget_not_cached)
{
    lt_plugin lp;
    start(&lp, "\"context_budget_tokens\":2000");
    lt_req *small = lt_req_new("en", "Hello", lt_kb(5, 6), "eeee000000000001");
    lt_req *big = lt_req_new("en", "Hello", lt_kb(200, 6), "eeee000000000002"); /* ~5500 tokens > budget */
    lt_out o = {0};
    lt_generate(&lp, small, &o);
    ck_assert_int_eq(o.cache_hit, 0);
    ck_assert_uint_eq(o.n_cited, 0);
    lt_generate(&lp, big, &o);
    ck_assert_int_eq(o.cache_hit, 0);
    ck_assert_uint_eq(o.n_cited, 2); /* chunks instead */
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 0);
    json_t *bodies = gen_bodies();
    const char *sys0 = json_string_value(json_object_get(
        json_array_get(json_object_get(json_object_get(json_array_get(bodies, 0), "systemInstruction"), "parts"), 0),
        "text"));
    ck_assert_ptr_nonnull(strstr(sys0, "Service 4 (edition 6)")); /* the small KB sent inline */
    char *all = json_dumps(json_array_get(bodies, 1), 0);
    ck_assert_ptr_null(strstr(all, "Service 150"));
    ck_assert_ptr_nonnull(strstr(all, "Kiszállási díj"));
    free(all);
    json_decref(bodies);
    lt_out_clear(&o);
    lt_req_free(small);
    lt_req_free(big);
    lt_fini(&lp);
}
END_TEST

static json_t *weather_tool(const char *name, const json_t *args, koko_status *st, void *arg)
{
    (void)arg;
    *st = KOKO_OK;
    if (strcmp(name, "test_weather") != 0)
        return json_pack("{s:s}", "error", "unknown");
    return json_pack("{s:i,s:s}", "temp", 21, "q", json_string_value(json_object_get(args, "q")));
}

START_TEST(test_function_call_round_trip)
{
    for (int cached = 0; cached < 2; cached++) {
        setup();
        lt_plugin lp;
        start(&lp, "");
        fakehost_set_tool(lp.fh, weather_tool, NULL);
        lt_req *r = lt_req_new("en", "please use the test tool", cached ? lt_kb(120, 7) : NULL, "ffff000000000001");
        lt_out o = {0};
        lt_generate(&lp, r, &o);
        ck_assert_int_eq(o.st, KOKO_OK);
        ck_assert_uint_eq(fakehost_tool_count(lp.fh), 1);
        ck_assert_str_eq(fakehost_tool_name(lp.fh, 0), "test_weather");
        ck_assert_str_eq(json_string_value(json_object_get(fakehost_tool_args(lp.fh, 0), "q")),
                         "please use the test tool");
        ck_assert_ptr_eq(fakehost_tool_job(lp.fh, 0), r->req.job);
        ck_assert_str_eq(o.text, "[en] tool said: {\"q\": \"please use the test tool\", \"temp\": 21}");
        ck_assert_int_eq(o.cache_hit, cached);
        json_t *bodies = gen_bodies();
        ck_assert_uint_eq(json_array_size(bodies), 2);
        json_t *contents = json_object_get(json_array_get(bodies, 1), "contents");
        json_t *last = json_array_get(contents, json_array_size(contents) - 1);
        json_t *fr = json_object_get(json_array_get(json_object_get(last, "parts"), 0), "functionResponse");
        ck_assert_str_eq(json_string_value(json_object_get(fr, "name")), "test_weather");
        ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(fr, "response"), "temp")), 21);
        json_t *prev = json_array_get(contents, json_array_size(contents) - 2);
        ck_assert_str_eq(json_string_value(json_object_get(prev, "role")), "model");
        json_decref(bodies);
        assert_no_mix();
        /* handoff_to_human */
        lt_req *h = lt_req_new("en", "human please", cached ? lt_kb(120, 7) : NULL, "ffff000000000001");
        lt_generate(&lp, h, &o);
        ck_assert_int_eq(o.st, KOKO_OK);
        ck_assert_int_eq(o.handoff, 1);
        ck_assert(o.confidence > 0.1 && o.confidence < 0.3);
        ck_assert_str_eq(o.reason, "the model asked for a human: the customer asked");
        ck_assert_str_eq(fakehost_tool_name(lp.fh, 1), "handoff_to_human");
        lt_out_clear(&o);
        lt_req_free(r);
        lt_req_free(h);
        lt_fini(&lp);
    }
}
END_TEST

START_TEST(test_tool_steps_limit_and_errors_fed_back)
{
    lt_plugin lp;
    start(&lp, "\"max_tool_steps\":2");
    /* the model keeps calling an unknown function: errors are fed back, then the step limit */
    lt_fake_ok("POST", "/_script",
               "{\"answers\":[{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":"
               "\"nope\",\"args\":{}}}]},\"finishReason\":\"STOP\"}]},{\"candidates\":[{\"content\":{\"role\":"
               "\"model\",\"parts\":[{\"functionCall\":{\"name\":\"nope\",\"args\":{}}}]},\"finishReason\":\"STOP\"}]},"
               "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"nope\","
               "\"args\":{}}}]},\"finishReason\":\"STOP\"}]}]}");
    lt_req *r = lt_req_new("en", "x", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.handoff, 1);
    ck_assert_uint_eq(fakehost_tool_count(lp.fh), 2);
    ck_assert_uint_eq(lt_count("POST", ":generateContent"), 3);
    json_t *bodies = gen_bodies();
    json_t *contents = json_object_get(json_array_get(bodies, 1), "contents");
    json_t *last = json_array_get(contents, json_array_size(contents) - 1);
    json_t *fr = json_object_get(json_array_get(json_object_get(last, "parts"), 0), "functionResponse");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(fr, "response"), "error")), "no such function");
    json_decref(bodies);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

/* ---- retries and errors ---- */

START_TEST(test_retry_delay_honoured)
{
    lt_plugin lp;
    start(&lp, "");
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"status\":429,\"retry_delay\":\"0.7s\"}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    double t0 = lt_now_ms();
    lt_generate(&lp, r, &o);
    double took = lt_now_ms() - t0;
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_msg(took >= 700, "retried after %.0f ms, before the 0.7 s retryDelay", took);
    json_t *reqs = lt_fake("GET", "/_requests", NULL);
    ck_assert_uint_eq(json_array_size(reqs), 2);
    double gap = json_real_value(json_object_get(json_array_get(reqs, 1), "time")) -
                 json_real_value(json_object_get(json_array_get(reqs, 0), "time"));
    ck_assert_msg(gap >= 0.69, "gap %.3f s", gap);
    json_decref(reqs);
    ck_assert_int_ge(fakehost_log_find(lp.fh, "RESOURCE_EXHAUSTED"), 0);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_no_retry_on_400_and_key_never_shown)
{
    lt_plugin lp;
    start(&lp, "\"max_attempts\":4");
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"status\":400}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "HTTP 400 INVALID_ARGUMENT: injected fault (1 attempt)"));
    ck_assert_ptr_nonnull(strstr(o.error, ":generateContent"));
    ck_assert_ptr_null(strstr(o.error, KEY));
    ck_assert_uint_eq(lt_count(NULL, NULL), 1);
    for (size_t i = 0; i < fakehost_log_count(lp.fh); i++)
        ck_assert_ptr_null(strstr(fakehost_log_line(lp.fh, i), KEY));
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
    /* a wrong key: the API's 400, not retried */
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"api_key\":\"wrong-key\",\"base_url\":\"%s\"}", lt_fake_url);
    lt_init(&lp, plug, cfg);
    r = lt_req_new("en", "Hello", NULL, NULL);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "API key not valid"));
    ck_assert_ptr_null(strstr(o.error, "wrong-key"));
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_503_retried_then_temporary)
{
    lt_plugin lp;
    start(&lp, "\"max_attempts\":3");
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"status\":503,\"count\":5}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_ERR_TEMPORARY);
    ck_assert_ptr_nonnull(strstr(o.error, "HTTP 503 UNAVAILABLE: The model is overloaded"));
    ck_assert_ptr_nonnull(strstr(o.error, "(3 attempts)"));
    ck_assert_uint_eq(lt_count(NULL, NULL), 3);
    /* malformed JSON is retried too */
    lt_fake_ok("POST", "/_reset", NULL);
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"malformed\":true}");
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_uint_eq(lt_count(NULL, NULL), 2);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_timeout)
{
    lt_plugin lp;
    start(&lp, "\"max_attempts\":2,\"timeout_ms\":300");
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"delay_ms\":1200,\"count\":2}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    double t0 = lt_now_ms();
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_ERR_TEMPORARY);
    ck_assert_ptr_nonnull(strstr(o.error, "timed out after 300 ms (2 attempts)"));
    ck_assert(lt_now_ms() - t0 < 1500);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

/* ---- cost ---- */

START_TEST(test_cost_arithmetic)
{
    lt_plugin lp;
    start(&lp, "");
    /* 10000 prompt tokens of which 8000 cached, 500 output + 100 thinking:
     * (2000 × 0.30 + 8000 × 0.03 + 600 × 2.50) / 1e6 = 0.00234 USD */
    lt_fake_ok("POST", "/_script",
               "{\"answers\":[{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"ok\"}]},"
               "\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":10000,"
               "\"cachedContentTokenCount\":8000,\"candidatesTokenCount\":500,\"thoughtsTokenCount\":100}}]}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_uint_eq(o.in, 10000);
    ck_assert_uint_eq(o.cached, 8000);
    ck_assert_uint_eq(o.out, 600);
    ck_assert_double_eq_tol(o.cost, 0.00234, 1e-12);
    /* cache storage: T tokens × 1.00 USD/1M/h × 1 h, charged to the answer that created it */
    lt_req *c = lt_req_new("en", "Hello", lt_kb(120, 8), "1111000000000001");
    lt_generate(&lp, c, &o);
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    double t = (double)json_integer_value(json_object_get(json_array_get(info, 0), "tokens"));
    json_decref(info);
    double usage = ((double)(o.in - o.cached) * 0.30 + (double)o.cached * 0.03 + (double)o.out * 2.50) / 1e6;
    ck_assert_double_eq_tol(o.cost, usage + t * 1.00 / 1e6 * 3600.0 / 3600.0, 1e-9);
    lt_generate(&lp, c, &o); /* the second answer pays no storage */
    usage = ((double)(o.in - o.cached) * 0.30 + (double)o.cached * 0.03 + (double)o.out * 2.50) / 1e6;
    ck_assert_double_eq_tol(o.cost, usage, 1e-12);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_req_free(c);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_blocked_answer_hands_off)
{
    lt_plugin lp;
    start(&lp, "");
    lt_fake_ok("POST", "/_script",
               "{\"answers\":[{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[]},"
               "\"finishReason\":\"SAFETY\"}]},{\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"}}]}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.handoff, 1);
    ck_assert_double_eq(o.confidence, 0.0);
    ck_assert_ptr_nonnull(strstr(o.reason, "SAFETY"));
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.handoff, 1);
    ck_assert_ptr_nonnull(strstr(o.reason, "PROHIBITED_CONTENT"));
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

/* ---- rate limiter ---- */

/* Windows of 1 s holding 10 requests (600/min): 25 requests need three
 * windows, so the last is granted at least 1 s after the first ones. */
START_TEST(test_rate_limiter_queues)
{
    lt_plugin lp;
    start(&lp, "\"rate\":{\"requests_per_min\":600,\"window_ms\":1000}");
    enum { N = 25 };
    lt_req *r[N];
    lt_out o[N];
    memset(o, 0, sizeof o);
    double t0 = lt_now_ms();
    for (int i = 0; i < N; i++) {
        r[i] = lt_req_new("en", "Hello", NULL, NULL);
        lt_ops(&lp)->generate(lp.state, &r[i]->req, lt_on_result, &o[i]);
    }
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(fakehost_run_until(lp.fh, &o[i].done, 10000), 0);
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(o[i].st, KOKO_OK); /* queued, never refused */
    double last = 0;
    for (int i = 0; i < N; i++)
        if (o[i].at_ms > last)
            last = o[i].at_ms;
    ck_assert_msg(last - t0 >= 1000, "25 requests at 10 per 1 s window took only %.0f ms", last - t0);
    ck_assert_msg(last - t0 < 4000, "took %.0f ms", last - t0);
    ck_assert_uint_ge(fakehost_kv_count(lp.fh, "rate:1000:"), 2); /* one counter per window */
    for (int i = 0; i < N; i++) {
        lt_out_clear(&o[i]);
        lt_req_free(r[i]);
    }
    lt_fini(&lp);
}
END_TEST

/* Two replicas on one store share one budget: 5 requests per 1 s window,
 * 6 requests each. Alone each would finish within two windows (< 1 s after
 * the start); together the 12 need three. */
START_TEST(test_rate_limit_shared_by_replicas)
{
    lt_plugin a, b;
    const char *rate = "\"rate\":{\"requests_per_min\":300,\"window_ms\":1000}";
    start(&a, rate);
    start(&b, rate);
    fakehost_share_kv(b.fh, a.fh);
    enum { N = 12 };
    lt_req *r[N];
    lt_out o[N];
    memset(o, 0, sizeof o);
    double t0 = lt_now_ms();
    for (int i = 0; i < N; i++) {
        r[i] = lt_req_new("en", "Hello", NULL, NULL);
        lt_plugin *lp = i % 2 ? &b : &a;
        lt_ops(lp)->generate(lp->state, &r[i]->req, lt_on_result, &o[i]);
    }
    for (;;) {
        int done = 0;
        for (int i = 0; i < N; i++)
            done += o[i].done;
        if (done == N || lt_now_ms() - t0 > 10000)
            break;
        event_base_loop(fakehost_base(a.fh), EVLOOP_NONBLOCK);
        event_base_loop(fakehost_base(b.fh), EVLOOP_NONBLOCK);
        usleep(2000);
    }
    double last = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(o[i].done, 1);
        ck_assert_int_eq(o[i].st, KOKO_OK);
        if (o[i].at_ms > last)
            last = o[i].at_ms;
    }
    ck_assert_msg(last - t0 >= 1000, "12 requests at 5 per window over 2 replicas took only %.0f ms", last - t0);
    ck_assert_msg(last - t0 < 4000, "took %.0f ms", last - t0);
    for (int i = 0; i < N; i++) {
        lt_out_clear(&o[i]);
        lt_req_free(r[i]);
    }
    lt_fini(&b);
    lt_fini(&a);
}
END_TEST

/* The store fails: the limiter counts locally (warning), the requests are answered. */
START_TEST(test_rate_limit_store_down)
{
    lt_plugin lp;
    start(&lp, "\"rate\":{\"requests_per_min\":60,\"window_ms\":1000}");
    fakehost_kv_fail(lp.fh, KOKO_KV_E_UNAVAILABLE);
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o;
    memset(&o, 0, sizeof o);
    for (int i = 0; i < 3; i++) {
        lt_generate(&lp, r, &o);
        ck_assert_int_eq(o.st, KOKO_OK);
    }
    ck_assert_int_ge(fakehost_log_find(lp.fh, "rate limit: the store failed"), 0);
    ck_assert_int_ge(fakehost_log_find(lp.fh, "counting this replica's requests locally"), 0);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

/* ---- refresh, stop ---- */

static int refresh_done_flag;
static koko_status refresh_st;
static void on_refresh(koko_status st, const char *error, void *arg)
{
    (void)error;
    (void)arg;
    refresh_st = st;
    refresh_done_flag++;
}

START_TEST(test_cache_refresh)
{
    lt_plugin lp;
    start(&lp, "");
    refresh_done_flag = 0;
    lt_ops(&lp)->cache_refresh(lp.state, on_refresh, NULL); /* nothing cached yet */
    ck_assert_int_eq(refresh_done_flag, 0);
    ck_assert_int_eq(fakehost_run_until(lp.fh, &refresh_done_flag, 3000), 0);
    ck_assert_int_eq(refresh_st, KOKO_OK);
    lt_req *r = lt_req_new("en", "Hello", lt_kb(120, 9), "2222000000000001");
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    json_t *info = lt_ops(&lp)->cache_info(lp.state);
    char *old = strdup(json_string_value(json_object_get(json_array_get(info, 0), "name")));
    json_decref(info);
    refresh_done_flag = 0;
    lt_ops(&lp)->cache_refresh(lp.state, on_refresh, NULL);
    ck_assert_int_eq(fakehost_run_until(lp.fh, &refresh_done_flag, 3000), 0);
    ck_assert_int_eq(refresh_st, KOKO_OK);
    ck_assert_int_eq(refresh_done_flag, 1);
    fakehost_run(lp.fh, 3000);
    ck_assert_uint_eq(lt_count("POST", "/v1beta/cachedContents"), 2);
    ck_assert_uint_eq(lt_count("DELETE", old + strlen("cachedContents/")), 1);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.cache_hit, 1);
    free(old);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_stop_drains)
{
    lt_plugin lp;
    start(&lp, "");
    lt_fake_ok("POST", "/_faults", "{\"path_regex\":\"generateContent\",\"delay_ms\":300}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0}, o2 = {0};
    lt_ops(&lp)->generate(lp.state, &r->req, lt_on_result, &o);
    lp.p->stop(lp.state, fakehost_drained);
    ck_assert_uint_eq(fakehost_drained_count(lp.fh), 0);
    lt_ops(&lp)->generate(lp.state, &r->req, lt_on_result, &o2);
    ck_assert_int_eq(o2.done, 0);
    ck_assert_int_eq(fakehost_run(lp.fh, 5000), 0);
    ck_assert_int_eq(o.st, KOKO_OK); /* in flight: finished */
    ck_assert_int_eq(o2.st, KOKO_ERR_CANCELLED);
    ck_assert_uint_eq(fakehost_drained_count(lp.fh), 1);
    lp.p->destroy(lp.state);
    fakehost_free(lp.fh);
    lt_out_clear(&o);
    lt_out_clear(&o2);
    lt_req_free(r);
}
END_TEST

int main(void)
{
    const char *dir = getenv("KOKO_SRCDIR") ? getenv("KOKO_SRCDIR") : ".";
    (void)dir;
    srandom((unsigned)time(NULL));
    plug = lt_load("KOKO_GEMINI_SO", "gemini", &plug_handle);
    const char *extra[] = {"--key", KEY, NULL};
    lt_fake_start("fake_gemini.py", extra);
    Suite *s = suite_create("gemini");
    TCase *tc = tcase_create("gemini");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_validate);
    tcase_add_test(tc, test_happy_path_language);
    tcase_add_test(tc, test_cache_created_once_100);
    tcase_add_test(tc, test_ttl_extension);
    tcase_add_test(tc, test_recreate_after_expiry_and_404);
    tcase_add_test(tc, test_context_change_deletes_old);
    tcase_add_test(tc, test_small_kb_and_budget_not_cached);
    tcase_add_test(tc, test_function_call_round_trip);
    tcase_add_test(tc, test_tool_steps_limit_and_errors_fed_back);
    tcase_add_test(tc, test_retry_delay_honoured);
    tcase_add_test(tc, test_no_retry_on_400_and_key_never_shown);
    tcase_add_test(tc, test_503_retried_then_temporary);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_cost_arithmetic);
    tcase_add_test(tc, test_blocked_answer_hands_off);
    tcase_add_test(tc, test_cache_shared_by_replicas);
    tcase_add_test(tc, test_rate_limiter_queues);
    tcase_add_test(tc, test_rate_limit_shared_by_replicas);
    tcase_add_test(tc, test_rate_limit_store_down);
    tcase_add_test(tc, test_cache_refresh);
    tcase_add_test(tc, test_stop_drains);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lt_fake_stop();
    dlclose(plug_handle);
    return failed ? 1 : 0;
}
