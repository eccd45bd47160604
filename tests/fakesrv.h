/*
 * tests/fakesrv.h — a fake upstream server (a Python script in tests/fakes/)
 * run as a child process on a free loopback port, for the plugin tests
 * (test_chatwoot.c, and test_gemini.c/test_openai.c through llmtest.h).
 *
 * The script is started as `python3 $KOKO_SRCDIR/tests/fakes/SCRIPT --port 0
 * [EXTRA...]` and must print its base URL ("... http://127.0.0.1:PORT") as
 * its first line on stdout; its control endpoints (/_reset, /_requests,
 * /_calls, /_faults, ...) are reached with fakesrv_call.
 */
#ifndef KOKO_TESTS_FAKESRV_H
#define KOKO_TESTS_FAKESRV_H

#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

/* Starts SCRIPT_NAME with the NULL-terminated EXTRA arguments (NULL for
 * none; at most 11 are passed). The child gets SIGTERM if this process
 * dies. On success returns 0 with the child's id in *PID and its base URL
 * in URL; on failure returns -1 after printing what failed on stderr (then
 * a child that started may still run: pass *PID to fakesrv_stop). */
int fakesrv_start(const char *script_name, const char *const *extra, pid_t *pid, char *url, size_t url_cap);

/* Stops the child *PID (SIGTERM, then waits for it) and sets *PID to 0;
 * does nothing when *PID is 0. */
void fakesrv_stop(pid_t *pid);

/* A blocking JSON call METHOD (GET or POST) to BASE_URL PATH; a POST sends
 * BODY (NULL: "{}"). Fails the running Check test unless an answer came;
 * returns the parsed answer body, NULL when it is empty or not JSON (the
 * caller decrefs). */
json_t *fakesrv_call(const char *base_url, const char *method, const char *path, const char *body);

#endif
