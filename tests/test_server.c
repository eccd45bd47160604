/*
 * test_server.c — unit tests for core/server.c through a real kokod built
 * in-process: kokod_new on a temporary configuration, kokod_listen on port
 * 0, and the event loop run here (event_base_loop EVLOOP_NONBLOCK) while a
 * libcurl easy handle in a helper thread makes each request (tests/inproc.c).
 *
 * Covers /health without a token, the bearer token (401/200), 404, 405 with
 * Allow, 413 as JSON, 400 for a wrong content type, and a real /api/chat
 * answered by the echo test plugin.
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "inproc.h"
#include "kokod.h"
#include "server.h"
#include "testutil.h"

/* ---- a kokod in this process ---- */

static const char *tmp_root;
static char cfg_path[512];
static char plug_dir[512];

static void setup(void)
{
    tmp_root = inproc_dirs("server", cfg_path, sizeof cfg_path, plug_dir, sizeof plug_dir);
    tu_link_test_plugin(plug_dir, "echo");
}

static void write_config(const char *token_line, long max_body)
{
    tu_write_text(cfg_path,
                  "base_dir: %s\n"
                  "server:\n"
                  "  listen: 127.0.0.1:0\n"
                  "  control: ctl.sock\n"
                  "%s"
                  "  max_body: %ld\n"
                  "  drain_timeout_ms: 2000\n"
                  "state: {dir: state}\n"
                  "log: {level: error}\n"
                  "tenants:\n"
                  "  demo:\n"
                  "    languages: [en, hu]\n"
                  "    llm: [echo]\n"
                  "    backends:\n"
                  "      echo: {delay_ms: 10}\n"
                  "    handoff: {min_confidence: 0}\n",
                  tmp_root, token_line, max_body);
}

static kokod *start(void)
{
    return inproc_start(cfg_path, plug_dir);
}

/* The answer's "error" member. */
static void ck_error(const inproc_call *c, long status, const char *msg)
{
    ck_assert_int_eq(c->status, status);
    ck_assert_str_eq(c->ctype_out, "application/json");
    json_error_t je;
    json_t *doc = json_loads(c->resp ? c->resp : "", 0, &je);
    ck_assert_msg(doc != NULL, "not JSON: %s", c->resp ? c->resp : "(empty)");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "error")), msg);
    ck_assert_uint_eq(json_object_size(doc), 1);
    json_decref(doc);
}

/* ---- tests ---- */

START_TEST(test_health)
{
    write_config("  api_token: secret\n", 1024);
    kokod *kd = start();
    inproc_call c;
    inproc_request(kd, &c, "GET", "/health", NULL, NULL); /* no token needed */
    ck_assert_int_eq(c.status, 200);
    json_t *doc = json_loads(c.resp, 0, NULL);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "ok");
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "generation")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "tenants")), 1);
    json_decref(doc);
    free(c.resp);

    inproc_request(kd, &c, "HEAD", "/health", NULL, NULL);
    ck_assert_int_eq(c.status, 200);
    ck_assert_ptr_null(c.resp); /* HEAD: no body */
    ck_assert_uint_eq(server_inflight(kd->srv), 0);
    kokod_free(kd);
}
END_TEST

START_TEST(test_auth)
{
    write_config("  api_token: secret\n", 1024);
    kokod *kd = start();
    const char *body = "{\"tenant\": \"demo\", \"message\": \"hello there\", \"language\": \"en\"}";
    const char *e401 = "missing or wrong bearer token: send \"Authorization: Bearer <server.api_token>\"";
    inproc_call c;
    inproc_request(kd, &c, "POST", "/api/chat", NULL, body);
    ck_error(&c, 401, e401);
    ck_assert_str_eq(c.www_auth, "Bearer realm=\"kokod\"");
    free(c.resp);
    inproc_request(kd, &c, "POST", "/api/chat", "wrong", body);
    ck_error(&c, 401, e401);
    free(c.resp);
    inproc_request(kd, &c, "POST", "/api/chat", "secretx", body);
    ck_error(&c, 401, e401);
    free(c.resp);
    inproc_request(kd, &c, "GET", "/projects", NULL, NULL);
    ck_error(&c, 401, e401);
    free(c.resp);

    inproc_request(kd, &c, "POST", "/api/chat", "secret", body);
    ck_assert_int_eq(c.status, 200);
    json_t *doc = json_loads(c.resp, 0, NULL);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "reply")), "echo[v1]: hello there");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "backend")), "echo");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "route")), "default");
    ck_assert_str_eq(json_string_value(json_object_get(doc, "language")), "en");
    ck_assert(json_is_false(json_object_get(doc, "handoff")));
    json_decref(doc);
    free(c.resp);

    inproc_request(kd, &c, "GET", "/projects", "secret", NULL);
    ck_assert_int_eq(c.status, 200);
    doc = json_loads(c.resp, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(doc, "projects"), 0), "name")),
                     "demo");
    json_decref(doc);
    free(c.resp);
    kokod_free(kd);
}
END_TEST

