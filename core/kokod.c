/*
 * kokod.c — the daemon object: start-up, reload, graceful stop, counters
 * and the status documents shared by /health and kokoctl.
 */
#include "kokoconf.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>
#include <event2/thread.h>

#include "control.h"
#include "custmem.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "server.h"
#include "store.h"
#include "util.h"

static const char *const default_langs[] = {"hu", "en", "de", "fr", "es", "it", "ro", "sk", "pl", "cs", "nl", "pt"};

/* Candidate languages: the common European set plus every tenant's. */
static char *lang_key(const core_config *c, const char **v, size_t *n, size_t cap)
{
    *n = 0;
    for (size_t i = 0; i < sizeof default_langs / sizeof *default_langs; i++)
        v[(*n)++] = default_langs[i];
    for (size_t t = 0; t < c->n_tenants; t++)
        for (size_t l = 0; l < c->tenants[t].n_languages && *n < cap; l++) {
            int dup = 0;
            for (size_t k = 0; k < *n; k++)
                dup |= strcmp(v[k], c->tenants[t].languages[l]) == 0;
            if (!dup)
                v[(*n)++] = c->tenants[t].languages[l];
        }
    strbuf sb = {0};
    for (size_t i = 0; i < *n; i++)
        sb_printf(&sb, "%s,", v[i]);
    return sb_take(&sb);
}

static char *current_lang_key;

static void ensure_lang(kokod *kd, const core_config *c)
{
    const char *v[LANG_MAX_CANDIDATES];
    size_t n;
    char *key = lang_key(c, v, &n, LANG_MAX_CANDIDATES);
    if (kd->lang && current_lang_key && strcmp(key, current_lang_key) == 0) {
        free(key);
        return;
    }
    char err[512];
    lang_detector *ld = lang_new(NULL, v, n, err, sizeof err);
    if (!ld) {
        log_warn("core", "language detection unavailable: %s (answering in each tenant's first language)", err);
        free(key);
        return;
    }
    lang_free(kd->lang);
    kd->lang = ld;
    free(current_lang_key);
    current_lang_key = key;
}

static void on_posted(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kokod *kd = arg;
    pthread_mutex_lock(&kd->post_lock);
    post_item *list = kd->posted;
    kd->posted = kd->posted_tail = NULL;
    pthread_mutex_unlock(&kd->post_lock);
    while (list) {
        post_item *next = list->next;
        list->fn(list->arg);
        free(list);
        list = next;
    }
}

