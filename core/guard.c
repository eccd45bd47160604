/*
 * guard.c — the rules of the guard stage (guard.h).
 */
#include "kokoconf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "guard.h"
#include "router.h"
#include "util.h"

/* Subjects of bounces and automatic replies, normalised (lower-case, no accents). */
static const char *const bounce_subjects[] = {
    "undeliver", "mailer-daemon", "mail delivery failed", "delivery failed", "delivery failure",
    "delivery status notification", "returned mail", "bounced", "out of office", "auto-reply", "autoreply",
    "automatic reply", "auto reply", "abwesenheit", "kezbesitesi hiba", "nem kezbesitheto", "hazon kivul",
    "automatikus valasz", "szabadsagon", NULL,
};

/* Local parts of senders that never read answers. */
static const char *const robot_senders[] = {
    "mailer-daemon", "postmaster", "noreply", "no-reply", "do-not-reply", "donotreply", "no_reply", NULL,
};

static void verdict(guard_verdict *v, const char *code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void verdict(guard_verdict *v, const char *code, const char *fmt, ...)
{
    v->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->detail, sizeof v->detail, fmt, ap);
    va_end(ap);
}

/* Header NAME of M, case-insensitively, as a string (or NULL). */
static const char *header(const koko_msg *m, const char *name)
{
    if (!m->headers || !json_is_object(m->headers))
        return NULL;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)m->headers, k, v)
    {
        if (strcasecmp(k, name) != 0)
            continue;
        if (json_is_string(v))
            return json_string_value(v);
        if (json_is_array(v) && json_is_string(json_array_get(v, 0)))
            return json_string_value(json_array_get(v, 0));
        return "";
    }
    return NULL;
}

static int ieq_trim(const char *s, const char *word)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(word);
    if (strncasecmp(s, word, n) != 0)
        return 0;
    for (s += n; *s; s++)
        if (*s != ' ' && *s != '\t' && *s != ';')
            return 0;
    return 1;
}

static int is_delivery_report(const char *ct)
{
    if (!ct)
        return 0;
    char low[256];
    size_t i = 0;
    for (; ct[i] && i < sizeof low - 1; i++)
        low[i] = (char)((ct[i] >= 'A' && ct[i] <= 'Z') ? ct[i] + 32 : ct[i]);
    low[i] = '\0';
    return strstr(low, "multipart/report") && strstr(low, "delivery-status");
}

static int check_headers(const koko_msg *m, guard_verdict *v)
{
    const char *h;
    if ((h = header(m, "Auto-Submitted")) && !ieq_trim(h, "no")) {
        verdict(v, "auto_submitted", "Auto-Submitted: %s", h);
        return 1;
    }
    static const char *const flags[] = {"X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "List-Id",
                                        "List-Unsubscribe", NULL};
    for (size_t i = 0; flags[i]; i++)
        if (header(m, flags[i])) {
            verdict(v, "auto_header", "header %s present", flags[i]);
            return 1;
        }
    if ((h = header(m, "Precedence"))) {
        static const char *const prec[] = {"bulk", "junk", "list", "auto_reply", NULL};
        for (size_t i = 0; prec[i]; i++)
            if (ieq_trim(h, prec[i])) {
                verdict(v, "precedence", "Precedence: %s", prec[i]);
                return 1;
            }
    }
    if ((h = header(m, "Return-Path"))) {
        const char *p = h;
        while (*p == ' ')
            p++;
        if (strncmp(p, "<>", 2) == 0) {
            verdict(v, "empty_return_path", "Return-Path: <>");
            return 1;
        }
    }
    if (is_delivery_report(header(m, "Content-Type")) || is_delivery_report(m->content_type)) {
        verdict(v, "delivery_report", "multipart/report; report-type=delivery-status");
        return 1;
    }
    return 0;
}

int guard_check(const koko_msg *m, guard_verdict *v)
{
    v->code = NULL;
    v->detail[0] = '\0';
    int v11 = KOKO_HAS_FIELD(m, koko_msg, n_attachments);
    if (!v11)
        return 0; /* an ABI 1.0 channel: every message is an ordinary customer message */
    if (m->kind == KOKO_MSG_OUTGOING) {
        verdict(v, m->sender == KOKO_SENDER_AGENT ? "agent_reply" : "outgoing", "outgoing message");
        return 1;
    }
    if (m->kind == KOKO_MSG_ACTIVITY) {
        verdict(v, "activity", "activity message");
        return 1;
    }
    if (m->kind != KOKO_MSG_INCOMING) {
        verdict(v, "not_incoming", "template or other non-incoming message");
        return 1;
    }
    if (m->is_private) {
        verdict(v, "private_note", "private note");
        return 1;
    }
    if (m->sender == KOKO_SENDER_AGENT) {
        verdict(v, "from_agent", "written by a human agent");
        return 1;
    }
    if (m->sender == KOKO_SENDER_BOT) {
        verdict(v, "from_bot", "written by a bot");
        return 1;
    }
    if (m->skip) {
        verdict(v, "channel_skip", "%s", m->skip);
        return 1;
    }
    if (m->auto_reply) {
        verdict(v, "auto_reply", "the channel flags it as an automatic reply");
        return 1;
    }
    if (m->subject && *m->subject) {
        char *norm = router_normalise(m->subject);
        for (size_t i = 0; bounce_subjects[i]; i++)
            if (strstr(norm, bounce_subjects[i])) {
                verdict(v, "auto_reply_subject", "subject looks automatic: \"%s\"", m->subject);
                free(norm);
                return 1;
            }
        free(norm);
    }
    if (m->from && *m->from) {
        const char *addr = strchr(m->from, '<') ? strchr(m->from, '<') + 1 : m->from;
        while (*addr == ' ')
            addr++;
        const char *at = strchr(addr, '@');
        size_t local = at ? (size_t)(at - addr) : 0;
        for (size_t i = 0; at && robot_senders[i]; i++)
            if (local == strlen(robot_senders[i]) && strncasecmp(addr, robot_senders[i], local) == 0) {
                verdict(v, "robot_sender", "sender %s never reads answers", m->from);
                return 1;
            }
    }
    return check_headers(m, v);
}
