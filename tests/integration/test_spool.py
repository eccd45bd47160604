"""
test_spool.py — Redis unreachable: kokod keeps accepting into its local spool.

kokod on a redis-server this test starts, with the chatwoot channel, the
fallback backend and a fake Chatwoot. redis-server is stopped; messages keep
arriving and are all accepted (200), /health says "degraded"; redis-server
starts again on the same port: the spool is moved into Redis and every
message is answered exactly once (counted from the fake Chatwoot's record).
A second copy of a message sent while Redis was down (the channel's retry)
is answered once too. /health's store.queue.spool (the spool's depth, read
by kokod every second) rises while Redis is down and returns to 0.
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
from harness import FALLBACK_DIR, TEST_PLUGINS, KokoTestCase, main  # noqa: E402
import chatwoot_payloads as P  # noqa: E402
from fake_chatwoot import FakeChatwoot, send_webhook  # noqa: E402
from test_durability import CHATWOOT_DIR, SECRET, Redis, tenant  # noqa: E402

M = 40


class Spool(KokoTestCase):
    def test_redis_down_accepts_into_the_spool(self):
        fake = FakeChatwoot(auto=True).start()
        self.addCleanup(fake.stop)
        r = Redis().start()
        self.addCleanup(r.close)
        k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR], tenants={"shop": tenant(fake)})
        k.write_config(tenants={"shop": tenant(fake)},
                       extra={"state": {"dir": k.state_dir, "redis": r.url, "lease_ms": 2000},
                              "log": {"level": "info"}})
        k.start()
        url = "http://%s:%d/webhook/shop/chatwoot" % (k.host, k.port)

        def send(i):
            p = P.contact_message("Mennyibe kerül a kiszállás? (%d)" % i, conv_id=30000 + i, msg_id=800000 + i)
            st, body, _ = send_webhook(url, p, secret=SECRET, timeout=15)
            self.assertEqual(st, 200, body)

        def replies():
            count = {}
            with fake.state.lock:
                for conv in fake.state.conversations.values():
                    for m in conv["messages"]:
                        if not m["private"]:
                            count[m["source_id"]] = count.get(m["source_id"], 0) + 1
            return count

        send(0)
        r.stop()
        deadline = time.monotonic() + 10
        while k.health()["status"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.05)
        for i in range(1, M):
            send(i)
        send(M - 1)  # the channel's retry of a message already spooled
        self.assertEqual(k.health()["status"], "degraded")
        deadline = time.monotonic() + 5
        while k.health()["store"]["queue"]["spool"] < M - 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertGreaterEqual(k.health()["store"]["queue"]["spool"], M - 1, k.health())
        rc, out, err = k.kokoctl("status")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"spool +%d message\(s\) waiting for Redis" % k.health()["store"]["queue"]["spool"])
        self.assertIn("local spool", k.log())
        r.start()
        want = {"koko:chatwoot:%d" % (800000 + i) for i in range(M)}
        deadline = time.monotonic() + 30
        while not want <= set(replies()) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        got = replies()
        self.assertEqual(sorted(want - set(got)), [], "accepted into the spool but never answered\n" + k.log()[-3000:])
        self.assertEqual({s: n for s, n in got.items() if n > 1}, {}, "answered more than once")
        self.assertIn("moved from the local spool into the store", k.log())
        deadline = time.monotonic() + 10
        while k.health()["status"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(k.health()["status"], "ok")
        deadline = time.monotonic() + 10
        while k.health()["store"]["queue"]["spool"] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        q = k.health()["store"]["queue"]
        self.assertEqual(q["spool"], 0, q)
        # every message answered and acked: nothing pending in Redis's queue, no dead letters
        deadline = time.monotonic() + 10
        while (q["pending"], q["dead"]) != (0, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
            q = k.health()["store"]["queue"]
        self.assertEqual((q["pending"], q["dead"]), (0, 0), q)
        self.assertLess(q["age_ms"], 3000)
        k.stop(expect=0)


if __name__ == "__main__":
    main()