kokod *kokod_new(const char *config_path, const char *const *extra, size_t nextra, diag *d)
{
    kokod *kd = xcalloc(1, sizeof *kd);
    kd->config_path = xstrdup(config_path);
    kd->extra_path = xcalloc(nextra + 1, sizeof *kd->extra_path);
    for (size_t i = 0; i < nextra; i++)
        kd->extra_path[i] = xstrdup(extra[i]);
    kd->n_extra = nextra;
    kd->started_at = util_unix_time();
    kd->started_ms = util_now_ms();
    kd->stats = json_object();
    kd->depth_pending = kd->depth_dead = -1;
    kd->depth_spool = 0; /* no spool without Redis */
    kd->next_gen = 1;
    pthread_mutex_init(&kd->post_lock, NULL);
    /* timers to the millisecond: libevent's default clock on Linux is the coarse
     * one (up to 4 ms behind), which fired a retry the server asked to wait 0.7 s
     * for after 699 ms */
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    kd->base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    if (ecfg)
        event_config_free(ecfg);
    char err[512];
    kd->http = kd->base ? httpc_new(kd->base, err, sizeof err) : NULL;
    if (!kd->http) {
        diag_add(d, NULL, 0, 0, NULL, "cannot start the event loop: %s", kd->base ? err : "event_base_new failed");
        kokod_free(kd);
        return NULL;
    }
    kd->post_ev = event_new(kd->base, -1, EV_PERSIST | EV_READ, on_posted, kd);
    kd->loader = loader_new(NULL);
    kd->pipe = pipeline_new(kd);
    core_config *cfg = config_load(config_path, extra, nextra, kd->loader, d);
    if (!cfg) {
        kokod_free(kd);
        return NULL;
    }
    log_config_level(cfg->log_level);
    if (cfg->log_syslog)
        log_use_syslog("kokod");
    util_mkdir_p(cfg->state_dir, 0700);
    store_options so = {.dir = cfg->state_dir, .redis_url = cfg->state_redis, .password_env = cfg->state_password_env,
                        .prefix = cfg->state_prefix, .group = cfg->state_group,
                        .max_attempts = cfg->state_max_attempts, .synchronous = cfg->state_synchronous};
    kd->store = store_open(kd->base, &so, err, sizeof err);
    if (!kd->store) {
        diag_add(d, NULL, 0, 0, NULL, "cannot open the state store: %s", err);
        config_free(cfg, kd->loader);
        kokod_free(kd);
        return NULL;
    }
    if (cfg->state_redis) {
        /* the local spool: accepting never depends on Redis being reachable */
        char *spool_dir = util_path_join(cfg->state_dir, "spool");
        util_mkdir_p(spool_dir, 0700);
        store_options sp = {.dir = spool_dir, .max_attempts = 1000000};
        kd->spool = store_open(kd->base, &sp, err, sizeof err);
        if (!kd->spool) {
            diag_add(d, NULL, 0, 0, NULL, "cannot open the local spool in %s: %s", spool_dir, err);
            free(spool_dir);
            config_free(cfg, kd->loader);
            kokod_free(kd);
            return NULL;
        }
        free(spool_dir);
    }
    kd->store_desc = cfg->state_redis ? util_asprintf("redis %s", cfg->state_redis)
                                      : util_asprintf("sqlite %s/koko.db", cfg->state_dir);
    log_info("core", "state store: %s", kd->store_desc);
    ensure_lang(kd, cfg);
    kd->current = gen_build(kd, kd->next_gen, cfg, NULL, d);
    if (!kd->current) {
        kokod_free(kd);
        return NULL;
    }
    kd->next_gen++;
    return kd;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    kokod *kd = arg;
    if (sig == SIGHUP) {
        log_info("core", "SIGHUP: reloading %s", kd->config_path);
        diag *d = diag_new();
        json_t *changes = NULL;
        if (kokod_reload(kd, d, &changes) != 0) {
            for (size_t i = 0; i < diag_count(d); i++)
                log_error("config", "%s", diag_get(d, i));
        }
        json_decref(changes);
        diag_free(d);
        return;
    }
    log_info("core", "%s: stopping gracefully", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    kokod_stop(kd);
}

/* ---- counters from the store: /stats survives a restart ----
 * Every kokod_count() is mirrored to {T}:stats:{counter}; kokod_listen()
 * reads them back before it serves (bounded wait: a store that does not
 * answer in STATS_LOAD_MS leaves the counters at zero, with a warning). */

#define STATS_LOAD_MS 5000

typedef struct stats_load {
    kokod *kd;
    int pending;   /* store calls not called back yet */
    int abandoned; /* kokod_listen() stopped waiting: the last callback frees */
    size_t loaded;
} stats_load;

typedef struct stats_get {
    stats_load *sl;
    char *tenant, *counter;
} stats_get;

static void stats_load_unref(stats_load *sl)
{
    if (--sl->pending == 0 && sl->abandoned)
        free(sl);
}

static void on_stat_value(const store_result *r, void *arg)
{
    stats_get *sg = arg;
    stats_load *sl = sg->sl;
    if (!sl->abandoned && r->status == STORE_OK && r->found) {
        char *end = NULL;
        double v = strtod(r->value, &end);
        if (end && end != r->value) {
            kokod *kd = sl->kd;
            json_t *t = json_object_get(kd->stats, sg->tenant);
            if (!t) {
                t = json_object();
                json_object_set_new(kd->stats, sg->tenant, t);
            }
            json_object_set_new(t, sg->counter, json_real(v));
            sl->loaded++;
        }
    }
    free(sg->tenant);
    free(sg->counter);
    free(sg);
    stats_load_unref(sl);
}

/* The counter name in KEY after PREFIX, %XX unescaped (caller frees). */
static char *stats_name(const char *key, size_t prefix_len)
{
    const char *s = key + prefix_len;
    char *out = xmalloc(strlen(s) + 1), *o = out;
    while (*s) {
        unsigned x;
        if (s[0] == '%' && s[1] && s[2] && sscanf(s + 1, "%2x", &x) == 1) {
            *o++ = (char)x;
            s += 3;
        } else {
            *o++ = *s++;
        }
    }
    *o = 0;
    return out;
}

typedef struct stats_scan {
    stats_load *sl;
    char *tenant;
} stats_scan;

static void on_stats_scanned(const store_result *r, void *arg)
{
    stats_scan *ss = arg;
    stats_load *sl = ss->sl;
    if (!sl->abandoned && r->status == STORE_OK) {
        size_t plen = strlen(ss->tenant) + strlen(":stats:");
        for (size_t i = 0; i < r->n_items; i++) {
            if (strncmp(r->items[i].name + plen, "day:", 4) == 0)
                continue; /* the daily series is not a total */
            stats_get *sg = xcalloc(1, sizeof *sg);
            sg->sl = sl;
            sg->tenant = xstrdup(ss->tenant);
            sg->counter = stats_name(r->items[i].name, plen);
            sl->pending++;
            if (store_get(sl->kd->store, r->items[i].name, on_stat_value, sg) != 0) {
                sl->pending--;
                free(sg->tenant);
                free(sg->counter);
                free(sg);
            }
        }
    } else if (r->status != STORE_OK && r->status != STORE_E_CLOSED) {
        log_warn("core", "counters of tenant %s not read from the store: %s (/stats starts from zero)", ss->tenant,
                 r->error ? r->error : "store error");
    }
    free(ss->tenant);
    free(ss);
    stats_load_unref(sl);
}

static void on_stats_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

static void stats_load_all(kokod *kd)
{
    if (!kd->store || !kd->current)
        return;
    stats_load *sl = xcalloc(1, sizeof *sl);
    sl->kd = kd;
    sl->pending = 1; /* ours, dropped below */
    for (size_t i = 0; i < kd->current->n_tenants; i++) {
        stats_scan *ss = xcalloc(1, sizeof *ss);
        ss->sl = sl;
        ss->tenant = xstrdup(kd->current->tenants[i].name);
        char *prefix = util_asprintf("%s:stats:", ss->tenant);
        sl->pending++;
        if (store_scan_prefix(kd->store, prefix, on_stats_scanned, ss) != 0) {
            sl->pending--;
            free(ss->tenant);
            free(ss);
        }
        free(prefix);
    }
    int timed_out = 0;
    struct event *deadline = evtimer_new(kd->base, on_stats_deadline, &timed_out);
    struct timeval tv = {STATS_LOAD_MS / 1000, (STATS_LOAD_MS % 1000) * 1000};
    evtimer_add(deadline, &tv);
    while (sl->pending > 1 && !timed_out)
        event_base_loop(kd->base, EVLOOP_ONCE);
    event_free(deadline);
    if (sl->pending > 1)
        log_warn("core", "the store did not return the counters within %d ms: /stats starts from zero",
                 STATS_LOAD_MS);
    else if (sl->loaded)
        log_info("core", "%zu counter(s) read from the store", sl->loaded);
    sl->abandoned = 1;
    stats_load_unref(sl);
}

static void on_stat_written(const store_result *r, void *arg)
{
    (void)arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED) {
        static int64_t last;
        if (util_unix_time() - last >= 10) {
            last = util_unix_time();
            log_warn("core", "a counter was not written to the store: %s (it is counted in memory)",
                     r->error ? r->error : "store error");
        }
    }
}

