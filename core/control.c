/*
 * control.c — the control socket: accept, read one JSON line, dispatch a
 * command from the table below, write one JSON line back.
 *
 * A stale socket file left by a crashed kokod is replaced; a live one (some
 * process answers on it) is an error, so two daemons never fight over it.
 */
#include "kokoconf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "control.h"
#include "ctlcmd.h"
#include "kokod.h"
#include "log.h"
#include "util.h"

#define CTL_MAX_LINE (1u << 20)

struct control {
    struct kokod *kd;
    struct evconnlistener *lst;
    char *path;
};

struct ctl_req {
    control *c;
    struct bufferevent *bev;
    int answered;
    int dispatched; /* a command is running for it */
    int closed;     /* peer went away before the answer */
};

static void req_free(ctl_req *q)
{
    bufferevent_free(q->bev);
    free(q);
}

static void on_flushed(struct bufferevent *bev, void *arg)
{
    (void)bev;
    req_free(arg);
}

static void on_write_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    req_free(arg); /* the client went away while we answered */
}

static void send_doc(ctl_req *q, json_t *doc)
{
    if (q->answered) {
        json_decref(doc);
        return;
    }
    q->answered = 1;
    if (q->closed) {
        json_decref(doc);
        req_free(q);
        return;
    }
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    struct evbuffer *out = bufferevent_get_output(q->bev);
    evbuffer_add(out, s ? s : "{\"ok\":false,\"error\":\"out of memory\"}", s ? strlen(s) : 35);
    evbuffer_add(out, "\n", 1);
    free(s);
    bufferevent_setcb(q->bev, NULL, on_flushed, on_write_event, q);
    bufferevent_enable(q->bev, EV_WRITE);
}

void control_ok(ctl_req *q, json_t *data)
{
    send_doc(q, json_pack("{s:b,s:o}", "ok", 1, "data", data ? data : json_null()));
}

void control_fail(ctl_req *q, const char *error, json_t *errors)
{
    json_t *doc = json_pack("{s:b,s:s}", "ok", 0, "error", error);
    if (errors)
        json_object_set_new(doc, "errors", errors);
    send_doc(q, doc);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    ctl_req *q = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = 0;
    char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_LF);
    if (!line) {
        if (evbuffer_get_length(in) > CTL_MAX_LINE)
            control_fail(q, "command line longer than 1 MiB", NULL);
        return;
    }
    bufferevent_disable(bev, EV_READ);
    q->dispatched = 1;
    json_error_t je;
    json_t *cmd = json_loadb(line, n, 0, &je);
    free(line);
    const char *name = NULL;
    json_t *args = NULL;
    if (!cmd || json_unpack(cmd, "{s:s,s?o}", "cmd", &name, "args", &args) != 0) {
        control_fail(q, "malformed command: expected {\"cmd\": \"...\", \"args\": {...}} on one line", NULL);
        json_decref(cmd);
        return;
    }
    if (!args || !json_is_object(args))
        args = NULL;
    ctlcmd_dispatch(q->c->kd, q, name, args);
    json_decref(cmd);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    (void)what;
    ctl_req *q = arg;
    /* EOF, error or timeout before the answer was queued */
    if (!q->dispatched) {
        req_free(q);
        return;
    }
    /* the command is still running; its answer frees the request */
    q->closed = 1;
    bufferevent_disable(q->bev, EV_READ | EV_WRITE);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int socklen, void *arg)
{
    (void)l;
    (void)sa;
    (void)socklen;
    control *c = arg;
    ctl_req *q = xcalloc(1, sizeof *q);
    q->c = c;
    q->bev = bufferevent_socket_new(c->kd->base, fd, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(q->bev, on_read, NULL, on_event, q);
    struct timeval tv = {300, 0};
    bufferevent_set_timeouts(q->bev, &tv, &tv);
    bufferevent_enable(q->bev, EV_READ);
}

/* 1 when something is accepting on PATH. */
static int socket_alive(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int alive = connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0;
    close(fd);
    return alive;
}

control *control_new(struct kokod *kd, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sun.sun_path) {
        snprintf(err, errlen, "server.control: socket path %s is longer than %zu bytes: choose a shorter one",
                 path, sizeof sun.sun_path - 1);
        return NULL;
    }
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        util_mkdir_p(dir, 0700);
    }
    free(dir);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "server.control: %s exists and is not a socket: remove it or choose another path", path);
            return NULL;
        }
        if (socket_alive(path)) {
            snprintf(err, errlen, "server.control: another kokod is already running on %s", path);
            return NULL;
        }
        unlink(path);
    }
    control *c = xcalloc(1, sizeof *c);
    c->kd = kd;
    c->path = xstrdup(path);
    mode_t old = umask(0177);
    c->lst = evconnlistener_new_bind(kd->base, on_accept, c, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
                                     (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (!c->lst) {
        snprintf(err, errlen, "server.control: cannot listen on %s (%s)", path, strerror(errno));
        free(c->path);
        free(c);
        return NULL;
    }
    chmod(path, 0600);
    return c;
}

void control_free(control *c)
{
    if (!c)
        return;
    evconnlistener_free(c->lst);
    unlink(c->path);
    free(c->path);
    free(c);
}
