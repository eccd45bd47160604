/*
 * plugins/chatwoot/chatwoot.c — the `chatwoot` channel: descriptor, settings, life cycle.
 *
 * One instance serves one tenant's Chatwoot account. It registers
 * POST /webhook/<tenant>/chatwoot (webhook.c: signed events in, messages
 * submitted to the core, ownership events reported) and delivers the core's
 * replies through Chatwoot's REST API (rest.c). The settings are declared and
 * checked here once; validate() has no side effects so a reload can dry-run it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "chatwoot.h"

static const char *const top_keys[] = {
    "base_url",    "account_id", "api_token",  "webhook_secret", "inboxes",       "reply_in",
    "handoff",     "quiet_ms",   "timeout_ms", "max_attempts",   "retry_base_ms", "timestamp_window_s",
    "attachments", NULL};
static const char *const handoff_keys[] = {"team_id", "assignee_id", "labels", "note", NULL};
static const char *const statuses[] = {"open", "pending", "snoozed", "resolved", NULL};
static const char *const note_fields[] = {"reason",     "question", "draft",        "sources",
                                          "confidence", "backend",  "conversation", NULL};

const char cw_default_note[] = "Kokó átadta a beszélgetést / Kokó handed this conversation over\n"
                               "\n"
                               "Ok / Reason: {reason}\n"
                               "\n"
                               "Az ügyfél kérdése / Customer's question:\n"
                               "{question}\n"
                               "\n"
                               "Javasolt válasz / Draft answer:\n"
                               "{draft}\n"
                               "\n"
                               "Források / Sources:\n"
                               "{sources}";

typedef struct int_range {
    const char *key;
    long long lo, hi;
} int_range;

static const int_range ranges[] = {
    {"quiet_ms", 0, 600000},     {"timeout_ms", 100, 300000},      {"max_attempts", 1, 10},
    {"retry_base_ms", 1, 60000}, {"timestamp_window_s", 1, 86400}, {NULL, 0, 0},
};

/* ---- validation ---- */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "a list";
    case JSON_STRING:
        return json_string_length(v) ? "a string" : "an empty string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a real number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int in_list(const char *s, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(s, *list) == 0)
            return 1;
    return 0;
}

static void join_list(char *buf, size_t len, const char *const *list)
{
    size_t off = 0;
    buf[0] = '\0';
    for (; *list; list++) {
        int n = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", *list);
        if (n < 0 || (size_t)n >= len - off)
            break;
        off += (size_t)n;
    }
}

static int unknown_key(koko_diag *d, const char *path, const char *key, const char *const *known)
{
    char list[512];
    join_list(list, sizeof list, known);
    d->error(d, path, "unknown key \"%s\" (known: %s)", key, list);
    return 1;
}

static int check_id(koko_diag *d, const char *path, const json_t *v, const char *what)
{
    if (!json_is_integer(v)) {
        d->error(d, path, "expected a positive integer (%s), got %s", what, json_kind(v));
        return 1;
    }
    if (json_integer_value(v) <= 0) {
        d->error(d, path, "expected a positive integer (%s), got %lld", what, (long long)json_integer_value(v));
        return 1;
    }
    return 0;
}

static int check_string(koko_diag *d, const char *path, const json_t *v, const char *empty_hint)
{
    if (!json_is_string(v)) {
        d->error(d, path, "expected a string, got %s", json_kind(v));
        return 1;
    }
    if (json_string_length(v) == 0) {
        d->error(d, path, "is empty%s", empty_hint);
        return 1;
    }
    return 0;
}

/* "http://host[:port][/prefix]" or https: the part after the scheme must name a host. */
static int url_ok(const char *s)
{
    const char *rest = NULL;
    if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    if (!rest || !*rest || *rest == '/' || *rest == ':')
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == '?' || *p == '#')
            return 0;
    return 1;
}

static int check_note(koko_diag *d, const json_t *v)
{
    if (check_string(d, "handoff.note", v, " (leave it out for the built-in Hungarian and English note)"))
        return 1;
    int n = 0;
    for (const char *p = json_string_value(v); (p = strchr(p, '{')) != NULL; p++) {
        const char *end = strchr(p, '}');
        size_t len = end ? (size_t)(end - p - 1) : 0;
        int ident = end && len > 0;
        for (size_t i = 1; ident && i <= len; i++)
            if (!((p[i] >= 'a' && p[i] <= 'z') || p[i] == '_'))
                ident = 0;
        if (!ident)
            continue;
        char name[64];
        snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name - 1 ? len : sizeof name - 1), p + 1);
        if (!in_list(name, note_fields)) {
            char list[256];
            join_list(list, sizeof list, note_fields);
            d->error(d, "handoff.note", "unknown field {%s} (known: %s)", name, list);
            n++;
        }
    }
    return n;
}