START_TEST(test_no_token_configured)
{
    /* loopback without api_token: the API is open */
    write_config("", 1024);
    kokod *kd = start();
    inproc_call c;
    inproc_request(kd, &c, "POST", "/api/chat", NULL,
                   "{\"tenant\": \"demo\", \"message\": \"hi\", \"language\": \"en\"}");
    ck_assert_int_eq(c.status, 200);
    free(c.resp);
    kokod_free(kd);
}
END_TEST

START_TEST(test_errors)
{
    write_config("  api_token: secret\n", 1024);
    kokod *kd = start();
    inproc_call c;
    inproc_request(kd, &c, "GET", "/nope", "secret", NULL);
    ck_error(&c, 404, "no such path: /nope");
    free(c.resp);
    inproc_request(kd, &c, "GET", "/api/chat/x", NULL, NULL);
    ck_error(&c, 404, "no such path: /api/chat/x");
    free(c.resp);

    inproc_request(kd, &c, "GET", "/api/chat", "secret", NULL);
    ck_error(&c, 405, "method GET not allowed on /api/chat (allowed: POST)");
    ck_assert_str_eq(c.allow, "POST");
    free(c.resp);
    inproc_request(kd, &c, "DELETE", "/health", NULL, NULL);
    ck_error(&c, 405, "method DELETE not allowed on /health (allowed: GET, HEAD)");
    ck_assert_str_eq(c.allow, "GET, HEAD");
    free(c.resp);

    char big[2001];
    memset(big, 'a', 2000);
    big[2000] = '\0';
    inproc_request(kd, &c, "POST", "/api/chat", "secret", big);
    ck_error(&c, 413, "request body is 2000 bytes, more than server.max_body (1024)");
    free(c.resp);

    memset(&c, 0, sizeof c);
    inproc_request(kd, &c, "POST", "/api/chat", "secret", "{\"tenant\": \"nobody\", \"message\": \"hi\"}");
    ck_error(&c, 404, "unknown tenant \"nobody\"");
    free(c.resp);
    inproc_request(kd, &c, "POST", "/api/chat", "secret", "{\"tenant\": \"demo\", \"message\": ");
    ck_assert_int_eq(c.status, 400);
    free(c.resp);
    ck_assert_uint_eq(server_inflight(kd->srv), 0);
    kokod_free(kd);
}
END_TEST

START_TEST(test_content_type)
{
    write_config("  api_token: secret\n", 1024);
    kokod *kd = start();
    inproc_call c;
    memset(&c, 0, sizeof c);
    c.port = server_port(kd->srv);
    c.method = "POST";
    c.path = "/api/chat";
    c.token = "secret";
    c.ctype = "text/plain";
    c.body = "{\"tenant\": \"demo\", \"message\": \"hi\"}";
    c.body_len = strlen(c.body);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, inproc_http_thread, &c), 0);
    inproc_wait(kd, &c);
    pthread_join(th, NULL);
    ck_error(&c, 400, "Content-Type must be application/json");
    free(c.resp);
    kokod_free(kd);
}
END_TEST

int main(void)
{
    const TTest *tests[] = {test_health, test_auth, test_no_token_configured, test_errors, test_content_type, NULL};
    return inproc_run("server", "http", setup, tests);
}
