/*
 * test_loader.c — unit tests for core/loader.c: finding, checking and
 * dlopening plugin shared objects.
 *
 * Every test builds its own search folder in a temporary directory, with
 * symbolic links to the test plugins of $KOKO_TEST_PLUGINS (plus notso.so
 * from the source tree), so the "available: ..." lists and the file names in
 * the error messages are exact and do not change when plugins are added to
 * the build. The content-addressed copies go to a temporary cache folder,
 * which each test checks is left empty once everything is released.
 */
#include <check.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader.h"
#include "testutil.h"
#include "util.h"

static const char *tmp_root; /* the test's temporary directory */
static char plug_dir[512];   /* the search folder */
static char cache_dir[512];  /* content-addressed copies */

static void setup(void)
{
    tmp_root = tu_tmp_make("loader");
    snprintf(plug_dir, sizeof plug_dir, "%s/plugins", tmp_root);
    snprintf(cache_dir, sizeof cache_dir, "%s/cache", tmp_root);
    ck_assert_int_eq(mkdir(plug_dir, 0700), 0);
    static const char *const names[] = {"echo", "badmajor", "badminor", "badsig", "noops", "chankind",
                                        "misname", "failinit", "nosym", "testchan"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        tu_link_test_plugin(plug_dir, names[i]);
    char src[1024];
    snprintf(src, sizeof src, "%s/tests/data/plugins/notso.so", tu_env_or("KOKO_SRCDIR", "."));
    tu_link_plugin(plug_dir, "notso", src);
}

/* Number of entries in the cache folder (0 when it does not exist). */
static int cache_files(void)
{
    return tu_count_entries(cache_dir);
}

#define AVAILABLE "badmajor, badminor, badsig, chankind, echo, failinit, misname, noops, nosym, notso, testchan"

/* loader_get expecting failure with exactly EXPECTED (a printf format taking the file path). */
static void expect_get_fail(const char *name, const char *expected)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {plug_dir};
    char err[1024] = "";
    plugin_lib *lib = loader_get(ld, search, 1, name, err, sizeof err);
    ck_assert_ptr_null(lib);
    ck_assert_str_eq(err, expected);
    ck_assert_int_eq(cache_files(), 0); /* the copy of a refused file is removed */
    loader_free(ld);
}

static char *file_of(const char *name)
{
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/%s.so", plug_dir, name);
    return buf;
}

/* ---- loading good plugins ---- */

START_TEST(test_get_echo)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {"/nonexistent-koko-dir", plug_dir};
    char err[1024] = "";
    plugin_lib *lib = loader_get(ld, search, 2, "echo", err, sizeof err);
    ck_assert_msg(lib != NULL, "%s", err);
    ck_assert_str_eq(lib->name, "echo");
    ck_assert_str_eq(lib->path, file_of("echo"));
    ck_assert_int_eq(lib->refs, 1);
    ck_assert_int_eq((int)strlen(lib->hash), 16);
    char want[1024];
    snprintf(want, sizeof want, "%s/echo-%s.so", cache_dir, lib->hash);
    ck_assert_str_eq(lib->copy_path, want);
    ck_assert_int_eq(access(lib->copy_path, F_OK), 0);

    /* the hash is FNV-1a 64 of the file's bytes */
    size_t len;
    char *data = util_read_file(lib->path, 64u << 20, &len, err, sizeof err);
    ck_assert_ptr_nonnull(data);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)util_fnv1a64(data, len));
    free(data);
    ck_assert_str_eq(lib->hash, hex);

    const koko_plugin *d = lib->desc;
    ck_assert_int_eq(d->abi_major, KOKO_ABI_MAJOR);
    ck_assert_int_eq(d->abi_minor, KOKO_ABI_MINOR);
    ck_assert_uint_eq(d->size, sizeof(koko_plugin));
    ck_assert_str_eq(d->signature, KOKO_ABI_SIGNATURE);
    ck_assert_int_eq(d->kind, KOKO_KIND_LLM);
    ck_assert_str_eq(d->name, "echo");
    ck_assert_str_eq(d->version, "v1");
    ck_assert_str_eq(d->description, "test backend: echoes the question");
    ck_assert_ptr_nonnull(d->init);
    ck_assert_ptr_nonnull(d->destroy);
    ck_assert_ptr_nonnull(d->validate);
    const koko_llm_ops *ops = d->ops;
    ck_assert_ptr_nonnull(ops);
    ck_assert_ptr_nonnull(ops->generate);
    ck_assert_str_eq(loader_kind_name(d->kind), "llm");

    loader_release(ld, lib);
    ck_assert_int_eq(cache_files(), 0);
    loader_free(ld);
}
END_TEST

