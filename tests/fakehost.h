/*
 * tests/fakehost.h — a fake koko_host for plugin unit tests.
 *
 * A test dlopens a plugin .so (fakehost_load_plugin), creates a fakehost and
 * hands the plugin fakehost_host() and fakehost_instance() in init(), exactly
 * as kokod would. Timers, posted work and outbound HTTP run for real on the
 * fakehost's own libevent event_base (HTTP through core/httpc.c, the daemon's
 * own client), so a plugin's callbacks run later, on the loop, as the ABI
 * promises. Everything the plugin tells the host is recorded for the test to
 * inspect: log lines, routes and the responses it gives them, submitted
 * messages, conversation events, tool_call() calls (answered by a test
 * function, the built-in handoff_to_human by the host itself), drained() calls. fakediag is a koko_diag
 * that records validate() errors.
 *
 * Link: tests/fakehost.c core/httpc.c, libevent, libcurl, jansson, -ldl,
 * -lpthread. Everything is for one thread (the test's) except the host's
 * post(), which is thread-safe as in kokod.
 */
#ifndef KOKO_TESTS_FAKEHOST_H
#define KOKO_TESTS_FAKEHOST_H

#include <stddef.h>

#include <event2/event.h>

#include "koko/host.h"
#include "koko/plugin.h"

typedef struct fakehost fakehost;

/*
 * dlopen PATH with RTLD_NOW|RTLD_LOCAL (as kokod does) and return its
 * koko_plugin_v1 descriptor without running any plugin code. *HANDLE receives
 * the dlopen handle (dlclose it when done). NULL with a message in ERR on
 * failure. The descriptor's version fields are NOT checked: that is the test's.
 */
const koko_plugin *fakehost_load_plugin(const char *path, void **handle, char *err, size_t errlen);

/*
 * A fake host with one instance serving TENANT for the plugin named PLUGIN
 * (both copied). Creates its own event_base. Calls curl_global_init (matched
 * in fakehost_free). NULL only when out of memory or libevent fails.
 */
fakehost *fakehost_new(const char *tenant, const char *plugin);

/*
 * Free the host. Pending timers are dropped without running; pending HTTP
 * transfers and submit() answers are cancelled WITHOUT calling back into the
 * plugin (it may already be destroyed); open route requests are freed. Call
 * it after the plugin's destroy(). NULL is a no-op.
 */
void fakehost_free(fakehost *fh);

/* The vtable and the instance to pass to the plugin's init(). Borrowed. */
const koko_host *fakehost_host(void);
koko_instance *fakehost_instance(fakehost *fh);
/* The fakehost an instance belongs to (for callbacks that only get the instance). */
fakehost *fakehost_of(koko_instance *inst);
struct event_base *fakehost_base(fakehost *fh);

/* What host->base_dir() returns (copied; "." by default). */
void fakehost_set_base_dir(fakehost *fh, const char *dir);
/* Make host->getenv(NAME) return VALUE (copied; NULL removes). The fake host
 * never reads the real environment, so tests are hermetic. */
void fakehost_setenv(fakehost *fh, const char *name, const char *value);

/* ---- the loop ---- */

/* Work the plugin is waiting for: its timers, HTTP transfers, posted
 * functions and submit() answers not yet delivered. */
size_t fakehost_pending(const fakehost *fh);
/* Run the loop until nothing is pending. 0 when idle, -1 after TIMEOUT_MS. */
int fakehost_run(fakehost *fh, unsigned timeout_ms);
/* Run the loop until *FLAG != 0. 0 when it became set, -1 after TIMEOUT_MS. */
int fakehost_run_until(fakehost *fh, const volatile int *flag, unsigned timeout_ms);
/* Cancel, as kokod does at a drain deadline before destroy(): timers are
 * dropped (their functions never run), HTTP transfers are cancelled and their
 * callbacks (cancelled = 1) run before this returns. */
void fakehost_cancel_all(fakehost *fh);

/* ---- what the plugin did ---- */

/* Log lines, oldest first, as "LEVEL: message" with LEVEL one of error, warn,
 * info, debug. Set the environment variable FAKEHOST_VERBOSE to also echo
 * them to stderr. */
size_t fakehost_log_count(const fakehost *fh);
const char *fakehost_log_line(const fakehost *fh, size_t i);   /* borrowed; NULL past the end */
koko_log_level fakehost_log_level(const fakehost *fh, size_t i);
/* Index of the first line containing NEEDLE, or -1. */
long fakehost_log_find(const fakehost *fh, const char *needle);
void fakehost_log_clear(fakehost *fh);

/* Counts of timer_start() calls, timers still pending, timer_cancel() calls,
 * http_submit() calls and transfers whose callback has not run. */
size_t fakehost_timers_started(const fakehost *fh);
size_t fakehost_timers_pending(const fakehost *fh);
size_t fakehost_timers_cancelled(const fakehost *fh);
size_t fakehost_http_submitted(const fakehost *fh);
size_t fakehost_http_pending(const fakehost *fh);

/* drained() for stop(): pass fakehost_drained; count its calls. */
void fakehost_drained(koko_instance *inst);
size_t fakehost_drained_count(const fakehost *fh);

/* ---- routes (host->route_add / req_* / respond) ---- */