/* ---- the daily series: {T}:stats:day:{YYYY-MM-DD}:{counter} ---- */

#define STATS_DAY_TTL_MS (90LL * 86400 * 1000)
#define STATS_UNSENT_MAX 4096 /* counter keys waiting: flush at once past this */

/* UNIX_S's UTC date as YYYY-MM-DD. */
static void utc_date(int64_t unix_s, char out[11])
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 11, "%Y-%m-%d", &tm);
}

typedef struct daily_read {
    kokod_daily_fn done;
    void *arg;
    store *st;
    int pending;     /* store calls not called back yet, +1 until issuing is over */
    int days;
    char (*dates)[11]; /* oldest first */
    json_t *out;
    char *error;     /* the first failure */
} daily_read;

typedef struct daily_tenant {
    daily_read *dr;
    char *tenant;
    const char *key; /* the same name, owned by dr->out */
    json_t *series; /* borrowed from dr->out */
} daily_tenant;

typedef struct daily_get {
    daily_read *dr;
    json_t *day;      /* borrowed from dr->out */
    const char *tname; /* borrowed from dr->out's keys */
    char *counter;
} daily_get;

static void daily_unref(daily_read *dr)
{
    if (--dr->pending > 0)
        return;
    dr->done(dr->out, dr->error, dr->arg);
    json_decref(dr->out);
    free(dr->error);
    free(dr->dates);
    free(dr);
}

static void daily_failed(daily_read *dr, const char *tname, const store_result *r)
{
    if (!dr->error)
        dr->error = util_asprintf("the daily series of tenant %s was not read from the store: %s", tname,
                                  r->error ? r->error : "store error");
}

