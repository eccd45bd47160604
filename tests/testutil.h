/*
 * tests/testutil.h — small helpers the core unit tests share: environment
 * defaults, one temporary folder per test (removed at teardown and, because
 * a failed assertion ends the test process early, also at exit), links to
 * and copies of plugin files, and counting a folder's entries.
 *
 * Helpers that check something fail the running Check test (ck_assert);
 * they are meant for fixtures and test bodies, not for main().
 */
#ifndef KOKO_TESTS_TESTUTIL_H
#define KOKO_TESTS_TESTUTIL_H

/* The value of environment variable NAME, or DFLT when it is unset or empty
 * (borrowed from the environment or from the caller). */
const char *tu_env_or(const char *name, const char *dflt);

/* Makes a fresh folder /tmp/koko-test-TAG-XXXXXX and returns its path: a
 * static buffer that tu_tmp_remove empties. Also registers tu_tmp_remove
 * with atexit (once per process). */
const char *tu_tmp_make(const char *tag);

/* Removes the folder tu_tmp_make made, with everything in it; safe to call
 * again (then it does nothing). */
void tu_tmp_remove(void);

/* Links DIR/NAME.so to SRC, which must be readable (a missing file fails
 * the test with "run make check"). */
void tu_link_plugin(const char *dir, const char *name, const char *src);

/* Links DIR/NAME.so to NAME.so of the test plugins ($KOKO_TEST_PLUGINS). */
void tu_link_test_plugin(const char *dir, const char *name);

/* Copies SRC to DST (mode 0755, DST truncated). */
void tu_copy_file(const char *src, const char *dst);

/* Copies SRC to DST through DST.new and a rename, as an operator's install
 * would: a reader never sees a half-written DST. */
void tu_install_file(const char *src, const char *dst);

/* Writes PATH (created or truncated) with the printf-style FMT. */
void tu_write_text(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The number of entries in folder DIR other than dot files; 0 when DIR
 * does not exist. */
int tu_count_entries(const char *dir);

#endif
