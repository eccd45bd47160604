/*
 * log.h — kokod's one logger.
 *
 * One line per event: "2026-11-24T11:24:34.123Z INFO  component: message",
 * to stderr (journald adds its own prefix) or to syslog. Components name the
 * subsystem ("core", "config", "http") or the instance ("demo/chatwoot").
 * Callers never pass secrets: log what failed and why, not credentials.
 */
#ifndef CORE_LOG_H
#define CORE_LOG_H

#include <stdarg.h>
#include "koko/host.h"

void log_set_level(koko_log_level lvl);
koko_log_level log_get_level(void);
/* The command line's level: wins over log.level of the configuration. */
void log_pin_level(koko_log_level lvl);
/* log.level of the configuration (NULL = unchanged), unless the command line pinned one. */
void log_config_level(const char *name);
/* Switch to syslog(3) with IDENT; stderr otherwise. */
void log_use_syslog(const char *ident);
/* Parse "error|warn|info|debug"; -1 when unknown. */
int log_level_parse(const char *s);

void log_msg(koko_log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void log_vmsg(koko_log_level lvl, const char *component, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

#define log_error(c, ...) log_msg(KOKO_LOG_ERROR, (c), __VA_ARGS__)
#define log_warn(c, ...) log_msg(KOKO_LOG_WARN, (c), __VA_ARGS__)
#define log_info(c, ...) log_msg(KOKO_LOG_INFO, (c), __VA_ARGS__)
#define log_debug(c, ...) log_msg(KOKO_LOG_DEBUG, (c), __VA_ARGS__)

#endif
