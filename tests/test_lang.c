/*
 * test_lang.c - tests for core/lang.c (language detection and the tenant rule).
 *
 * Accuracy is measured on tests/data/lang_samples.tsv (code<TAB>text, messages written the
 * way customers write: informal, accent-free, typos) with the twelve-language candidate
 * set; every miss is printed. The rest covers the short-message and tenant rules, hostile
 * input (NULL, empty, invalid UTF-8, unterminated buffers) and load errors.
 * Data is found through KOKO_SRCDIR (default ".").
 */
#include "lang.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *const twelve[] = {"hu", "en", "de", "fr", "es", "it",
                                     "ro", "sk", "pl", "cs", "nl", "pt"};

static lang_detector *new_twelve(void)
{
    char err[512] = "";
    lang_detector *ld = lang_new(NULL, twelve, 12, err, sizeof err);
    ck_assert_msg(ld != NULL, "lang_new failed: %s", err);
    return ld;
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* Detects on a heap copy of exactly len bytes, so ASan catches any read past the end. */
static const char *detect_exact(lang_detector *ld, const void *bytes, size_t len)
{
    char *copy = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, bytes, len);
    const char *r = lang_detect(ld, copy, len);
    free(copy);
    return r;
}

START_TEST(test_accuracy_on_samples)
{
    const char *srcdir = getenv("KOKO_SRCDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/lang_samples.tsv", srcdir ? srcdir : ".");
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s (set KOKO_SRCDIR to the source root)", path);

    lang_detector *ld = new_twelve();
    char line[2048];
    int total = 0, right = 0, hu = 0, en = 0, de = 0, other = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *text = strchr(line, '\t');
        if (line[0] == '\0' || line[0] == '#' || !text)
            continue;
        *text++ = '\0';
        ck_assert_msg(utf8_chars(text) >= 20, "sample shorter than 20 characters: %s", text);
        total++;
        hu += strcmp(line, "hu") == 0;
        en += strcmp(line, "en") == 0;
        de += strcmp(line, "de") == 0;
        other += strcmp(line, "hu") && strcmp(line, "en") && strcmp(line, "de");
        const char *got = lang_detect(ld, text, strlen(text));
        if (got && strcmp(got, line) == 0)
            right++;
        else
            printf("lang miss: want %s got %s: %s\n", line, got ? got : "NULL", text);
    }
    fclose(f);
    lang_free(ld);
    printf("lang accuracy: %d/%d (%.1f %%)\n", right, total, total ? 100.0 * right / total : 0);
    ck_assert_int_ge(hu, 35);
    ck_assert_int_ge(en, 30);
    ck_assert_int_ge(de, 15);
    ck_assert_int_ge(other, 10);
    ck_assert_int_ge(total, 100);
    ck_assert_msg(right * 100 >= total * 95, "accuracy %d/%d below 95 %%", right, total);
}
END_TEST

START_TEST(test_accent_free_hungarian)
{
    lang_detector *ld = new_twelve();
    const char *t = "mennyibe kerul a kiszallas holnap";
    ck_assert_str_eq(lang_detect(ld, t, strlen(t)), "hu");
    t = "Mennyibe kerül a kiszállás holnap";
    ck_assert_str_eq(lang_detect(ld, t, strlen(t)), "hu");
    lang_free(ld);
}
END_TEST

START_TEST(test_short_is_null)
{
    lang_detector *ld = new_twelve();
    const char *shorts[] = {"Szia!", "ok", "köszi", "thx!!", "Danke :)", "👍👍👍👍👍👍👍👍",
                            "0630 123 4567", "   \t\n  "};
    for (size_t i = 0; i < sizeof shorts / sizeof shorts[0]; i++)
        ck_assert_msg(lang_detect(ld, shorts[i], strlen(shorts[i])) == NULL,
                      "expected NULL for \"%s\"", shorts[i]);
    lang_free(ld);
}
END_TEST

START_TEST(test_links_and_digits_ignored)
{
    lang_detector *ld = new_twelve();
    /* After dropping the link, the address and the digits only "Szia" is left. */
    const char *t = "Szia! https://www.example.com/koszonom-szepen-minden-rendben "
                    "info@example-shop.hu 06-30-123-4567 www.example.org/holnap";
    ck_assert_ptr_null(lang_detect(ld, t, strlen(t)));
    t = "nezd meg ezt: https://example.com/en/the-best-english-page-ever mennyibe kerul?";
    ck_assert_str_eq(lang_detect(ld, t, strlen(t)), "hu");
    lang_free(ld);
}
END_TEST

