/*
 * tests/test_chatwoot.c — the `chatwoot` channel plugin, loaded as kokod loads it.
 *
 * The .so ($KOKO_CHATWOOT_SO, else $KOKO_BUILDDIR/plugins/chatwoot/.libs/
 * chatwoot.so) is dlopened and driven through tests/fakehost. Webhooks go in
 * through the fake host's route (signature checks, parsing, payload →
 * koko_msg mapping, ownership events, de-duplication); replies go out over
 * real HTTP to tests/fakes/fake_chatwoot.py, started once per run, whose
 * /_calls record and /_faults injection check call sequences, retries,
 * backoff and that a retry never double-posts.
 */
#define _GNU_SOURCE
#include <check.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/hmac.h>

#include "fakehost.h"
#include "fakesrv.h"
#include "koko/host.h"
#include "koko/plugin.h"

#define SECRET "s3cret"

static const koko_plugin *plug;
static void *plug_handle;
static pid_t fake_pid;
static char fake_url[128];

/* ---- the fake Chatwoot (a child process) ---- */

/* A blocking control call to the fake; returns the parsed body (caller decrefs). */
static json_t *fake_call(const char *method, const char *path, const char *body)
{
    return fakesrv_call(fake_url, method, path, body);
}

static void fake_ok(const char *method, const char *path, const char *body)
{
    json_decref(fake_call(method, path, body));
}

static void fault(const char *json)
{
    fake_ok("POST", "/_faults", json);
}

/* The recorded API calls as "METHOD /suffix status" lines, e.g. "POST messages 200". */
static json_t *calls(void)
{
    return fake_call("GET", "/_calls", NULL);
}

static char *call_summary(void)
{
    json_t *c = calls();
    size_t i;
    json_t *k;
    char *out = strdup("");
    json_array_foreach(c, i, k)
    {
        const char *path = json_string_value(json_object_get(k, "path"));
        const char *last = strrchr(path, '/') + 1;
        json_t *st = json_object_get(k, "status");
        char stbuf[32];
        if (json_is_integer(st))
            snprintf(stbuf, sizeof stbuf, "%lld", (long long)json_integer_value(st));
        else
            snprintf(stbuf, sizeof stbuf, "%s", json_is_string(st) ? json_string_value(st) : "?");
        char *n = NULL;
        if (asprintf(&n, "%s%s%s %s %s", out, *out ? "; " : "", json_string_value(json_object_get(k, "method")), last,
                     stbuf) < 0)
            abort();
        free(out);
        out = n;
    }
    json_decref(c);
    return out;
}

static json_t *call_body(size_t i)
{
    json_t *c = calls();
    json_t *b = json_incref(json_object_get(json_array_get(c, i), "body"));
    json_decref(c);
    return b;
}

/* ---- plugin fixture ---- */

typedef struct fx {
    fakehost *fh;
    void *state;
} fx;

static json_t *base_config(void)
{
    return json_pack("{s:s,s:i,s:s,s:s,s:i,s:i,s:i}", "base_url", fake_url, "account_id", 1, "api_token", "test-token",
                     "webhook_secret", SECRET, "retry_base_ms", 20, "timeout_ms", 2000, "max_attempts", 4);
}

static void fx_open(fx *f, json_t *cfg)
{
    f->fh = fakehost_new("demo", "chatwoot");
    ck_assert_ptr_nonnull(f->fh);
    char err[512] = "";
    f->state = plug->init(fakehost_host(), fakehost_instance(f->fh), cfg, err, sizeof err);
    ck_assert_msg(f->state != NULL, "init failed: %s", err);
    json_decref(cfg);
    fake_ok("POST", "/_reset", NULL);
    fake_ok("POST", "/_conversations", "{\"id\":5,\"status\":\"pending\",\"labels\":[\"vip\"]}");
}

static void fx_close(fx *f)
{
    fakehost_cancel_all(f->fh);
    plug->destroy(f->state);
    fakehost_free(f->fh);
}

/* ---- webhooks ---- */

static void sign(const char *ts, const char *body, char out[72])
{
    size_t tl = strlen(ts), bl = strlen(body);
    char *data = malloc(tl + bl + 2);
    sprintf(data, "%s.%s", ts, body);
    unsigned char mac[32];
    unsigned len = 0;
    HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET), (unsigned char *)data, tl + 1 + bl, mac, &len);
    strcpy(out, "sha256=");
    for (unsigned i = 0; i < len; i++)
        sprintf(out + 7 + 2 * i, "%02x", mac[i]);
    free(data);
}

/* POST BODY to the webhook (signed unless NOSIGN; TS_SKEW seconds off now;
 * DELIVERY id or NULL), run the loop, return the response. */
static const fakehost_response *post_ex(fx *f, const char *body, int nosign, long ts_skew, const char *delivery,
                                        const char *bad_sig)
{
    char ts[32], sig[72], h1[128], h2[128], h3[128];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL) + ts_skew);
    sign(ts, body, sig);
    snprintf(h1, sizeof h1, "X-Chatwoot-Timestamp: %s", ts);
    snprintf(h2, sizeof h2, "X-Chatwoot-Signature: %s", bad_sig ? bad_sig : sig);
    snprintf(h3, sizeof h3, "X-Chatwoot-Delivery: %s", delivery ? delivery : "");
    const char *hs[4] = {NULL, NULL, NULL, NULL};
    size_t n = 0;
    if (!nosign) {
        hs[n++] = h1;
        hs[n++] = h2;
    }
    if (delivery)
        hs[n++] = h3;
    size_t before = fakehost_response_count(f->fh);
    ck_assert_int_eq(fakehost_request(f->fh, "chatwoot", "POST", body, hs, NULL), 0);
    fakehost_run(f->fh, 3000);
    ck_assert_uint_eq(fakehost_response_count(f->fh), before + 1);
    return fakehost_response_get(f->fh, before);
}