static void on_daily_value(const store_result *r, void *arg)
{
    daily_get *dg = arg;
    if (r->status == STORE_OK && r->found) {
        char *end = NULL;
        double v = strtod(r->value, &end);
        if (end && end != r->value)
            json_object_set_new(dg->day, dg->counter, json_real(v));
    } else if (r->status != STORE_OK) {
        daily_failed(dg->dr, dg->tname, r);
    }
    daily_read *dr = dg->dr;
    free(dg->counter);
    free(dg);
    daily_unref(dr);
}

static void on_daily_scanned(const store_result *r, void *arg)
{
    daily_tenant *dt = arg;
    daily_read *dr = dt->dr;
    if (r->status == STORE_OK) {
        size_t plen = strlen(dt->tenant) + strlen(":stats:day:");
        for (size_t i = 0; i < r->n_items; i++) {
            const char *rest = r->items[i].name + plen; /* YYYY-MM-DD:counter */
            if (strlen(rest) < 12 || rest[10] != ':')
                continue;
            int d = 0;
            while (d < dr->days && strncmp(dr->dates[d], rest, 10) != 0)
                d++;
            if (d == dr->days)
                continue; /* outside the window asked for */
            daily_get *dg = xcalloc(1, sizeof *dg);
            dg->dr = dr;
            dg->day = json_array_get(dt->series, (size_t)d);
            dg->tname = dt->key;
            dg->counter = stats_name(rest, 11);
            dr->pending++;
            if (store_get(dr->st, r->items[i].name, on_daily_value, dg) != 0) {
                dr->pending--;
                free(dg->counter);
                free(dg);
            }
        }
    } else {
        daily_failed(dr, dt->tenant, r);
    }
    free(dt->tenant);
    free(dt);
    daily_unref(dr);
}

/* Drops the reference held while issuing: DONE never runs inside kokod_stats_daily(). */
static void daily_issued(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    daily_unref(arg);
}

void kokod_stats_daily(kokod *kd, const char *tenant_name, int days, kokod_daily_fn done, void *arg)
{
    kokod_stats_flush(kd); /* written before the reads below, so they see every count */
    daily_read *dr = xcalloc(1, sizeof *dr);
    dr->done = done;
    dr->arg = arg;
    dr->st = kd->store;
    dr->pending = 1;
    dr->days = days < 1 ? 1 : days > KOKOD_DAILY_MAX ? KOKOD_DAILY_MAX : days;
    dr->dates = xcalloc((size_t)dr->days, sizeof *dr->dates);
    int64_t now = util_unix_time();
    for (int d = 0; d < dr->days; d++)
        utc_date(now - (int64_t)(dr->days - 1 - d) * 86400, dr->dates[d]);
    dr->out = json_object();
    const generation *g = kd->current;
    for (size_t i = 0; g && i < g->n_tenants; i++) {
        const char *name = g->tenants[i].name;
        if (tenant_name && strcmp(tenant_name, name) != 0)
            continue;
        json_t *series = json_array();
        for (int d = 0; d < dr->days; d++)
            json_array_append_new(series, json_pack("{s:s}", "date", dr->dates[d]));
        json_object_set_new(dr->out, name, series);
        if (!kd->store)
            continue;
        daily_tenant *dt = xcalloc(1, sizeof *dt);
        dt->dr = dr;
        dt->tenant = xstrdup(name);
        dt->series = series;
        dt->key = json_object_iter_key(json_object_iter_at(dr->out, name));
        char *prefix = util_asprintf("%s:stats:day:", name);
        dr->pending++;
        if (store_scan_prefix(kd->store, prefix, on_daily_scanned, dt) != 0) {
            dr->pending--;
            free(dt->tenant);
            free(dt);
            if (!dr->error)
                dr->error = xstrdup("the state store is closing");
        }
        free(prefix);
    }
    if (!kd->store && !dr->error)
        dr->error = xstrdup("no state store is open");
    struct timeval now_tv = {0, 0};
    if (event_base_once(kd->base, -1, EV_TIMEOUT, daily_issued, dr, &now_tv) != 0)
        daily_unref(dr); /* out of memory only: answering now beats never */
}

/* ---- queue depths: read by a timer, served from memory ---- */

#define DEPTH_REFRESH_MS 1000

static void on_depth_pending(const store_result *r, void *arg)
{
    kokod *kd = arg;
    if (r->status == STORE_OK) {
        kd->depth_pending = r->integer;
        kd->depth_ms = util_now_ms();
    }
    kd->depth_reading--;
}

static void on_depth_dead(const store_result *r, void *arg)
{
    kokod *kd = arg;
    if (r->status == STORE_OK)
        kd->depth_dead = r->integer;
    kd->depth_reading--;
}

