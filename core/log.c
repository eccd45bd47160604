/*
 * log.c — formats and writes log lines (see log.h).
 *
 * A line is assembled in a fixed buffer and written with one write(2), so
 * lines from the loop thread and from plugin threads never interleave.
 */
#include "kokoconf.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static koko_log_level log_level = KOKO_LOG_INFO;
static int log_syslog;
static int log_level_pinned; /* set on the command line: the configuration does not change it */

static const char *const level_names[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};

void log_set_level(koko_log_level lvl) { log_level = lvl; }

void log_pin_level(koko_log_level lvl)
{
    log_level = lvl;
    log_level_pinned = 1;
}

void log_config_level(const char *name)
{
    int lvl = name ? log_level_parse(name) : -1;
    if (lvl >= 0 && !log_level_pinned)
        log_level = (koko_log_level)lvl;
}
koko_log_level log_get_level(void) { return log_level; }

void log_use_syslog(const char *ident)
{
    if (log_syslog)
        return;
    openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
    log_syslog = 1;
}

int log_level_parse(const char *s)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0)
            return i;
    return -1;
}

void log_vmsg(koko_log_level lvl, const char *component, const char *fmt, va_list ap)
{
    if (lvl > log_level)
        return;
    char line[2048];
    size_t n = 0;
    if (log_syslog) {
        n = (size_t)snprintf(line, sizeof line, "%s: ", component);
        if (n < sizeof line)
            vsnprintf(line + n, sizeof line - n, fmt, ap);
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        syslog(prio[lvl], "%s", line);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s %s: ", ts.tv_nsec / 1000000L,
                          level_names[lvl], component);
    if (n < sizeof line - 1) {
        int m = vsnprintf(line + n, sizeof line - n, fmt, ap);
        n = m < 0 ? n : n + (size_t)m;
    }
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    /* one line per event, whatever the message contained */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

void log_msg(koko_log_level lvl, const char *component, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(lvl, component, fmt, ap);
    va_end(ap);
}
