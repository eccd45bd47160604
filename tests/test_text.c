/*
 * test_text.c - unit tests for core/text.c: UTF-8 decoding, Hungarian/German case and
 * accent folding, the tokenizer, stop words, stemming into shared terms, and the
 * stop-word language guess.
 */
#include "kokoconf.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

static char *norm(const char *s, int unaccent)
{
    static char buf[256];
    text_normalize(s, strlen(s), unaccent, buf, sizeof buf);
    return buf;
}

START_TEST(test_utf8)
{
    size_t adv;
    ck_assert_uint_eq(text_utf8_decode("\xC5\x91", 2, &adv), 0x151); /* ő */
    ck_assert_uint_eq(adv, 2);
    ck_assert_uint_eq(text_utf8_decode("\xE2\x80\xBA", 3, &adv), 0x203A);
    ck_assert_uint_eq(text_utf8_decode("\xF0\x9F\x98\x80", 4, &adv), 0x1F600);
    ck_assert_uint_eq(adv, 4);
    ck_assert_uint_eq(text_utf8_decode("\xC0\xAF", 2, &adv), TEXT_BAD_CP); /* overlong */
    ck_assert_uint_eq(adv, 1);
    ck_assert_uint_eq(text_utf8_decode("\xED\xA0\x80", 3, &adv), TEXT_BAD_CP); /* surrogate */
    ck_assert_uint_eq(text_utf8_decode("\xC5", 1, &adv), TEXT_BAD_CP);         /* truncated */
    ck_assert_int_eq(text_utf8_valid("árvíztűrő tükörfúrógép", strlen("árvíztűrő tükörfúrógép")), 1);
    ck_assert_int_eq(text_utf8_valid("ab\xFF", 3), 0);
    char out[4];
    ck_assert_uint_eq(text_utf8_encode(0x171, out), 2);
    ck_assert_int_eq(memcmp(out, "ű", 2), 0);
}
END_TEST

START_TEST(test_fold_hungarian)
{
    ck_assert_uint_eq(text_fold_cp(0x150), 0x151); /* Ő -> ő */
    ck_assert_uint_eq(text_fold_cp(0x170), 0x171); /* Ű -> ű */
    ck_assert_uint_eq(text_fold_cp(0xC1), 0xE1);   /* Á -> á */
    ck_assert_uint_eq(text_fold_cp(0xC9), 0xE9);   /* É -> é */
    ck_assert_uint_eq(text_fold_cp(0xD7), 0xD7);   /* × stays */
    ck_assert_uint_eq(text_fold_cp(0x178), 0xFF);  /* Ÿ -> ÿ */
    ck_assert_uint_eq(text_fold_cp(0x141), 0x142); /* Ł -> ł */
    ck_assert_uint_eq(text_fold_cp(0x17D), 0x17E); /* Ž -> ž */
    ck_assert_uint_eq(text_fold_cp(0x410), 0x430); /* Cyrillic А */
    ck_assert_str_eq(norm("ÁRVÍZTŰRŐ TÜKÖRFÚRÓGÉP", 0), "árvíztűrő tükörfúrógép");
    ck_assert_str_eq(norm("ÁRVÍZTŰRŐ TÜKÖRFÚRÓGÉP", 1), "arvizturo tukorfurogep");
    ck_assert_str_eq(norm("Größe ÄÖÜ", 1), "grosse aou");
    ck_assert_str_eq(norm("Ça Ñandú Łódź", 1), "ca nandu lodz");
    ck_assert_str_eq(norm("bad\xFFok", 0), "badok");
}
END_TEST

START_TEST(test_words)
{
    const char *s = "Szia! Mennyibe kerül a kiszállás?? 9 900 Ft, e-mail: x@y.hu 🙂";
    size_t pos = 0, st, wl, n, i = 0;
    char w[TEXT_WORD_MAX + 1];
    const char *want[] = {"szia", "mennyibe", "kerül", "a", "kiszállás", "9", "900", "ft", "e", "mail", "x", "y", "hu"};
    while ((n = text_next_word(s, strlen(s), &pos, &st, &wl, w, sizeof w)) > 0) {
        ck_assert_uint_lt(i, sizeof want / sizeof *want);
        ck_assert_str_eq(w, want[i]);
        ck_assert_uint_eq(strlen(w), n);
        i++;
    }
    ck_assert_uint_eq(i, sizeof want / sizeof *want);
}
END_TEST