static void on_depth_spool(const store_result *r, void *arg)
{
    kokod *kd = arg;
    if (r->status == STORE_OK)
        kd->depth_spool = r->integer;
    kd->depth_reading--;
}

static void depth_refresh(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kokod *kd = arg;
    kokod_stats_flush(kd);
    if (kd->depth_reading > 0)
        return; /* a slow store: the last round is still out */
    if (kd->store) {
        kd->depth_reading += 2;
        if (store_queue_pending(kd->store, on_depth_pending, kd) != 0)
            kd->depth_reading--;
        if (store_queue_dead(kd->store, 1, on_depth_dead, kd) != 0)
            kd->depth_reading--;
    }
    if (kd->spool) {
        kd->depth_reading++;
        if (store_queue_pending(kd->spool, on_depth_spool, kd) != 0)
            kd->depth_reading--;
    }
}

int kokod_listen(kokod *kd, char *err, size_t errlen)
{
    stats_load_all(kd);
    kd->depth_ev = event_new(kd->base, -1, EV_PERSIST, depth_refresh, kd);
    struct timeval depth_tv = {DEPTH_REFRESH_MS / 1000, (DEPTH_REFRESH_MS % 1000) * 1000};
    event_add(kd->depth_ev, &depth_tv);
    depth_refresh(-1, 0, kd);
    const core_config *c = kd->current->cfg;
    kd->srv = server_new(kd, c->listen_host, c->listen_port, err, errlen);
    if (!kd->srv)
        return -1;
    kd->ctl = control_new(kd, c->control_path, err, errlen);
    if (!kd->ctl)
        return -1;
    kd->sig_hup = evsignal_new(kd->base, SIGHUP, on_signal, kd);
    kd->sig_term = evsignal_new(kd->base, SIGTERM, on_signal, kd);
    kd->sig_int = evsignal_new(kd->base, SIGINT, on_signal, kd);
    event_add(kd->sig_hup, NULL);
    event_add(kd->sig_term, NULL);
    event_add(kd->sig_int, NULL);
    pipeline_start(kd->pipe);
    custmem_start(kd);
    log_info("core", "kokod %s listening on http://%s:%d (control %s), generation %llu, %zu tenant(s)",
             PACKAGE_VERSION, c->listen_host, server_port(kd->srv), c->control_path,
             (unsigned long long)kd->current->id, kd->current->n_tenants);
    return 0;
}

int kokod_run(kokod *kd)
{
    event_base_dispatch(kd->base);
    return 0;
}

static int str_differs(const char *a, const char *b) { return (a == NULL) != (b == NULL) || (a && strcmp(a, b)); }

/* The store is opened once, at start: does the new configuration name another one? */
static int state_changed(const core_config *a, const core_config *b)
{
    return str_differs(a->state_dir, b->state_dir) || str_differs(a->state_redis, b->state_redis) ||
           str_differs(a->state_password_env, b->state_password_env) || str_differs(a->state_prefix, b->state_prefix) ||
           str_differs(a->state_group, b->state_group) ||
           a->state_max_attempts != b->state_max_attempts || a->state_synchronous != b->state_synchronous;
}

int kokod_reload(kokod *kd, diag *d, json_t **changes)
{
    double t0 = util_now_ms_f();
    *changes = NULL;
    if (kd->stopping) {
        diag_add(d, NULL, 0, 0, NULL, "kokod is stopping; reload refused");
        return -1;
    }
    core_config *cfg = config_load(kd->config_path, (const char *const *)kd->extra_path, kd->n_extra, kd->loader, d);
    generation *g = NULL;
    if (cfg) {
        ensure_lang(kd, cfg);
        g = gen_build(kd, kd->next_gen, cfg, kd->current, d);
    }
    if (!g) {
        kd->reloads_failed++;
        log_error("core", "reload refused (%zu problem(s)); generation %llu keeps serving", diag_count(d),
                  (unsigned long long)kd->current->id);
        return -1;
    }
    kd->next_gen++;
    generation *old = kd->current;
    *changes = gen_diff(old, g);
    if (strcmp(old->cfg->listen_host, cfg->listen_host) != 0 || old->cfg->listen_port != cfg->listen_port)
        log_warn("core", "server.listen changed to %s:%d: the listening socket stays on %s:%d until kokod restarts",
                 cfg->listen_host, cfg->listen_port, old->cfg->listen_host, old->cfg->listen_port);
    if (strcmp(old->cfg->control_path, cfg->control_path) != 0)
        log_warn("core", "server.control changed: the control socket stays at %s until kokod restarts",
                 old->cfg->control_path);
    if (state_changed(old->cfg, cfg))
        log_warn("core", "state: changed: the store stays %s until kokod restarts (restart it to move to the new "
                 "store; the queue, conversations and customer memory do not move by themselves)", kd->store_desc);
    log_config_level(cfg->log_level);
    kd->current = g;
    if (kd->srv)
        server_set_max_body(kd->srv, cfg->max_body);
    json_object_set_new(*changes, "generation", json_integer((json_int_t)g->id));
    json_object_set_new(*changes, "build_ms", json_real(util_now_ms_f() - t0));
    gen_retire(old, old->cfg->drain_ms);
    kd->reloads_ok++;
    char *s = json_dumps(*changes, JSON_COMPACT);
    log_info("core", "reloaded: generation %llu serving (%s)", (unsigned long long)g->id, s ? s : "");
    free(s);
    return 0;
}