static const fakehost_response *post(fx *f, json_t *payload)
{
    char *s = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    const fakehost_response *r = post_ex(f, s, 0, 0, NULL, NULL);
    free(s);
    return r;
}

/* A message_created payload as Chatwoot sends it (Message#webhook_data). */
static json_t *message(long id, const char *type, json_t *sender, const char *status)
{
    json_t *conv =
        json_pack("{s:i,s:i,s:s,s:s,s:{},s:[s],s:{s:{s:i,s:s},s:n,s:n,s:n}}", "id", 5, "inbox_id", 1, "status", status,
                  "channel", "Channel::WebWidget", "additional_attributes", "labels", "vip", "meta", "sender", "id", 7,
                  "name", "Kiss Anna", "assignee", "assignee_type", "team");
    return json_pack("{s:s,s:i,s:s,s:s,s:{},s:{},s:s,s:b,s:n,s:s,s:o,s:{s:i,s:s},s:{s:i,s:s},s:o}", "event",
                     "message_created", "id", (int)id, "content", "Mennyi a kiszállítás?", "content_type", "text",
                     "content_attributes", "additional_attributes", "message_type", type, "private", 0, "source_id",
                     "created_at", "2024-05-01T10:00:00.000Z", "sender", sender ? sender : json_null(), "inbox", "id",
                     1, "name", "Webshop", "account", "id", 1, "name", "Acme", "conversation", conv);
}

/* PAYLOAD as compact JSON (caller frees); PAYLOAD is consumed. */
static char *dump(json_t *payload)
{
    char *s = json_dumps(payload, JSON_COMPACT);
    json_decref(payload);
    return s;
}

static json_t *contact_sender(void)
{
    return json_pack("{s:i,s:s,s:s}", "id", 7, "name", "Kiss Anna", "email", "anna@example.com");
}

static json_t *typed_sender(const char *type)
{
    return json_pack("{s:i,s:s,s:s}", "id", 3, "name", "Nagy Péter", "type", type);
}

static const koko_msg *last_submitted(fx *f)
{
    size_t n = fakehost_submit_count(f->fh);
    ck_assert_uint_gt(n, 0);
    return fakehost_submitted(f->fh, n - 1);
}

/* ---- descriptor and validate ---- */

START_TEST(descriptor)
{
    ck_assert_int_eq(plug->abi_major, KOKO_ABI_MAJOR);
    ck_assert_int_eq(plug->abi_minor, KOKO_ABI_MINOR);
    ck_assert_int_eq(plug->kind, KOKO_KIND_CHANNEL);
    ck_assert_str_eq(plug->name, "chatwoot");
    const koko_channel_ops *ops = plug->ops;
    ck_assert_ptr_nonnull(ops->deliver);
    ck_assert_ptr_nonnull(ops->typing);
}
END_TEST

START_TEST(validate_ok_and_required)
{
    fakediag *d = fakediag_new();
    json_t *cfg = base_config();
    ck_assert_int_eq(plug->validate(cfg, fakediag_diag(d)), 0);
    json_decref(cfg);
    cfg = json_object();
    ck_assert_int_eq(plug->validate(cfg, fakediag_diag(d)), 3);
    ck_assert_int_ge(fakediag_find(d, "base_url: required: the Chatwoot address, e.g. \"https://chat.example.com\""),
                     0);
    ck_assert_int_ge(fakediag_find(d, "account_id: required: the Chatwoot account id (the number in /app/accounts/N/)"),
                     0);
    ck_assert_int_ge(fakediag_find(d, "api_token: required: the access token of the agent bot or agent that replies"),
                     0);
    json_decref(cfg);
    fakediag_free(d);
}
END_TEST