static int n_diag_errors;
static char last_diag[512];

static void count_error(koko_diag *d, const char *relpath, const char *fmt, ...)
{
    (void)d;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(last_diag, sizeof last_diag, "%s: %s", relpath, msg);
    n_diag_errors++;
}

/* Runs the library's validate() on CFG_JSON; returns the number of problems. */
static int run_validate(const plugin_lib *lib, const char *cfg_json)
{
    json_t *cfg = json_loads(cfg_json, 0, NULL);
    ck_assert_ptr_nonnull(cfg);
    koko_diag d = {.size = sizeof d, .error = count_error};
    n_diag_errors = 0;
    last_diag[0] = '\0';
    int rc = lib->desc->validate(cfg, &d);
    json_decref(cfg);
    ck_assert_int_eq(rc, n_diag_errors);
    return rc;
}

START_TEST(test_plugin_code_runs)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {plug_dir};
    char err[1024] = "";
    plugin_lib *lib = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_msg(lib != NULL, "%s", err);
    ck_assert_int_eq(run_validate(lib, "{\"delay_ms\": 5, \"fail\": false}"), 0);
    ck_assert_int_eq(run_validate(lib, "{\"delay_ms\": -1, \"nope\": 1}"), 2);
    ck_assert_str_eq(last_diag, "nope: unknown key \"nope\" (known: delay_ms, fail, handoff, confidence, call, cost_usd)");
    loader_release(ld, lib);
    loader_free(ld);
}
END_TEST

START_TEST(test_shared_refcount)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {plug_dir};
    char err[1024] = "";
    plugin_lib *a = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_msg(a != NULL, "%s", err);
    plugin_lib *b = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_ptr_eq(a, b);
    ck_assert_int_eq(a->refs, 2);
    ck_assert_int_eq(cache_files(), 1);
    char *copy = xstrdup(a->copy_path);
    loader_release(ld, b);
    ck_assert_int_eq(a->refs, 1);
    ck_assert_int_eq(access(copy, F_OK), 0); /* still loaded: the copy stays */
    ck_assert_int_eq(run_validate(a, "{}"), 0);
    loader_release(ld, a);
    ck_assert_int_ne(access(copy, F_OK), 0); /* last reference: unloaded, copy removed */
    ck_assert_int_eq(cache_files(), 0);
    free(copy);
    loader_free(ld);
}
END_TEST

