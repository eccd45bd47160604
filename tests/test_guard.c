/*
 * tests/test_guard.c — every rule of the guard stage (core/guard.c), and the
 * messages it must let through.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"

static koko_msg base(void)
{
    return (koko_msg){.size = sizeof(koko_msg), .msg_id = "1", .conversation_id = "7",
                      .text = "Mennyibe kerül a kiszállás?"};
}

static const char *drop_code(const koko_msg *m)
{
    static guard_verdict v;
    return guard_check(m, &v) ? v.code : NULL;
}

START_TEST(test_ordinary_messages_pass)
{
    koko_msg m = base();
    ck_assert_ptr_null(drop_code(&m));
    m.subject = "Kérdés a mosógép javításáról";
    m.from = "Kiss Anna <anna@example.hu>";
    json_t *h = json_pack("{s:s,s:s}", "Auto-Submitted", "no", "Precedence", "first-class");
    m.headers = h;
    ck_assert_ptr_null(drop_code(&m));
    json_decref(h);
    /* an ABI 1.0 message (smaller struct) is an ordinary customer message */
    koko_msg old = base();
    old.size = (uint32_t)offsetof(koko_msg, kind);
    old.kind = KOKO_MSG_OUTGOING;
    ck_assert_ptr_null(drop_code(&old));
}
END_TEST

START_TEST(test_kinds_and_senders)
{
    koko_msg m = base();
    m.kind = KOKO_MSG_OUTGOING;
    ck_assert_str_eq(drop_code(&m), "outgoing");
    m.sender = KOKO_SENDER_AGENT;
    ck_assert_str_eq(drop_code(&m), "agent_reply");
    m = base();
    m.kind = KOKO_MSG_ACTIVITY;
    ck_assert_str_eq(drop_code(&m), "activity");
    m.kind = KOKO_MSG_OTHER;
    ck_assert_str_eq(drop_code(&m), "not_incoming");
    m = base();
    m.is_private = 1;
    ck_assert_str_eq(drop_code(&m), "private_note");
    m = base();
    m.sender = KOKO_SENDER_AGENT;
    ck_assert_str_eq(drop_code(&m), "from_agent");
    m.sender = KOKO_SENDER_BOT;
    ck_assert_str_eq(drop_code(&m), "from_bot");
    m = base();
    m.skip = "conversation status open is not in reply_in";
    guard_verdict v;
    ck_assert_int_eq(guard_check(&m, &v), 1);
    ck_assert_str_eq(v.code, "channel_skip");
    ck_assert_str_eq(v.detail, "conversation status open is not in reply_in");
    m = base();
    m.auto_reply = 1;
    ck_assert_str_eq(drop_code(&m), "auto_reply");
}
END_TEST

static const char *const auto_subjects[] = {
    "Undelivered Mail Returned to Sender", "Mail delivery failed: returning message to sender",
    "Delivery Status Notification (Failure)", "Returned mail: see transcript", "Message bounced",
    "Out of Office: back on Monday", "Auto-Reply: Re: időpont", "Automatic reply: Your request",
    "MAILER-DAEMON notice", "Kézbesítési hiba: a levél nem kézbesíthető", "Nem kézbesíthető: Re: ajánlat",
    "Házon kívül: Re: javítás", "Automatikus válasz: köszönjük", "SZABADSÁGON vagyok augusztus 20-ig",
    "Undeliverable: Re: invoice", NULL,
};

START_TEST(test_subjects)
{
    for (size_t i = 0; auto_subjects[i]; i++) {
        koko_msg m = base();
        m.subject = auto_subjects[i];
        const char *code = drop_code(&m);
        ck_assert_msg(code && !strcmp(code, "auto_reply_subject"), "not dropped: %s", auto_subjects[i]);
    }
    koko_msg m = base();
    m.subject = "Re: out of stock alkatrész?"; /* "out of" alone is not "out of office" */
    ck_assert_ptr_null(drop_code(&m));
}
END_TEST

START_TEST(test_senders)
{
    static const char *const robots[] = {"MAILER-DAEMON@mx.example.com", "postmaster@example.hu",
                                         "noreply@shop.example", "No-Reply <no-reply@bank.example>",
                                         "do-not-reply@example.org", NULL};
    for (size_t i = 0; robots[i]; i++) {
        koko_msg m = base();
        m.from = robots[i];
        const char *code = drop_code(&m);
        ck_assert_msg(code && !strcmp(code, "robot_sender"), "not dropped: %s", robots[i]);
    }
    koko_msg m = base();
    m.from = "noreplyfan@example.com"; /* only the whole local part counts */
    ck_assert_ptr_null(drop_code(&m));
}
END_TEST

static const char *with_header(const char *name, const char *value)
{
    koko_msg m = base();
    json_t *h = json_pack("{s:s}", name, value);
    m.headers = h;
    const char *code = drop_code(&m);
    json_decref(h);
    return code;
}

START_TEST(test_headers)
{
    ck_assert_str_eq(with_header("Auto-Submitted", "auto-replied"), "auto_submitted");
    ck_assert_str_eq(with_header("auto-submitted", "auto-generated"), "auto_submitted");
    ck_assert_ptr_null(with_header("Auto-Submitted", " no "));
    ck_assert_str_eq(with_header("X-Autoreply", "yes"), "auto_header");
    ck_assert_str_eq(with_header("X-Autorespond", "1"), "auto_header");
    ck_assert_str_eq(with_header("X-Auto-Response-Suppress", "All"), "auto_header");
    ck_assert_str_eq(with_header("List-Id", "<news.example.com>"), "auto_header");
    ck_assert_str_eq(with_header("List-Unsubscribe", "<mailto:u@example.com>"), "auto_header");
    ck_assert_str_eq(with_header("Precedence", "bulk"), "precedence");
    ck_assert_str_eq(with_header("Precedence", "junk"), "precedence");
    ck_assert_str_eq(with_header("Precedence", "list"), "precedence");
    ck_assert_str_eq(with_header("Precedence", "auto_reply"), "precedence");
    ck_assert_ptr_null(with_header("Precedence", "first-class"));
    ck_assert_str_eq(with_header("Return-Path", "<>"), "empty_return_path");
    ck_assert_ptr_null(with_header("Return-Path", "<anna@example.hu>"));
    ck_assert_str_eq(with_header("Content-Type", "multipart/report; report-type=delivery-status; boundary=x"),
                     "delivery_report");
    koko_msg m = base();
    m.content_type = "Multipart/Report; Report-Type=Delivery-Status";
    ck_assert_str_eq(drop_code(&m), "delivery_report");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("guard");
    TCase *tc = tcase_create("rules");
    tcase_add_test(tc, test_ordinary_messages_pass);
    tcase_add_test(tc, test_kinds_and_senders);
    tcase_add_test(tc, test_subjects);
    tcase_add_test(tc, test_senders);
    tcase_add_test(tc, test_headers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