static int check_handoff(koko_diag *d, const json_t *h)
{
    if (!json_is_object(h)) {
        d->error(d, "handoff", "expected an object with team_id, assignee_id, labels and/or note, got %s",
                 json_kind(h));
        return 1;
    }
    int n = 0;
    const char *key;
    const json_t *v;
    char path[160];
    json_object_foreach((json_t *)h, key, v)
    {
        snprintf(path, sizeof path, "handoff.%s", key);
        if (strcmp(key, "team_id") == 0) {
            n += check_id(d, path, v, "a Chatwoot team id");
        } else if (strcmp(key, "assignee_id") == 0) {
            n += check_id(d, path, v, "a Chatwoot agent id");
        } else if (strcmp(key, "labels") == 0) {
            if (!json_is_array(v)) {
                d->error(d, path, "expected a list of label names, got %s", json_kind(v));
                n++;
                continue;
            }
            size_t i;
            const json_t *l;
            json_array_foreach(v, i, l)
            {
                snprintf(path, sizeof path, "handoff.labels[%zu]", i);
                n += check_string(d, path, l, "");
            }
        } else if (strcmp(key, "note") == 0) {
            n += check_note(d, v);
        } else {
            n += unknown_key(d, path, key, handoff_keys);
        }
    }
    return n;
}

static int check_list(koko_diag *d, const char *key, const json_t *v)
{
    if (!json_is_array(v) || json_array_size(v) == 0) {
        d->error(d, key, "expected a non-empty list of %s, got %s",
                 strcmp(key, "inboxes") == 0 ? "inbox ids" : "conversation statuses",
                 json_is_array(v) ? "an empty list" : json_kind(v));
        return 1;
    }
    int n = 0;
    size_t i;
    const json_t *e;
    char path[64];
    json_array_foreach(v, i, e)
    {
        snprintf(path, sizeof path, "%s[%zu]", key, i);
        if (strcmp(key, "inboxes") == 0) {
            n += check_id(d, path, e, "a Chatwoot inbox id");
        } else if (!json_is_string(e) || !in_list(json_string_value(e), statuses)) {
            char list[128];
            join_list(list, sizeof list, statuses);
            if (json_is_string(e))
                d->error(d, path, "unknown conversation status \"%s\" (known: %s)", json_string_value(e), list);
            else
                d->error(d, path, "expected a conversation status (%s), got %s", list, json_kind(e));
            n++;
        }
    }
    return n;
}

static int check_int(koko_diag *d, const char *key, const json_t *v)
{
    const int_range *r = ranges;
    while (r->key && strcmp(r->key, key) != 0)
        r++;
    if (!json_is_integer(v)) {
        d->error(d, key, "expected an integer between %lld and %lld, got %s", r->lo, r->hi, json_kind(v));
        return 1;
    }
    long long x = (long long)json_integer_value(v);
    if (x < r->lo || x > r->hi) {
        d->error(d, key, "expected an integer between %lld and %lld, got %lld", r->lo, r->hi, x);
        return 1;
    }
    return 0;
}