START_TEST(test_changed_file)
{
    /* a real file (not a link) that the test overwrites, as an operator would */
    char v1[1024], v2[1024], file[1024];
    snprintf(v1, sizeof v1, "%s/echo.so", tu_env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"));
    snprintf(v2, sizeof v2, "%s/tests/plugins/v2/.libs/echo.so", tu_env_or("KOKO_BUILDDIR", "."));
    char dir[600];
    snprintf(dir, sizeof dir, "%s/swap", tmp_root);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    snprintf(file, sizeof file, "%s/echo.so", dir);
    tu_copy_file(v1, file);

    loader *ld = loader_new(cache_dir);
    const char *search[] = {dir};
    char err[1024] = "";
    plugin_lib *old = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_msg(old != NULL, "%s", err);
    ck_assert_str_eq(old->desc->version, "v1");

    tu_copy_file(v2, file);
    plugin_lib *neu = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_msg(neu != NULL, "%s", err);
    ck_assert_ptr_ne(old, neu);
    ck_assert_str_ne(old->hash, neu->hash);
    ck_assert_str_ne(old->copy_path, neu->copy_path);
    ck_assert_ptr_ne(old->handle, neu->handle);
    ck_assert_str_eq(neu->desc->version, "v2");
    ck_assert_int_eq(neu->refs, 1);
    ck_assert_int_eq(old->refs, 1);
    ck_assert_int_eq(cache_files(), 2);

    /* the old library is still mapped and usable */
    ck_assert_str_eq(old->desc->version, "v1");
    ck_assert_int_eq(run_validate(old, "{\"fail\": 3}"), 1);
    ck_assert_str_eq(last_diag, "fail: expected true or false");

    /* the new file loaded again is shared with the new library, not the old */
    plugin_lib *again = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_ptr_eq(again, neu);
    loader_release(ld, again);

    char *old_copy = xstrdup(old->copy_path), *new_copy = xstrdup(neu->copy_path);
    loader_release(ld, neu);
    ck_assert_int_ne(access(new_copy, F_OK), 0);
    ck_assert_int_eq(access(old_copy, F_OK), 0);
    ck_assert_str_eq(old->desc->version, "v1");
    loader_release(ld, old);
    ck_assert_int_ne(access(old_copy, F_OK), 0);
    ck_assert_int_eq(cache_files(), 0);
    free(old_copy);
    free(new_copy);
    loader_free(ld);
}
END_TEST

START_TEST(test_other_good_plugins)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {plug_dir};
    char err[1024] = "";
    plugin_lib *ch = loader_get(ld, search, 1, "chankind", err, sizeof err);
    ck_assert_msg(ch != NULL, "%s", err);
    ck_assert_int_eq(ch->desc->kind, KOKO_KIND_CHANNEL);
    ck_assert_str_eq(loader_kind_name(ch->desc->kind), "channel");
    plugin_lib *fi = loader_get(ld, search, 1, "failinit", err, sizeof err);
    ck_assert_msg(fi != NULL, "%s", err); /* init failing is found later, at instance creation */
    plugin_lib *tc = loader_get(ld, search, 1, "testchan", err, sizeof err);
    ck_assert_msg(tc != NULL, "%s", err);
    ck_assert_int_eq(tc->desc->kind, KOKO_KIND_CHANNEL);
    ck_assert_int_eq(cache_files(), 3);
    /* loader_free unloads what is left and removes the copies */
    loader_free(ld);
    ck_assert_int_eq(cache_files(), 0);
}
END_TEST

/* ---- failures, each with its exact message ---- */

START_TEST(test_missing)
{
    expect_get_fail("nope", "unknown plugin \"nope\" (available: " AVAILABLE ")");
    /* a name that is not a plugin name is never looked up as a path */
    expect_get_fail("../plugins/echo", "unknown plugin \"../plugins/echo\" (available: " AVAILABLE ")");

    loader *ld = loader_new(cache_dir);
    const char *none[] = {"/nonexistent-koko-dir"};
    char err[1024];
    ck_assert_ptr_null(loader_get(ld, none, 1, "echo", err, sizeof err));
    ck_assert_str_eq(err, "unknown plugin \"echo\" (available: none)");
    ck_assert_ptr_null(loader_get(ld, NULL, 0, "echo", err, sizeof err));
    ck_assert_str_eq(err, "unknown plugin \"echo\" (available: none)");
    loader_free(ld);
}
END_TEST

START_TEST(test_not_shared_object)
{
    loader *ld = loader_new(cache_dir);
    const char *search[] = {plug_dir};
    char err[1024] = "";
    ck_assert_ptr_null(loader_get(ld, search, 1, "notso", err, sizeof err));
    /* "FILE: cannot load plugin: COPY: <dlerror's reason>" */
    char src[1024];
    snprintf(src, sizeof src, "%s/tests/data/plugins/notso.so", tu_env_or("KOKO_SRCDIR", "."));
    size_t len;
    char rerr[256];
    char *data = util_read_file(src, 1 << 20, &len, rerr, sizeof rerr);
    ck_assert_ptr_nonnull(data);
    char want[2048];
    snprintf(want, sizeof want, "%s: cannot load plugin: %s/notso-%016llx.so: ", file_of("notso"), cache_dir,
             (unsigned long long)util_fnv1a64(data, len));
    free(data);
    ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "got: %s\nwant prefix: %s", err, want);
    const char *why = err + strlen(want);
    ck_assert_msg(strcmp(why, "invalid ELF header") == 0 || strcmp(why, "file too short") == 0,
                  "unexpected reason: %s", why);
    ck_assert_int_eq(cache_files(), 0);
    loader_free(ld);
}
END_TEST

START_TEST(test_no_descriptor)
{
    char want[2048];
    snprintf(want, sizeof want,
             "%s: no koko_plugin_v1 symbol: not a kokod plugin (export the descriptor with KOKO_EXPORT)",
             file_of("nosym"));
    expect_get_fail("nosym", want);
}
END_TEST

