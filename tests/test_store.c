/*
 * tests/test_store.c — one suite for core/store.h, run against each backend:
 * SQLite in a fresh temp directory, and a real redis-server (Debian's
 * /usr/bin/redis-server) that this program starts on a free loopback port
 * and stops at the end. Every result is checked to arrive exactly once,
 * later, on the loop. Redis-only cases kill, stop and restart the server.
 * Without redis-server the program fails (tests/testredis.h).
 */
#include "kokoconf.h"

#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "store.h"
#include "testredis.h"
#include "util.h"

static struct event_base *base;
static struct event *ticker;
static store *S;
static int is_redis;
static char tmpdir[64];  /* per test (sqlite state dir) */
static test_redis R;     /* the redis-server this program runs */
static int in_submit;    /* 1 while a store call is on the stack */

/* ---- the loop and results ---- */

#define MAXI 2000

typedef struct cap {
    int calls, sync;
    store_status status;
    char err[600];
    int found;
    int64_t integer;
    double number;
    char value[4096];
    size_t value_len;
    int has_value;
    size_t n;
    char *names[MAXI];
    char *values[16];
    int attempts[16];
    char reasons[16][128];
} cap;

static void cap_reset(cap *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->names[i]);
        if (i < 16)
            free(c->values[i]);
    }
    memset(c, 0, sizeof *c);
}