/* ---- graceful stop ---- */

static void stop_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    kokod *kd = arg;
    uint64_t deadline = kd->started_ms; /* reused: the stop deadline */
    int late = util_now_ms() >= deadline;
    size_t busy = (kd->srv ? server_inflight(kd->srv) : 0) + pipeline_inflight(kd->pipe);
    if (kd->current && (busy == 0 || late)) {
        if (busy)
            log_warn("core", "drain deadline reached with %zu request(s) in flight", busy);
        generation *g = kd->current;
        kd->current = NULL;
        gen_release(g);
    }
    if (!kd->current && (instance_draining() == 0 || util_now_ms() >= deadline + 2000)) {
        event_base_loopbreak(kd->base);
        return;
    }
    struct timeval tv = {0, 20000};
    event_add(kd->stop_ev, &tv);
}

void kokod_stop(kokod *kd)
{
    if (kd->stopping)
        return;
    kd->stopping = 1;
    if (kd->srv)
        server_close_listener(kd->srv);
    unsigned drain = kd->current ? kd->current->cfg->drain_ms : CONFIG_DEFAULT_DRAIN_MS;
    kd->started_ms = util_now_ms() + drain;
    kd->stop_ev = evtimer_new(kd->base, stop_poll, kd);
    struct timeval tv = {0, 0};
    event_add(kd->stop_ev, &tv);
}

void kokod_free(kokod *kd)
{
    if (!kd)
        return;
    if (kd->current)
        gen_release(kd->current);
    kd->current = NULL;
    /* run the loop until retired instances are destroyed (bounded) */
    for (int i = 0; i < 500 && instance_draining() > 0 && kd->base; i++)
        event_base_loop(kd->base, EVLOOP_ONCE);
    server_free(kd->srv);
    control_free(kd->ctl);
    pipeline_stop(kd->pipe);
    kokod_stats_flush(kd); /* the last second's counts, before the store closes */
    custmem_stop(kd);
    /* callbacks of unfinished store calls run now (STORE_E_CLOSED) and free what they hold */
    store_close(kd->store);
    kd->store = NULL;
    store_close(kd->spool); /* after the store: moves finishing there still remove their spool entries */
    kd->spool = NULL;
    free(kd->store_desc);
    pipeline_free(kd->pipe);
    if (kd->http)
        httpc_free(kd->http);
    loader_free(kd->loader);
    lang_free(kd->lang);
    free(current_lang_key);
    current_lang_key = NULL;
    if (kd->post_ev)
        event_free(kd->post_ev);
    if (kd->sig_hup) {
        event_free(kd->sig_hup);
        event_free(kd->sig_term);
        event_free(kd->sig_int);
    }
    if (kd->stop_ev)
        event_free(kd->stop_ev);
    if (kd->depth_ev)
        event_free(kd->depth_ev);
    if (kd->base)
        event_base_free(kd->base);
    pthread_mutex_destroy(&kd->post_lock);
    on_posted(0, 0, kd); /* nothing may be left; free what is */
    json_decref(kd->stats);
    json_decref(kd->stats_unsent);
    for (size_t i = 0; i < kd->n_extra; i++)
        free(kd->extra_path[i]);
    free(kd->extra_path);
    free(kd->config_path);
    free(kd);
}

/* ---- counters and status ---- */