START_TEST(test_abi_major)
{
    char want[2048];
    snprintf(want, sizeof want,
             "%s: plugin ABI 99.%d is not compatible with kokod's ABI %d.%d (major versions differ): "
             "rebuild the plugin against this kokod's headers",
             file_of("badmajor"), KOKO_ABI_MINOR, KOKO_ABI_MAJOR, KOKO_ABI_MINOR);
    expect_get_fail("badmajor", want);
}
END_TEST

START_TEST(test_abi_minor)
{
    char want[2048];
    snprintf(want, sizeof want,
             "%s: plugin needs ABI %d.99 but kokod provides %d.%d: upgrade kokod or rebuild the plugin "
             "against these headers",
             file_of("badminor"), KOKO_ABI_MAJOR, KOKO_ABI_MAJOR, KOKO_ABI_MINOR);
    expect_get_fail("badminor", want);
}
END_TEST

START_TEST(test_signature)
{
    char want[2048];
    snprintf(want, sizeof want,
             "%s: plugin build signature \"koko-abi-1/ilp32\" differs from kokod's \"%s\": "
             "rebuild the plugin",
             file_of("badsig"), KOKO_ABI_SIGNATURE);
    expect_get_fail("badsig", want);
}
END_TEST

START_TEST(test_no_ops)
{
    char want[2048];
    snprintf(want, sizeof want, "%s: plugin \"noops\" has no llm ops table", file_of("noops"));
    expect_get_fail("noops", want);
}
END_TEST

START_TEST(test_misname)
{
    char want[2048];
    snprintf(want, sizeof want,
             "%s: the file declares plugin \"othername\", not \"misname\": rename the file to othername.so",
             file_of("misname"));
    expect_get_fail("misname", want);
}
END_TEST

START_TEST(test_no_cache_dir)
{
    loader *ld = loader_new(NULL);
    const char *search[] = {plug_dir};
    char err[1024];
    ck_assert_ptr_null(loader_get(ld, search, 1, "echo", err, sizeof err));
    ck_assert_str_eq(err, "internal error: no plugin cache folder set");
    loader_set_cache_dir(ld, cache_dir);
    loader_set_cache_dir(ld, "/nonexistent-koko-dir/never-used"); /* first one wins */
    plugin_lib *lib = loader_get(ld, search, 1, "echo", err, sizeof err);
    ck_assert_msg(lib != NULL, "%s", err);
    ck_assert_int_eq(strncmp(lib->copy_path, cache_dir, strlen(cache_dir)), 0);
    loader_release(ld, lib);
    loader_free(ld);
}
END_TEST

/* ---- loader_check_descriptor on hand-made descriptors ---- */

static void *h_init(const koko_host *h, koko_instance *i, const json_t *c, char *e, size_t el)
{
    (void)h;
    (void)i;
    (void)c;
    (void)e;
    (void)el;
    return NULL;
}
static void h_destroy(void *s) { (void)s; }
static void h_generate(void *s, const koko_llm_request *r, koko_llm_fn done, void *a)
{
    (void)s;
    (void)r;
    (void)done;
    (void)a;
}
static void h_deliver(void *s, const koko_reply *r, koko_deliver_fn done, void *a)
{
    (void)s;
    (void)r;
    (void)done;
    (void)a;
}
static const json_t *h_decl(void *s)
{
    (void)s;
    return NULL;
}
static void h_call(void *s, const char *n, const json_t *a, koko_tool_fn done, void *arg)
{
    (void)s;
    (void)n;
    (void)a;
    (void)done;
    (void)arg;
}

static const koko_llm_ops llm_ops = {.size = sizeof llm_ops, .generate = h_generate};

static koko_plugin good_desc(void)
{
    koko_plugin d = {
        .abi_major = KOKO_ABI_MAJOR, .abi_minor = KOKO_ABI_MINOR, .size = sizeof(koko_plugin),
        .signature = KOKO_ABI_SIGNATURE, .kind = KOKO_KIND_LLM, .name = "hand", .version = "1",
        .init = h_init, .destroy = h_destroy, .ops = &llm_ops,
    };
    return d;
}

static void expect_bad(const koko_plugin *d, const char *expected)
{
    char err[1024] = "";
    ck_assert_int_ne(loader_check_descriptor(d, "x.so", err, sizeof err), 0);
    ck_assert_str_eq(err, expected);
}

