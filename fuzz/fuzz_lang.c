/*
 * fuzz_lang.c - libFuzzer harness for lang_detect and lang_choose (core/lang.c).
 *
 * Every customer message reaches lang_detect unfiltered, so arbitrary bytes (invalid
 * UTF-8, NULs, huge inputs) must never crash or read out of bounds. The input is passed as
 * an exact-size, unterminated buffer; the detector is built once from the system
 * fingerprints (Debian libexttextcat-data).
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Icore fuzz/fuzz_lang.c core/lang.c
 *        $(pkg-config --cflags --libs libexttextcat)
 */
#include "lang.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static lang_detector *fuzz_ld;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512];
    (void)argc;
    (void)argv;
    fuzz_ld = lang_new(NULL, NULL, 0, err, sizeof err);
    if (!fuzz_ld) {
        fprintf(stderr, "fuzz_lang: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const tenant[] = {"hu", "en"};
    const char *code = lang_detect(fuzz_ld, (const char *)data, size);
    if (code && strlen(code) != 2)
        abort();
    const char *chosen = lang_choose(fuzz_ld, (const char *)data, size, "en", tenant, 2);
    if (chosen != tenant[0] && chosen != tenant[1])
        abort();
    return 0;
}
