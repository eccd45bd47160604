/*
 * tests/testutil.c — the shared test helpers declared in tests/testutil.h:
 * temporary folders, plugin links and copies, folder entry counts.
 * Linked into the core unit tests (test_config, test_loader, test_server,
 * test_gen) next to libkokocore (it uses util_read_file/util_write_file).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* nftw */
#endif
#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

static char tmp_root[256];

const char *tu_env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_tmp_remove(void)
{
    if (tmp_root[0])
        nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    tmp_root[0] = '\0';
}

const char *tu_tmp_make(const char *tag)
{
    static int registered;
    snprintf(tmp_root, sizeof tmp_root, "/tmp/koko-test-%s-XXXXXX", tag);
    ck_assert_ptr_nonnull(mkdtemp(tmp_root));
    if (!registered) {
        atexit(tu_tmp_remove);
        registered = 1;
    }
    return tmp_root;
}

void tu_link_plugin(const char *dir, const char *name, const char *src)
{
    char dst[1024];
    snprintf(dst, sizeof dst, "%s/%s.so", dir, name);
    ck_assert_msg(access(src, R_OK) == 0, "plugin %s is missing (run make check)", src);
    ck_assert_int_eq(symlink(src, dst), 0);
}

void tu_link_test_plugin(const char *dir, const char *name)
{
    char src[1024];
    snprintf(src, sizeof src, "%s/%s.so", tu_env_or("KOKO_TEST_PLUGINS", "tests/plugins/.libs"), name);
    tu_link_plugin(dir, name, src);
}

void tu_copy_file(const char *src, const char *dst)
{
    char err[256];
    size_t len;
    char *data = util_read_file(src, 64u << 20, &len, err, sizeof err);
    ck_assert_msg(data != NULL, "%s (test plugins: run make check)", err);
    ck_assert_msg(util_write_file(dst, data, len, 0755, err, sizeof err) == 0, "%s", err);
    free(data);
}

void tu_install_file(const char *src, const char *dst)
{
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.new", dst);
    tu_copy_file(src, tmp);
    ck_assert_int_eq(rename(tmp, dst), 0);
}

void tu_write_text(const char *path, const char *fmt, ...)
{
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot write %s", path);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    ck_assert_int_eq(fclose(f), 0);
}

int tu_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}
