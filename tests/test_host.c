/*
 * tests/test_host.c — the host's kv_* calls (ABI 1.3: plugin state in the
 * store), run against the real store: SQLite in a temp directory, and a
 * redis-server this program starts on a free loopback port. Checked: the
 * namespace ({tenant}:plugin:{plugin}:{key}, parts escaped), the semantics
 * of each call (TTL, set-if-absent, counters), callbacks exactly once and
 * later, cancellation when the instance is drained (CANCELLED, the store's
 * late answer discarded), refusal after the stop, and a daemon without a
 * store (a status, not a crash). Without redis-server the program fails
 * (tests/testredis.h).
 */
#include "kokoconf.h"

#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "instance.h"
#include "kokod.h"
#include "store.h"
#include "testredis.h"
#include "util.h"

static struct event_base *base;
static store *S;
static kokod KD;
static koko_instance *I;
static koko_plugin DESC = {.name = "gemini"};
static char tmpdir[64];
static int is_redis;
static test_redis R; /* the redis-server this program runs */
static int in_call; /* 1 while a kv call is on the stack */

/* ---- fixtures ---- */

static void make_instance(void)
{
    memset(&KD, 0, sizeof KD);
    KD.base = base;
    KD.store = S;
    I = calloc(1, sizeof *I);
    I->magic = INSTANCE_MAGIC;
    I->kd = &KD;
    I->tenant = "demo";
    I->prefix = "demo/gemini";
    I->desc = &DESC;
    I->st = INST_RUNNING;
}

