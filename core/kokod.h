/*
 * kokod.h — the daemon: one event loop and what lives as long as the process.
 *
 * Holds the event_base, the shared HTTP client, the plugin loader, the
 * current generation, the listening HTTP server and the control socket, and
 * the counters that must survive reloads. Everything here runs on the loop
 * thread; the only entry from other threads is koko_host.post.
 */
#ifndef CORE_KOKOD_H
#define CORE_KOKOD_H

#include <pthread.h>
#include <stdint.h>
#include <event2/event.h>
#include <jansson.h>

#include "diag.h"
#include "gen.h"
#include "httpc.h"
#include "lang.h"
#include "loader.h"

struct server;
struct control;
struct pipeline;
struct store;

typedef struct post_item {
    koko_post_fn fn;
    void *arg;
    struct post_item *next;
} post_item;

typedef struct kokod {
    struct event_base *base;
    httpc *http;
    loader *loader;
    lang_detector *lang;
    generation *current;
    uint64_t next_gen;
    char *config_path;
    char **extra_path;       /* -P / KOKO_PLUGIN_PATH */
    size_t n_extra;
    struct server *srv;
    struct control *ctl;
    struct pipeline *pipe;
    struct store *store;     /* runtime state (state:): opened at start, closed at exit */
    char *store_desc;        /* "sqlite DIR/koko.db" or "redis URL" for logs */
    struct store *spool;     /* with Redis: <state.dir>/spool/koko.db takes messages while Redis is unreachable */
    int64_t started_at;      /* unix time */
    uint64_t started_ms;     /* monotonic */
    int stopping;
    uint64_t reloads_ok, reloads_failed;
    json_t *stats;           /* per tenant counters, survive reloads */
    json_t *stats_unsent;    /* store key -> delta not yet added in the store (flushed each second) */
    /* queue depths for /health and kokoctl status, read every second by a timer so that
     * /health never waits on the store: -1 until first read; the last value read stays
     * while the store does not answer (depth_ms says when it was read) */
    struct event *depth_ev;
    int depth_reading;       /* reads in flight: no new round until they are back */
    int64_t depth_pending, depth_dead, depth_spool;
    uint64_t depth_ms;       /* monotonic ms of the last pending count read from the store */
    /* post(): the one thread-safe entry */
    pthread_mutex_t post_lock;
    post_item *posted, *posted_tail;
    struct event *post_ev;
    struct event *sig_hup, *sig_term, *sig_int;
    struct event *stop_ev;
} kokod;

/* Create the daemon: load CONFIG_PATH and build generation 1; NULL with D. */
kokod *kokod_new(const char *config_path, const char *const *extra, size_t nextra, diag *d);
/* Open the HTTP listener and the control socket, install signal handlers. */
int kokod_listen(kokod *kd, char *err, size_t errlen);
int kokod_run(kokod *kd);
void kokod_free(kokod *kd);

/*
 * Reload: build a new generation from the config file beside the current
 * one; on success swap and return 0 with a summary in *CHANGES (caller
 * decrefs); on failure return -1 with every problem in D, the current
 * generation untouched.
 */
int kokod_reload(kokod *kd, diag *d, json_t **changes);
/* Begin a graceful stop: stop accepting, drain, leave the loop. */
void kokod_stop(kokod *kd);

/* Counters: kokod_count(kd, "demo", "answered", 1). */
void kokod_count(kokod *kd, const char *tenant_name, const char *counter, double delta);
/*
 * The daily series of the counters: every kokod_count() also adds to
 * {T}:stats:day:{YYYY-MM-DD}:{counter} (UTC date, TTL 90 days). This reads
 * the last DAYS days (1..KOKOD_DAILY_MAX; today included) of TENANT (NULL:
 * every tenant of the current generation) back from the store. DONE runs
 * exactly once, always later on the loop thread: DAILY (borrowed for the
 * call) = {tenant: [{"date": "YYYY-MM-DD", counter: value, ...}, ...]},
 * oldest day first, every day present (a day without counts holds only its
 * date); ERROR is NULL, or says why some of it could not be read (DAILY then
 * holds what could). TENANT is copied.
 */
#define KOKOD_DAILY_MAX 90
typedef void (*kokod_daily_fn)(const json_t *daily, const char *error, void *arg);
/* Add the counts kokod_count() summed since the last flush to the store (it runs
 * every second, before the daily series is read, and at stop: a crash loses at most
 * the last second of counts). */
void kokod_stats_flush(kokod *kd);
void kokod_stats_daily(kokod *kd, const char *tenant, int days, kokod_daily_fn done, void *arg);
/* 1 when the store is usable; WHY gets the reason either way (may be NULL). */
int kokod_store_healthy(const kokod *kd, char *why, size_t whylen);
/* Status document used by /health, kokoctl status: "status" is "ok",
 * "degraded" (the store is not healthy: "store.reason" says why) or
 * "stopping"; "store.queue" has the queue's pending entries and dead
 * letters and the local spool's entries not yet moved into Redis, as read
 * at most a second or so ago ("age_ms"). Caller decrefs. */
json_t *kokod_status(kokod *kd);
/* /health's body written into BUF (the same fields as kokod_status's head); snprintf's result. */
int kokod_health(kokod *kd, char *buf, size_t size);
/* Plugin list, tenant list (kokoctl plugins / tenants, /projects). Caller decrefs. */
json_t *kokod_plugins(kokod *kd);
json_t *kokod_tenants(kokod *kd);

#endif