static int check_config(const json_t *cfg, koko_diag *d)
{
    if (!json_is_object(cfg)) {
        d->error(d, "",
                 "expected an object (the Chatwoot channel's settings: base_url, account_id, api_token, ...), "
                 "got %s",
                 cfg ? json_kind(cfg) : "nothing");
        return 1;
    }
    int n = 0;
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)cfg, key, v)
    {
        if (strcmp(key, "base_url") == 0) {
            if (!json_is_string(v)) {
                d->error(d, key, "expected the Chatwoot address as a string, e.g. \"https://chat.example.com\", got %s",
                         json_kind(v));
                n++;
            } else if (!url_ok(json_string_value(v))) {
                d->error(d, key,
                         "expected an http:// or https:// URL naming a host, e.g. \"https://chat.example.com\"");
                n++;
            }
        } else if (strcmp(key, "account_id") == 0) {
            n += check_id(d, key, v, "the number in Chatwoot's /app/accounts/N/ address");
        } else if (strcmp(key, "api_token") == 0) {
            n += check_string(d, key, v, " (is the environment variable it names set?)");
        } else if (strcmp(key, "webhook_secret") == 0) {
            n += check_string(d, key, v, " (leave the key out to accept unsigned webhooks)");
        } else if (strcmp(key, "inboxes") == 0 || strcmp(key, "reply_in") == 0) {
            n += check_list(d, key, v);
        } else if (strcmp(key, "handoff") == 0) {
            n += check_handoff(d, v);
        } else if (strcmp(key, "attachments") == 0) {
            if (!json_is_string(v) ||
                (strcmp(json_string_value(v), "acknowledge") != 0 && strcmp(json_string_value(v), "handoff") != 0)) {
                d->error(d, key, "expected \"acknowledge\" or \"handoff\"");
                n++;
            }
        } else if (in_list(key, top_keys)) {
            n += check_int(d, key, v);
        } else {
            n += unknown_key(d, key, key, top_keys);
        }
    }
    static const char *const required[][2] = {
        {"base_url", "required: the Chatwoot address, e.g. \"https://chat.example.com\""},
        {"account_id", "required: the Chatwoot account id (the number in /app/accounts/N/)"},
        {"api_token", "required: the access token of the agent bot or agent that replies"},
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!json_object_get(cfg, required[i][0])) {
            d->error(d, required[i][0], "%s", required[i][1]);
            n++;
        }
    return n;
}

static int cw_validate(const json_t *cfg, koko_diag *diag)
{
    return check_config(cfg, diag);
}

/* ---- parsing (of a config that validated) ---- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static long long int_or(const json_t *obj, const char *key, long long dflt)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : dflt;
}

static char **strings_of(const json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    char **out = calloc(*n ? *n : 1, sizeof *out);
    for (size_t i = 0; out && i < *n; i++)
        if (!(out[i] = xstrdup(json_string_value(json_array_get(arr, i))))) {
            for (size_t j = 0; j < i; j++)
                free(out[j]);
            free(out);
            return NULL;
        }
    return out;
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

static void config_free(cw_config *k)
{
    free(k->base_url);
    free(k->host);
    free(k->api_token);
    free(k->webhook_secret);
    free(k->inboxes);
    free_strings(k->reply_in, k->n_reply_in);
    free_strings(k->labels, k->n_labels);
    free(k->note);
    memset(k, 0, sizeof *k);
}

/* 0 on success, -1 when out of memory. */
static int config_parse(cw_config *k, const json_t *cfg)
{
    const char *url = json_string_value(json_object_get(cfg, "base_url"));
    size_t len = strlen(url);
    while (len > 0 && url[len - 1] == '/')
        len--;
    k->base_url = strndup(url, len);
    const char *h = strstr(url, "://") + 3;
    k->host = strndup(h, strcspn(h, "/"));
    k->account_id = int_or(cfg, "account_id", 0);
    k->api_token = xstrdup(json_string_value(json_object_get(cfg, "api_token")));
    k->webhook_secret = xstrdup(json_string_value(json_object_get(cfg, "webhook_secret")));
    const json_t *inb = json_object_get(cfg, "inboxes");
    if (inb) {
        k->n_inboxes = json_array_size(inb);
        k->inboxes = calloc(k->n_inboxes, sizeof *k->inboxes);
        for (size_t i = 0; k->inboxes && i < k->n_inboxes; i++)
            k->inboxes[i] = (long long)json_integer_value(json_array_get(inb, i));
    }
    const json_t *ri = json_object_get(cfg, "reply_in");
    if (ri) {
        k->reply_in = strings_of(ri, &k->n_reply_in);
    } else {
        k->n_reply_in = 1;
        k->reply_in = calloc(1, sizeof *k->reply_in);
        if (k->reply_in)
            k->reply_in[0] = xstrdup("pending");
    }
    const json_t *ho = json_object_get(cfg, "handoff");
    k->team_id = int_or(ho, "team_id", 0);
    k->assignee_id = int_or(ho, "assignee_id", 0);
    const json_t *labels = json_object_get(ho, "labels");
    if (labels)
        k->labels = strings_of(labels, &k->n_labels);
    const char *note = json_string_value(json_object_get(ho, "note"));
    k->note = xstrdup(note ? note : cw_default_note);
    k->quiet_ms = (uint32_t)int_or(cfg, "quiet_ms", CW_DEFAULT_QUIET_MS);
    k->timeout_ms = (uint32_t)int_or(cfg, "timeout_ms", CW_DEFAULT_TIMEOUT_MS);
    k->max_attempts = (int)int_or(cfg, "max_attempts", CW_DEFAULT_MAX_ATTEMPTS);
    k->retry_base_ms = (uint32_t)int_or(cfg, "retry_base_ms", CW_DEFAULT_RETRY_BASE_MS);
    k->window_s = (int)int_or(cfg, "timestamp_window_s", CW_DEFAULT_WINDOW_S);
    const char *att = json_string_value(json_object_get(cfg, "attachments"));
    k->attachments_handoff = att && strcmp(att, "handoff") == 0;
    if (!k->base_url || !k->host || !k->api_token || (inb && !k->inboxes) || !k->reply_in ||
        (k->n_reply_in && !k->reply_in[0]) || (labels && !k->labels) || !k->note ||
        (json_object_get(cfg, "webhook_secret") && !k->webhook_secret))
        return -1;
    return 0;
}

