/*
 * tests/fakesrv.c — starting, stopping and calling the fake upstream
 * servers of tests/fakes/ (see tests/fakesrv.h). Depends on libcurl and
 * jansson only, so the plugin tests that do not link libkokocore use it too.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include "fakesrv.h"

#include <check.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int fakesrv_start(const char *script_name, const char *const *extra, pid_t *pid, char *url, size_t url_cap)
{
    const char *src = getenv("KOKO_SRCDIR") ? getenv("KOKO_SRCDIR") : ".";
    char script[1024];
    snprintf(script, sizeof script, "%s/tests/fakes/%s", src, script_name);
    int p[2];
    if (pipe(p) != 0) {
        perror("fakesrv: pipe");
        return -1;
    }
    *pid = fork();
    if (*pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a crashed test */
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        const char *argv[16] = {"python3", script, "--port", "0"};
        int n = 4;
        for (; extra && *extra && n < 15; extra++)
            argv[n++] = *extra;
        argv[n] = NULL;
        execvp("python3", (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    if (*pid < 0) {
        perror("fakesrv: fork");
        *pid = 0;
        close(p[0]);
        return -1;
    }
    FILE *f = fdopen(p[0], "r");
    char line[256] = "";
    int ok = f && fgets(line, sizeof line, f);
    if (f)
        fclose(f);
    else
        close(p[0]);
    char *u = ok ? strstr(line, "http://") : NULL;
    if (!u) {
        fprintf(stderr, "fakesrv: cannot start %s (no URL on its first line; is python3 installed?)\n", script);
        return -1;
    }
    u[strcspn(u, "\r\n")] = '\0';
    snprintf(url, url_cap, "%s", u);
    return 0;
}

void fakesrv_stop(pid_t *pid)
{
    if (*pid > 0) {
        kill(*pid, SIGTERM);
        waitpid(*pid, NULL, 0);
        *pid = 0;
    }
}

typedef struct body_buf {
    char *p;
    size_t n;
} body_buf;

static size_t on_body(char *d, size_t sz, size_t n, void *arg)
{
    body_buf *b = arg;
    char *q = realloc(b->p, b->n + sz * n + 1);
    if (!q)
        return 0; /* curl then fails the transfer */
    b->p = q;
    memcpy(b->p + b->n, d, sz * n);
    b->n += sz * n;
    b->p[b->n] = '\0';
    return sz * n;
}

json_t *fakesrv_call(const char *base_url, const char *method, const char *path, const char *body)
{
    CURL *e = curl_easy_init();
    char url[512];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    body_buf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "{}");
    ck_assert_int_eq(curl_easy_perform(e), CURLE_OK);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    json_t *doc = b.p ? json_loads(b.p, 0, NULL) : NULL;
    free(b.p);
    return doc;
}
