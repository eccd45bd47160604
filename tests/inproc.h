/*
 * tests/inproc.h — a real kokod built in this process, for the unit tests
 * of the HTTP server and of reloads (test_server.c, test_gen.c): kokod_new
 * on a configuration file, kokod_listen on the configured port (0 in the
 * tests, so the real port comes from server_port), and one HTTP request at
 * a time made by libcurl in a helper thread while this thread runs the
 * daemon's event loop (event_base_loop EVLOOP_NONBLOCK).
 *
 * Helpers fail the running Check test (ck_assert) instead of returning
 * errors. The caller owns the kokod (kokod_free) and each call's resp.
 */
#ifndef KOKO_TESTS_INPROC_H
#define KOKO_TESTS_INPROC_H

#include <check.h>
#include <curl/curl.h>
#include <stdatomic.h>
#include <stddef.h>

#include "kokod.h"

/* Makes the folders of an in-process kokod test: a fresh temporary folder
 * (tu_tmp_make TAG, removed by tu_tmp_remove) and its folder plugins/;
 * writes the paths ROOT/koko.yaml (not created) into CFG_PATH and
 * ROOT/plugins into PLUG_DIR. Returns ROOT (tu_tmp_make's buffer). */
const char *inproc_dirs(const char *tag, char *cfg_path, size_t cfg_cap, char *plug_dir, size_t plug_cap);

/* Builds a kokod from CFG_PATH with PLUG_DIR as an extra plugin folder,
 * without listening; fails the test with every configuration error. */
kokod *inproc_new(const char *cfg_path, const char *plug_dir);

/* inproc_new, then kokod_listen; fails the test unless it listens on a port. */
kokod *inproc_start(const char *cfg_path, const char *plug_dir);

/* One HTTP request and its answer. Fill port, method, path and (optional)
 * token, ctype (default application/json), body/body_len; the rest is set
 * by the helper thread. */
typedef struct inproc_call {
    int port;
    const char *method, *path, *token, *ctype;
    const char *body;
    size_t body_len;
    long status; /* 0 when the request failed (see curl_err) */
    char *resp;  /* body, malloc'd, NULL when empty; the caller frees it */
    size_t resp_len;
    char allow[128];     /* Allow header, if any */
    char www_auth[128];  /* WWW-Authenticate header, if any */
    char ctype_out[128]; /* Content-Type of the answer */
    char curl_err[CURL_ERROR_SIZE];
    atomic_int done; /* set by the helper thread once the call is over */
} inproc_call;

/* The helper thread's body (pthread_create with an inproc_call *): makes
 * the request with a 10 s timeout and sets done. */
void *inproc_http_thread(void *arg);

/* Runs KD's loop until C is done; fails the test after 10 s. */
void inproc_wait(kokod *kd, inproc_call *c);

/* Makes one request to KD (C is cleared first), runs the loop until it is
 * answered and fails the test if no HTTP answer came; the caller frees
 * c->resp. */
void inproc_request(kokod *kd, inproc_call *c, const char *method, const char *path, const char *token,
                    const char *body);

/* Runs TESTS (NULL-terminated) as Check suite SUITE_NAME with one test case
 * TCASE_NAME (30 s timeout, checked fixture SETUP and tu_tmp_remove), in
 * Check's default fork mode, with libcurl initialised around the run.
 * Returns EXIT_SUCCESS when every test passed, else EXIT_FAILURE: main's
 * exit status. */
int inproc_run(const char *suite_name, const char *tcase_name, void (*setup)(void), const TTest *const *tests);

#endif
