"""
test_state.py — conversation state lives in the store, not in kokod's memory.

kokod with the chatwoot channel, the echo backend and a fake Chatwoot, on
the embedded store; kokod is restarted in the middle of conversations:
  - the follow-up "Szia!" keeps the conversation's language (hu after a
    Hungarian question, although the tenant's first language is en, which a
    new conversation's "Szia!" gets) and its history;
  - a conversation a human took over stays silent after the restart until
    it is resolved; then the bot answers again;
  - the contact index {T}:contact:{C}:convs names the conversations;
  - /stats counts on from where it was (counters mirrored to {T}:stats:*).
StatsDaily, on the embedded store and on a redis-server it starts: the daily
series ({T}:stats:day:{date}:*) shows today's counts in /stats?days=N and
`kokoctl stats TENANT --days N`, before and after a restart.
The language and history a job used are read from kokod's debug log line
"conversation N: language L, K turn(s) of history".
"""
import os
import re
import sqlite3
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
from harness import BUILDDIR, FALLBACK_DIR, TEST_PLUGINS, KokoTestCase, main  # noqa: E402
import chatwoot_payloads as P  # noqa: E402
from fake_chatwoot import FakeChatwoot, send_webhook  # noqa: E402
from test_durability import Redis  # noqa: E402

CHATWOOT_DIR = os.path.dirname(os.environ.get("KOKO_CHATWOOT_SO",
                                              os.path.join(BUILDDIR, "plugins/chatwoot/.libs/chatwoot.so")))
SECRET = "state-secret"


def tenant(fake):
    return {"languages": ["en", "hu"], "llm": ["echo"], "backends": {"echo": {"confidence": 0.9}},
            "handoff": {"min_confidence": 0.5}, "history_turns": 5,
            "channels": {"chatwoot": {"base_url": fake.url, "account_id": 1, "api_token": "test-token",
                                      "webhook_secret": SECRET, "quiet_ms": 50, "retry_base_ms": 50,
                                      "timeout_ms": 3000}}}