void kokod_count(kokod *kd, const char *tenant_name, const char *counter, double delta)
{
    json_t *t = json_object_get(kd->stats, tenant_name);
    if (!t) {
        t = json_object();
        json_object_set_new(kd->stats, tenant_name, t);
    }
    json_t *v = json_object_get(t, counter);
    json_object_set_new(t, counter, json_real(json_number_value(v) + delta));
    if (kd->store) {
        /* into the store coalesced: a message counts a dozen things, which would be two
         * dozen store writes; summed here they go out once a second (stats_flush) */
        if (!kd->stats_unsent)
            kd->stats_unsent = json_object();
        char *part = store_key_part(counter);
        char date[11];
        utc_date(util_unix_time(), date);
        char *keys[2] = {util_asprintf("%s:stats:%s", tenant_name, part),
                         util_asprintf("%s:stats:day:%s:%s", tenant_name, date, part)};
        for (int i = 0; i < 2; i++) {
            json_t *u = json_object_get(kd->stats_unsent, keys[i]);
            json_object_set_new(kd->stats_unsent, keys[i], json_real(json_number_value(u) + delta));
            free(keys[i]);
        }
        free(part);
        if (json_object_size(kd->stats_unsent) >= STATS_UNSENT_MAX)
            kokod_stats_flush(kd);
    }
}

void kokod_stats_flush(kokod *kd)
{
    if (!kd->store || !kd->stats_unsent)
        return;
    const char *k;
    json_t *v;
    json_object_foreach(kd->stats_unsent, k, v)
        store_incr_float(kd->store, k, json_number_value(v), strstr(k, ":stats:day:") ? STATS_DAY_TTL_MS : 0,
                         on_stat_written, NULL);
    json_object_clear(kd->stats_unsent);
}

int kokod_store_healthy(const kokod *kd, char *why, size_t whylen)
{
    if (!kd->store) {
        if (why)
            snprintf(why, whylen, "no store open");
        return 0;
    }
    return store_healthy(kd->store, why, whylen);
}

static const char *status_word(const kokod *kd, char *why, size_t whylen)
{
    int ok = kokod_store_healthy(kd, why, whylen);
    return kd->stopping ? "stopping" : ok ? "ok" : "degraded";
}

static json_t *store_json(const kokod *kd)
{
    char why[512];
    int ok = kokod_store_healthy(kd, why, sizeof why);
    return json_pack("{s:s,s:b,s:s,s:I,s:{s:I,s:I,s:I,s:I}}", "backend", kd->store ? store_backend(kd->store) : "none",
                     "healthy", ok, "reason", why, "pending_ops", (json_int_t)(kd->store ? store_pending(kd->store) : 0),
                     "queue", "pending", (json_int_t)kd->depth_pending, "dead", (json_int_t)kd->depth_dead, "spool",
                     (json_int_t)kd->depth_spool, "age_ms",
                     kd->depth_ms ? (json_int_t)(util_now_ms() - kd->depth_ms) : -1);
}

json_t *kokod_status(kokod *kd)
{
    json_t *plugins = json_array();
    const generation *g = kd->current;
    for (size_t i = 0; g && i < g->cfg->n_libs; i++)
        json_array_append_new(plugins, json_string(g->cfg->libs[i]->name));
    char why[512];
    return json_pack("{s:s,s:s,s:I,s:I,s:o,s:I,s:I,s:{s:I,s:I},s:I,s:o}", "status", status_word(kd, why, sizeof why),
                     "version", PACKAGE_VERSION, "generation", (json_int_t)(g ? g->id : 0), "uptime_s",
                     (json_int_t)(util_unix_time() - kd->started_at), "plugins", plugins, "tenants",
                     (json_int_t)(g ? g->n_tenants : 0), "inflight",
                     (json_int_t)((kd->srv ? server_inflight(kd->srv) : 0) + pipeline_inflight(kd->pipe)),
                     "reloads", "ok", (json_int_t)kd->reloads_ok, "failed", (json_int_t)kd->reloads_failed,
                     "generations_alive", (json_int_t)gen_alive(), "store", store_json(kd));
}

/* S as the inside of a JSON string, into OUT (always terminated; a text too
 * long is cut, never inside an escape or a UTF-8 sequence). */
static void json_quote_into(char *out, size_t size, const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        size_t len = 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            len = 2;
        } else if (c < 0x20) {
            len = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else {
            esc[0] = (char)c;
        }
        if (n + len >= size) {
            while (n > 0 && ((unsigned char)out[n - 1] & 0xC0) == 0x80) /* inside a sequence */
                n--;
            if (n > 0 && (unsigned char)out[n - 1] >= 0xC0) /* its lead byte */
                n--;
            break;
        }
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n] = '\0';
}

/* /health as one snprintf (the hot path of load balancers and monitors): the
 * same document as kokod_status, without building a JSON tree. */
