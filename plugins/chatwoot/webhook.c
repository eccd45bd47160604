/*
 * plugins/chatwoot/webhook.c — Chatwoot webhooks in: verify, de-duplicate, map, submit.
 *
 * POST /webhook/<tenant>/chatwoot receives account, API-inbox and agent-bot
 * webhooks (one payload shape). A signed delivery is checked first
 * (X-Chatwoot-Signature = sha256=HMAC(secret, "<timestamp>.<body>"), timestamp
 * within the window), then parsed. `message_created` becomes one koko_msg,
 * every message, so the core's guard sees and counts what it drops; the 200
 * goes back only once the core has queued it (a 503 lets Chatwoot's agent-bot
 * retry try again). Conversation events become ownership events. Chatwoot
 * keeps X-Chatwoot-Delivery across retries, so delivery ids answered 200
 * are remembered and a repeat is acknowledged without doing anything twice.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "chatwoot.h"

#define AUDIO_HANDOFF "voice note: no transcription tool configured"

/* ---- responses ---- */

static void respond_error(cw *c, koko_request *req, int status, const char *msg)
{
    char *body = cw_error_json(msg);
    c->host->respond(req, status, body ? body : "{\"error\":\"out of memory\"}");
    free(body);
}

static void respond_ignored(cw *c, koko_request *req, const char *event, const char *reason)
{
    json_t *o = json_pack("{s:s,s:s}", "status", "ignored", "event", event ? event : "");
    if (o && reason)
        json_object_set_new(o, "reason", json_string(reason));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    c->host->respond(req, 200, s ? s : "{\"status\":\"ignored\"}");
    free(s);
    json_decref(o);
}

/* ---- delivery ids ---- */

static int seen_has(cw *c, const char *id)
{
    return id && *id && json_object_get(c->seen, id) != NULL;
}

static void seen_add(cw *c, const char *id)
{
    if (!id || !*id || seen_has(c, id))
        return;
    char *copy = strdup(id);
    if (!copy)
        return;
    char **slot = &c->seen_ring[c->seen_next];
    if (*slot) {
        json_object_del(c->seen, *slot);
        free(*slot);
    }
    *slot = copy;
    c->seen_next = (c->seen_next + 1) % CW_SEEN_DELIVERIES;
    json_object_set_new(c->seen, copy, json_true());
}

void cw_seen_free(cw *c)
{
    for (size_t i = 0; i < CW_SEEN_DELIVERIES; i++) {
        free(c->seen_ring[i]);
        c->seen_ring[i] = NULL;
    }
    json_decref(c->seen);
    c->seen = NULL;
}

/* ---- signature ---- */

void cw_sign(const char *secret, const char *ts, const char *body, size_t len, char out[65])
{
    size_t tl = strlen(ts);
    unsigned char *data = malloc(tl + 1 + len + 1);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    out[0] = '\0';
    if (!data)
        return;
    memcpy(data, ts, tl);
    data[tl] = '.';
    memcpy(data + tl + 1, body, len);
    if (HMAC(EVP_sha256(), secret, (int)strlen(secret), data, tl + 1 + len, mac, &maclen) && maclen == 32)
        for (unsigned i = 0; i < maclen; i++)
            snprintf(out + 2 * i, 3, "%02x", mac[i]);
    free(data);
}

/* 0 when the request is authentic and fresh; else WHY says what is wrong. */
static int verify(cw *c, koko_request *req, const char *body, size_t len, char *why, size_t wl)
{
    const char *sig = c->host->req_header(req, "X-Chatwoot-Signature");
    const char *ts = c->host->req_header(req, "X-Chatwoot-Timestamp");
    if (!sig || !*sig) {
        snprintf(why, wl,
                 "missing X-Chatwoot-Signature (this webhook requires a signature: set the same secret "
                 "in Chatwoot)");
        return -1;
    }
    if (!ts || !*ts) {
        snprintf(why, wl, "missing X-Chatwoot-Timestamp");
        return -1;
    }
    char *end = NULL;
    long long t = strtoll(ts, &end, 10);
    if (end == ts || *end || t <= 0) {
        snprintf(why, wl, "X-Chatwoot-Timestamp is not a unix time in seconds");
        return -1;
    }
    if (strncmp(sig, "sha256=", 7) != 0 || strlen(sig + 7) != 64) {
        snprintf(why, wl, "X-Chatwoot-Signature must be sha256=<64 hex digits>");
        return -1;
    }
    char want[65], got[65];
    cw_sign(c->cfg.webhook_secret, ts, body, len, want);
    for (size_t i = 0; i < 65; i++)
        got[i] = (char)tolower((unsigned char)sig[7 + i]);
    if (CRYPTO_memcmp(want, got, 64) != 0) {
        snprintf(why, wl, "signature mismatch (is webhook_secret the secret Chatwoot shows for this webhook?)");
        return -1;
    }
    long long skew = (long long)time(NULL) - t;
    if (skew > c->cfg.window_s || skew < -c->cfg.window_s) {
        snprintf(why, wl, "stale X-Chatwoot-Timestamp: %lld s %s now, outside the ±%d s window",
                 skew < 0 ? -skew : skew, skew < 0 ? "ahead of" : "behind", c->cfg.window_s);
        return -1;
    }
    return 0;
}