START_TEST(validate_messages)
{
    fakediag *d = fakediag_new();
    json_t *cfg =
        json_pack("{s:s,s:s,s:s,s:s,s:[i,i],s:[s,s],s:{s:i,s:[i],s:s,s:i},s:i,s:s,s:i,s:b}", "base_url", "ftp://x",
                  "account_id", "1", "api_token", "", "webhook_secret", "", "inboxes", 1, -2, "reply_in", "pending",
                  "closed", "handoff", "team_id", 0, "labels", 5, "note", "{reason} {nope}", "bogus", 1, "quiet_ms", -1,
                  "attachments", "drop", "max_attempts", 0, "verbose", 1);
    int n = plug->validate(cfg, fakediag_diag(d));
    const char *want[] = {
        "base_url: expected an http:// or https:// URL naming a host, e.g. \"https://chat.example.com\"",
        "account_id: expected a positive integer (the number in Chatwoot's /app/accounts/N/ address), got a string",
        "api_token: is empty (is the environment variable it names set?)",
        "webhook_secret: is empty (leave the key out to accept unsigned webhooks)",
        "inboxes[1]: expected a positive integer (a Chatwoot inbox id), got -2",
        "reply_in[1]: unknown conversation status \"closed\" (known: open, pending, snoozed, resolved)",
        "handoff.team_id: expected a positive integer (a Chatwoot team id), got 0",
        "handoff.labels[0]: expected a string, got an integer",
        "handoff.note: unknown field {nope} (known: reason, question, draft, sources, confidence, backend, "
        "conversation)",
        "handoff.bogus: unknown key \"bogus\" (known: team_id, assignee_id, labels, note)",
        "quiet_ms: expected an integer between 0 and 600000, got -1",
        "attachments: expected \"acknowledge\" or \"handoff\"",
        "max_attempts: expected an integer between 1 and 10, got 0",
        "verbose: unknown key \"verbose\" (known: base_url, account_id, api_token, webhook_secret, inboxes, "
        "reply_in, handoff, quiet_ms, timeout_ms, max_attempts, retry_base_ms, timestamp_window_s, attachments)",
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        ck_assert_msg(fakediag_find(d, want[i]) >= 0, "missing diagnostic: %s", want[i]);
    ck_assert_int_eq(n, (int)(sizeof want / sizeof want[0]));
    ck_assert_uint_eq(fakediag_count(d), sizeof want / sizeof want[0]);
    json_decref(cfg);
    fakediag_free(d);
}
END_TEST

START_TEST(init_refuses_bad_config)
{
    fakehost *fh = fakehost_new("demo", "chatwoot");
    char err[512] = "";
    json_t *cfg = json_pack("{s:s,s:i}", "base_url", "https://chat.example.com", "account_id", 1);
    ck_assert_ptr_null(plug->init(fakehost_host(), fakehost_instance(fh), cfg, err, sizeof err));
    ck_assert_str_eq(err, "chatwoot: invalid configuration: api_token: required: the access token of the agent bot "
                          "or agent that replies");
    ck_assert_uint_eq(fakehost_route_count(fh), 0);
    json_decref(cfg);
    fakehost_free(fh);
}
END_TEST

/* ---- signatures ---- */

START_TEST(signature_good_bad_stale_missing)
{
    fx f;
    fx_open(&f, base_config());
    ck_assert_uint_eq(fakehost_route_count(f.fh), 1);
    char *body = dump(message(101, "incoming", contact_sender(), "pending"));
    const fakehost_response *r = post_ex(&f, body, 0, 0, "d-1", NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_str_eq(r->body, "{\"status\":\"accepted\",\"message_id\":\"101\"}");

    r = post_ex(&f, body, 0, 0, NULL, "sha256=0000000000000000000000000000000000000000000000000000000000000000");
    ck_assert_int_eq(r->status, 401);
    ck_assert_ptr_nonnull(strstr(r->body, "signature mismatch"));
    r = post_ex(&f, body, 0, -301, NULL, NULL);
    ck_assert_int_eq(r->status, 401);
    ck_assert_ptr_nonnull(strstr(r->body, "stale X-Chatwoot-Timestamp: 301 s behind now"));
    r = post_ex(&f, body, 0, 400, NULL, NULL);
    ck_assert_int_eq(r->status, 401);
    ck_assert_ptr_nonnull(strstr(r->body, "ahead of now"));
    r = post_ex(&f, body, 1, 0, NULL, NULL);
    ck_assert_int_eq(r->status, 401);
    ck_assert_ptr_nonnull(strstr(r->body, "missing X-Chatwoot-Signature"));
    r = post_ex(&f, body, 0, 0, NULL, "md5=abc");
    ck_assert_int_eq(r->status, 401);
    /* a body changed after signing */
    char *tampered = strdup(body);
    tampered[strlen(tampered) - 2] = ' ';
    char ts[32], sig[72], h1[128], h2[128];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    sign(ts, body, sig);
    snprintf(h1, sizeof h1, "X-Chatwoot-Timestamp: %s", ts);
    snprintf(h2, sizeof h2, "X-Chatwoot-Signature: %s", sig);
    const char *hs[] = {h1, h2, NULL};
    fakehost_request(f.fh, "chatwoot", "POST", tampered, hs, NULL);
    fakehost_run(f.fh, 1000);
    ck_assert_int_eq(fakehost_response_get(f.fh, fakehost_response_count(f.fh) - 1)->status, 401);
    ck_assert_uint_eq(fakehost_submit_count(f.fh), 1);
    ck_assert_int_ge(fakehost_log_find(f.fh, "refused: signature mismatch"), 0);
    ck_assert_int_lt(fakehost_log_find(f.fh, SECRET), 0);
    free(tampered);
    free(body);
    fx_close(&f);
}
END_TEST

START_TEST(unsigned_without_secret_and_window)
{
    fx f;
    json_t *cfg = base_config();
    json_object_del(cfg, "webhook_secret");
    fx_open(&f, cfg);
    char *body = dump(message(102, "incoming", contact_sender(), "pending"));
    ck_assert_int_eq(post_ex(&f, body, 1, 0, NULL, NULL)->status, 200);
    free(body);
    fx_close(&f);

    cfg = base_config();
    json_object_set_new(cfg, "timestamp_window_s", json_integer(1000));
    fx_open(&f, cfg);
    body = dump(message(103, "incoming", contact_sender(), "pending"));
    ck_assert_int_eq(post_ex(&f, body, 0, -900, NULL, NULL)->status, 200);
    ck_assert_int_eq(post_ex(&f, body, 0, -1100, NULL, NULL)->status, 401);
    free(body);
    fx_close(&f);
}
END_TEST

START_TEST(malformed_ignored_duplicate_rejected)
{
    fx f;
    fx_open(&f, base_config());
    const fakehost_response *r = post_ex(&f, "{\"event\": \"message_created\", ", 0, 0, NULL, NULL);
    ck_assert_int_eq(r->status, 400);
    ck_assert_ptr_nonnull(strstr(r->body, "malformed JSON"));
    r = post_ex(&f, "[1,2]", 0, 0, NULL, NULL);
    ck_assert_int_eq(r->status, 400);
    r = post_ex(&f, "{\"event\":\"contact_updated\",\"id\":7}", 0, 0, NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_str_eq(r->body, "{\"status\":\"ignored\",\"event\":\"contact_updated\"}");
    r = post_ex(&f, "{\"event\":\"message_updated\",\"id\":7}", 0, 0, NULL, NULL);
    ck_assert_str_eq(r->body, "{\"status\":\"ignored\",\"event\":\"message_updated\"}");

    /* the core refuses: 503, and Chatwoot's retry with the same delivery id is processed */
    char *body = dump(message(104, "incoming", contact_sender(), "pending"));
    fakehost_set_submit_status(f.fh, KOKO_SUBMIT_REJECTED, "kokod is stopping");
    r = post_ex(&f, body, 0, 0, "dlv-7", NULL);
    ck_assert_int_eq(r->status, 503);
    ck_assert_str_eq(r->body, "{\"error\":\"kokod is stopping\"}");
    fakehost_set_submit_status(f.fh, KOKO_SUBMIT_ACCEPTED, NULL);
    ck_assert_int_eq(post_ex(&f, body, 0, 0, "dlv-7", NULL)->status, 200);
    ck_assert_uint_eq(fakehost_submit_count(f.fh), 2);
    /* the same delivery again: acknowledged, not submitted */
    r = post_ex(&f, body, 0, 0, "dlv-7", NULL);
    ck_assert_int_eq(r->status, 200);
    ck_assert_str_eq(r->body, "{\"status\":\"duplicate\"}");
    ck_assert_uint_eq(fakehost_submit_count(f.fh), 2);
    /* a new delivery of the same message: the core decides (DUPLICATE) */
    fakehost_set_submit_status(f.fh, KOKO_SUBMIT_DUPLICATE, NULL);
    r = post_ex(&f, body, 0, 0, "dlv-8", NULL);
    ck_assert_str_eq(r->body, "{\"status\":\"duplicate\",\"message_id\":\"104\"}");
    free(body);
    /* another account's webhook */
    json_t *m = message(105, "incoming", contact_sender(), "pending");
    json_object_set_new(json_object_get(m, "account"), "id", json_integer(2));
    r = post(&f, m);
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_nonnull(strstr(r->body, "another account"));
    fx_close(&f);
}
END_TEST

/* ---- mapping ---- */

START_TEST(map_contact_message)
{
    fx f;
    fx_open(&f, base_config());
    ck_assert_int_eq(post(&f, message(201, "incoming", contact_sender(), "pending"))->status, 200);
    const koko_msg *m = last_submitted(&f);
    ck_assert_str_eq(m->msg_id, "201");
    ck_assert_str_eq(m->conversation_id, "5");
    ck_assert_str_eq(m->contact_id, "7");
    ck_assert_str_eq(m->inbox, "1");
    ck_assert_str_eq(m->text, "Mennyi a kiszállítás?");
    ck_assert_int_eq(m->created_at, 1714557600);
    ck_assert_int_eq(m->kind, KOKO_MSG_INCOMING);
    ck_assert_int_eq(m->sender, KOKO_SENDER_CONTACT);
    ck_assert_int_eq(m->is_private, 0);
    ck_assert_int_eq(m->auto_reply, 0);
    ck_assert_ptr_null(m->skip);
    ck_assert_ptr_null(m->handoff);
    ck_assert_ptr_null(m->subject);
    ck_assert_uint_eq(m->quiet_ms, 1500);
    ck_assert_uint_eq(m->n_attachments, 0);
    char *meta = json_dumps(m->meta, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(meta, "{\"account_id\":1,\"contact_id\":\"7\",\"conversation_id\":\"5\",\"inbox_id\":\"1\","
                           "\"labels\":[\"vip\"],\"message_id\":\"201\"}");
    free(meta);
    fx_close(&f);
}
END_TEST

START_TEST(map_senders_and_kinds)
{
    fx f;
    fx_open(&f, base_config());
    struct {
        const char *type, *sender_type;
        int priv;
        koko_msg_kind kind;
        koko_sender sender;
    } cases[] = {
        {"outgoing", "user", 0, KOKO_MSG_OUTGOING, KOKO_SENDER_AGENT},
        {"outgoing", "agent_bot", 0, KOKO_MSG_OUTGOING, KOKO_SENDER_BOT},
        {"outgoing", "captain_assistant", 0, KOKO_MSG_OUTGOING, KOKO_SENDER_BOT},
        {"outgoing", "user", 1, KOKO_MSG_OUTGOING, KOKO_SENDER_AGENT},
        {"activity", NULL, 0, KOKO_MSG_ACTIVITY, KOKO_SENDER_CONTACT},
        {"template", "user", 0, KOKO_MSG_OTHER, KOKO_SENDER_AGENT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *p = message(300 + (long)i, cases[i].type,
                            cases[i].sender_type ? typed_sender(cases[i].sender_type) : NULL, "pending");
        json_object_set_new(p, "private", json_boolean(cases[i].priv));
        ck_assert_int_eq(post(&f, p)->status, 200);
        const koko_msg *m = last_submitted(&f);
        ck_assert_int_eq(m->kind, cases[i].kind);
        ck_assert_int_eq(m->sender, cases[i].sender);
        ck_assert_int_eq(m->is_private, cases[i].priv);
        /* the customer key stays the contact's, also on agents' messages */
        ck_assert_str_eq(m->contact_id, "7");
    }
    fx_close(&f);
}
END_TEST

START_TEST(map_skip_reasons)
{
    fx f;
    json_t *cfg = base_config();
    json_object_set_new(cfg, "inboxes", json_pack("[i]", 1));
    fx_open(&f, cfg);
    post(&f, message(401, "incoming", contact_sender(), "open"));
    ck_assert_str_eq(last_submitted(&f)->skip, "conversation status open is not in reply_in");
    json_t *p = message(402, "incoming", contact_sender(), "pending");
    json_object_set_new(json_object_get(p, "inbox"), "id", json_integer(9));
    post(&f, p);
    ck_assert_str_eq(last_submitted(&f)->skip, "inbox 9 is not in inboxes");
    fx_close(&f);

    cfg = base_config();
    json_object_set_new(cfg, "reply_in", json_pack("[s,s]", "open", "pending"));
    json_object_set_new(cfg, "quiet_ms", json_integer(0));
    fx_open(&f, cfg);
    post(&f, message(403, "incoming", contact_sender(), "open"));
    ck_assert_ptr_null(last_submitted(&f)->skip);
    ck_assert_uint_eq(last_submitted(&f)->quiet_ms, 0);
    post(&f, message(404, "incoming", contact_sender(), "snoozed"));
    ck_assert_str_eq(last_submitted(&f)->skip, "conversation status snoozed is not in reply_in");
    fx_close(&f);
}
END_TEST

START_TEST(map_email)
{
    fx f;
    fx_open(&f, base_config());
    json_t *p = message(501, "incoming", contact_sender(), "pending");
    json_object_set_new(p, "content_type", json_string("incoming_email"));
    json_object_set_new(p, "content_attributes",
                        json_pack("{s:{s:[s],s:s,s:{s:s,s:s},s:s,s:b}}", "email", "from", "MAILER-DAEMON@mx.example",
                                  "subject", "Undelivered Mail Returned to Sender", "headers", "Auto-Submitted",
                                  "auto-replied", "Return-Path", "<>", "content_type",
                                  "multipart/report; report-type=delivery-status", "auto_reply", 1));
    post(&f, p);
    const koko_msg *m = last_submitted(&f);
    ck_assert_str_eq(m->subject, "Undelivered Mail Returned to Sender");
    ck_assert_str_eq(m->from, "MAILER-DAEMON@mx.example");
    ck_assert_str_eq(m->content_type, "multipart/report; report-type=delivery-status");
    ck_assert_int_eq(m->auto_reply, 1);
    ck_assert_str_eq(json_string_value(json_object_get(m->headers, "Auto-Submitted")), "auto-replied");
    ck_assert_str_eq(json_string_value(json_object_get(m->headers, "Return-Path")), "<>");

    /* subject from the conversation, auto_reply flags from the other two places */
    p = message(502, "incoming", contact_sender(), "pending");
    json_object_set_new(json_object_get(json_object_get(p, "conversation"), "additional_attributes"), "mail_subject",
                        json_string("Házon kívül"));
    json_object_set_new(json_object_get(json_object_get(p, "conversation"), "additional_attributes"), "auto_reply",
                        json_true());
    post(&f, p);
    m = last_submitted(&f);
    ck_assert_str_eq(m->subject, "Házon kívül");
    ck_assert_int_eq(m->auto_reply, 1);
    ck_assert_ptr_null(m->headers);
    p = message(503, "incoming", contact_sender(), "pending");
    json_object_set_new(p, "additional_attributes", json_pack("{s:b}", "auto_reply", 1));
    post(&f, p);
    ck_assert_int_eq(last_submitted(&f)->auto_reply, 1);
    fx_close(&f);
}
END_TEST

static json_t *attachment(const char *type, const char *url)
{
    return json_pack("{s:i,s:s,s:s,s:s,s:i}", "id", 1, "file_type", type, "extension", "ogg", "data_url", url,
                     "file_size", 23117);
}

START_TEST(map_attachments)
{
    fx f;
    fx_open(&f, base_config());
    char url[256];
    snprintf(url, sizeof url, "%s/rails/active_storage/blobs/redirect/abc/voice.ogg", fake_url);
    json_t *p = message(601, "incoming", contact_sender(), "pending");
    json_object_set_new(p, "content", json_null());
    json_object_set_new(p, "attachments", json_pack("[o]", attachment("audio", url)));
    post(&f, p);
    const koko_msg *m = last_submitted(&f);
    ck_assert_str_eq(m->text, "");
    ck_assert_uint_eq(m->n_attachments, 1);
    ck_assert_str_eq(m->attachments[0].kind, "audio");
    ck_assert_str_eq(m->attachments[0].url, url);
    ck_assert_uint_eq(m->attachments[0].size, 23117);
    ck_assert_str_eq(m->handoff, "voice note: no transcription tool configured");

    /* a file elsewhere is never handed on; an image is acknowledged by default */
    p = message(602, "incoming", contact_sender(), "pending");
    json_object_set_new(p, "attachments",
                        json_pack("[o]", attachment("image", "https://evil.example/rails/active_storage/x.jpg")));
    post(&f, p);
    m = last_submitted(&f);
    ck_assert_ptr_null(m->attachments[0].url);
    ck_assert_ptr_null(m->handoff);
    ck_assert_int_ge(fakehost_log_find(f.fh, "is not on 127.0.0.1"), 0);
    fx_close(&f);

    json_t *cfg = base_config();
    json_object_set_new(cfg, "attachments", json_string("handoff"));
    fx_open(&f, cfg);
    p = message(603, "incoming", contact_sender(), "pending");
    json_object_set_new(p, "attachments", json_pack("[o]", attachment("image", url)));
    post(&f, p);
    ck_assert_str_eq(last_submitted(&f)->handoff, "attachment (image) received and attachments: handoff is configured");
    fx_close(&f);
}
END_TEST

/* ---- conversation events ---- */

static json_t *conv_event(const char *event, const char *status, int assignee, const char *atype)
{
    json_t *a =
        assignee ? json_pack("{s:i,s:s,s:s}", "id", assignee, "name", "Nagy Péter", "type", "user") : json_null();
    return json_pack("{s:s,s:i,s:i,s:s,s:{s:o,s:s?,s:n},s:[]}", "event", event, "id", 5, "inbox_id", 1, "status",
                     status, "meta", "assignee", a, "assignee_type", atype, "team", "labels");
}

START_TEST(conversation_events)
{
    fx f;
    fx_open(&f, base_config());
    const fakehost_response *r = post(&f, conv_event("conversation_status_changed", "open", 3, "User"));
    ck_assert_str_eq(r->body, "{\"status\":\"ok\",\"event\":\"conversation_status_changed\",\"ownership\":\"human\"}");
    r = post(&f, conv_event("conversation_updated", "open", 3, NULL));
    ck_assert_int_eq(r->status, 200);
    post(&f, conv_event("conversation_status_changed", "resolved", 0, NULL));
    post(&f, conv_event("conversation_status_changed", "pending", 0, NULL));
    post(&f, conv_event("conversation_resolved", "resolved", 3, "User"));
    ck_assert_uint_eq(fakehost_conversation_count(f.fh), 5);
    koko_conv_event want[] = {KOKO_CONV_HUMAN, KOKO_CONV_HUMAN, KOKO_CONV_RESOLVED, KOKO_CONV_BOT, KOKO_CONV_RESOLVED};
    for (size_t i = 0; i < 5; i++) {
        ck_assert_str_eq(fakehost_conversation_get(f.fh, i)->conversation_id, "5");
        ck_assert_int_eq(fakehost_conversation_get(f.fh, i)->ev, want[i]);
    }
    ck_assert_str_eq(fakehost_conversation_get(f.fh, 0)->detail, "open and assigned to agent 3 (Nagy Péter)");

    /* no change of owner: open without a human, a bot assignee, an update that says pending */
    r = post(&f, conv_event("conversation_status_changed", "open", 0, NULL));
    ck_assert_str_eq(r->body, "{\"status\":\"ignored\",\"event\":\"conversation_status_changed\","
                              "\"reason\":\"no ownership change\"}");
    post(&f, conv_event("conversation_opened", "open", 9, "AgentBot"));
    post(&f, conv_event("conversation_updated", "pending", 0, NULL));
    post(&f, conv_event("conversation_created", "pending", 0, NULL));
    ck_assert_uint_eq(fakehost_conversation_count(f.fh), 5);
    ck_assert_uint_eq(fakehost_submit_count(f.fh), 0);
    fx_close(&f);
}
END_TEST

/* ---- deliver ---- */

typedef struct outcome {
    int calls;
    koko_status st;
    char error[512];
} outcome;

static void on_delivered(koko_status st, const char *error, void *arg)
{
    outcome *o = arg;
    o->calls++;
    o->st = st;
    snprintf(o->error, sizeof o->error, "%s", error ? error : "");
}

static koko_msg reply_msg(json_t **meta)
{
    *meta = json_pack("{s:i,s:s,s:s,s:s,s:[s]}", "account_id", 1, "conversation_id", "5", "message_id", "201",
                      "inbox_id", "1", "labels", "vip");
    koko_msg m = {
        .size = sizeof m, .msg_id = "201", .conversation_id = "5", .text = "Mennyi a kiszállítás?", .meta = *meta};
    return m;
}

static outcome deliver(fx *f, const koko_reply *r, unsigned ms)
{
    outcome o = {0};
    const koko_channel_ops *ops = plug->ops;
    ops->deliver(f->state, r, on_delivered, &o);
    ck_assert_int_eq(o.calls, 0); /* never from inside deliver() */
    volatile int *flag = &o.calls;
    ck_assert_int_eq(fakehost_run_until(f->fh, flag, ms), 0);
    return o;
}

START_TEST(deliver_reply_and_typing)
{
    fx f;
    fx_open(&f, base_config());
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    const koko_channel_ops *ops = plug->ops;
    ops->typing(f.state, &m, 1);
    ops->typing(f.state, &m, 0);
    fakehost_run(f.fh, 3000);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "A kiszállítás 1500 Ft.", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 3000);
    ck_assert_int_eq(o.st, KOKO_OK);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST toggle_typing_status 200; POST toggle_typing_status 200; POST messages 200");
    free(s);
    json_t *b = call_body(0);
    ck_assert_str_eq(json_string_value(json_object_get(b, "typing_status")), "on");
    json_decref(b);
    b = call_body(2);
    char *body = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(body, "{\"content\":\"A kiszállítás 1500 Ft.\",\"message_type\":\"outgoing\",\"private\":false,"
                           "\"source_id\":\"koko:chatwoot:201\"}");
    free(body);
    json_decref(b);
    json_t *c = calls();
    ck_assert(json_is_true(json_object_get(json_array_get(c, 2), "token_ok")));
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(c, 2), "path")),
                     "/api/v1/accounts/1/conversations/5/messages");
    json_decref(c);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(typing_in_order)
{
    fx f;
    fx_open(&f, base_config());
    /* a slow "on" must not be overtaken by the "off" right after it */
    fault("{\"path_regex\":\"/toggle_typing_status$\",\"delay_ms\":300}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    const koko_channel_ops *ops = plug->ops;
    ops->typing(f.state, &m, 1);
    ops->typing(f.state, &m, 0);
    fakehost_run(f.fh, 3000);
    json_t *b0 = call_body(0), *b1 = call_body(1);
    ck_assert_str_eq(json_string_value(json_object_get(b0, "typing_status")), "on");
    ck_assert_str_eq(json_string_value(json_object_get(b1, "typing_status")), "off");
    json_decref(b0);
    json_decref(b1);
    /* states asked for while one is in flight: only the latest is sent */
    fake_ok("POST", "/_reset", NULL);
    fake_ok("POST", "/_conversations", "{\"id\":5}");
    ops->typing(f.state, &m, 1);
    ops->typing(f.state, &m, 0);
    ops->typing(f.state, &m, 1);
    ops->typing(f.state, &m, 0);
    fakehost_run(f.fh, 3000);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST toggle_typing_status 200; POST toggle_typing_status 200");
    free(s);
    b1 = call_body(1);
    ck_assert_str_eq(json_string_value(json_object_get(b1, "typing_status")), "off");
    json_decref(b1);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(deliver_handoff_sequence)
{
    fx f;
    json_t *cfg = base_config();
    json_object_set_new(cfg, "handoff",
                        json_pack("{s:i,s:i,s:[s,s]}", "team_id", 2, "assignee_id", 3, "labels", "kezi", "vip"));
    fx_open(&f, cfg);
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    json_t *sources =
        json_pack("[{s:s,s:s,s:f}]", "file", "kb/demo/pricing.md", "heading", "Árak › Kiszállás", "score", 2.5);
    koko_reply r = {.size = sizeof r,
                    .msg = &m,
                    .text = "Kollégánk hamarosan válaszol.",
                    .handoff = 1,
                    .handoff_reason = "low confidence (0.21)",
                    .draft = "Talán 1500 Ft.",
                    .sources = sources,
                    .confidence = 0.21,
                    .idempotency_key = "chatwoot:201",
                    .question = "Mennyi a kiszállítás?"};
    outcome o = deliver(&f, &r, 5000);
    ck_assert_msg(o.st == KOKO_OK, "%s", o.error);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST toggle_status 200; POST assignments 200; POST assignments 200; POST labels 200; "
                        "POST messages 200; POST messages 200");
    free(s);
    json_t *b = call_body(0);
    ck_assert_str_eq(json_string_value(json_object_get(b, "status")), "open");
    json_decref(b);
    b = call_body(1);
    ck_assert_int_eq(json_integer_value(json_object_get(b, "team_id")), 2);
    json_decref(b);
    b = call_body(2);
    ck_assert_int_eq(json_integer_value(json_object_get(b, "assignee_id")), 3);
    json_decref(b);
    b = call_body(3);
    char *labels = json_dumps(json_object_get(b, "labels"), JSON_COMPACT);
    ck_assert_str_eq(labels, "[\"vip\",\"kezi\"]"); /* merged, not replaced */
    free(labels);
    json_decref(b);
    b = call_body(4);
    ck_assert(json_is_true(json_object_get(b, "private")));
    const char *note = json_string_value(json_object_get(b, "content"));
    ck_assert_ptr_nonnull(strstr(note, "Ok / Reason: low confidence (0.21)"));
    ck_assert_ptr_nonnull(strstr(note, "Mennyi a kiszállítás?"));
    ck_assert_ptr_nonnull(strstr(note, "Talán 1500 Ft."));
    ck_assert_ptr_nonnull(strstr(note, "- kb/demo/pricing.md › Árak › Kiszállás (2.50)"));
    ck_assert_str_eq(json_string_value(json_object_get(b, "source_id")), "koko:chatwoot:201:note");
    json_decref(b);
    b = call_body(5);
    ck_assert(json_is_false(json_object_get(b, "private")));
    ck_assert_str_eq(json_string_value(json_object_get(b, "content")), "Kollégánk hamarosan válaszol.");
    json_decref(b);
    json_decref(sources);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(deliver_handoff_custom_note_no_text)
{
    fx f;
    json_t *cfg = base_config();
    json_object_set_new(cfg, "handoff", json_pack("{s:s}", "note", "Átadva: {reason} | {question} | {sources}"));
    fx_open(&f, cfg);
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r,
                    .msg = &m,
                    .text = "",
                    .handoff = 1,
                    .handoff_reason = "route handoff",
                    .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_OK);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST toggle_status 200; POST messages 200");
    free(s);
    json_t *b = call_body(1);
    ck_assert_str_eq(json_string_value(json_object_get(b, "content")),
                     "Átadva: route handoff | Mennyi a kiszállítás? | —");
    json_decref(b);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

/* ---- retries ---- */

static double now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
}

static size_t stored_messages(void)
{
    json_t *c = fake_call("GET", "/_conversations", NULL);
    size_t n = json_array_size(json_object_get(json_array_get(c, 0), "messages"));
    json_decref(c);
    return n;
}

START_TEST(retry_5xx_checks_before_reposting)
{
    fx f;
    fx_open(&f, base_config());
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"status\":500,\"count\":1}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_OK);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST messages 500; GET messages 200; POST messages 200");
    free(s);
    ck_assert_uint_eq(stored_messages(), 1);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(lost_response_never_double_posts)
{
    fx f;
    fx_open(&f, base_config());
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"drop_after_create\":true}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_OK);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST messages dropped; GET messages 200");
    free(s);
    ck_assert_uint_eq(stored_messages(), 1);
    ck_assert_int_ge(fakehost_log_find(f.fh, "already posted"), 0);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(retry_timeout)
{
    fx f;
    json_t *cfg = base_config();
    json_object_set_new(cfg, "timeout_ms", json_integer(300));
    fx_open(&f, cfg);
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"status\":504,\"delay_ms\":800}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_uint_eq(stored_messages(), 1);
    ck_assert_int_ge(fakehost_log_find(f.fh, "attempt 2 of 4"), 0);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(retry_429_honours_retry_after)
{
    fx f;
    fx_open(&f, base_config());
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"status\":429,\"retry_after\":1}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    double t0 = now_ms();
    outcome o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_double_ge(now_ms() - t0, 950.0);
    char *s = call_summary();
    ck_assert_str_eq(s, "POST messages 429; POST messages 200"); /* a 429 created nothing: no check */
    free(s);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(no_retry_on_4xx_and_give_up)
{
    fx f;
    fx_open(&f, base_config());
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"status\":422}");
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 3000);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "reply: POST /api/v1/accounts/1/conversations/5/messages: HTTP 422"));
    char *s = call_summary();
    ck_assert_str_eq(s, "POST messages 422");
    free(s);

    /* an unknown conversation: 404, not retried */
    fake_ok("POST", "/_reset", NULL);
    json_object_set_new(meta, "conversation_id", json_string("77"));
    o = deliver(&f, &r, 3000);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "HTTP 404"));

    /* Chatwoot down for good: max_attempts POSTs (each retry checked first), then TEMPORARY */
    fake_ok("POST", "/_reset", NULL);
    fake_ok("POST", "/_conversations", "{\"id\":5}");
    json_object_set_new(meta, "conversation_id", json_string("5"));
    fault("{\"path_regex\":\"/messages$\",\"status\":503,\"count\":100}");
    o = deliver(&f, &r, 5000);
    ck_assert_int_eq(o.st, KOKO_ERR_TEMPORARY);
    ck_assert_ptr_nonnull(strstr(o.error, "gave up after 4 attempts"));
    s = call_summary();
    ck_assert_str_eq(s, "POST messages 503; GET messages 503; GET messages 503; GET messages 503");
    free(s);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(bad_token_is_permanent)
{
    fx f;
    json_t *cfg = base_config();
    json_object_set_new(cfg, "api_token", json_string("wrong-token"));
    fx_open(&f, cfg);
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = deliver(&f, &r, 3000);
    ck_assert_int_eq(o.st, KOKO_ERR_PERMANENT);
    ck_assert_ptr_nonnull(strstr(o.error, "HTTP 401"));
    ck_assert_int_ge(fakehost_log_find(f.fh, "Chatwoot refused api_token"), 0);
    ck_assert_int_lt(fakehost_log_find(f.fh, "wrong-token"), 0);
    json_decref(meta);
    fx_close(&f);
}
END_TEST