int kokod_health(kokod *kd, char *buf, size_t size)
{
    const generation *g = kd->current;
    char why[512], qwhy[1024];
    int ok = kokod_store_healthy(kd, why, sizeof why);
    json_quote_into(qwhy, sizeof qwhy, why);
    return snprintf(buf, size,
                    "{\"status\":\"%s\",\"version\":\"%s\",\"generation\":%llu,\"uptime_s\":%lld,\"plugins\":%s,"
                    "\"tenants\":%zu,\"inflight\":%zu,\"reloads\":{\"ok\":%llu,\"failed\":%llu},"
                    "\"generations_alive\":%zu,\"store\":{\"backend\":\"%s\",\"healthy\":%s,\"reason\":\"%s\","
                    "\"pending_ops\":%zu,\"queue\":{\"pending\":%lld,\"dead\":%lld,\"spool\":%lld,\"age_ms\":%lld}}}",
                    kd->stopping ? "stopping" : ok ? "ok" : "degraded", PACKAGE_VERSION,
                    (unsigned long long)(g ? g->id : 0), (long long)(util_unix_time() - kd->started_at),
                    g && g->plugins_json ? g->plugins_json : "[]", g ? g->n_tenants : 0,
                    (kd->srv ? server_inflight(kd->srv) : 0) + pipeline_inflight(kd->pipe),
                    (unsigned long long)kd->reloads_ok, (unsigned long long)kd->reloads_failed, gen_alive(),
                    kd->store ? store_backend(kd->store) : "none", ok ? "true" : "false", qwhy,
                    kd->store ? store_pending(kd->store) : 0, (long long)kd->depth_pending,
                    (long long)kd->depth_dead, (long long)kd->depth_spool,
                    kd->depth_ms ? (long long)(util_now_ms() - kd->depth_ms) : -1LL);
}

json_t *kokod_plugins(kokod *kd)
{
    json_t *out = json_array();
    const generation *g = kd->current;
    for (size_t i = 0; g && i < g->cfg->n_libs; i++) {
        const plugin_lib *l = g->cfg->libs[i];
        json_t *tenants = json_array();
        for (size_t t = 0; t < g->n_tenants; t++) {
            const tenant *tn = &g->tenants[t];
            koko_instance **lists[] = {tn->channels, tn->backends, tn->tools};
            size_t counts[] = {tn->n_channels, tn->n_backends, tn->n_tools};
            for (size_t k = 0; k < 3; k++)
                for (size_t j = 0; j < counts[k]; j++)
                    if (lists[k][j]->lib == l)
                        json_array_append_new(tenants, json_string(tn->name));
        }
        char abi[16];
        snprintf(abi, sizeof abi, "%u.%u", l->desc->abi_major, l->desc->abi_minor);
        json_array_append_new(out, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o}", "name", l->name, "kind",
                                             loader_kind_name(l->desc->kind), "version",
                                             l->desc->version ? l->desc->version : "", "description",
                                             l->desc->description ? l->desc->description : "", "abi", abi, "file",
                                             l->path, "hash", l->hash, "tenants", tenants));
    }
    return out;
}

static json_t *inst_names(koko_instance *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]->desc->name));
    return a;
}

json_t *kokod_tenants(kokod *kd)
{
    json_t *out = json_array();
    const generation *g = kd->current;
    for (size_t i = 0; g && i < g->n_tenants; i++) {
        const tenant *t = &g->tenants[i];
        json_t *langs = json_array();
        for (size_t l = 0; l < t->n_languages; l++)
            json_array_append_new(langs, json_string(t->languages[l]));
        json_t *kbd = json_pack("{s:I,s:I,s:I,s:s}", "files", (json_int_t)(t->kb ? kb_file_count(t->kb) : 0),
                               "chunks", (json_int_t)(t->kb ? kb_chunk_count(t->kb) : 0), "bytes",
                               (json_int_t)(t->kb ? kb_bytes(t->kb) : 0), "hash", t->kb ? kb_hash(t->kb) : "");
        json_array_append_new(out, json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:I}", "name", t->name, "languages",
                                             langs, "llm", inst_names(t->chain, t->n_chain), "channels",
                                             inst_names(t->channels, t->n_channels), "tools",
                                             inst_names(t->tools, t->n_tools), "kb", kbd, "persona",
                                             json_string(json_string_value(json_object_get(t->persona, "name"))
                                                             ? json_string_value(json_object_get(t->persona, "name"))
                                                             : ""),
                                             "routes", (json_int_t)(t->router ? t->router->n : 0)));
    }
    return out;
}
