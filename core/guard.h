/*
 * guard.h — the guard stage: messages that must never be answered.
 *
 * Shared by every channel: outgoing and activity messages, private notes,
 * messages from agents and bots, the channel's own skip reasons, and the
 * e-mail loop rules — bounces and auto-replies recognised by the channel's
 * flag, by subject (English and Hungarian), by sender address, and by RFC
 * 3834 and de-facto headers. Each verdict is a short stable reason, used as
 * a counter name ("filtered.auto_reply_subject") and in the log line.
 */
#ifndef CORE_GUARD_H
#define CORE_GUARD_H

#include "koko/message.h"

typedef struct guard_verdict {
    const char *code;   /* stable counter suffix, e.g. "private_note"; NULL = answer it */
    char detail[160];   /* human-readable reason for the log */
} guard_verdict;

/* Decide whether M must be dropped. Returns 1 (and fills V) to drop. */
int guard_check(const koko_msg *m, guard_verdict *v);

#endif
