/*
 * tests/test_openai.c — the `openai` LLM backend (OpenAI-compatible chat
 * completions), loaded as kokod loads it.
 *
 * The .so ($KOKO_OPENAI_SO, else $KOKO_BUILDDIR/plugins/openai/.libs/openai.so)
 * runs on tests/fakehost against tests/fakes/fake_openai.py (started once,
 * reset before each test): messages and tools on the wire, tool_calls round
 * trips, Retry-After, no retry on 4xx, usage and cost, refusals.
 */
#include "llmtest.h"

#define KEY "sk-test"

static const koko_plugin *plug;
static void *plug_handle;

static void setup(void)
{
    lt_fake_ok("POST", "/_reset", NULL);
}

static void start(lt_plugin *lp, const char *extra)
{
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"api_key\":\"%s\",\"base_url\":\"%s/\",\"model\":\"gpt-test\",\"backoff_ms\":50,"
             "\"prices\":{\"gpt-test\":{\"input\":0.15,\"cached_input\":0.075,\"output\":0.60}}%s%s}",
             KEY, lt_fake_url, *extra ? "," : "", extra);
    lt_init(lp, plug, cfg);
}

static json_t *bodies(void)
{
    json_t *all = lt_fake("GET", "/_requests", NULL), *out = json_array();
    size_t i;
    json_t *r;
    json_array_foreach (all, i, r)
        json_array_append(out, json_object_get(r, "body"));
    json_decref(all);
    return out;
}

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
    ck_assert_int_eq(validate_count("{\"base_url\":\"http://127.0.0.1:11434\",\"model\":\"llama3.1:8b\"}", fd), 0);
    ck_assert_int_eq(validate_count("{}", fd), 2);
    ck_assert_int_ge(fakediag_find(fd, "base_url: missing: the server's URL is required (e.g. "
                                       "\"https://api.openai.com\" or \"http://127.0.0.1:11434\" for Ollama)"),
                     0);
    ck_assert_int_ge(fakediag_find(fd, "model: missing: the model name is required (e.g. \"gpt-4o-mini\")"), 0);
    ck_assert_int_eq(validate_count("{\"base_url\":\"x\",\"model\":\"m\",\"cache\":{}}", fd), 2);
    ck_assert_ptr_nonnull(strstr(fakediag_line(fd, 1), "unknown key \"cache\" (known: base_url, model, api_key"));
    fakediag_free(fd);
}
END_TEST

START_TEST(test_happy_path)
{
    lt_plugin lp;
    start(&lp, "");
    lt_req *r = lt_req_new("hu", "Mennyi a kiszállási díj?", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_str_eq(o.text, "[hu] echo: Mennyi a kiszállási díj?");
    ck_assert_str_eq(o.model, "gpt-test");
    ck_assert_uint_eq(o.n_cited, 2);
    ck_assert(o.confidence > 0.8);
    json_t *all = lt_fake("GET", "/_requests", NULL);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(all, 0), "authorization")), "Bearer " KEY);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(all, 0), "path")), "/v1/chat/completions");
    json_t *body = json_object_get(json_array_get(all, 0), "body");
    json_t *msgs = json_object_get(body, "messages");
    ck_assert_uint_eq(json_array_size(msgs), 4);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 0), "role")), "system");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                                 "Reply in Hungarian"));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(msgs, 2), "role")), "assistant");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_array_get(msgs, 3), "content")),
                                 "Kiszállási díj: 8000 Ft."));
    json_t *tool = json_array_get(json_object_get(body, "tools"), 1);
    ck_assert_str_eq(json_string_value(json_object_get(tool, "type")), "function");
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(tool, "function"), "name")), "test_weather");
    ck_assert_str_eq(json_string_value(json_object_get(body, "tool_choice")), "auto");
    json_decref(all);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

static json_t *weather_tool(const char *name, const json_t *args, koko_status *st, void *arg)
{
    (void)arg;
    (void)args;
    *st = KOKO_OK;
    return strcmp(name, "test_weather") == 0 ? json_pack("{s:i}", "temp", 21) : NULL;
}