START_TEST(test_choose_short_uses_last_known_then_first)
{
    lang_detector *ld = new_twelve();
    const char *tenant[] = {"hu", "en"};
    ck_assert_ptr_eq(lang_choose(ld, "ok", 2, "en", tenant, 2), tenant[1]);
    ck_assert_ptr_eq(lang_choose(ld, "Szia!", 5, "EN", tenant, 2), tenant[1]);
    /* last_known the tenant does not serve -> first */
    ck_assert_ptr_eq(lang_choose(ld, "ok", 2, "de", tenant, 2), tenant[0]);
    ck_assert_ptr_eq(lang_choose(ld, "ok", 2, NULL, tenant, 2), tenant[0]);
    ck_assert_ptr_eq(lang_choose(ld, "ok", 2, "", tenant, 2), tenant[0]);
    ck_assert_ptr_eq(lang_choose(ld, "ok", 2, "e", tenant, 2), tenant[0]);
    /* NULL/empty text and no detector behave as "cannot tell" */
    ck_assert_ptr_eq(lang_choose(ld, NULL, 10, "en", tenant, 2), tenant[1]);
    ck_assert_ptr_eq(lang_choose(ld, "", 0, "en", tenant, 2), tenant[1]);
    const char *t = "Can I pay by card or is it cash only?";
    ck_assert_ptr_eq(lang_choose(NULL, t, strlen(t), NULL, tenant, 2), tenant[0]);
    lang_free(ld);
}
END_TEST

START_TEST(test_choose_detected_and_unlisted)
{
    lang_detector *ld = new_twelve();
    const char *tenant[] = {"hu-HU", "en-GB"};
    const char *en = "Hello, I would like to book an appointment for next week.";
    const char *hu = "jo napot szeretnek idopontot foglalni jovo hetre";
    const char *de = "Ich möchte gerne einen Termin für nächste Woche buchen";
    /* detected and listed wins over last_known */
    ck_assert_ptr_eq(lang_choose(ld, en, strlen(en), "hu", tenant, 2), tenant[1]);
    ck_assert_ptr_eq(lang_choose(ld, hu, strlen(hu), "en", tenant, 2), tenant[0]);
    /* detected but not served -> the tenant's first, even if last_known is served */
    ck_assert_str_eq(lang_detect(ld, de, strlen(de)), "de");
    ck_assert_ptr_eq(lang_choose(ld, de, strlen(de), "en", tenant, 2), tenant[0]);
    const char *tenant_en_first[] = {"en", "hu"};
    ck_assert_ptr_eq(lang_choose(ld, de, strlen(de), "hu", tenant_en_first, 2),
                     tenant_en_first[0]);
    /* no tenant languages -> NULL */
    ck_assert_ptr_null(lang_choose(ld, en, strlen(en), "en", NULL, 0));
    ck_assert_ptr_null(lang_choose(ld, en, strlen(en), "en", tenant, 0));
    lang_free(ld);
}
END_TEST

START_TEST(test_null_and_empty)
{
    lang_detector *ld = new_twelve();
    ck_assert_ptr_null(lang_detect(ld, NULL, 0));
    ck_assert_ptr_null(lang_detect(ld, NULL, 100));
    ck_assert_ptr_null(lang_detect(ld, "", 0));
    ck_assert_ptr_null(lang_detect(ld, "mennyibe kerul a kiszallas", 0));
    ck_assert_ptr_null(lang_detect(NULL, "mennyibe kerul a kiszallas", 26));
    lang_free(ld);
    lang_free(NULL);
}
END_TEST

START_TEST(test_invalid_utf8_and_unterminated)
{
    lang_detector *ld = new_twelve();
    static const unsigned char bad[][24] = {
        {0xFF, 0xFE, 0xFD, 0xFC, 0x80, 0x81, 0xC0, 0xC1, 0xF5, 0xF8},
        {'k', 'e', 'r', 0xC3},                       /* truncated at the end */
        {0xE2, 0x82, 'a', 0xF0, 0x9F, 0x98},         /* truncated in the middle */
        {0xC0, 0xAF, 0xE0, 0x80, 0xAF, 0xED, 0xA0, 0x80}, /* overlong, surrogate */
        {0xF4, 0x90, 0x80, 0x80, 'x', '\'', 0xE2, 0x80, 0x99}, /* > U+10FFFF, apostrophes */
        {'a', 0, 'b', 0, 'c', 0, 'd', 0, 'e', 0, 'f', 0, 'g', 0, 'h', 0, 'i', 0, 'j', 0, 'k'},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        for (size_t len = 0; len <= sizeof bad[i]; len++)
            (void)detect_exact(ld, bad[i], len);
    }
    /* Valid Hungarian with invalid bytes sprinkled in still reads as Hungarian. */
    const char mixed[] = "mennyibe ker\xfful a kisz\xc3ll\xe1s holnap d\xc3\xa9lel\xc5\x91tt "
                         "es lehet k\xe1rty\xe1val fizetni?";
    const char *r = detect_exact(ld, mixed, sizeof mixed - 1);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r, "hu");
    /* Random bytes, deterministic: must not crash or read out of bounds. */
    uint32_t seed = 12345;
    unsigned char buf[700];
    for (int round = 0; round < 3000; round++) {
        size_t len = (size_t)(round % 700);
        for (size_t k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            unsigned char b = (unsigned char)(seed >> 16);
            /* bias towards letters and UTF-8 lead/continuation bytes */
            buf[k] = (round & 1) ? b : (unsigned char)((b & 0x3F) + ((b & 0x40) ? 0x80 : 0x40));
        }
        (void)detect_exact(ld, buf, len);
    }
    lang_free(ld);
}
END_TEST