/* Number of routes the plugin registered. */
size_t fakehost_route_count(const fakehost *fh);
/*
 * Deliver an inbound request to the route NAME ("POST /webhook/<tenant>/NAME")
 * as the HTTP server would: METHOD, BODY (copied, NULL = ""), HEADERS a
 * NULL-terminated array of "Name: value" strings (may be NULL), PEER (NULL =
 * "127.0.0.1"). The route function runs synchronously inside this call (as
 * it runs from the server's callback in kokod); its respond() may come now or
 * later. -1 when no such route exists.
 */
int fakehost_request(fakehost *fh, const char *name, const char *method, const char *body,
                     const char *const *headers, const char *peer);
/* Requests the plugin has not answered yet. */
size_t fakehost_requests_open(const fakehost *fh);

typedef struct fakehost_response {
    char *route; /* the route name */
    int status;
    char *body;  /* the JSON body as given */
} fakehost_response;
size_t fakehost_response_count(const fakehost *fh);
const fakehost_response *fakehost_response_get(const fakehost *fh, size_t i); /* borrowed */

/* ---- submit ---- */

/* What later submit() calls answer (default ACCEPTED, error NULL). ERROR copied. */
void fakehost_set_submit_status(fakehost *fh, koko_submit_status st, const char *error);
size_t fakehost_submit_count(const fakehost *fh);
/* A deep copy of the I-th submitted message, tenant and channel filled in
 * (the fakehost's tenant and plugin name), every string copied, meta,
 * headers and attachments deep-copied. Borrowed. */
const koko_msg *fakehost_submitted(const fakehost *fh, size_t i);

/* ---- conversation (ABI 1.1 ownership events) ---- */

typedef struct fakehost_conv_event {
    char *conversation_id;
    koko_conv_event ev;
    char *detail; /* NULL when the plugin gave none */
} fakehost_conv_event;
/* host->conversation() calls, oldest first (strings copied). */
size_t fakehost_conversation_count(const fakehost *fh);
const fakehost_conv_event *fakehost_conversation_get(const fakehost *fh, size_t i); /* borrowed */

/* ---- tool_call (ABI 1.2 function calling) ---- */

/* The test's tool: return the result for NAME(ARGS) (a new reference; NULL =
 * {"error": "the tool returned nothing"}) and set *ST. */
typedef json_t *(*fakehost_tool_fn)(const char *name, const json_t *args, koko_status *st, void *arg);
/* Answer host->tool_call with FN (NULL: every function but the built-in is
 * unknown). As in kokod, "handoff_to_human" is answered by the host itself
 * ({"ok": true, "note": ...}) and an unknown function with {"error": ...};
 * the answer always comes later, from the loop. */
void fakehost_set_tool(fakehost *fh, fakehost_tool_fn fn, void *arg);
/* host->tool_call() calls, oldest first: the function name and a copy of its args. */
size_t fakehost_tool_count(const fakehost *fh);
const char *fakehost_tool_name(const fakehost *fh, size_t i);     /* borrowed */
const json_t *fakehost_tool_args(const fakehost *fh, size_t i);   /* borrowed */
/* The job pointer the plugin passed with the I-th call. */
void *fakehost_tool_job(const fakehost *fh, size_t i);

/* ---- kv (ABI 1.3 plugin state) ---- */

/* kv_* work on an in-memory store keyed by the plugin's own keys (no tenant
 * or plugin prefix), with TTLs on the monotonic clock; answers come later,
 * from the loop, and count in fakehost_pending. fakehost_cancel_all answers
 * what is left with KOKO_KV_E_CANCELLED; fakehost_free drops it silently. */
/* Make FH use WITH's store: two fakehosts are then two replicas on one Redis. */
void fakehost_share_kv(fakehost *fh, fakehost *with);
/* Later kv_* calls fail with ST and touch nothing (KOKO_KV_OK: work again). */
void fakehost_kv_fail(fakehost *fh, koko_kv_status st);
/* kv_* calls accepted so far. */
size_t fakehost_kv_calls(const fakehost *fh);
/* The live value of KEY (borrowed, NUL-terminated) or NULL; *LEN its length. */
const char *fakehost_kv_peek(fakehost *fh, const char *key, size_t *len);
/* Write KEY = VAL directly (TTL_MS <= 0: none), as another replica would. */
void fakehost_kv_put(fakehost *fh, const char *key, const char *val, int64_t ttl_ms);
/* Live keys starting with PREFIX. */
size_t fakehost_kv_count(fakehost *fh, const char *prefix);

/* ---- validate() diagnostics ---- */

typedef struct fakediag fakediag;
fakediag *fakediag_new(void);
void fakediag_free(fakediag *fd);
/* The koko_diag to pass to validate(). Borrowed, lives as long as FD. */
koko_diag *fakediag_diag(fakediag *fd);
/* Recorded errors as "relpath: message" (just "message" when relpath is
 * NULL or empty), oldest first. */
size_t fakediag_count(const fakediag *fd);
const char *fakediag_line(const fakediag *fd, size_t i); /* borrowed; NULL past the end */
/* Index of the line equal to LINE, or -1. */
long fakediag_find(const fakediag *fd, const char *line);
void fakediag_clear(fakediag *fd);

#endif