START_TEST(test_check_descriptor)
{
    char err[1024] = "";
    koko_plugin d = good_desc();
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);

    d = good_desc();
    d.init = NULL;
    expect_bad(&d, "x.so: plugin \"hand\" lacks the mandatory init function");
    d = good_desc();
    d.destroy = NULL;
    expect_bad(&d, "x.so: plugin \"hand\" lacks the mandatory destroy function");

    d = good_desc();
    d.kind = (koko_kind)7;
    expect_bad(&d, "x.so: unknown plugin kind 7 (expected channel, llm or tool)");
    d.kind = (koko_kind)0;
    expect_bad(&d, "x.so: unknown plugin kind 0 (expected channel, llm or tool)");

    static const char *const bad_names[] = {"Hand", "has space", "dot.ted", "", "a/b",
                                            "a234567890123456789012345678901234567890123456789012345678901234x"};
    for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++) {
        d = good_desc();
        d.name = bad_names[i];
        expect_bad(&d, "x.so: invalid plugin name (use 1-64 characters of a-z, 0-9, _ and -)");
    }
    d = good_desc();
    d.name = NULL;
    expect_bad(&d, "x.so: invalid plugin name (use 1-64 characters of a-z, 0-9, _ and -)");
    d = good_desc();
    d.name = "a_b-9";
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);

    d = good_desc();
    d.size = 8;
    char want[512];
    snprintf(want, sizeof want,
             "x.so: plugin descriptor is 8 bytes, smaller than ABI %d.0's %zu: corrupt or foreign build",
             KOKO_ABI_MAJOR, offsetof(koko_plugin, ops) + sizeof(void *));
    expect_bad(&d, want);
    d.size = sizeof(koko_plugin) + 64; /* a newer minor's larger descriptor is fine */
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);

    d = good_desc();
    d.signature = NULL;
    snprintf(want, sizeof want, "x.so: plugin build signature \"(none)\" differs from kokod's \"%s\": "
             "rebuild the plugin", KOKO_ABI_SIGNATURE);
    expect_bad(&d, want);
    d = good_desc();
    d.abi_minor = KOKO_ABI_MINOR + 1;
    snprintf(want, sizeof want, "x.so: plugin needs ABI %d.%d but kokod provides %d.%d: upgrade kokod or "
             "rebuild the plugin against these headers", KOKO_ABI_MAJOR, KOKO_ABI_MINOR + 1, KOKO_ABI_MAJOR,
             KOKO_ABI_MINOR);
    expect_bad(&d, want);
    d = good_desc();
    d.abi_major = KOKO_ABI_MAJOR + 1;
    snprintf(want, sizeof want, "x.so: plugin ABI %d.%d is not compatible with kokod's ABI %d.%d (major versions "
             "differ): rebuild the plugin against this kokod's headers", KOKO_ABI_MAJOR + 1, KOKO_ABI_MINOR,
             KOKO_ABI_MAJOR, KOKO_ABI_MINOR);
    expect_bad(&d, want);
    d = good_desc();
    d.abi_minor = 0; /* an older minor is honoured */
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);

    d = good_desc();
    d.ops = NULL;
    expect_bad(&d, "x.so: plugin \"hand\" has no llm ops table");
    koko_llm_ops no_gen = {.size = sizeof no_gen};
    d.ops = &no_gen;
    expect_bad(&d, "x.so: llm plugin \"hand\" lacks the mandatory generate operation");
    koko_llm_ops short_ops = {.size = 4, .generate = h_generate}; /* too small to hold generate */
    d.ops = &short_ops;
    expect_bad(&d, "x.so: llm plugin \"hand\" lacks the mandatory generate operation");
}
END_TEST

START_TEST(test_check_descriptor_kinds)
{
    char err[1024] = "";
    koko_plugin d = good_desc();

    d.kind = KOKO_KIND_TOOL;
    koko_tool_ops tool = {.size = sizeof tool, .declarations = h_decl, .call = h_call};
    d.ops = &tool;
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);
    tool.call = NULL;
    expect_bad(&d, "x.so: tool plugin \"hand\" lacks the mandatory call operation");
    tool.call = h_call;
    tool.size = (uint32_t)offsetof(koko_tool_ops, call); /* built before call existed */
    expect_bad(&d, "x.so: tool plugin \"hand\" lacks the mandatory call operation");
    tool.size = sizeof tool;
    tool.declarations = NULL;
    expect_bad(&d, "x.so: tool plugin \"hand\" lacks the mandatory declarations operation");
    d.ops = NULL;
    expect_bad(&d, "x.so: plugin \"hand\" has no tool ops table");

    d.kind = KOKO_KIND_CHANNEL;
    koko_channel_ops ch = {.size = sizeof ch, .deliver = h_deliver};
    d.ops = &ch;
    ck_assert_int_eq(loader_check_descriptor(&d, "x.so", err, sizeof err), 0);
    ch.deliver = NULL;
    expect_bad(&d, "x.so: channel plugin \"hand\" lacks the mandatory deliver operation");
}
END_TEST

