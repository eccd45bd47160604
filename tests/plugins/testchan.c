/*
 * tests/plugins/testchan.c — a `channel` test plugin.
 *
 * POST /webhook/<tenant>/testchan {"id","conversation","text"} submits a
 * message and answers 200 {"status":"accepted"|"duplicate"} once the host
 * has queued it. Replies the host delivers are kept; POST
 * /webhook/<tenant>/testchan-replies returns them as a JSON array.
 */
#include <stdlib.h>
#include <string.h>

#include "koko/host.h"
#include "koko/plugin.h"

typedef struct chan {
    const koko_host *host;
    koko_instance *inst;
    json_t *replies;
    int typing_on, typing_off;
} chan;

typedef struct ack {
    chan *c;
    koko_request *req;
} ack;

static void on_submitted(koko_submit_status st, const char *error, void *arg)
{
    ack *a = arg;
    if (st == KOKO_SUBMIT_REJECTED) {
        json_t *e = json_pack("{s:s}", "error", error ? error : "rejected");
        char *s = json_dumps(e, JSON_COMPACT);
        a->c->host->respond(a->req, 503, s);
        free(s);
        json_decref(e);
    } else {
        a->c->host->respond(a->req, 200, st == KOKO_SUBMIT_DUPLICATE ? "{\"status\":\"duplicate\"}"
                                                                      : "{\"status\":\"accepted\"}");
    }
    free(a);
}

static void on_webhook(koko_request *req, void *arg)
{
    chan *c = arg;
    size_t len;
    const char *body = c->host->req_body(req, &len);
    json_error_t je;
    json_t *doc = json_loadb(body, len, 0, &je);
    const char *id = json_string_value(json_object_get(doc, "id"));
    const char *conv = json_string_value(json_object_get(doc, "conversation"));
    const char *text = json_string_value(json_object_get(doc, "text"));
    if (!doc || !id || !conv || !text) {
        c->host->respond(req, 400, "{\"error\":\"expected {\\\"id\\\",\\\"conversation\\\",\\\"text\\\"}\"}");
        json_decref(doc);
        return;
    }
    koko_msg m = {.size = sizeof m, .msg_id = id, .conversation_id = conv, .text = text, .meta = doc};
    ack *a = calloc(1, sizeof *a);
    a->c = c;
    a->req = req;
    c->host->submit(c->inst, &m, on_submitted, a);
    json_decref(doc);
}

static void on_replies(koko_request *req, void *arg)
{
    chan *c = arg;
    json_t *doc = json_pack("{s:O,s:i,s:i}", "replies", c->replies, "typing_on", c->typing_on, "typing_off",
                            c->typing_off);
    char *s = json_dumps(doc, JSON_COMPACT);
    c->host->respond(req, 200, s);
    free(s);
    json_decref(doc);
}

static void *chan_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    (void)cfg;
    (void)err;
    (void)errlen;
    chan *c = calloc(1, sizeof *c);
    c->host = host;
    c->inst = inst;
    c->replies = json_array();
    host->route_add(inst, NULL, on_webhook, c);
    host->route_add(inst, "testchan-replies", on_replies, c);
    return c;
}

typedef struct delivery {
    koko_deliver_fn done;
    void *arg;
} delivery;

static void delivered(void *arg)
{
    delivery *d = arg;
    d->done(KOKO_OK, NULL, d->arg);
    free(d);
}

static void chan_deliver(void *state, const koko_reply *r, koko_deliver_fn done, void *arg)
{
    chan *c = state;
    json_array_append_new(c->replies, json_pack("{s:s,s:s,s:s,s:b,s:s}", "conversation", r->msg->conversation_id,
                                                "msg_id", r->msg->msg_id, "text", r->text ? r->text : "", "handoff",
                                                r->handoff, "idempotency_key", r->idempotency_key));
    delivery *d = malloc(sizeof *d);
    d->done = done;
    d->arg = arg;
    c->host->timer_start(c->inst, 0, delivered, d);
}

static void chan_typing(void *state, const koko_msg *m, int on)
{
    (void)m;
    chan *c = state;
    if (on)
        c->typing_on++;
    else
        c->typing_off++;
}

static void chan_destroy(void *state)
{
    chan *c = state;
    json_decref(c->replies);
    free(c);
}

static const koko_channel_ops ops = {.size = sizeof ops, .deliver = chan_deliver, .typing = chan_typing};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR, .abi_minor = KOKO_ABI_MINOR, .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE, .kind = KOKO_KIND_CHANNEL, .name = "testchan", .version = "1",
    .description = "test channel: webhook in, replies kept in memory", .init = chan_init,
    .destroy = chan_destroy, .ops = &ops,
};