static void setup_common(void)
{
    base = event_base_new();
    ck_assert_ptr_nonnull(base);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_host-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void setup_sqlite(void)
{
    setup_common();
    is_redis = 0;
    store_options o = {.dir = tmpdir};
    char err[256];
    S = store_open(base, &o, err, sizeof err);
    ck_assert_msg(S != NULL, "%s", err);
    make_instance();
}

static void setup_redis(void)
{
    setup_common();
    is_redis = 1;
    tr_flush(&R);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", R.port);
    store_options o = {.redis_url = url, .timeout_ms = 1000};
    char err[256];
    S = store_open(base, &o, err, sizeof err);
    ck_assert_msg(S != NULL, "%s", err);
    uint64_t t0 = util_now_ms();
    while (!store_healthy(S, NULL, 0) && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert(store_healthy(S, NULL, 0));
    make_instance();
}

static void setup_nostore(void)
{
    setup_common();
    S = NULL;
    make_instance();
}

static void teardown(void)
{
    ck_assert_uint_eq(host_kv_pending(I), 0);
    store_close(S);
    S = NULL;
    free(I);
    event_base_free(base);
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

/* ---- results ---- */

typedef struct res {
    int calls;
    int during_call; /* a callback ran inside the kv call */
    koko_kv_status st;
    int found;
    int64_t integer;
    char value[256];
    char error[256];
} res;

static void on_kv(const koko_kv_result *r, void *arg)
{
    res *x = arg;
    x->calls++;
    x->during_call |= in_call;
    ck_assert_uint_eq(r->size, sizeof *r);
    x->st = r->status;
    x->found = r->found;
    x->integer = r->integer;
    snprintf(x->value, sizeof x->value, "%.*s", r->value ? (int)r->value_len : 0, r->value ? r->value : "");
    snprintf(x->error, sizeof x->error, "%s", r->error ? r->error : "");
}

static void wait_for(res *x)
{
    uint64_t t0 = util_now_ms();
    while (x->calls == 0 && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert_int_eq(x->calls, 1);
    ck_assert_int_eq(x->during_call, 0);
}

static res get(const char *key)
{
    res x = {0};
    in_call = 1;
    ck_assert_int_eq(core_host.kv_get(I, key, on_kv, &x), 0);
    in_call = 0;
    wait_for(&x);
    return x;
}

static res set(const char *key, const char *val, int64_t ttl_ms, int nx)
{
    res x = {0};
    in_call = 1;
    int rc = nx ? core_host.kv_set_nx(I, key, val, strlen(val), ttl_ms, on_kv, &x)
                : core_host.kv_set(I, key, val, strlen(val), ttl_ms, on_kv, &x);
    in_call = 0;
    ck_assert_int_eq(rc, 0);
    wait_for(&x);
    return x;
}

static res incr(const char *key, int64_t delta, int64_t ttl_ms)
{
    res x = {0};
    in_call = 1;
    ck_assert_int_eq(core_host.kv_incr(I, key, delta, ttl_ms, on_kv, &x), 0);
    in_call = 0;
    wait_for(&x);
    return x;
}

static res del(const char *key)
{
    res x = {0};
    in_call = 1;
    ck_assert_int_eq(core_host.kv_del(I, key, on_kv, &x), 0);
    in_call = 0;
    wait_for(&x);
    return x;
}

static void on_store(const store_result *r, void *arg)
{
    res *x = arg;
    x->calls++;
    x->st = (koko_kv_status)r->status;
    x->found = r->found;
    snprintf(x->value, sizeof x->value, "%.*s", r->value ? (int)r->value_len : 0, r->value ? r->value : "");
}

/* The raw store value of KEY (with the host's namespace). */
static res raw_get(const char *key)
{
    res x = {0};
    ck_assert_int_eq(store_get(S, key, on_store, &x), 0);
    uint64_t t0 = util_now_ms();
    while (x.calls == 0 && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert_int_eq(x.calls, 1);
    return x;
}

static void sleep_loop(unsigned ms)
{
    uint64_t t0 = util_now_ms();
    while (util_now_ms() - t0 < ms) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        usleep(5000);
    }
}

/* ---- cases ---- */

START_TEST(test_get_set_del)
{
    res r = get("cache:gemini-2.5-flash:abc");
    ck_assert_int_eq(r.st, KOKO_KV_OK);
    ck_assert_int_eq(r.found, 0);
    ck_assert_int_eq(set("cache:gemini-2.5-flash:abc", "{\"name\":\"cachedContents/x\"}", 0, 0).st, KOKO_KV_OK);
    r = get("cache:gemini-2.5-flash:abc");
    ck_assert_int_eq(r.found, 1);
    ck_assert_str_eq(r.value, "{\"name\":\"cachedContents/x\"}");
    ck_assert_int_eq(del("cache:gemini-2.5-flash:abc").integer, 1);
    ck_assert_int_eq(del("cache:gemini-2.5-flash:abc").integer, 0);
    ck_assert_int_eq(get("cache:gemini-2.5-flash:abc").found, 0);
}
END_TEST

START_TEST(test_namespace)
{
    set("a/b c:x*y", "v", 0, 0);
    /* the store sees the tenant and plugin in front, each part escaped on its own */
    res raw = raw_get("demo:plugin:gemini:a%2Fb%20c:x%2Ay");
    ck_assert_int_eq(raw.found, 1);
    ck_assert_str_eq(raw.value, "v");
    /* another plugin of the same tenant does not see it */
    koko_plugin other = {.name = "openai"};
    I->desc = &other;
    ck_assert_int_eq(get("a/b c:x*y").found, 0);
    I->desc = &DESC;
    ck_assert_int_eq(get("a/b c:x*y").found, 1);
    /* keys that are refused outright: DONE never runs */
    res x = {0};
    ck_assert_int_eq(core_host.kv_get(I, "", on_kv, &x), -1);
    ck_assert_int_eq(core_host.kv_get(I, NULL, on_kv, &x), -1);
    char big[600];
    memset(big, 'k', sizeof big - 1);
    big[sizeof big - 1] = 0;
    ck_assert_int_eq(core_host.kv_set(I, big, "v", 1, 0, on_kv, &x), -1);
    sleep_loop(20);
    ck_assert_int_eq(x.calls, 0);
}
END_TEST

START_TEST(test_set_nx_and_ttl)
{
    ck_assert_int_eq(set("lock", "r1", 300, 1).integer, 1);
    ck_assert_int_eq(set("lock", "r2", 300, 1).integer, 0);
    ck_assert_str_eq(get("lock").value, "r1");
    sleep_loop(450);
    ck_assert_int_eq(get("lock").found, 0);
    ck_assert_int_eq(set("lock", "r2", 0, 1).integer, 1);
    ck_assert_str_eq(get("lock").value, "r2");
}
END_TEST

START_TEST(test_incr)
{
    ck_assert_int_eq(incr("rate:req:1", 1, 300).integer, 1);
    ck_assert_int_eq(incr("rate:req:1", 5, 300).integer, 6);
    ck_assert_int_eq(incr("rate:req:1", -2, 0).integer, 4);
    sleep_loop(450); /* the TTL given at creation holds */
    ck_assert_int_eq(incr("rate:req:1", 1, 300).integer, 1);
    set("text", "abc", 0, 0);
    res r = incr("text", 1, 0);
    ck_assert_int_eq(r.st, KOKO_KV_E_TYPE);
    ck_assert(r.error[0] != 0);
}
END_TEST

START_TEST(test_null_done)
{
    ck_assert_int_eq(core_host.kv_set(I, "fire", "1", 1, 0, NULL, NULL), 0);
    ck_assert_int_eq(core_host.kv_incr(I, "count", 3, 0, NULL, NULL), 0);
    ck_assert_uint_eq(host_kv_pending(I), 0);
    ck_assert_int_eq(incr("count", 1, 0).integer, 4); /* the store keeps order */
    ck_assert_str_eq(get("fire").value, "1");
}
END_TEST

START_TEST(test_cancel_on_stop)
{
    res a = {0}, b = {0};
    ck_assert_int_eq(core_host.kv_set(I, "k", "v", 1, 0, on_kv, &a), 0);
    ck_assert_int_eq(core_host.kv_get(I, "k", on_kv, &b), 0);
    ck_assert_uint_eq(host_kv_pending(I), 2);
    /* the drain deadline: instance.c marks it dead and cancels what is left */
    I->st = INST_DEAD;
    in_call = 1;
    ck_assert_uint_eq(host_kv_cancel(I, 1), 2);
    in_call = 0;
    ck_assert_int_eq(a.calls + b.calls, 0); /* later, never inside the cancel */
    ck_assert_uint_eq(host_kv_pending(I), 2);
    uint64_t t0 = util_now_ms();
    while (host_kv_pending(I) > 0 && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    ck_assert_int_eq(a.st, KOKO_KV_E_CANCELLED);
    ck_assert_int_eq(b.st, KOKO_KV_E_CANCELLED);
    /* the store's own answers arrive and are thrown away: still once each */
    sleep_loop(100);
    ck_assert_int_eq(a.calls, 1);
    ck_assert_int_eq(b.calls, 1);
    /* a stopped instance is refused */
    res c = {0};
    ck_assert_int_eq(core_host.kv_get(I, "k", on_kv, &c), -1);
    sleep_loop(20);
    ck_assert_int_eq(c.calls, 0);
}
END_TEST

START_TEST(test_store_closes)
{
    res a = {0};
    ck_assert_int_eq(core_host.kv_incr(I, "n", 1, 0, on_kv, &a), 0);
    store_close(S); /* kokod exiting: the answer comes inside the close, CANCELLED */
    S = NULL;
    KD.store = NULL;
    ck_assert_int_eq(a.calls, 1);
    ck_assert(a.st == KOKO_KV_E_CANCELLED || a.st == KOKO_KV_OK);
}
END_TEST

START_TEST(test_no_store)
{
    res r = {0};
    in_call = 1;
    ck_assert_int_eq(core_host.kv_get(I, "k", on_kv, &r), 0);
    in_call = 0;
    wait_for(&r);
    ck_assert_int_eq(r.st, KOKO_KV_E_UNAVAILABLE);
    ck_assert(strstr(r.error, "no state store") != NULL);
    ck_assert_int_eq(core_host.kv_set(I, "k", "v", 1, 0, NULL, NULL), 0); /* nothing to answer */
    /* cancelled before the deferred answer ran: CANCELLED wins, once */
    res c = {0};
    ck_assert_int_eq(core_host.kv_del(I, "k", on_kv, &c), 0);
    I->st = INST_DEAD;
    host_kv_cancel(I, 1);
    uint64_t t0 = util_now_ms();
    while (host_kv_pending(I) > 0 && util_now_ms() - t0 < 5000)
        event_base_loop(base, EVLOOP_ONCE);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(c.st, KOKO_KV_E_CANCELLED);
}
END_TEST

static void add_common(Suite *su, const char *name, void (*setup)(void))
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_get_set_del);
    tcase_add_test(tc, test_namespace);
    tcase_add_test(tc, test_set_nx_and_ttl);
    tcase_add_test(tc, test_incr);
    tcase_add_test(tc, test_null_done);
    tcase_add_test(tc, test_cancel_on_stop);
    tcase_add_test(tc, test_store_closes);
    suite_add_tcase(su, tc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *su = suite_create("host");
    add_common(su, "sqlite", setup_sqlite);
    TCase *tc = tcase_create("nostore");
    tcase_add_checked_fixture(tc, setup_nostore, teardown);
    tcase_add_test(tc, test_no_store);
    suite_add_tcase(su, tc);
    if (tr_open(&R, "test_host") != 0) {
        tr_close(&R);
        return 1; /* the Redis cases cannot run: a failure, not a pass */
    }
    add_common(su, "redis", setup_redis);
    SRunner *sr = srunner_create(su);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (tr_close(&R) != 0)
        failed++;
    return failed ? 1 : 0;
}