START_TEST(test_stopwords)
{
    ck_assert_int_eq(text_is_stopword("hu", "és", strlen("és")), 1);
    ck_assert_int_eq(text_is_stopword("hu", "kiszállás", strlen("kiszállás")), 0);
    ck_assert_int_eq(text_is_stopword("en", "the", 3), 1);
    ck_assert_int_eq(text_is_stopword("en", "price", 5), 0);
    ck_assert_int_eq(text_is_stopword("de", "und", 3), 1);
    ck_assert_int_eq(text_is_stopword("fr", "le", 2), 0);
    const char *langs[] = {"hu", "en"};
    text_analyzer *a = text_analyzer_new(langs, 2, NULL, 0);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(text_analyzer_is_stop(a, "kerem", 5), 1); /* kérem without accents */
    ck_assert_int_eq(text_analyzer_is_stop(a, "please", 6), 1);
    ck_assert_int_eq(text_analyzer_is_stop(a, "und", 3), 0); /* German not enabled */
    ck_assert_int_eq(text_analyzer_is_stop(a, "mosógép", strlen("mosógép")), 0);
    text_analyzer_free(a);
}
END_TEST

/* 1 when word a and word b share at least one term (stemmed in all languages). */
static int share_term(text_analyzer *a, const char *x, const char *y)
{
    char bx[256], by[256];
    const char *tx[TEXT_MAX_TERMS], *ty[TEXT_MAX_TERMS];
    size_t nx = text_terms(a, -1, x, strlen(x), bx, sizeof bx, tx, TEXT_MAX_TERMS);
    size_t ny = text_terms(a, -1, y, strlen(y), by, sizeof by, ty, TEXT_MAX_TERMS);
    for (size_t i = 0; i < nx; i++)
        for (size_t j = 0; j < ny; j++)
            if (!strcmp(tx[i], ty[j]))
                return 1;
    return 0;
}

START_TEST(test_stemming)
{
    const char *langs[] = {"hu", "en", "de"};
    char err[256];
    text_analyzer *a = text_analyzer_new(langs, 3, err, sizeof err);
    ck_assert_ptr_nonnull(a);
    ck_assert_str_eq(err, "");
    ck_assert_uint_eq(text_analyzer_langs(a), 3);
    ck_assert_str_eq(text_analyzer_lang(a, 2), "de");
    /* Hungarian inflections and accent-free spellings meet */
    ck_assert_int_eq(share_term(a, "árak", "arak"), 1);
    ck_assert_int_eq(share_term(a, "mosógépek", "mosogep"), 1);
    ck_assert_int_eq(share_term(a, "kiszállási", "kiszallas"), 1);
    ck_assert_int_eq(share_term(a, "garanciát", "garancia"), 1);
    /* English and German */
    ck_assert_int_eq(share_term(a, "repairs", "repairing"), 1);
    ck_assert_int_eq(share_term(a, "straße", "strasse"), 1);
    ck_assert_int_eq(share_term(a, "mosógép", "hűtő"), 0);
    /* stop words and one-letter words make no terms; numbers stay as they are */
    char buf[256];
    const char *t[TEXT_MAX_TERMS];
    ck_assert_uint_eq(text_terms(a, -1, "és", strlen("és"), buf, sizeof buf, t, TEXT_MAX_TERMS), 0);
    ck_assert_uint_eq(text_terms(a, -1, "x", 1, buf, sizeof buf, t, TEXT_MAX_TERMS), 0);
    ck_assert_uint_eq(text_terms(a, -1, "9900", 4, buf, sizeof buf, t, TEXT_MAX_TERMS), 1);
    ck_assert_str_eq(t[0], "9900");
    /* one language only */
    size_t n = text_terms(a, 0, "árakat", strlen("árakat"), buf, sizeof buf, t, TEXT_MAX_TERMS);
    ck_assert_uint_ge(n, 1);
    ck_assert_str_eq(t[0], "ar");
    text_analyzer_free(a);

    /* a language without a stemmer is reported but still works */
    const char *odd[] = {"xx"};
    a = text_analyzer_new(odd, 1, err, sizeof err);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(strstr(err, "'xx'"));
    n = text_terms(a, -1, "Árak", strlen("Árak"), buf, sizeof buf, t, TEXT_MAX_TERMS);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(t[0], "arak"); /* case- and accent-folded only */
    text_analyzer_free(a);
}
END_TEST

START_TEST(test_guess)
{
    const char *langs[] = {"hu", "en", "de"};
    text_analyzer *a = text_analyzer_new(langs, 3, NULL, 0);
    const char *hu = "mennyibe kerul a kiszallas es mikor tudtok jonni";
    const char *en = "how much is the call out fee and when can you come";
    const char *de = "wie viel kostet die Reparatur und wann kommen Sie";
    ck_assert_int_eq(text_analyzer_guess(a, hu, strlen(hu)), 0);
    ck_assert_int_eq(text_analyzer_guess(a, en, strlen(en)), 1);
    ck_assert_int_eq(text_analyzer_guess(a, de, strlen(de)), 2);
    ck_assert_int_eq(text_analyzer_guess(a, "mosógép", strlen("mosógép")), -1);
    text_analyzer_free(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("text");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_utf8);
    tcase_add_test(tc, test_fold_hungarian);
    tcase_add_test(tc, test_words);
    tcase_add_test(tc, test_stopwords);
    tcase_add_test(tc, test_stemming);
    tcase_add_test(tc, test_guess);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