/* ---- payload helpers ---- */

/* An id (Chatwoot sends integers; strings are accepted) as text into BUF; "" when absent. */
static const char *id_text(const json_t *v, char *buf, size_t len)
{
    buf[0] = '\0';
    if (json_is_integer(v))
        snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) < len)
        snprintf(buf, len, "%s", json_string_value(v));
    return buf;
}

static long long id_num(const json_t *v)
{
    if (json_is_integer(v))
        return (long long)json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static int truthy(const json_t *v)
{
    return json_is_true(v) || (json_is_string(v) && strcasecmp(json_string_value(v), "true") == 0) ||
           (json_is_integer(v) && json_integer_value(v) != 0);
}

static const json_t *path_get(const json_t *v, const char *a, const char *b, const char *c3)
{
    v = json_object_get(v, a);
    if (b)
        v = json_object_get(v, b);
    if (c3)
        v = json_object_get(v, c3);
    return v;
}

static const char *nonempty(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 ? json_string_value(v) : NULL;
}

/* "2024-05-01T10:00:00.123Z" / "+02:00" offsets / unix seconds → unix seconds; 0 when unknown. */
static int64_t parse_time(const json_t *v)
{
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    const char *s = json_string_value(v);
    if (!s)
        return 0;
    struct tm tm = {0};
    int n = 0;
    if (sscanf(s, "%d-%d-%dT%d:%d:%d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec,
               &n) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    const char *p = s + n;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    int64_t t = (int64_t)timegm(&tm);
    int oh = 0, om = 0;
    if ((*p == '+' || *p == '-') && sscanf(p + 1, "%d:%d", &oh, &om) == 2)
        t -= (*p == '+' ? 1 : -1) * (int64_t)(oh * 3600 + om * 60);
    return t;
}

static int status_served(const cw *c, const char *status)
{
    for (size_t i = 0; i < c->cfg.n_reply_in; i++)
        if (strcmp(c->cfg.reply_in[i], status) == 0)
            return 1;
    return 0;
}

static int inbox_served(const cw *c, long long inbox)
{
    if (!c->cfg.inboxes)
        return 1;
    for (size_t i = 0; i < c->cfg.n_inboxes; i++)
        if (c->cfg.inboxes[i] == inbox)
            return 1;
    return 0;
}

/* Is URL on the configured Chatwoot host (same scheme-less host[:port])? */
static int url_on_host(const cw *c, const char *url)
{
    const char *h = url ? strstr(url, "://") : NULL;
    if (!h || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return 0;
    h += 3;
    size_t hl = strcspn(h, "/?#");
    return hl == strlen(c->cfg.host) && strncasecmp(h, c->cfg.host, hl) == 0;
}

static koko_msg_kind kind_of(const json_t *v)
{
    static const char *const names[] = {"incoming", "outgoing", "activity", "template"};
    static const koko_msg_kind kinds[] = {KOKO_MSG_INCOMING, KOKO_MSG_OUTGOING, KOKO_MSG_ACTIVITY, KOKO_MSG_OTHER};
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        return i >= 0 && i < 4 ? kinds[i] : KOKO_MSG_OTHER;
    }
    for (size_t i = 0; json_is_string(v) && i < 4; i++)
        if (strcmp(json_string_value(v), names[i]) == 0)
            return kinds[i];
    return KOKO_MSG_OTHER;
}

/* A contact's sender has no "type" (or "contact"); agents are "user"; anything
 * else (agent_bot, captain_assistant, types Chatwoot may add) is a bot, never answered. */
static koko_sender sender_of(const json_t *sender)
{
    const char *type = json_string_value(json_object_get(sender, "type"));
    if (!type || strcmp(type, "contact") == 0)
        return KOKO_SENDER_CONTACT;
    if (strcmp(type, "user") == 0)
        return KOKO_SENDER_AGENT;
    return KOKO_SENDER_BOT;
}

/* ---- message_created ---- */

typedef struct ack {
    cw *c;
    koko_request *req;
    char *delivery; /* X-Chatwoot-Delivery, may be NULL */
    char msg_id[32];
} ack;

static void on_submitted(koko_submit_status st, const char *error, void *arg)
{
    ack *a = arg;
    cw *c = a->c;
    if (st == KOKO_SUBMIT_REJECTED) {
        c->host->log(c->inst, KOKO_LOG_WARN, "message %s not queued (%s): answering 503 so Chatwoot may retry",
                     a->msg_id, error ? error : "no reason given");
        respond_error(c, a->req, 503, error ? error : "message not queued");
    } else {
        seen_add(c, a->delivery);
        char body[96];
        snprintf(body, sizeof body, "{\"status\":\"%s\",\"message_id\":\"%s\"}",
                 st == KOKO_SUBMIT_DUPLICATE ? "duplicate" : "accepted", a->msg_id);
        c->host->respond(a->req, 200, body);
    }
    free(a->delivery);
    free(a);
    c->busy--;
    cw_idle_check(c);
}

/* Everything a mapped message points to that is not borrowed from the payload. */
typedef struct mapped {
    koko_msg msg;
    char msg_id[32], conv_id[32], contact_id[32], inbox[32];
    char skip[160], handoff[160];
    json_t *meta;
    koko_attachment *att;
} mapped;

static void mapped_free(mapped *m)
{
    json_decref(m->meta);
    free(m->att);
}

static void map_attachments(cw *c, const json_t *doc, mapped *m)
{
    const json_t *arr = json_object_get(doc, "attachments");
    size_t n = json_array_size(arr);
    if (n == 0 || !(m->att = calloc(n, sizeof *m->att)))
        return;
    int audio = 0;
    const char *other = NULL;
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(arr, i);
        koko_attachment *k = &m->att[i];
        k->kind = nonempty(json_object_get(a, "file_type"));
        if (!k->kind)
            k->kind = "file";
        const char *url = nonempty(json_object_get(a, "data_url"));
        if (url && !url_on_host(c, url)) {
            c->host->log(c->inst, KOKO_LOG_WARN, "message %s: attachment %zu is not on %s; it will never be fetched",
                         m->msg_id, i, c->cfg.host);
            url = NULL;
        }
        k->url = url;
        k->content_type = nonempty(json_object_get(a, "content_type"));
        const json_t *sz = json_object_get(a, "file_size");
        k->size = json_is_integer(sz) && json_integer_value(sz) > 0 ? (uint64_t)json_integer_value(sz) : 0;
        if (strcmp(k->kind, "audio") == 0)
            audio = 1;
        else if (!other)
            other = k->kind;
    }
    m->msg.attachments = m->att;
    m->msg.n_attachments = n;
    if (audio)
        snprintf(m->handoff, sizeof m->handoff, "%s", AUDIO_HANDOFF);
    else if (other && c->cfg.attachments_handoff)
        snprintf(m->handoff, sizeof m->handoff, "attachment (%s) received and attachments: handoff is configured",
                 other);
    if (m->handoff[0])
        m->msg.handoff = m->handoff;
}

/* Map a message_created payload; 0 = ok, else WHY says what is missing. */
static int map_message(cw *c, const json_t *doc, mapped *m, char *why, size_t wl)
{
    memset(m, 0, sizeof *m);
    const json_t *conv = json_object_get(doc, "conversation");
    const json_t *sender = json_object_get(doc, "sender");
    const json_t *email = path_get(doc, "content_attributes", "email", NULL);
    if (!*id_text(json_object_get(doc, "id"), m->msg_id, sizeof m->msg_id)) {
        snprintf(why, wl, "message_created without a message id");
        return -1;
    }
    if (!*id_text(json_object_get(conv, "id"), m->conv_id, sizeof m->conv_id)) {
        snprintf(why, wl, "message_created without conversation.id");
        return -1;
    }
    koko_msg *k = &m->msg;
    k->size = sizeof *k;
    k->msg_id = m->msg_id;
    k->conversation_id = m->conv_id;
    k->kind = kind_of(json_object_get(doc, "message_type"));
    k->sender = sender_of(sender);
    if (k->sender == KOKO_SENDER_CONTACT && json_is_object(sender))
        id_text(json_object_get(sender, "id"), m->contact_id, sizeof m->contact_id);
    else
        id_text(path_get(conv, "meta", "sender", "id"), m->contact_id, sizeof m->contact_id);
    k->contact_id = m->contact_id[0] ? m->contact_id : NULL;
    const json_t *inbox = path_get(doc, "inbox", "id", NULL);
    if (!inbox)
        inbox = json_object_get(conv, "inbox_id");
    k->inbox = *id_text(inbox, m->inbox, sizeof m->inbox) ? m->inbox : NULL;
    k->text = json_is_string(json_object_get(doc, "content")) ? json_string_value(json_object_get(doc, "content")) : "";
    k->created_at = parse_time(json_object_get(doc, "created_at"));
    k->is_private = truthy(json_object_get(doc, "private"));
    k->auto_reply = truthy(path_get(doc, "additional_attributes", "auto_reply", NULL)) ||
                    truthy(json_object_get(email, "auto_reply")) ||
                    truthy(path_get(conv, "additional_attributes", "auto_reply", NULL));
    k->subject = nonempty(json_object_get(email, "subject"));
    if (!k->subject)
        k->subject = nonempty(path_get(conv, "additional_attributes", "mail_subject", NULL));
    const json_t *from = json_object_get(email, "from");
    k->from = json_is_array(from) ? nonempty(json_array_get(from, 0)) : nonempty(from);
    const json_t *headers = json_object_get(email, "headers");
    k->headers = json_is_object(headers) ? headers : NULL;
    k->content_type = nonempty(json_object_get(email, "content_type"));
    k->quiet_ms = c->cfg.quiet_ms;

    const char *status = nonempty(json_object_get(conv, "status"));
    if (k->inbox && !inbox_served(c, id_num(inbox)))
        snprintf(m->skip, sizeof m->skip, "inbox %s is not in inboxes", m->inbox);
    else if (status && !status_served(c, status))
        snprintf(m->skip, sizeof m->skip, "conversation status %s is not in reply_in", status);
    k->skip = m->skip[0] ? m->skip : NULL;

    map_attachments(c, doc, m);

    const json_t *labels = json_object_get(conv, "labels");
    m->meta = json_pack("{s:I,s:s,s:s,s:s*,s:s*,s:o}", "account_id", (json_int_t)c->cfg.account_id, "conversation_id",
                        m->conv_id, "message_id", m->msg_id, "inbox_id", k->inbox, "contact_id", k->contact_id,
                        "labels", json_is_array(labels) ? json_deep_copy(labels) : json_array());
    k->meta = m->meta;
    return 0;
}

static void on_message_created(cw *c, koko_request *req, const json_t *doc, const char *delivery)
{
    mapped m;
    char why[160];
    if (map_message(c, doc, &m, why, sizeof why) != 0) {
        mapped_free(&m);
        respond_error(c, req, 400, why);
        return;
    }
    ack *a = calloc(1, sizeof *a);
    if (!a || (delivery && !(a->delivery = strdup(delivery)))) {
        free(a);
        mapped_free(&m);
        respond_error(c, req, 503, "out of memory");
        return;
    }
    a->c = c;
    a->req = req;
    snprintf(a->msg_id, sizeof a->msg_id, "%s", m.msg_id);
    c->busy++;
    c->host->log(
        c->inst, KOKO_LOG_DEBUG, "message %s in conversation %s (%s)%s%s", m.msg_id, m.conv_id,
        nonempty(json_object_get(doc, "message_type")) ? json_string_value(json_object_get(doc, "message_type")) : "?",
        m.msg.skip ? ": skip: " : "", m.msg.skip ? m.msg.skip : "");
    c->host->submit(c->inst, &m.msg, on_submitted, a);
    mapped_free(&m);
}

/* ---- conversation events ---- */

static int host_has_conversation(const koko_host *h)
{
    return KOKO_HAS_FIELD(h, koko_host, conversation) && h->conversation != NULL;
}

static void on_conversation(cw *c, koko_request *req, const json_t *doc, const char *event, const char *delivery)
{
    char id[32], detail[160];
    if (!*id_text(json_object_get(doc, "id"), id, sizeof id)) {
        respond_error(c, req, 400, "conversation event without an id");
        return;
    }
    const json_t *inbox = json_object_get(doc, "inbox_id");
    if (inbox && !inbox_served(c, id_num(inbox))) {
        respond_ignored(c, req, event, "inbox not in inboxes");
        return;
    }
    const char *status = nonempty(json_object_get(doc, "status"));
    const json_t *assignee = path_get(doc, "meta", "assignee", NULL);
    const char *atype = json_string_value(path_get(doc, "meta", "assignee_type", NULL));
    int human = atype ? strcmp(atype, "User") == 0 : json_is_object(assignee);
    /* Only an actual status change gives a conversation back to the bot or
     * closes it; conversation_updated also carries older states, and
     * webhooks may arrive out of order. A human assignee always wins. */
    int status_event = strcmp(event, "conversation_status_changed") == 0 ||
                       strcmp(event, "conversation_resolved") == 0 || strcmp(event, "conversation_opened") == 0;
    koko_conv_event ev = 0;
    const char *what = NULL;
    if (status && strcmp(status, "open") == 0 && human) {
        ev = KOKO_CONV_HUMAN;
        what = "human";
        char aid[32];
        const char *name = nonempty(json_object_get(assignee, "name"));
        snprintf(detail, sizeof detail, "open and assigned to agent %s%s%s%s",
                 *id_text(json_object_get(assignee, "id"), aid, sizeof aid) ? aid : "?", name ? " (" : "",
                 name ? name : "", name ? ")" : "");
    } else if (status && strcmp(status, "resolved") == 0 && status_event) {
        ev = KOKO_CONV_RESOLVED;
        what = "resolved";
        snprintf(detail, sizeof detail, "resolved in Chatwoot");
    } else if (status && strcmp(status, "pending") == 0 && status_event) {
        ev = KOKO_CONV_BOT;
        what = "bot";
        snprintf(detail, sizeof detail, "back to pending in Chatwoot");
    }
    if (!ev) {
        respond_ignored(c, req, event, "no ownership change");
        return;
    }
    if (host_has_conversation(c->host))
        c->host->conversation(c->inst, id, ev, detail);
    else
        c->host->log(c->inst, KOKO_LOG_WARN, "conversation %s %s, but this kokod cannot take ownership events", id,
                     detail);
    seen_add(c, delivery);
    char body[160];
    snprintf(body, sizeof body, "{\"status\":\"ok\",\"event\":\"%s\",\"ownership\":\"%s\"}", event, what);
    c->host->respond(req, 200, body);
}

/* ---- the route ---- */

void cw_webhook(koko_request *req, void *arg)
{
    cw *c = arg;
    char why[256];
    size_t len = 0;
    const char *body = c->host->req_body(req, &len);
    if (c->stopping) {
        respond_error(c, req, 503, "kokod is stopping; retry later");
        return;
    }
    if (c->cfg.webhook_secret && verify(c, req, body ? body : "", body ? len : 0, why, sizeof why) != 0) {
        c->host->log(c->inst, KOKO_LOG_WARN, "webhook from %s refused: %s", c->host->req_peer(req), why);
        respond_error(c, req, 401, why);
        return;
    }
    json_error_t je;
    json_t *doc = json_loadb(body ? body : "", body ? len : 0, 0, &je);
    if (!json_is_object(doc)) {
        if (doc)
            snprintf(why, sizeof why, "expected a JSON object (a Chatwoot webhook payload)");
        else
            snprintf(why, sizeof why, "malformed JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        json_decref(doc);
        respond_error(c, req, 400, why);
        return;
    }
    const char *event = nonempty(json_object_get(doc, "event"));
    const char *delivery = c->host->req_header(req, "X-Chatwoot-Delivery");
    long long account = id_num(path_get(doc, "account", "id", NULL));
    if (!account)
        account = id_num(json_object_get(doc, "account_id"));
    if (!event) {
        respond_error(c, req, 400, "no \"event\" in the payload (is this a Chatwoot webhook?)");
    } else if (seen_has(c, delivery)) {
        c->host->respond(req, 200, "{\"status\":\"duplicate\"}");
    } else if (account && account != c->cfg.account_id) {
        c->host->log(c->inst, KOKO_LOG_WARN, "%s for account %lld ignored: this tenant serves account %lld", event,
                     account, c->cfg.account_id);
        respond_ignored(c, req, event, "another account");
    } else if (strcmp(event, "message_created") == 0) {
        on_message_created(c, req, doc, delivery);
    } else if (strncmp(event, "conversation_", 13) == 0 && strcmp(event, "conversation_created") != 0 &&
               strcmp(event, "conversation_typing_on") != 0 && strcmp(event, "conversation_typing_off") != 0) {
        on_conversation(c, req, doc, event, delivery);
    } else {
        respond_ignored(c, req, event, NULL);
    }
    json_decref(doc);
}
