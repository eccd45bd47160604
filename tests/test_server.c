/*
 * test_server.c — unit tests for core/server.c through a real kokod built
 * in-process: kokod_new on a temporary configuration, kokod_listen on port
 * 0, and the event loop run here (event_base_loop EVLOOP_NONBLOCK) while a
 * libcurl easy handle in a helper thread makes each request.
 *
 * Covers /health without a token, the bearer token (401/200), 404, 405 with
 * Allow, 413 as JSON, 400 for a wrong content type, and a real /api/chat
 * answered by the echo test plugin.
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

#include "kokod.h"
#include "server.h"

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
    snprintf(tmp_root, sizeof tmp_root, "/tmp/koko-test-server-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
    atexit(teardown);
    snprintf(cfg_path, sizeof cfg_path, "%s/koko.yaml", tmp_root);
    snprintf(plug_dir, sizeof plug_dir, "%s/plugins", tmp_root);
    ck_assert_int_eq(mkdir(plug_dir, 0700), 0);
    char src[1024], dst[1024];
    snprintf(src, sizeof src, "%s/echo.so", env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(dst, sizeof dst, "%s/echo.so", plug_dir);
    ck_assert_msg(access(src, R_OK) == 0, "test plugin %s is missing (run make check)", src);
    ck_assert_int_eq(symlink(src, dst), 0);
}



static void write_config(const char *token_line, long max_body)
{
    FILE *f = fopen(cfg_path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
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
    fclose(f);
}

static kokod *start(void)
{
    diag *d = diag_new();
    const char *extra[] = {plug_dir};
    kokod *kd = kokod_new(cfg_path, extra, 1, d);
    char *errs = diag_join(d, "\n");
    ck_assert_msg(kd != NULL, "kokod_new: %s", errs);
    free(errs);
    diag_free(d);
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

/* The answer's "error" member. */
static void ck_error(const http_call *c, long status, const char *msg)
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
    http_call c;
    request(kd, &c, "GET", "/health", NULL, NULL); /* no token needed */
    ck_assert_int_eq(c.status, 200);
    json_t *doc = json_loads(c.resp, 0, NULL);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(doc, "status")), "ok");
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "generation")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(doc, "tenants")), 1);
    json_decref(doc);
    free(c.resp);

    request(kd, &c, "HEAD", "/health", NULL, NULL);
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
    http_call c;
    request(kd, &c, "POST", "/api/chat", NULL, body);
    ck_error(&c, 401, e401);
    ck_assert_str_eq(c.www_auth, "Bearer realm=\"kokod\"");
    free(c.resp);
    request(kd, &c, "POST", "/api/chat", "wrong", body);
    ck_error(&c, 401, e401);
    free(c.resp);
    request(kd, &c, "POST", "/api/chat", "secretx", body);
    ck_error(&c, 401, e401);
    free(c.resp);
    request(kd, &c, "GET", "/projects", NULL, NULL);
    ck_error(&c, 401, e401);
    free(c.resp);

    request(kd, &c, "POST", "/api/chat", "secret", body);
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

    request(kd, &c, "GET", "/projects", "secret", NULL);
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
    http_call c;
    request(kd, &c, "POST", "/api/chat", NULL, "{\"tenant\": \"demo\", \"message\": \"hi\", \"language\": \"en\"}");
    ck_assert_int_eq(c.status, 200);
    free(c.resp);
    kokod_free(kd);
}
END_TEST

START_TEST(test_errors)
{
    write_config("  api_token: secret\n", 1024);
    kokod *kd = start();
    http_call c;
    request(kd, &c, "GET", "/nope", "secret", NULL);
    ck_error(&c, 404, "no such path: /nope");
    free(c.resp);
    request(kd, &c, "GET", "/api/chat/x", NULL, NULL);
    ck_error(&c, 404, "no such path: /api/chat/x");
    free(c.resp);

    request(kd, &c, "GET", "/api/chat", "secret", NULL);
    ck_error(&c, 405, "method GET not allowed on /api/chat (allowed: POST)");
    ck_assert_str_eq(c.allow, "POST");
    free(c.resp);
    request(kd, &c, "DELETE", "/health", NULL, NULL);
    ck_error(&c, 405, "method DELETE not allowed on /health (allowed: GET, HEAD)");
    ck_assert_str_eq(c.allow, "GET, HEAD");
    free(c.resp);

    char big[2001];
    memset(big, 'a', 2000);
    big[2000] = '\0';
    request(kd, &c, "POST", "/api/chat", "secret", big);
    ck_error(&c, 413, "request body is 2000 bytes, more than server.max_body (1024)");
    free(c.resp);

    memset(&c, 0, sizeof c);
    request(kd, &c, "POST", "/api/chat", "secret", "{\"tenant\": \"nobody\", \"message\": \"hi\"}");
    ck_error(&c, 404, "unknown tenant \"nobody\"");
    free(c.resp);
    request(kd, &c, "POST", "/api/chat", "secret", "{\"tenant\": \"demo\", \"message\": ");
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
    http_call c;
    memset(&c, 0, sizeof c);
    c.port = server_port(kd->srv);
    c.method = "POST";
    c.path = "/api/chat";
    c.token = "secret";
    c.ctype = "text/plain";
    c.body = "{\"tenant\": \"demo\", \"message\": \"hi\"}";
    c.body_len = strlen(c.body);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, http_thread, &c), 0);
    run_until_done(kd, &c);
    pthread_join(th, NULL);
    ck_error(&c, 400, "Content-Type must be application/json");
    free(c.resp);
    kokod_free(kd);
}
END_TEST

static Suite *server_suite(void)
{
    Suite *s = suite_create("server");
    TCase *tc = tcase_create("http");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_health);
    tcase_add_test(tc, test_auth);
    tcase_add_test(tc, test_no_token_configured);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_content_type);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    SRunner *sr = srunner_create(server_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