/* ---- loader_available ---- */

START_TEST(test_available)
{
    const char *search[] = {plug_dir};
    char *s = loader_available(search, 1);
    ck_assert_str_eq(s, AVAILABLE);
    free(s);

    /* a second folder: names merged, sorted, without duplicates; non-plugins ignored */
    char dir2[600], f[700];
    snprintf(dir2, sizeof dir2, "%s/more", tmp_root);
    ck_assert_int_eq(mkdir(dir2, 0700), 0);
    static const char *const files[] = {"zeta.so", "echo.so", "aaa.so", ".so", "readme.txt", "lib.so.1", "x.sox"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        snprintf(f, sizeof f, "%s/%s", dir2, files[i]);
        FILE *fp = fopen(f, "w");
        ck_assert_ptr_nonnull(fp);
        fclose(fp);
    }
    const char *two[] = {dir2, "/nonexistent-koko-dir", plug_dir};
    s = loader_available(two, 3);
    ck_assert_str_eq(s, "aaa, badmajor, badminor, badsig, chankind, echo, failinit, misname, noops, nosym, notso, "
                        "testchan, zeta");
    free(s);

    const char *none[] = {"/nonexistent-koko-dir"};
    s = loader_available(none, 1);
    ck_assert_str_eq(s, "none");
    free(s);
    s = loader_available(NULL, 0);
    ck_assert_str_eq(s, "none");
    free(s);

    /* the real test plugin folder lists echo among others */
    const char *real[] = {tu_env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs")};
    s = loader_available(real, 1);
    ck_assert_msg(strstr(s, "echo") != NULL, "%s", s);
    free(s);
}
END_TEST

START_TEST(test_first_folder_wins)
{
    /* echo.so in an earlier folder shadows the later one */
    char dir1[600], file[700], v2[1024];
    snprintf(dir1, sizeof dir1, "%s/first", tmp_root);
    ck_assert_int_eq(mkdir(dir1, 0700), 0);
    snprintf(file, sizeof file, "%s/echo.so", dir1);
    snprintf(v2, sizeof v2, "%s/tests/plugins/v2/.libs/echo.so", tu_env_or("KOKO_BUILDDIR", "."));
    tu_copy_file(v2, file);
    loader *ld = loader_new(cache_dir);
    const char *search[] = {dir1, plug_dir};
    char err[1024];
    plugin_lib *lib = loader_get(ld, search, 2, "echo", err, sizeof err);
    ck_assert_msg(lib != NULL, "%s", err);
    ck_assert_str_eq(lib->path, file);
    ck_assert_str_eq(lib->desc->version, "v2");
    loader_release(ld, lib);
    loader_free(ld);
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *tc = tcase_create("get");
    tcase_add_checked_fixture(tc, setup, tu_tmp_remove);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_get_echo);
    tcase_add_test(tc, test_plugin_code_runs);
    tcase_add_test(tc, test_shared_refcount);
    tcase_add_test(tc, test_changed_file);
    tcase_add_test(tc, test_other_good_plugins);
    tcase_add_test(tc, test_missing);
    tcase_add_test(tc, test_not_shared_object);
    tcase_add_test(tc, test_no_descriptor);
    tcase_add_test(tc, test_abi_major);
    tcase_add_test(tc, test_abi_minor);
    tcase_add_test(tc, test_signature);
    tcase_add_test(tc, test_no_ops);
    tcase_add_test(tc, test_misname);
    tcase_add_test(tc, test_no_cache_dir);
    tcase_add_test(tc, test_available);
    tcase_add_test(tc, test_first_folder_wins);
    suite_add_tcase(s, tc);

    TCase *td = tcase_create("descriptor");
    tcase_add_test(td, test_check_descriptor);
    tcase_add_test(td, test_check_descriptor_kinds);
    suite_add_tcase(s, td);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(loader_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