/* A koko_diag that keeps the first problem, so init() can say what is wrong. */
typedef struct first_error {
    koko_diag d;
    char *buf;
    size_t len;
    int count;
} first_error;

__attribute__((format(printf, 3, 4))) static void first_error_fn(koko_diag *d, const char *relpath, const char *fmt,
                                                                 ...)
{
    first_error *fe = d->priv;
    if (fe->count++ > 0)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(fe->buf, fe->len, "chatwoot: invalid configuration: %s%s%s", relpath ? relpath : "",
             relpath && *relpath ? ": " : "", msg);
}

/* ---- shared helpers ---- */

char *cw_error_json(const char *msg)
{
    json_t *e = json_pack("{s:s}", "error", msg ? msg : "error");
    char *s = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    return s;
}

void cw_idle_check(cw *c)
{
    if (c->stopping && c->busy == 0 && c->drained) {
        koko_drained_fn fn = c->drained;
        c->drained = NULL;
        fn(c->inst);
    }
}

/* ---- life cycle ---- */

static void cw_destroy(void *state);

static void *cw_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    first_error fe = {.d = {.size = sizeof(koko_diag), .error = first_error_fn}, .buf = err, .len = errlen};
    fe.d.priv = &fe;
    if (check_config(cfg, &fe.d) > 0)
        return NULL;
    cw *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "chatwoot: out of memory");
        return NULL;
    }
    c->host = host;
    c->inst = inst;
    c->rand_state = (unsigned)(uintptr_t)c ^ 0x9e3779b9u;
    if (config_parse(&c->cfg, cfg) != 0 || !(c->seen = json_object())) {
        snprintf(err, errlen, "chatwoot: out of memory");
        cw_destroy(c);
        return NULL;
    }
    if (host->route_add(inst, NULL, cw_webhook, c) != 0) {
        snprintf(err, errlen, "chatwoot: cannot register POST /webhook/%s/chatwoot (is another channel using it?)",
                 host->tenant(inst));
        cw_destroy(c);
        return NULL;
    }
    host->log(inst, KOKO_LOG_INFO, "Chatwoot account %lld at %s, webhooks %s, replying in %zu status(es)",
              c->cfg.account_id, c->cfg.base_url, c->cfg.webhook_secret ? "signed" : "UNSIGNED (no webhook_secret)",
              c->cfg.n_reply_in);
    return c;
}

static void cw_stop(void *state, koko_drained_fn drained)
{
    cw *c = state;
    c->stopping = 1;
    c->drained = drained;
    cw_idle_check(c);
}

static void cw_destroy(void *state)
{
    cw *c = state;
    if (!c)
        return;
    cw_rest_free(c);
    cw_seen_free(c);
    config_free(&c->cfg);
    free(c);
}

static const koko_channel_ops cw_ops = {
    .size = sizeof(koko_channel_ops),
    .deliver = cw_deliver,
    .typing = cw_typing,
};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE,
    .kind = KOKO_KIND_CHANNEL,
    .name = "chatwoot",
    .version = "1.0",
    .description = "Chatwoot: signed webhooks in; replies, typing, handoff (open, assign, label, note) out",
    .validate = cw_validate,
    .init = cw_init,
    .stop = cw_stop,
    .destroy = cw_destroy,
    .ops = &cw_ops,
};
