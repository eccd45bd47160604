/*
 * tests/testredis.c — see testredis.h.
 */
#include "kokoconf.h"

#include "testredis.h"

#include <check.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

int tr_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
             getsockname(fd, (struct sockaddr *)&a, &len) == 0;
    if (fd >= 0)
        close(fd);
    return ok ? ntohs(a.sin_port) : -1;
}

pid_t tr_start(const test_redis *r, const char *sock, const char *pass)
{
    char port[16], logf[128];
    snprintf(port, sizeof port, "%d", sock ? 0 : r->port);
    snprintf(logf, sizeof logf, "%s/redis%s.log", r->dir, sock ? "-unix" : "");
    pid_t pid = fork();
    if (pid == 0) {
        const char *argv[24] = {TR_SERVER, "--port", port,    "--bind",  "127.0.0.1", "--save",    "",
                                "--appendonly", "no", "--dir", r->dir, "--logfile", logf,     "--daemonize", "no"};
        int n = 15;
        if (sock) {
            argv[n++] = "--unixsocket";
            argv[n++] = sock;
        }
        if (pass) {
            argv[n++] = "--requirepass";
            argv[n++] = pass;
        }
        argv[n] = NULL;
        execv(TR_SERVER, (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisContext *c = sock ? redisConnectUnix(sock) : redisConnect("127.0.0.1", r->port);
        int ok = c && !c->err;
        if (c)
            redisFree(c);
        if (ok)
            return pid;
        usleep(10000);
    }
    fprintf(stderr, "redis-server did not start (see %s)\n", logf);
    return pid;
}

void tr_stop(pid_t pid, int sig)
{
    if (pid > 0) {
        kill(pid, sig);
        waitpid(pid, NULL, 0);
    }
}

int tr_open(test_redis *r, const char *tag)
{
    memset(r, 0, sizeof *r);
    if (access(TR_SERVER, X_OK) != 0) {
        fprintf(stderr, "%s: %s is not installed: install the Debian package redis-server (setup.sh does)\n", tag,
                TR_SERVER);
        return -1;
    }
    snprintf(r->dir, sizeof r->dir, "/tmp/%s-redis-XXXXXX", tag);
    if (!mkdtemp(r->dir)) {
        fprintf(stderr, "%s: cannot make a directory for redis-server under /tmp\n", tag);
        r->dir[0] = '\0';
        return -1;
    }
    if ((r->port = tr_free_port()) < 0) {
        fprintf(stderr, "%s: no free loopback port for redis-server\n", tag);
        return -1;
    }
    r->pid = tr_start(r, NULL, NULL);
    return r->pid > 0 ? 0 : -1;
}

void tr_flush(const test_redis *r)
{
    redisContext *c = redisConnect("127.0.0.1", r->port);
    ck_assert_msg(c && !c->err, "cannot reach the test redis-server");
    redisReply *rep = redisCommand(c, "FLUSHALL");
    ck_assert_ptr_nonnull(rep);
    freeReplyObject(rep);
    redisFree(c);
}

int tr_close(test_redis *r)
{
    tr_stop(r->pid, SIGTERM);
    r->pid = 0;
    if (!r->dir[0])
        return 0;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", r->dir);
    return system(cmd) == 0 ? 0 : -1;
}