START_TEST(stop_drains_deliveries)
{
    fx f;
    fx_open(&f, base_config());
    fault("{\"path_regex\":\"/messages$\",\"method\":\"POST\",\"status\":500,\"count\":2}");
    json_t *meta;
    koko_msg m = reply_msg(&meta);
    koko_reply r = {.size = sizeof r, .msg = &m, .text = "Szia!", .idempotency_key = "chatwoot:201"};
    outcome o = {0};
    const koko_channel_ops *ops = plug->ops;
    ops->deliver(f.state, &r, on_delivered, &o);
    plug->stop(f.state, fakehost_drained);
    ck_assert_uint_eq(fakehost_drained_count(f.fh), 0);
    /* webhooks are refused while stopping */
    char *body = dump(message(901, "incoming", contact_sender(), "pending"));
    ck_assert_int_eq(post_ex(&f, body, 0, 0, NULL, NULL)->status, 503);
    free(body);
    fakehost_run(f.fh, 5000);
    ck_assert_int_eq(o.calls, 1);
    ck_assert_int_eq(o.st, KOKO_OK);
    ck_assert_uint_eq(fakehost_drained_count(f.fh), 1);
    json_decref(meta);
    fx_close(&f);

    /* nothing in flight: drained at once */
    fx_open(&f, base_config());
    plug->stop(f.state, fakehost_drained);
    ck_assert_uint_eq(fakehost_drained_count(f.fh), 1);
    fx_close(&f);
}
END_TEST

