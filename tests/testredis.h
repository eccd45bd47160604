/*
 * tests/testredis.h — a real redis-server (Debian's /usr/bin/redis-server) for
 * the C tests that run the store against Redis (test_store, test_host): a
 * private directory, a free loopback port, start, wait until it answers,
 * FLUSHALL between tests, stop and clean up.
 *
 * The suites need it: without redis-server, tr_open fails with the Debian
 * package to install, and the test program fails rather than skip its Redis
 * cases (setup.sh installs it).
 */
#ifndef KOKO_TESTS_TESTREDIS_H
#define KOKO_TESTS_TESTREDIS_H

#include <sys/types.h>

#define TR_SERVER "/usr/bin/redis-server"

typedef struct test_redis {
    char dir[64]; /* the server's working directory (log files, sockets) */
    int port;     /* the loopback port of the main server */
    pid_t pid;    /* the main server; 0 after tr_stop */
} test_redis;

/* A loopback TCP port nothing listens on at the moment (-1 when none). */
int tr_free_port(void);

/* Make a directory /tmp/TAG-redis-XXXXXX, pick a free port and start the main
 * server there (R->pid). 0 when it answers; -1 after a message on stderr. */
int tr_open(test_redis *r, const char *tag);

/* Start another redis-server in R's directory: on UNIX socket SOCK (no TCP
 * port) when SOCK is not NULL, else on R's port; with requirepass PASS when
 * not NULL. Waits until it answers (a message on stderr when it does not) and
 * returns its pid. */
pid_t tr_start(const test_redis *r, const char *sock, const char *pass);

/* Send SIG to PID (when > 0) and reap it. */
void tr_stop(pid_t pid, int sig);

/* FLUSHALL on R's main server; fails the running Check test when it cannot. */
void tr_flush(const test_redis *r);

/* Stop the main server and remove R's directory: 0, or -1 when it stayed. */
int tr_close(test_redis *r);

#endif