class State(KokoTestCase):
    def setUp(self):
        self.fake = FakeChatwoot(auto=True).start()
        self.addCleanup(self.fake.stop)
        self.k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR],
                            tenants={"shop": tenant(self.fake)}, extra={"log": {"level": "debug"}})
        self.k.start()

    def send(self, payload):
        url = "http://%s:%d/webhook/shop/chatwoot" % (self.k.host, self.k.port)
        status, _, _ = send_webhook(url, payload, secret=SECRET)
        self.assertEqual(status, 200)

    def posted(self, conv_id):
        return [c for c in self.fake.calls("messages")
                if c["method"] == "POST" and "/conversations/%d/" % conv_id in c["path"]
                and not c["body"].get("private")]

    def wait_posts(self, conv_id, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.posted(conv_id)) >= n:
                return self.posted(conv_id)
            time.sleep(0.05)
        self.fail("conversation %d: %d repl(ies), expected %d" % (conv_id, len(self.posted(conv_id)), n))

    def job_line(self, conv_id):
        """(language, turns of history) of the last job kokod ran for CONV_ID."""
        found = re.findall(r"conversation %d: language (\w+), (\d+) turn" % conv_id, self.k.log())
        self.assertTrue(found, "no job logged for conversation %d" % conv_id)
        return found[-1][0], int(found[-1][1])

    def restart(self):
        self.k.stop(expect=0)
        self.k.start()

    def test_language_and_history_survive_a_restart(self):
        self.send(P.contact_message("Mennyibe kerül a házhoz szállítás Budapesten?", conv_id=1))
        self.wait_posts(1, 1)
        self.assertEqual(self.job_line(1), ("hu", 0))
        self.restart()
        self.send(P.contact_message("Szia!", conv_id=1))
        self.wait_posts(1, 2)
        self.assertEqual(self.job_line(1), ("hu", 2), "the restarted kokod forgot the conversation")
        # a new conversation's "Szia!" gets the tenant's first language: the hu above came from the store
        self.send(P.contact_message("Szia!", conv_id=2, contact_id=8))
        self.wait_posts(2, 1)
        self.assertEqual(self.job_line(2), ("en", 0))
        self.k.stop(expect=0)
        db = sqlite3.connect(os.path.join(self.k.state_dir, "koko.db"))
        try:
            rows = db.execute("SELECT key, field FROM hash_fields WHERE key LIKE 'shop:contact:%' "
                              "ORDER BY key, field").fetchall()
            state = dict(db.execute("SELECT field, value FROM hash_fields WHERE key = "
                                    "'shop:conv:chatwoot:1:state'").fetchall())
            turns = db.execute("SELECT COUNT(*) FROM list_items WHERE key = "
                               "'shop:conv:chatwoot:1:history'").fetchone()[0]
        finally:
            db.close()
        self.assertEqual(rows, [("shop:contact:chatwoot%3A7:convs", "chatwoot:1"),
                                ("shop:contact:chatwoot%3A8:convs", "chatwoot:2")])
        lang = state.get("lang")
        self.assertEqual(lang.decode() if isinstance(lang, bytes) else lang, "hu")
        self.assertEqual(turns, 4)

    def test_human_owner_survives_a_restart(self):
        agent = P.agent(3)
        self.send(P.contact_message("Első kérdés", conv_id=40))
        self.wait_posts(40, 1)
        self.send(P.status_changed(40, "open", assignee=agent))
        self.send(P.agent_message("Itt Péter, segítek.", conv_id=40))
        time.sleep(0.5)
        self.restart()
        # nothing in this webhook says a human has it: only the stored owner keeps the bot quiet
        self.send(P.contact_message("Köszönöm!", conv_id=40))
        self.send(P.contact_message("barrier", conv_id=999))
        self.wait_posts(999, 1)
        time.sleep(0.5)
        self.assertEqual(len(self.posted(40)), 1, "the bot talked over a human after the restart")
        self.assertIn("owned by a human", self.k.log())
        self.send(P.status_changed(40, "resolved", previous="open"))
        time.sleep(0.3)
        self.restart()
        self.send(P.contact_message("Újabb kérdés", conv_id=40))
        self.wait_posts(40, 2)

    def stats(self):
        st, _, doc = self.k.http("GET", "/stats")
        self.assertEqual(st, 200)
        return doc["tenants"]["shop"]

    def test_stats_survive_a_restart(self):
        for i in range(3):
            self.k.chat("shop", "kérdés %d" % i, conversation_id="s%d" % i)
        self.send(P.contact_message("Mennyi a szállítás?", conv_id=60))
        self.wait_posts(60, 1)
        before = self.stats()
        self.assertEqual(before["total_queries"], 4)
        self.assertEqual(before["counters"].get("accepted"), 1)
        self.restart()
        after = self.stats()
        self.assertEqual(after["total_queries"], 4, "/stats started from zero after the restart")
        self.assertEqual(after["counters"], before["counters"])
        self.k.chat("shop", "még egy", conversation_id="s9")
        self.assertEqual(self.stats()["total_queries"], 5)
        self.assertIn("counter(s) read from the store", self.k.log())


