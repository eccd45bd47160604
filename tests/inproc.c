/*
 * tests/inproc.c — the in-process kokod of tests/inproc.h: building and
 * starting it, and the libcurl helper thread that makes one request while
 * the test's thread pumps the daemon's loop. Linked into test_server and
 * test_gen next to libkokocore.
 */
#include "inproc.h"

#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server.h"
#include "testutil.h"

const char *inproc_dirs(const char *tag, char *cfg_path, size_t cfg_cap, char *plug_dir, size_t plug_cap)
{
    const char *root = tu_tmp_make(tag);
    snprintf(cfg_path, cfg_cap, "%s/koko.yaml", root);
    snprintf(plug_dir, plug_cap, "%s/plugins", root);
    ck_assert_int_eq(mkdir(plug_dir, 0700), 0);
    return root;
}

kokod *inproc_new(const char *cfg_path, const char *plug_dir)
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

kokod *inproc_start(const char *cfg_path, const char *plug_dir)
{
    kokod *kd = inproc_new(cfg_path, plug_dir);
    char err[512];
    ck_assert_msg(kokod_listen(kd, err, sizeof err) == 0, "kokod_listen: %s", err);
    ck_assert_int_gt(server_port(kd->srv), 0);
    return kd;
}

static size_t on_body(char *p, size_t sz, size_t n, void *arg)
{
    inproc_call *c = arg;
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
    inproc_call *c = arg;
    copy_header(c->allow, sizeof c->allow, p, sz * n, "Allow");
    copy_header(c->www_auth, sizeof c->www_auth, p, sz * n, "WWW-Authenticate");
    copy_header(c->ctype_out, sizeof c->ctype_out, p, sz * n, "Content-Type");
    return sz * n;
}

void *inproc_http_thread(void *arg)
{
    inproc_call *c = arg;
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

void inproc_wait(kokod *kd, inproc_call *c)
{
    for (int i = 0; i < 10000 && !atomic_load(&c->done); i++) {
        event_base_loop(kd->base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_msg(atomic_load(&c->done), "no answer to %s %s within 10 s", c->method, c->path);
}

void inproc_request(kokod *kd, inproc_call *c, const char *method, const char *path, const char *token,
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
    ck_assert_int_eq(pthread_create(&th, NULL, inproc_http_thread, c), 0);
    inproc_wait(kd, c);
    pthread_join(th, NULL);
    ck_assert_msg(c->status > 0, "request failed: %s", c->curl_err);
}

int inproc_run(const char *suite_name, const char *tcase_name, void (*setup)(void), const TTest *const *tests)
{
    Suite *s = suite_create(suite_name);
    TCase *tc = tcase_create(tcase_name);
    tcase_add_checked_fixture(tc, setup, tu_tmp_remove);
    tcase_set_timeout(tc, 30);
    for (; *tests; tests++)
        tcase_add_test(tc, *tests);
    suite_add_tcase(s, tc);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    curl_global_cleanup();
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
