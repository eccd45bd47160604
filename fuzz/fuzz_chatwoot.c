/*
 * fuzz/fuzz_chatwoot.c — libFuzzer harness for the Chatwoot webhook parser.
 *
 * The chatwoot plugin's sources are compiled into this harness (so the
 * sanitizers and coverage reach the parser) and run in the fake host,
 * with no webhook secret so every input reaches the JSON parsing and the
 * payload → koko_msg mapping, and delivers each input as a webhook body.
 * Whatever the bytes, the plugin must answer (200/400/401/503) and never
 * crash, leak or read out of bounds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakehost.h"

extern const koko_plugin koko_plugin_v1;
static const koko_plugin *plug;
static fakehost *fh;
static void *state;

static void setup(void)
{
    char err[512];
    plug = &koko_plugin_v1;
    fh = fakehost_new("demo", "chatwoot");
    /* a port nothing listens on: deliveries never happen here, parsing does */
    json_t *cfg = json_pack("{s:s,s:i,s:s}", "base_url", "http://127.0.0.1:9", "account_id", 1, "api_token", "t");
    state = plug->init(fakehost_host(), fakehost_instance(fh), cfg, err, sizeof err);
    json_decref(cfg);
    if (!state) {
        fprintf(stderr, "fuzz_chatwoot: init: %s\n", err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (!plug)
        setup();
    char *body = malloc(size + 1);
    memcpy(body, data, size);
    body[size] = '\0';
    fakehost_request(fh, "chatwoot", "POST", body, NULL, NULL);
    fakehost_run(fh, 0);
    free(body);
    return 0;
}