class StatsDaily(KokoTestCase):
    def start_kokod(self, redis=None):
        t = {"languages": ["en", "hu"], "llm": ["echo"], "backends": {"echo": {"confidence": 0.9}}}
        k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS], tenants={"shop": t, "idle": dict(t)})
        if redis:
            k.write_config(tenants={"shop": t, "idle": dict(t)},
                           extra={"state": {"dir": k.state_dir, "redis": redis.url}})
        k.start()
        return k

    def daily(self, k, days):
        st, _, doc = k.http("GET", "/stats?days=%d" % days)
        self.assertEqual(st, 200, doc)
        self.assertNotIn("daily_error", doc)
        self.assertEqual(doc["days"], days)
        return doc

    def check(self, k, queries):
        before = time.strftime("%Y-%m-%d", time.gmtime())
        doc = self.daily(k, 3)
        after = time.strftime("%Y-%m-%d", time.gmtime())
        shop = doc["tenants"]["shop"]
        self.assertEqual(len(shop["daily"]), 3)
        self.assertIn(shop["daily"][-1]["date"], (before, after))
        dates = [d["date"] for d in shop["daily"]]
        self.assertEqual(dates, sorted(dates))
        # all of it was counted today (or, across midnight, yesterday and today)
        self.assertEqual(sum(d.get("queries", 0) for d in shop["daily"]), queries, shop["daily"])
        self.assertEqual(sum(d.get("answered", 0) for d in shop["daily"]), queries)
        self.assertEqual(shop["total_queries"], queries)
        # a tenant that counted nothing still has its days, with dates only
        self.assertEqual([list(d) for d in doc["tenants"]["idle"]["daily"]], [["date"]] * 3)
        rc, out, err = k.kokoctl("stats", "shop", "--days", "2")
        self.assertEqual(rc, 0, err)
        self.assertIn("shop: the last 2 day(s), UTC", out)
        row = [ln.split() for ln in out.splitlines() if ln.startswith(shop["daily"][-1]["date"])]
        self.assertEqual(len(row), 1, out)
        self.assertEqual(row[0][2], "%d" % shop["daily"][-1].get("queries", 0), out)
        self.assertNotIn("idle", out)
        js = k.kokoctl_json("stats", "shop", "--days", "2")
        self.assertEqual(js["days"], 2)
        self.assertEqual([(d["date"], d.get("queries")) for d in js["tenants"]["shop"]["daily"]],
                         [(d["date"], d.get("queries")) for d in shop["daily"][1:]])

    def run_daily(self, redis=None):
        k = self.start_kokod(redis)
        self.assertEqual(self.daily(k, 7)["tenants"]["shop"]["daily"][-1].get("queries", 0), 0)
        for i in range(3):
            k.chat("shop", "question %d" % i, conversation_id="d%d" % i)
        self.check(k, 3)
        k.stop(expect=0)
        k.start()
        self.check(k, 3)
        k.chat("shop", "one more", conversation_id="d9")
        self.check(k, 4)
        # the default window is 7 days; 1..90 are allowed
        st, _, doc = k.http("GET", "/stats")
        self.assertEqual((st, doc["days"], len(doc["tenants"]["shop"]["daily"])), (200, 7, 7))
        self.assertEqual(len(self.daily(k, 90)["tenants"]["shop"]["daily"]), 90)
        for bad in ("0", "91", "x", "7days", ""):
            st, _, doc = k.http("GET", "/stats?days=" + bad)
            self.assertEqual(st, 400, bad)
            self.assertIn("from 1 to 90", doc["error"])
        self.assertEqual(k.kokoctl("stats", "--days", "0")[0], 2)
        rc, _, err = k.kokoctl("stats", "nosuch")
        self.assertEqual(rc, 1)
        self.assertIn('unknown tenant "nosuch"', err)
        return k

    def test_embedded(self):
        k = self.run_daily()
        k.stop(expect=0)
        db = sqlite3.connect(os.path.join(k.state_dir, "koko.db"))
        try:
            rows = db.execute("SELECT key, expires_at FROM kv WHERE key LIKE 'shop:stats:day:%:queries'").fetchall()
        finally:
            db.close()
        self.assertTrue(rows)
        for key, expires in rows:  # kept 90 days
            self.assertAlmostEqual(expires / 1000 - time.time(), 90 * 86400, delta=3600)

    def test_redis(self):
        r = Redis().start()
        self.addCleanup(r.close)
        self.run_daily(r)


if __name__ == "__main__":
    main()