static void on_result(const store_result *r, void *arg)
{
    cap *c = arg;
    c->calls++;
    c->sync |= in_submit;
    c->status = r->status;
    snprintf(c->err, sizeof c->err, "%s", r->error ? r->error : "");
    c->found = r->found;
    c->integer = r->integer;
    c->number = r->number;
    c->has_value = r->value != NULL;
    if (r->value) {
        c->value_len = r->value_len < sizeof c->value - 1 ? r->value_len : sizeof c->value - 1;
        memcpy(c->value, r->value, c->value_len);
        c->value[c->value_len] = '\0';
    }
    c->n = r->n_items < MAXI ? r->n_items : MAXI;
    for (size_t i = 0; i < c->n; i++) {
        c->names[i] = r->items[i].name ? xstrdup(r->items[i].name) : NULL;
        if (i < 16) {
            c->values[i] = r->items[i].value ? xstrdup(r->items[i].value) : NULL;
            c->attempts[i] = r->items[i].attempts;
            snprintf(c->reasons[i], sizeof c->reasons[i], "%s", r->items[i].reason ? r->items[i].reason : "");
        }
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg; /* only keeps EVLOOP_ONCE from sleeping forever */
}

static void run_until(int *flag, int want, int timeout_ms)
{
    uint64_t t0 = util_now_ms();
    while (*flag < want) {
        ck_assert_msg(util_now_ms() - t0 < (uint64_t)timeout_ms, "no result within %d ms", timeout_ms);
        event_base_loop(base, EVLOOP_ONCE);
    }
}

static void run_for(int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* Submit EXPR (a store call with on_result and &C), check it is accepted and
 * not answered synchronously, then wait for exactly one answer. */
#define DO(c, expr)                                                                                            \
    do {                                                                                                       \
        cap_reset(&(c));                                                                                       \
        in_submit = 1;                                                                                         \
        int rc_ = (expr);                                                                                      \
        in_submit = 0;                                                                                         \
        ck_assert_int_eq(rc_, 0);                                                                              \
        ck_assert_int_eq((c).calls, 0);                                                                        \
        run_until(&(c).calls, 1, 10000);                                                                       \
        ck_assert_int_eq((c).calls, 1);                                                                        \
        ck_assert_int_eq((c).sync, 0);                                                                         \
    } while (0)
#define OK(c, expr)                                                                                            \
    do {                                                                                                       \
        DO(c, expr);                                                                                           \
        ck_assert_msg((c).status == STORE_OK, "%s: status %d: %s", #expr, (c).status, (c).err);                \
    } while (0)

/* ---- fixtures ---- */

static store_options opts;

static store *open_store(void)
{
    char err[512] = "";
    store *s = store_open(base, &opts, err, sizeof err);
    ck_assert_msg(s != NULL, "store_open: %s", err);
    return s;
}

static void setup_common(void)
{
    base = event_base_new();
    ticker = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    struct timeval tv = {0, 50000};
    event_add(ticker, &tv);
    memset(&opts, 0, sizeof opts);
    opts.max_attempts = 3;
    opts.timeout_ms = 1000;
    opts.backoff_max_ms = 200;
    opts.purge_interval_ms = 100;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void setup_sqlite(void)
{
    setup_common();
    is_redis = 0;
    opts.dir = tmpdir;
    S = open_store();
}

static char redis_url[64];

static void setup_redis(void)
{
    setup_common();
    is_redis = 1;
    tr_flush(&R);
    snprintf(redis_url, sizeof redis_url, "redis://127.0.0.1:%d/0", R.port);
    opts.redis_url = redis_url;
    S = open_store();
    /* wait until connected, so the tests measure operations, not the handshake */
    uint64_t t0 = util_now_ms();
    while (!store_healthy(S, NULL, 0) && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert(store_healthy(S, NULL, 0));
}

static void teardown(void)
{
    store_close(S);
    S = NULL;
    event_free(ticker);
    event_base_free(base);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- strings ---- */

START_TEST(t_strings)
{
    cap c = {0};
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    ck_assert(!c.has_value);
    OK(c, store_set(S, "t:k", "hello", 5, 0, on_result, &c));
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    ck_assert_str_eq(c.value, "hello");
    OK(c, store_set(S, "t:bin", "a\0b", 3, 0, on_result, &c));
    OK(c, store_get(S, "t:bin", on_result, &c));
    ck_assert_uint_eq(c.value_len, 3);
    ck_assert(memcmp(c.value, "a\0b", 3) == 0);
    OK(c, store_set(S, "t:empty", "", 0, 0, on_result, &c));
    OK(c, store_get(S, "t:empty", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    ck_assert_uint_eq(c.value_len, 0);

    OK(c, store_set_nx(S, "t:nx", "1", 1, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_set_nx(S, "t:nx", "2", 1, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_get(S, "t:nx", on_result, &c));
    ck_assert_str_eq(c.value, "1");

    OK(c, store_del(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_del(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.found, 0);

    OK(c, store_incr(S, "t:n", 5, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 5);
    OK(c, store_incr(S, "t:n", -7, 0, on_result, &c));
    ck_assert_int_eq(c.integer, -2);
    OK(c, store_get(S, "t:n", on_result, &c));
    ck_assert_str_eq(c.value, "-2");
    OK(c, store_incr_float(S, "t:f", 1.5, 0, on_result, &c));
    ck_assert(c.number == 1.5);
    OK(c, store_incr_float(S, "t:f", 1.25, 0, on_result, &c));
    ck_assert(c.number == 2.75);
    OK(c, store_get(S, "t:f", on_result, &c));
    ck_assert_str_eq(c.value, "2.75");
    OK(c, store_incr_float(S, "t:n", 0.5, 0, on_result, &c)); /* an integer takes a float increment */
    ck_assert(c.number == -1.5);

    /* wrong kinds */
    DO(c, store_incr(S, "t:nx2", 1, 0, on_result, &c));
    OK(c, store_set(S, "t:word", "abc", 3, 0, on_result, &c));
    DO(c, store_incr(S, "t:word", 1, 0, on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_TYPE);
    ck_assert_str_ne(c.err, "");
    DO(c, store_incr(S, "t:f", 1, 0, on_result, &c)); /* 2.75 is not an integer */
    ck_assert_int_eq(c.status, STORE_E_TYPE);
    DO(c, store_list_push(S, "t:word", "x", 1, 0, on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_TYPE);
    OK(c, store_list_push(S, "t:list", "x", 1, 0, on_result, &c));
    DO(c, store_get(S, "t:list", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_TYPE);
    DO(c, store_hash_set(S, "t:list", "f", "v", 1, on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_TYPE);
    /* set replaces any kind */
    OK(c, store_set(S, "t:list", "s", 1, 0, on_result, &c));
    OK(c, store_get(S, "t:list", on_result, &c));
    ck_assert_str_eq(c.value, "s");
    cap_reset(&c);
}
END_TEST

/* ---- expiry ---- */

START_TEST(t_ttl)
{
    cap c = {0};
    OK(c, store_set(S, "t:ttl", "v", 1, 150, on_result, &c));
    OK(c, store_set(S, "t:keep", "v", 1, 0, on_result, &c));
    OK(c, store_list_push(S, "t:l", "a", 1, 0, on_result, &c));
    OK(c, store_expire(S, "t:l", 150, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_expire(S, "t:missing", 150, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_hash_set(S, "t:h", "f", "v", 1, on_result, &c));
    OK(c, store_expire(S, "t:h", 150, on_result, &c));
    OK(c, store_expire(S, "t:h", 0, on_result, &c)); /* and back to no expiry */
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_get(S, "t:ttl", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    OK(c, store_scan_prefix(S, "t:", on_result, &c));
    ck_assert_uint_eq(c.n, 4);
    run_for(300);
    OK(c, store_get(S, "t:ttl", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    OK(c, store_list_range(S, "t:l", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_hash_get(S, "t:h", "f", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    OK(c, store_get(S, "t:keep", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    OK(c, store_scan_prefix(S, "t:", on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    ck_assert_str_eq(c.names[0], "t:h");
    ck_assert_str_eq(c.names[1], "t:keep");
    /* an expired key is absent for set-if-absent (a dedup key that timed out) */
    OK(c, store_set_nx(S, "t:ttl", "w", 1, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 1);

    /* a rate-limit bucket: the TTL is set on creation, not pushed back by later increments */
    OK(c, store_incr(S, "t:bucket", 1, 400, on_result, &c));
    run_for(200);
    OK(c, store_incr(S, "t:bucket", 1, 400, on_result, &c));
    ck_assert_int_eq(c.integer, 2);
    run_for(300);
    OK(c, store_get(S, "t:bucket", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    OK(c, store_incr_float(S, "t:fb", 0.5, 100, on_result, &c));
    run_for(200);
    OK(c, store_get(S, "t:fb", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    /* set without TTL drops an old one */
    OK(c, store_set(S, "t:re", "1", 1, 100, on_result, &c));
    OK(c, store_set(S, "t:re", "2", 1, 0, on_result, &c));
    run_for(200);
    OK(c, store_get(S, "t:re", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    cap_reset(&c);
}
END_TEST

/* SQLite: expired rows are deleted by the periodic purge, not only hidden. */
START_TEST(t_sqlite_purge)
{
    cap c = {0};
    for (int i = 0; i < 20; i++) {
        char k[32];
        snprintf(k, sizeof k, "p:%d", i);
        OK(c, store_set(S, k, "v", 1, 50, on_result, &c));
    }
    OK(c, store_list_push(S, "p:list", "v", 1, 0, on_result, &c));
    OK(c, store_expire(S, "p:list", 50, on_result, &c));
    run_for(400); /* purge_interval_ms = 100 */
    char *path = util_path_join(tmpdir, "koko.db");
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    ck_assert_int_eq(sqlite3_prepare_v2(db, "SELECT (SELECT COUNT(*) FROM kv) + (SELECT COUNT(*) FROM list_items)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    free(path);
    cap_reset(&c);
}
END_TEST

/* state.synchronous: which commits SQLite fsyncs. The health line counts the
 * commits by the level SQLite reports back (PRAGMA synchronous) for each. */
/* A batch of results does not hold the loop: 300 finished reads are delivered
 * at most 64 per turn, so an event activated by the first callback runs
 * before the last result (kokod then sees its sockets between job starts). */
static int breathe_results, breathe_probe_at = -1;
static struct event *breathe_probe;

static void on_breathe_probe(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    breathe_probe_at = breathe_results;
}

static void on_breathe_result(const store_result *r, void *arg)
{
    (void)arg;
    ck_assert_int_eq(r->status, STORE_OK);
    if (breathe_results++ == 0)
        event_active(breathe_probe, EV_TIMEOUT, 0);
}

START_TEST(t_sqlite_results_per_turn)
{
    breathe_results = 0;
    breathe_probe_at = -1;
    breathe_probe = event_new(base, -1, 0, on_breathe_probe, NULL);
    for (int i = 0; i < 300; i++)
        ck_assert_int_eq(store_get(S, "t:breathe", on_breathe_result, NULL), 0);
    usleep(300 * 1000); /* the worker answers all 300 meanwhile: they wait for the loop */
    run_until(&breathe_results, 300, 10000);
    ck_assert_int_gt(breathe_probe_at, 0);
    ck_assert_int_lt(breathe_probe_at, 300);
    event_free(breathe_probe);
}
END_TEST

START_TEST(t_sqlite_synchronous)
{
    static const struct {
        int mode;
        const char *want;
    } cases[] = {
        {STORE_SYNC_TIERED, "(WAL, synchronous=tiered: 1 commits fsync'ed, 4 not)"},
        {STORE_SYNC_FULL, "(WAL, synchronous=full: 5 commits fsync'ed, 0 not)"},
        {STORE_SYNC_NORMAL, "(WAL, synchronous=normal: 0 commits fsync'ed, 5 not)"},
    };
    cap c = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        store_close(S);
        opts.synchronous = cases[i].mode;
        S = open_store();
        /* one request per batch: each waits for its own commit */
        OK(c, store_queue_add(S, "m", 1, on_result, &c));          /* accepts: FULL when tiered */
        OK(c, store_set_nx(S, "d:1", "1", 1, 0, on_result, &c));   /* a dedup key: bookkeeping */
        OK(c, store_queue_claim(S, "me", 10000, 5, on_result, &c));
        ck_assert_uint_eq(c.n, 1);
        char id[32];
        snprintf(id, sizeof id, "%s", c.names[0]);
        OK(c, store_hash_set(S, "c:state", "owner", "bot", 3, on_result, &c));
        OK(c, store_queue_ack(S, id, on_result, &c));
        char why[600];
        ck_assert_int_eq(store_healthy(S, why, sizeof why), 1);
        ck_assert_msg(strstr(why, cases[i].want) != NULL, "mode %d: got \"%s\", want \"%s\"", cases[i].mode, why,
                      cases[i].want);
    }
    cap_reset(&c);
}
END_TEST

/* ---- set-if-absent races: two stores (two replicas) and many calls in flight ---- */

START_TEST(t_setnx_race)
{
    store *s2 = open_store();
    if (is_redis) {
        uint64_t t0 = util_now_ms();
        while (!store_healthy(s2, NULL, 0) && util_now_ms() - t0 < 5000)
            event_base_loop(base, EVLOOP_ONCE);
    }
    enum { N = 60 };
    static cap cs[N];
    for (int round = 0; round < 3; round++) {
        char key[32];
        snprintf(key, sizeof key, "race:%d", round);
        for (int i = 0; i < N; i++) {
            cap_reset(&cs[i]);
            char v[8];
            snprintf(v, sizeof v, "%d", i);
            in_submit = 1;
            ck_assert_int_eq(store_set_nx(i % 2 ? s2 : S, key, v, strlen(v), 5000, on_result, &cs[i]), 0);
            in_submit = 0;
        }
        int winners = 0, winner = -1;
        for (int i = 0; i < N; i++) {
            run_until(&cs[i].calls, 1, 10000);
            ck_assert_int_eq(cs[i].sync, 0);
            ck_assert_msg(cs[i].status == STORE_OK, "%s", cs[i].err);
            if (cs[i].integer == 1) {
                winners++;
                winner = i;
            }
        }
        ck_assert_int_eq(winners, 1);
        cap c = {0};
        OK(c, store_get(S, key, on_result, &c));
        ck_assert_int_eq(atoi(c.value), winner);
    }
    store_close(s2);
    for (int i = 0; i < N; i++)
        cap_reset(&cs[i]);
}
END_TEST

/* ---- lists ---- */

START_TEST(t_lists)
{
    cap c = {0};
    OK(c, store_list_range(S, "t:none", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    for (int i = 1; i <= 10; i++) {
        char v[8];
        snprintf(v, sizeof v, "m%d", i);
        OK(c, store_list_push(S, "t:hist", v, strlen(v), 5, on_result, &c));
        ck_assert_int_eq(c.integer, i < 5 ? i : 5);
    }
    OK(c, store_list_range(S, "t:hist", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 5);
    for (int i = 0; i < 5; i++) {
        char v[8];
        snprintf(v, sizeof v, "m%d", i + 6);
        ck_assert_str_eq(c.values[i], v);
    }
    OK(c, store_list_range(S, "t:hist", -2, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    ck_assert_str_eq(c.values[0], "m9");
    ck_assert_str_eq(c.values[1], "m10");
    OK(c, store_list_range(S, "t:hist", 1, 2, on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    ck_assert_str_eq(c.values[0], "m7");
    OK(c, store_list_range(S, "t:hist", 3, 100, on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    OK(c, store_list_range(S, "t:hist", 7, 9, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_list_range(S, "t:hist", -100, 0, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.values[0], "m6");
    OK(c, store_list_range(S, "t:hist", 3, 1, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    for (int i = 0; i < 20; i++)
        OK(c, store_list_push(S, "t:big", "x", 1, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 20);
    OK(c, store_list_push(S, "t:big", "", 0, 3, on_result, &c)); /* trimming an existing long list */
    ck_assert_int_eq(c.integer, 3);
    OK(c, store_list_range(S, "t:big", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 3);
    ck_assert_str_eq(c.values[2], "");
    OK(c, store_del(S, "t:hist", on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_list_range(S, "t:hist", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    cap_reset(&c);
}
END_TEST

/* ---- hashes ---- */

START_TEST(t_hashes)
{
    cap c = {0};
    OK(c, store_hash_set(S, "t:conv", "owner", "bot", 3, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_hash_set(S, "t:conv", "owner", "human", 5, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_hash_set(S, "t:conv", "contact", "c-1", 3, on_result, &c));
    OK(c, store_hash_set(S, "t:conv", "agent", "{\"id\":7}", 8, on_result, &c));
    OK(c, store_hash_get(S, "t:conv", "owner", on_result, &c));
    ck_assert_int_eq(c.found, 1);
    ck_assert_str_eq(c.value, "human");
    OK(c, store_hash_get(S, "t:conv", "nope", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    OK(c, store_hash_get(S, "t:nokey", "owner", on_result, &c));
    ck_assert_int_eq(c.found, 0);
    OK(c, store_hash_getall(S, "t:conv", on_result, &c));
    ck_assert_uint_eq(c.n, 3);
    ck_assert_str_eq(c.names[0], "agent");
    ck_assert_str_eq(c.values[0], "{\"id\":7}");
    ck_assert_str_eq(c.names[1], "contact");
    ck_assert_str_eq(c.names[2], "owner");
    ck_assert_str_eq(c.values[2], "human");
    OK(c, store_hash_del(S, "t:conv", "agent", on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_hash_del(S, "t:conv", "agent", on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_hash_del(S, "t:conv", "contact", on_result, &c));
    OK(c, store_hash_del(S, "t:conv", "owner", on_result, &c));
    /* the key went with its last field */
    OK(c, store_scan_prefix(S, "t:", on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_hash_getall(S, "t:conv", on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    cap_reset(&c);
}
END_TEST

/* ---- prefixes ---- */

START_TEST(t_prefix)
{
    cap c = {0};
    char *part = store_key_part("a:b*c d%");
    ck_assert_str_eq(part, "a%3Ab%2Ac%20d%25");
    free(part);
    part = store_key_part("anna+x@example.com");
    ck_assert_str_eq(part, "anna+x@example.com");
    free(part);

    OK(c, store_list_push(S, "t1:conv:chatwoot:42:history", "hi", 2, 20, on_result, &c));
    OK(c, store_hash_set(S, "t1:conv:chatwoot:42:state", "owner", "bot", 3, on_result, &c));
    OK(c, store_hash_set(S, "t1:contact:c1:convs", "chatwoot:42", "1", 1, on_result, &c));
    OK(c, store_set(S, "t1:dedup:chatwoot:m1", "1", 1, 60000, on_result, &c));
    OK(c, store_set(S, "t1x:other", "1", 1, 0, on_result, &c));
    OK(c, store_set(S, "t2:conv:chatwoot:42:history", "1", 1, 0, on_result, &c));
    OK(c, store_set(S, "t1:weird*[?]", "1", 1, 0, on_result, &c));
    OK(c, store_queue_add(S, "queued", 6, on_result, &c)); /* the queue is not a key */

    OK(c, store_scan_prefix(S, "t1:", on_result, &c));
    ck_assert_uint_eq(c.n, 5);
    ck_assert_str_eq(c.names[0], "t1:contact:c1:convs");
    ck_assert_str_eq(c.names[1], "t1:conv:chatwoot:42:history");
    ck_assert_str_eq(c.names[2], "t1:conv:chatwoot:42:state");
    ck_assert_str_eq(c.names[3], "t1:dedup:chatwoot:m1");
    ck_assert_str_eq(c.names[4], "t1:weird*[?]");
    OK(c, store_scan_prefix(S, "t1:we*", on_result, &c)); /* literal, not a glob */
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_scan_prefix(S, "t1:weird*[", on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    OK(c, store_scan_prefix(S, "", on_result, &c));
    ck_assert_uint_eq(c.n, 7);
    OK(c, store_del_prefix(S, "t1:conv:", on_result, &c));
    ck_assert_int_eq(c.integer, 2);
    OK(c, store_scan_prefix(S, "t1:", on_result, &c));
    ck_assert_uint_eq(c.n, 3);
    OK(c, store_del_prefix(S, "t1:", on_result, &c));
    ck_assert_int_eq(c.integer, 3);
    OK(c, store_scan_prefix(S, "t", on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 1);

    /* many keys: several SCAN rounds and UNLINK batches on Redis */
    enum { MANY = 1200 };
    static cap cs[MANY];
    for (int i = 0; i < MANY; i++) {
        char k[32];
        snprintf(k, sizeof k, "big:%04d", i);
        cap_reset(&cs[i]);
        ck_assert_int_eq(store_set(S, k, "v", 1, 0, on_result, &cs[i]), 0);
    }
    for (int i = 0; i < MANY; i++) {
        run_until(&cs[i].calls, 1, 20000);
        ck_assert_int_eq(cs[i].status, STORE_OK);
    }
    OK(c, store_scan_prefix(S, "big:", on_result, &c));
    ck_assert_uint_eq(c.n, MANY);
    ck_assert_str_eq(c.names[0], "big:0000");
    ck_assert_str_eq(c.names[MANY - 1], "big:1199");
    OK(c, store_del_prefix(S, "big:", on_result, &c));
    ck_assert_int_eq(c.integer, MANY);
    OK(c, store_scan_prefix(S, "big:", on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    cap_reset(&c);
}
END_TEST

/* ---- the queue ---- */

START_TEST(t_queue)
{
    cap c = {0};
    char ids[3][64];
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_claim(S, "a", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    for (int i = 0; i < 3; i++) {
        char p[16];
        snprintf(p, sizeof p, "msg%d", i);
        OK(c, store_queue_add(S, p, strlen(p) + 1, on_result, &c)); /* with its NUL: binary-safe */
        ck_assert(c.has_value);
        snprintf(ids[i], sizeof ids[i], "%.60s", c.value);
    }
    ck_assert_str_ne(ids[0], ids[1]);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 3);
    OK(c, store_queue_claim(S, "a", 10000, 2, on_result, &c));
    ck_assert_uint_eq(c.n, 2);
    ck_assert_str_eq(c.names[0], ids[0]);
    ck_assert_str_eq(c.values[0], "msg0");
    ck_assert_int_eq(c.attempts[0], 1);
    ck_assert_str_eq(c.names[1], ids[1]);
    OK(c, store_queue_claim(S, "b", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.names[0], ids[2]);
    OK(c, store_queue_claim(S, "c", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_queue_ack(S, ids[0], on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_queue_ack(S, ids[0], on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_ack(S, "no-such-id", on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 2);
    OK(c, store_queue_ack(S, ids[1], on_result, &c));
    OK(c, store_queue_ack(S, ids[2], on_result, &c));
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_claim(S, "a", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    cap_reset(&c);
}
END_TEST

START_TEST(t_queue_lease)
{
    cap c = {0};
    char id[64];
    OK(c, store_queue_add(S, "job", 3, on_result, &c));
    snprintf(id, sizeof id, "%.60s", c.value);
    OK(c, store_queue_claim(S, "replica-a", 200, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    OK(c, store_queue_claim(S, "replica-b", 200, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 0); /* held by a live lease */
    run_for(350);              /* replica-a died */
    OK(c, store_queue_claim(S, "replica-b", 200, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.names[0], id);
    ck_assert_str_eq(c.values[0], "job");
    ck_assert_int_eq(c.attempts[0], 2);
    OK(c, store_queue_claim(S, "replica-a", 200, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_queue_ack(S, id, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 0);

    /* a message that kills its consumer every time: dead after max_attempts (3) leases */
    OK(c, store_queue_add(S, "crasher", 7, on_result, &c));
    snprintf(id, sizeof id, "%.60s", c.value);
    for (int i = 1; i <= 3; i++) {
        OK(c, store_queue_claim(S, "x", 100, 10, on_result, &c));
        ck_assert_uint_eq(c.n, 1);
        ck_assert_int_eq(c.attempts[0], i);
        run_for(150);
    }
    OK(c, store_queue_claim(S, "x", 100, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 0);
    OK(c, store_queue_dead(S, 10, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.values[0], "crasher");
    ck_assert_int_eq(c.attempts[0], 3);
    ck_assert_msg(strstr(c.reasons[0], "lease expired") != NULL, "%s", c.reasons[0]);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    cap_reset(&c);
}
END_TEST

/* A holder that keeps extending its lease keeps the entry; once it stops,
 * the lease runs out and another consumer gets it — and the first can no
 * longer extend what is now someone else's. */
START_TEST(t_queue_extend)
{
    cap c = {0};
    char id[64];
    OK(c, store_queue_add(S, "slow", 4, on_result, &c));
    snprintf(id, sizeof id, "%.60s", c.value);
    OK(c, store_queue_claim(S, "replica-a", 300, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    for (int i = 0; i < 4; i++) { /* 4 x 150 ms: twice the lease, held throughout */
        run_for(150);
        OK(c, store_queue_extend(S, id, "replica-a", 300, on_result, &c));
        ck_assert_int_eq(c.integer, 1);
        OK(c, store_queue_claim(S, "replica-b", 300, 10, on_result, &c));
        ck_assert_uint_eq(c.n, 0);
    }
    OK(c, store_queue_extend(S, id, "replica-b", 300, on_result, &c));
    ck_assert_int_eq(c.integer, 0); /* not b's to extend */
    run_for(450);                   /* replica-a stopped extending */
    OK(c, store_queue_claim(S, "replica-b", 300, 10, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_int_eq(c.attempts[0], 2);
    OK(c, store_queue_extend(S, id, "replica-a", 300, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_extend(S, id, "replica-b", 300, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_queue_ack(S, id, on_result, &c));
    OK(c, store_queue_extend(S, id, "replica-b", 300, on_result, &c));
    ck_assert_int_eq(c.integer, 0); /* acked: nobody's */
    cap_reset(&c);
}
END_TEST

START_TEST(t_queue_dead)
{
    cap c = {0};
    char id[64], other[64], dead_id[64];
    OK(c, store_queue_add(S, "poison", 6, on_result, &c));
    snprintf(id, sizeof id, "%.60s", c.value);
    OK(c, store_queue_add(S, "good", 4, on_result, &c));
    snprintf(other, sizeof other, "%.60s", c.value);
    for (int i = 1; i <= 3; i++) {
        OK(c, store_queue_claim(S, "w", 10000, 1, on_result, &c));
        ck_assert_uint_eq(c.n, 1);
        ck_assert_str_eq(c.names[0], id); /* failed entries come back first: oldest first */
        ck_assert_int_eq(c.attempts[0], i);
        char why[32];
        snprintf(why, sizeof why, "boom %d", i);
        OK(c, store_queue_fail(S, id, why, on_result, &c));
        ck_assert_int_eq(c.integer, i == 3);
    }
    /* the poison message no longer blocks the queue */
    OK(c, store_queue_claim(S, "w", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.names[0], other);
    OK(c, store_queue_ack(S, other, on_result, &c));
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    DO(c, store_queue_fail(S, id, "again", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_NOTFOUND);
    OK(c, store_queue_dead(S, 10, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.values[0], "poison");
    ck_assert_int_eq(c.attempts[0], 3);
    ck_assert_str_eq(c.reasons[0], "boom 3");
    snprintf(dead_id, sizeof dead_id, "%.60s", c.names[0]);
    OK(c, store_queue_retry(S, dead_id, on_result, &c));
    ck_assert(c.has_value);
    snprintf(id, sizeof id, "%.60s", c.value);
    DO(c, store_queue_retry(S, dead_id, on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_NOTFOUND);
    DO(c, store_queue_retry(S, "12345-0", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_NOTFOUND);
    DO(c, store_queue_fail(S, "garbage", "x", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_NOTFOUND);
    OK(c, store_queue_dead(S, 10, on_result, &c));
    ck_assert_int_eq(c.integer, 0);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    OK(c, store_queue_claim(S, "w", 10000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.names[0], id);
    ck_assert_str_eq(c.values[0], "poison");
    ck_assert_int_eq(c.attempts[0], 1);
    OK(c, store_queue_ack(S, id, on_result, &c));
    ck_assert_int_eq(c.integer, 1);
    cap_reset(&c);
}
END_TEST

/* ---- persistence ---- */

START_TEST(t_persist)
{
    cap c = {0};
    char id1[64], id2[64];
    OK(c, store_set(S, "t:k", "durable", 7, 0, on_result, &c));
    OK(c, store_list_push(S, "t:l", "turn", 4, 10, on_result, &c));
    OK(c, store_hash_set(S, "t:h", "owner", "human", 5, on_result, &c));
    OK(c, store_incr(S, "t:n", 41, 0, on_result, &c));
    OK(c, store_queue_add(S, "one", 3, on_result, &c));
    snprintf(id1, sizeof id1, "%.60s", c.value);
    OK(c, store_queue_add(S, "two", 3, on_result, &c));
    snprintf(id2, sizeof id2, "%.60s", c.value);
    OK(c, store_queue_claim(S, "a", 60000, 1, on_result, &c)); /* "one" leased, then the process "dies" */
    ck_assert_uint_eq(c.n, 1);
    store_close(S);
    S = open_store();
    if (is_redis) {
        uint64_t t0 = util_now_ms();
        while (!store_healthy(S, NULL, 0) && util_now_ms() - t0 < 5000)
            event_base_loop(base, EVLOOP_ONCE);
    }
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_str_eq(c.value, "durable");
    OK(c, store_list_range(S, "t:l", 0, -1, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.values[0], "turn");
    OK(c, store_hash_get(S, "t:h", "owner", on_result, &c));
    ck_assert_str_eq(c.value, "human");
    OK(c, store_incr(S, "t:n", 1, 0, on_result, &c));
    ck_assert_int_eq(c.integer, 42);
    OK(c, store_queue_pending(S, on_result, &c));
    ck_assert_int_eq(c.integer, 2);
    OK(c, store_queue_claim(S, "b", 60000, 5, on_result, &c)); /* the lease survived the restart */
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.names[0], id2);
    ck_assert_str_eq(c.values[0], "two");
    char why[256];
    ck_assert(store_healthy(S, why, sizeof why));
    ck_assert_str_eq(store_backend(S), is_redis ? "redis" : "sqlite");
    cap_reset(&c);
}
END_TEST

/* ---- closing with calls in flight ---- */

static int refused_in_close;

static void on_result_and_call(const store_result *r, void *arg)
{
    on_result(r, arg);
    if (store_get(S, "t:x", on_result, arg) == -1)
        refused_in_close++;
}

START_TEST(t_close_inflight)
{
    enum { N = 300 };
    static cap cs[N];
    cap c = {0};
    OK(c, store_set(S, "t:x", "1", 1, 0, on_result, &c));
    for (int i = 0; i < N; i++) {
        cap_reset(&cs[i]);
        int rc;
        in_submit = 1;
        switch (i % 4) {
        case 0: rc = store_set(S, "t:x", "2", 1, 0, on_result, &cs[i]); break;
        case 1: rc = store_list_push(S, "t:l", "a", 1, 10, on_result, &cs[i]); break;
        case 2: rc = store_queue_add(S, "q", 1, on_result, &cs[i]); break;
        default: rc = store_get(S, "t:x", on_result_and_call, &cs[i]); break;
        }
        in_submit = 0;
        ck_assert_int_eq(rc, 0);
    }
    ck_assert_uint_eq(store_pending(S), N);
    refused_in_close = 0;
    store_close(S);
    S = NULL;
    int closed = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(cs[i].calls, 1);
        ck_assert_int_eq(cs[i].sync, 0);
        ck_assert_msg(cs[i].status == STORE_OK || cs[i].status == STORE_E_CLOSED, "status %d: %s", cs[i].status,
                      cs[i].err);
        if (cs[i].status == STORE_E_CLOSED) {
            closed++;
            ck_assert_str_ne(cs[i].err, "");
        }
    }
    ck_assert_int_eq(refused_in_close, N / 4);
    if (is_redis)
        ck_assert_int_eq(closed, N); /* nothing was even sent */
    run_for(100);                    /* nothing arrives after the close */
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(cs[i].calls, 1);
        cap_reset(&cs[i]);
    }
    cap_reset(&c);
}
END_TEST

static cap close_caps[3];

static void on_result_close(const store_result *r, void *arg)
{
    on_result(r, arg);
    store_close(S); /* from inside a callback: happens right after it returns */
    S = NULL;
}

START_TEST(t_close_from_callback)
{
    for (int i = 0; i < 3; i++)
        cap_reset(&close_caps[i]);
    store *s = S;
    ck_assert_int_eq(store_set(s, "t:a", "1", 1, 0, on_result_close, &close_caps[0]), 0);
    ck_assert_int_eq(store_get(s, "t:a", on_result, &close_caps[1]), 0);
    ck_assert_int_eq(store_get(s, "t:b", on_result, &close_caps[2]), 0);
    run_until(&close_caps[0].calls, 1, 5000);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(close_caps[i].calls, 1);
        cap_reset(&close_caps[i]);
    }
    ck_assert_ptr_null(S);
}
END_TEST

START_TEST(t_refusals)
{
    cap c = {0};
    ck_assert_int_eq(store_get(S, NULL, on_result, &c), -1);
    ck_assert_int_eq(store_get(S, "k", NULL, &c), -1);
    ck_assert_int_eq(store_get(NULL, "k", on_result, &c), -1);
    ck_assert_int_eq(store_queue_claim(S, "", 100, 1, on_result, &c), -1);
    ck_assert_int_eq(store_queue_claim(S, "a", 0, 1, on_result, &c), -1);
    ck_assert_int_eq(store_queue_dead(S, 0, on_result, &c), -1);
    ck_assert_uint_eq(store_pending(S), 0);
    run_for(50);
    ck_assert_int_eq(c.calls, 0);
}
END_TEST

/* ---- open errors (backend independent) ---- */

START_TEST(t_open_errors)
{
    char err[512];
    store_options o = {0};
    o.redis_url = "rediss://example.com:6380";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "TLS") != NULL, "%s", err);
    o.redis_url = "http://x";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "not a Redis URL") != NULL, "%s", err);
    o.redis_url = "redis://h:99999";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    o.redis_url = "redis://h:1/x";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    o.redis_url = "unix:relative.sock";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    o.redis_url = NULL;
    o.dir = "/proc/koko-cannot-be-here";
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "state directory") != NULL, "%s", err);
    /* a file that is not a database */
    char *dir = util_path_join(tmpdir, "bad");
    char *db = util_path_join(dir, "koko.db");
    ck_assert_int_eq(util_mkdir_p(dir, 0700), 0);
    ck_assert_int_eq(util_write_file(db, "this is not sqlite, not at all, no no no no no no no no no", 58, 0600, err,
                                     sizeof err),
                     0);
    o.dir = dir;
    ck_assert_ptr_null(store_open(base, &o, err, sizeof err));
    ck_assert_msg(strstr(err, "koko.db") != NULL, "%s", err);
    free(db);
    free(dir);
    /* unreachable redis is not an open error: the store starts degraded */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tr_free_port());
    o.redis_url = url;
    o.timeout_ms = 300;
    store *s = store_open(base, &o, err, sizeof err);
    ck_assert_ptr_nonnull(s);
    run_for(100);
    char why[256];
    ck_assert_int_eq(store_healthy(s, why, sizeof why), 0);
    ck_assert_msg(strstr(why, "127.0.0.1") != NULL, "%s", why);
    cap c = {0};
    store *keep = S;
    S = s;
    DO(c, store_get(s, "k", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_UNAVAILABLE);
    S = keep;
    store_close(s);
    cap_reset(&c);
}
END_TEST

/* ---- Redis only: outages ---- */

static void wait_healthy(store *s, int want, int ms)
{
    uint64_t t0 = util_now_ms();
    while (!!store_healthy(s, NULL, 0) != want) {
        ck_assert_msg(util_now_ms() - t0 < (uint64_t)ms, "store did not become %s", want ? "healthy" : "unhealthy");
        event_base_loop(base, EVLOOP_ONCE);
    }
}

START_TEST(t_redis_restart)
{
    cap c = {0};
    static cap inflight[10];
    OK(c, store_set(S, "t:k", "v", 1, 0, on_result, &c));
    for (int i = 0; i < 10; i++) {
        cap_reset(&inflight[i]);
        ck_assert_int_eq(store_get(S, "t:k", on_result, &inflight[i]), 0);
    }
    tr_stop(R.pid, SIGKILL);
    R.pid = 0;
    for (int i = 0; i < 10; i++) {
        run_until(&inflight[i].calls, 1, 3000);
        ck_assert_int_eq(inflight[i].status, STORE_E_UNAVAILABLE);
        ck_assert_msg(strstr(inflight[i].err, "redis") != NULL, "%s", inflight[i].err);
        cap_reset(&inflight[i]);
    }
    wait_healthy(S, 0, 2000);
    char why[256];
    ck_assert_int_eq(store_healthy(S, why, sizeof why), 0);
    ck_assert_msg(strstr(why, "127.0.0.1") != NULL, "%s", why);
    uint64_t t0 = util_now_ms();
    DO(c, store_get(S, "t:k", on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_UNAVAILABLE);
    ck_assert(util_now_ms() - t0 < 1500); /* fails fast, never hangs */
    DO(c, store_queue_add(S, "x", 1, on_result, &c));
    ck_assert_int_eq(c.status, STORE_E_UNAVAILABLE);
    run_for(500); /* several reconnect attempts fail meanwhile */

    R.pid = tr_start(&R, NULL, NULL);
    wait_healthy(S, 1, 5000);
    OK(c, store_set(S, "t:k", "again", 5, 0, on_result, &c));
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_str_eq(c.value, "again");
    OK(c, store_queue_add(S, "after", 5, on_result, &c)); /* the consumer group was recreated */
    OK(c, store_queue_claim(S, "a", 1000, 5, on_result, &c));
    ck_assert_uint_eq(c.n, 1);
    ck_assert_str_eq(c.values[0], "after");
    cap_reset(&c);
}
END_TEST

START_TEST(t_redis_hang)
{
    cap c = {0};
    OK(c, store_set(S, "t:k", "v", 1, 0, on_result, &c));
    kill(R.pid, SIGSTOP); /* alive but silent: only the command timeout can notice */
    uint64_t t0 = util_now_ms();
    DO(c, store_get(S, "t:k", on_result, &c));
    uint64_t took = util_now_ms() - t0;
    kill(R.pid, SIGCONT);
    ck_assert_int_eq(c.status, STORE_E_UNAVAILABLE);
    ck_assert_msg(strstr(c.err, "timed out") != NULL, "%s", c.err);
    ck_assert_msg(took >= 900 && took < 3000, "took %llu ms", (unsigned long long)took);
    wait_healthy(S, 1, 5000);
    OK(c, store_get(S, "t:k", on_result, &c));
    ck_assert_str_eq(c.value, "v");
    cap_reset(&c);
}
END_TEST

START_TEST(t_redis_unix_auth)
{
    char sock[128], url[160];
    snprintf(sock, sizeof sock, "%s/redis.sock", R.dir);
    pid_t pid = tr_start(&R, sock, "s3cret");
    snprintf(url, sizeof url, "unix:%s?db=2", sock);
    store_options o = opts;
    o.redis_url = url;
    o.password_env = "KOKO_TEST_REDIS_PW";
    o.prefix = "kt:";
    unsetenv("KOKO_TEST_REDIS_PW");
    char err[256], why[256];
    store *s = store_open(base, &o, err, sizeof err);
    ck_assert_ptr_nonnull(s);
    run_for(300);
    ck_assert_int_eq(store_healthy(s, why, sizeof why), 0); /* no password */
    ck_assert_msg(strstr(why, "AUTH") || strstr(why, "NOAUTH") || strstr(why, "auth"), "%s", why);
    store_close(s);
    setenv("KOKO_TEST_REDIS_PW", "s3cret", 1);
    s = store_open(base, &o, err, sizeof err);
    unsetenv("KOKO_TEST_REDIS_PW");
    ck_assert_ptr_nonnull(s);
    wait_healthy(s, 1, 3000);
    cap c = {0};
    OK(c, store_set(s, "t:k", "v", 1, 0, on_result, &c));
    OK(c, store_queue_add(s, "p", 1, on_result, &c));
    store_close(s);
    /* the key sits in db 2 under the prefix */
    redisContext *rc = redisConnectUnix(sock);
    ck_assert(rc && !rc->err);
    redisReply *r = redisCommand(rc, "AUTH s3cret");
    freeReplyObject(r);
    r = redisCommand(rc, "SELECT 2");
    freeReplyObject(r);
    r = redisCommand(rc, "GET kt:t:k");
    ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
    ck_assert_str_eq(r->str, "v");
    freeReplyObject(r);
    r = redisCommand(rc, "XLEN kt:queue:inbound");
    ck_assert_int_eq(r->integer, 1);
    freeReplyObject(r);
    redisFree(rc);
    tr_stop(pid, SIGTERM);
    cap_reset(&c);
}
END_TEST

/* ---- suites ---- */

static void add_common(Suite *su, void (*setup)(void))
{
    TCase *tc = tcase_create(setup == setup_redis ? "redis" : "sqlite");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, t_strings);
    tcase_add_test(tc, t_ttl);
    tcase_add_test(tc, t_setnx_race);
    tcase_add_test(tc, t_lists);
    tcase_add_test(tc, t_hashes);
    tcase_add_test(tc, t_prefix);
    tcase_add_test(tc, t_queue);
    tcase_add_test(tc, t_queue_lease);
    tcase_add_test(tc, t_queue_extend);
    tcase_add_test(tc, t_queue_dead);
    tcase_add_test(tc, t_persist);
    tcase_add_test(tc, t_close_inflight);
    tcase_add_test(tc, t_close_from_callback);
    tcase_add_test(tc, t_refusals);
    if (setup == setup_sqlite) {
        tcase_add_test(tc, t_sqlite_purge);
        tcase_add_test(tc, t_sqlite_synchronous);
        tcase_add_test(tc, t_sqlite_results_per_turn);
        tcase_add_test(tc, t_open_errors);
    } else {
        tcase_add_test(tc, t_redis_hang);
        tcase_add_test(tc, t_redis_restart);
        tcase_add_test(tc, t_redis_unix_auth);
    }
    suite_add_tcase(su, tc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *su = suite_create("store");
    add_common(su, setup_sqlite);
    if (tr_open(&R, "test_store") != 0) {
        tr_close(&R);
        return 1; /* the Redis suite cannot run: a failure, not a pass */
    }
    add_common(su, setup_redis);
    SRunner *sr = srunner_create(su);
    /* one process: the Redis cases kill and restart the server this process owns */
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (tr_close(&R) != 0)
        failed++;
    return failed ? 1 : 0;
}