START_TEST(test_tool_round_trip)
{
    lt_plugin lp;
    start(&lp, "");
    fakehost_set_tool(lp.fh, weather_tool, NULL);
    lt_req *r = lt_req_new("en", "please use the test tool", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_str_eq(o.text, "[en] tool said: {\"temp\":21}");
    ck_assert_uint_eq(fakehost_tool_count(lp.fh), 1);
    ck_assert_str_eq(fakehost_tool_name(lp.fh, 0), "test_weather");
    ck_assert_ptr_eq(fakehost_tool_job(lp.fh, 0), r->req.job);
    json_t *b = bodies();
    ck_assert_uint_eq(json_array_size(b), 2);
    json_t *msgs = json_object_get(json_array_get(b, 1), "messages");
    size_t n = json_array_size(msgs);
    json_t *asst = json_array_get(msgs, n - 2), *tmsg = json_array_get(msgs, n - 1);
    ck_assert_str_eq(json_string_value(json_object_get(asst, "role")), "assistant");
    const char *id = json_string_value(json_object_get(json_array_get(json_object_get(asst, "tool_calls"), 0), "id"));
    ck_assert_str_eq(json_string_value(json_object_get(tmsg, "role")), "tool");
    ck_assert_str_eq(json_string_value(json_object_get(tmsg, "tool_call_id")), id);
    json_decref(b);
    lt_req *h = lt_req_new("en", "human please", NULL, NULL);
    lt_generate(&lp, h, &o);
    ck_assert_int_eq(o.handoff, 1);
    ck_assert_str_eq(o.reason, "the model asked for a human: the customer asked");
    lt_out_clear(&o);
    lt_req_free(r);
    lt_req_free(h);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_retry_after_and_no_retry_on_4xx)
{
    lt_plugin lp;
    start(&lp, "");
    lt_fake_ok("POST", "/_faults", "{\"status\":429,\"retry_after\":1}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    double t0 = lt_now_ms();
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_msg(lt_now_ms() - t0 >= 1000, "Retry-After: 1 not honoured");
    ck_assert_uint_eq(lt_count(NULL, NULL), 2);
    lt_fini(&lp);
    /* a wrong key: 401, not retried, the key never in the message */
    setup();
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"api_key\":\"sk-wrong\",\"base_url\":\"%s\",\"model\":\"m\",\"max_attempts\":4}",
             lt_fake_url);
    lt_init(&lp, plug, cfg);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "HTTP 401 invalid_request_error: Incorrect API key provided. (1 attempt)"));
    ck_assert_ptr_null(strstr(o.error, "sk-wrong"));
    ck_assert_uint_eq(lt_count(NULL, NULL), 1);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_cost_and_refusal)
{
    lt_plugin lp;
    start(&lp, "");
    /* (10000 - 6000) × 0.15 + 6000 × 0.075 + 400 × 0.60 = 600 + 450 + 240 → 0.00129 USD */
    lt_fake_ok("POST", "/_script",
               "{\"answers\":[{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"ok\"},"
               "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10000,\"completion_tokens\":400,"
               "\"prompt_tokens_details\":{\"cached_tokens\":6000}}},"
               "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,\"refusal\":"
               "\"I can't help with that.\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,"
               "\"completion_tokens\":5}}]}");
    lt_req *r = lt_req_new("en", "Hello", NULL, NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_uint_eq(o.in, 10000);
    ck_assert_uint_eq(o.cached, 6000);
    ck_assert_uint_eq(o.out, 400);
    ck_assert_int_eq(o.cache_hit, 1);
    ck_assert_double_eq_tol(o.cost, 0.00129, 1e-12);
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_int_eq(o.handoff, 1);
    ck_assert_double_eq(o.confidence, 0.0);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

START_TEST(test_whole_kb_in_system_and_no_key)
{
    char cfg[512];
    snprintf(cfg, sizeof cfg, "{\"base_url\":\"%s\",\"model\":\"llama3.1:8b\"}", lt_fake_url);
    lt_plugin lp;
    lt_init(&lp, plug, cfg);
    lt_req *r = lt_req_new("en", "Hello", lt_kb(20, 1), NULL);
    lt_out o = {0};
    lt_generate(&lp, r, &o);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_uint_eq(o.n_cited, 0);
    json_t *all = lt_fake("GET", "/_requests", NULL);
    ck_assert(json_is_null(json_object_get(json_array_get(all, 0), "authorization")));
    json_t *msgs = json_object_get(json_object_get(json_array_get(all, 0), "body"), "messages");
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_array_get(msgs, 0), "content")),
                                 "Service 19 (edition 1)"));
    json_decref(all);
    lt_out_clear(&o);
    lt_req_free(r);
    lt_fini(&lp);
}
END_TEST

int main(void)
{
    srandom((unsigned)time(NULL));
    plug = lt_load("KOKO_OPENAI_SO", "openai", &plug_handle);
    lt_fake_start("fake_openai.py", NULL); /* no --key: the tests' own key checks are per request */
    Suite *s = suite_create("openai");
    TCase *tc = tcase_create("openai");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_validate);
    tcase_add_test(tc, test_whole_kb_in_system_and_no_key);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    lt_fake_stop();
    /* the keyed tests against a fake that checks the Bearer key */
    const char *extra[] = {"--key", KEY, NULL};
    lt_fake_start("fake_openai.py", extra);
    s = suite_create("openai-keyed");
    tc = tcase_create("keyed");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_add_test(tc, test_happy_path);
    tcase_add_test(tc, test_tool_round_trip);
    tcase_add_test(tc, test_retry_after_and_no_retry_on_4xx);
    tcase_add_test(tc, test_cost_and_refusal);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    failed += srunner_ntests_failed(sr);
    srunner_free(sr);
    lt_fake_stop();
    dlclose(plug_handle);
    return failed ? 1 : 0;
}