/* ---- main ---- */

int main(void)
{
    const char *so = getenv("KOKO_CHATWOOT_SO");
    char path[1024];
    if (!so) {
        snprintf(path, sizeof path, "%s/plugins/chatwoot/.libs/chatwoot.so",
                 getenv("KOKO_BUILDDIR") ? getenv("KOKO_BUILDDIR") : ".");
        so = path;
    }
    char err[1024];
    plug = fakehost_load_plugin(so, &plug_handle, err, sizeof err);
    if (!plug) {
        fprintf(stderr, "test_chatwoot: %s\n", err);
        return 1;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (fakesrv_start("fake_chatwoot.py", NULL, &fake_pid, fake_url, sizeof fake_url) != 0) {
        fakesrv_stop(&fake_pid);
        return 1;
    }

    Suite *s = suite_create("chatwoot");
    TCase *tc = tcase_create("config");
    tcase_add_test(tc, descriptor);
    tcase_add_test(tc, validate_ok_and_required);
    tcase_add_test(tc, validate_messages);
    tcase_add_test(tc, init_refuses_bad_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("webhook");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, signature_good_bad_stale_missing);
    tcase_add_test(tc, unsigned_without_secret_and_window);
    tcase_add_test(tc, malformed_ignored_duplicate_rejected);
    tcase_add_test(tc, map_contact_message);
    tcase_add_test(tc, map_senders_and_kinds);
    tcase_add_test(tc, map_skip_reasons);
    tcase_add_test(tc, map_email);
    tcase_add_test(tc, map_attachments);
    tcase_add_test(tc, conversation_events);
    suite_add_tcase(s, tc);
    tc = tcase_create("deliver");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, deliver_reply_and_typing);
    tcase_add_test(tc, typing_in_order);
    tcase_add_test(tc, deliver_handoff_sequence);
    tcase_add_test(tc, deliver_handoff_custom_note_no_text);
    tcase_add_test(tc, retry_5xx_checks_before_reposting);
    tcase_add_test(tc, lost_response_never_double_posts);
    tcase_add_test(tc, retry_timeout);
    tcase_add_test(tc, retry_429_honours_retry_after);
    tcase_add_test(tc, no_retry_on_4xx_and_give_up);
    tcase_add_test(tc, bad_token_is_permanent);
    tcase_add_test(tc, stop_drains_deliveries);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    fakesrv_stop(&fake_pid);
    curl_global_cleanup();
    dlclose(plug_handle);
    return failed ? 1 : 0;
}