START_TEST(test_long_text_scans_prefix)
{
    lang_detector *ld = new_twelve();
    const char *unit = "nem mukodik a kazan tegnap ota hideg a lakas, mikor tudtok jonni? ";
    size_t ulen = strlen(unit), len = 0;
    char *big = malloc(64 * 1024);
    ck_assert_ptr_nonnull(big);
    while (len + ulen <= 64 * 1024) {
        memcpy(big + len, unit, ulen);
        len += ulen;
    }
    ck_assert_str_eq(detect_exact(ld, big, len), "hu");
    free(big);
    lang_free(ld);
}
END_TEST

START_TEST(test_restricted_candidates)
{
    char err[512] = "";
    const char *two[] = {"HU", "en", "hu"}; /* upper case and duplicate accepted */
    lang_detector *ld = lang_new(NULL, two, 3, err, sizeof err);
    ck_assert_msg(ld != NULL, "lang_new failed: %s", err);
    const char *en = "do you take card payments or just cash";
    ck_assert_str_eq(lang_detect(ld, en, strlen(en)), "en");
    const char *de = "Die Heizung funktioniert seit gestern nicht mehr";
    const char *r = lang_detect(ld, de, strlen(de));
    ck_assert(r == NULL || strcmp(r, "hu") == 0 || strcmp(r, "en") == 0);
    lang_free(ld);

    ld = lang_new(NULL, NULL, 0, err, sizeof err); /* default set */
    ck_assert_msg(ld != NULL, "lang_new default failed: %s", err);
    const char *pl = "Piec nie działa od wczoraj, w domu jest bardzo zimno";
    ck_assert_str_eq(lang_detect(ld, pl, strlen(pl)), "pl");
    lang_free(ld);
}
END_TEST

START_TEST(test_load_errors)
{
    char err[512] = "";
    lang_detector *ld = lang_new("/nonexistent/koko-lang-test", NULL, 0, err, sizeof err);
    ck_assert_ptr_null(ld);
    ck_assert_msg(strstr(err, "/nonexistent/koko-lang-test") != NULL, "err: %s", err);
    ck_assert_msg(strstr(err, "libexttextcat-data") != NULL, "err: %s", err);

    char dir[] = "/tmp/koko-lang-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    err[0] = '\0';
    ld = lang_new(dir, NULL, 0, err, sizeof err);
    ck_assert_ptr_null(ld);
    ck_assert_msg(strstr(err, ".lm") != NULL && strstr(err, "libexttextcat-data") != NULL,
                  "err: %s", err);
    ck_assert_int_eq(rmdir(dir), 0);

    const char *badcode[] = {"hu", "hun"};
    err[0] = '\0';
    ck_assert_ptr_null(lang_new(NULL, badcode, 2, err, sizeof err));
    ck_assert_msg(strstr(err, "\"hun\"") != NULL, "err: %s", err);
    const char *nullcode[] = {NULL};
    ck_assert_ptr_null(lang_new(NULL, nullcode, 1, err, sizeof err));
    const char *nolm[] = {"hu", "zz"};
    err[0] = '\0';
    ck_assert_ptr_null(lang_new(NULL, nolm, 2, err, sizeof err));
    ck_assert_msg(strstr(err, "zz.lm") != NULL, "err: %s", err);
    /* no err buffer is allowed */
    ck_assert_ptr_null(lang_new("/nonexistent/koko-lang-test", NULL, 0, NULL, 0));
}
END_TEST

START_TEST(test_speed)
{
    lang_detector *ld = new_twelve();
    const char *base =
        "mennyibe kerul a kiszallas holnap delelott, es lehet kartyaval fizetni vagy csak "
        "keszpenz? koszi elore is a valaszt, ha tudtok irjatok vissza minel hamarabb mert "
        "surgos lenne a dolog nalunk, tegnap ota nem megy a futes sehol a lakasban";
    const size_t lens[] = {20, 50, 100, 200};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        const int calls = 500;
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < calls; i++)
            (void)lang_detect(ld, base, lens[k]);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double us = ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) / 1e3) /
                    calls;
        printf("lang speed: %zu bytes: %.1f us/call\n", lens[k], us);
        /* generous bound: sanitizer builds are several times slower than -O2 */
        ck_assert_msg(us < 5000.0, "lang_detect took %.1f us on %zu bytes", us, lens[k]);
    }
    lang_free(ld);
}
END_TEST

static Suite *lang_suite(void)
{
    Suite *s = suite_create("lang");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_accuracy_on_samples);
    tcase_add_test(tc, test_accent_free_hungarian);
    tcase_add_test(tc, test_short_is_null);
    tcase_add_test(tc, test_links_and_digits_ignored);
    tcase_add_test(tc, test_choose_short_uses_last_known_then_first);
    tcase_add_test(tc, test_choose_detected_and_unlisted);
    tcase_add_test(tc, test_null_and_empty);
    tcase_add_test(tc, test_invalid_utf8_and_unterminated);
    tcase_add_test(tc, test_long_text_scans_prefix);
    tcase_add_test(tc, test_restricted_candidates);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_speed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lang_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
