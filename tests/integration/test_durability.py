"""
test_durability.py — the durable inbound queue under faults: every message
kokod accepted (HTTP 200 to the webhook) is answered exactly once.

kokod with the chatwoot channel (quiet_ms 0), the fallback backend and a fake
Chatwoot; 2,000 customer messages, one conversation each, sent by a pool of
threads that retry like Chatwoot does (connection refused or 503 → send again;
a 200 "duplicate" counts as accepted: the first copy was). Scenarios:
  - kill -9 of kokod at random moments, restarted on the same state dir;
  - Chatwoot's API failing 20 % of calls (half 500, half "created, then the
    connection dropped");
  - Redis restarted mid-run (kokod on a redis-server this test starts);
  - three replicas on one Redis, one killed mid-run.
Afterwards the fake Chatwoot's messages are counted per source_id
("koko:chatwoot:<msg_id>"): exactly one public reply per accepted message,
none for anything else.
"""
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
from harness import BUILDDIR, FALLBACK_DIR, TEST_PLUGINS, Kokod, KokoTestCase, main  # noqa: E402
import chatwoot_payloads as P  # noqa: E402
from fake_chatwoot import FakeChatwoot, send_webhook  # noqa: E402

CHATWOOT_DIR = os.path.dirname(os.environ.get("KOKO_CHATWOOT_SO",
                                              os.path.join(BUILDDIR, "plugins/chatwoot/.libs/chatwoot.so")))
SECRET = "dur-secret"
N = int(os.environ.get("KOKO_DURABILITY_N", "2000"))
SENDERS = 16
ANSWER_TIMEOUT = 45.0


def tenant(fake):
    return {"languages": ["hu", "en"], "llm": ["fallback"], "kb": ["kb/_global", "kb/demo"], "memory": "memory/demo",
            "backends": {"fallback": {"min_score": 1.0, "min_coverage": 0.45}},
            "handoff": {"min_confidence": 0.0},
            "channels": {"chatwoot": {"base_url": fake.url, "account_id": 1, "api_token": "test-token",
                                      "webhook_secret": SECRET, "quiet_ms": 0, "retry_base_ms": 20,
                                      "max_attempts": 8, "timeout_ms": 15000}}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    """A redis-server of our own on a loopback port, with an append-only file."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="koko-redis-")
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", self.dir, "--appendonly", "yes", "--appendfsync", "always",
                                      "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start on port %d" % self.port)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port


class Sender:
    """Sends messages 0..N-1 from SENDERS threads to whichever URL urls() offers, until each is accepted."""

    def __init__(self, urls):
        self.urls = urls
        self.accepted = set()
        self.lock = threading.Lock()
        self.next = 0
        self.errors = 0

    def msg_id(self, i):
        return 700000 + i

    def run_one(self, i):
        payload = P.contact_message("Mennyibe kerül a kiszállás? (%d)" % i, conv_id=20000 + i, msg_id=self.msg_id(i))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            urls = self.urls()
            url = random.choice(urls) if urls else None
            if url:
                try:
                    st, _, _ = send_webhook(url, payload, secret=SECRET, timeout=5)
                    if st == 200:
                        with self.lock:
                            self.accepted.add(self.msg_id(i))
                        return
                except (OSError, urllib.error.URLError):
                    pass
            with self.lock:
                self.errors += 1
            time.sleep(0.05)
        raise AssertionError("message %d not accepted within 60 s" % i)

    def worker(self):
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= N:
                return
            self.run_one(i)

    def run(self):
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(SENDERS)]
        for t in threads:
            t.start()
        return threads


class Durability(KokoTestCase):
    def setUp(self):
        self.fake = FakeChatwoot(auto=True).start()
        self.addCleanup(self.fake.stop)

    def daemon(self, redis=None, lease_ms=2000, **state_extra):
        state = {"lease_ms": lease_ms}
        state.update(state_extra)
        k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR], tenants={"shop": tenant(self.fake)})
        state["dir"] = k.state_dir
        if redis:
            state["redis"] = redis.url
        k.write_config(tenants={"shop": tenant(self.fake)}, extra={"state": state, "log": {"level": "info"}})
        return k

    @staticmethod
    def url(k):
        return "http://%s:%d/webhook/shop/chatwoot" % (k.host, k.port)

    def replies(self):
        """source_id → number of public messages the daemon created in the fake Chatwoot."""
        count = {}
        with self.fake.state.lock:
            for conv in self.fake.state.conversations.values():
                for m in conv["messages"]:
                    if not m["private"]:
                        count[m["source_id"]] = count.get(m["source_id"], 0) + 1
        return count

    def check_exactly_once(self, sender, daemons):
        self.assertEqual(len(sender.accepted), N, "every message must be accepted in the end")
        want = {"koko:chatwoot:%d" % m for m in sender.accepted}
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            got = self.replies()
            if want <= set(got):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates, if any, have time to show
        got = self.replies()
        missing = sorted(want - set(got))
        dup = {k: v for k, v in got.items() if v > 1}
        extra = sorted(set(got) - want)
        detail = "; ".join("%s: %s" % (k.dir, k.log()[-3000:]) for k in daemons if missing or dup or extra)
        if missing:
            first = missing[0].rsplit(":", 1)[1]
            conv = str(int(first) - 700000 + 20000)
            detail += "\nlog lines for %s:\n%s" % (first, "\n".join(
                "%s: %s" % (n, ln) for n, k in enumerate(daemons) for ln in k.log().splitlines()
                if first in ln or conv in ln))
        self.assertEqual(missing, [], "accepted but never answered (%d): %s\n%s" % (len(missing), missing[:20],
                                                                                      detail))
        if dup:
            first = sorted(dup)[0].rsplit(":", 1)[1]
            conv = str(int(first) - 700000 + 20000)
            lines = [ln for k in daemons for ln in k.log().splitlines() if first in ln or conv in ln]
            self.fail("answered more than once (%d): %s\nlog lines for %s:\n%s"
                      % (len(dup), sorted(dup)[:10], first, "\n".join(lines[-30:])))
        self.assertEqual(extra, [], "answers for messages never accepted")

    def wait_senders(self, threads, timeout=90):
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.assertFalse(any(t.is_alive() for t in threads), "senders did not finish")

    def test_kill9_embedded(self):
        k = self.daemon().start()
        live = {"url": self.url(k)}
        sender = Sender(lambda: [live["url"]] if live["url"] else [])
        threads = sender.run()
        kills = 0
        while any(t.is_alive() for t in threads) and kills < 6:
            time.sleep(random.uniform(0.8, 2.0))
            live["url"] = None
            k.proc.send_signal(signal.SIGKILL)
            k.proc.wait()
            kills += 1
            k.start()
            live["url"] = self.url(k)
        self.wait_senders(threads)
        self.check_exactly_once(sender, [k])
        self.assertGreaterEqual(kills, 1)
        k.stop(expect=0)

    def test_chatwoot_failing_20_percent(self):
        self.fake.fault(r"^/api/v1/", status=500, count=10 ** 9, rate=0.1)
        self.fake.fault(r"^/api/v1/.*/messages$", method="POST", drop_after_create=True, count=10 ** 9, rate=0.1)
        k = self.daemon().start()
        sender = Sender(lambda: [self.url(k)])
        self.wait_senders(sender.run())
        self.check_exactly_once(sender, [k])
        k.stop(expect=0)


    def queue_retry_scenario(self, redis=None):
        """Chatwoot refuses every reply: after state.max_attempts deliveries each message is a
        dead letter (kokoctl queue lists it); once Chatwoot works, kokoctl queue retry ID
        answers it exactly once. The third message is handed off (no knowledge): its failed
        handoff must not leave the conversation owned by a human and the retry dropped."""
        t = tenant(self.fake)
        t["channels"]["chatwoot"]["max_attempts"] = 1
        k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR], tenants={"shop": t})
        state = {"dir": k.state_dir, "lease_ms": 2000, "max_attempts": 2}
        if redis:
            state["redis"] = redis.url
        k.write_config(tenants={"shop": t}, extra={"state": state})
        self.fake.fault(r"/messages$", method="POST", status=500, count=10 ** 9)
        k.start()
        ids = [810001, 810002, 810003]
        for n, m in enumerate(ids):
            text = "Mennyibe kerül a kiszállás? %d" % n if n < 2 else "Hol a csomagom? %d" % n
            st, _, _ = send_webhook(self.url(k), P.contact_message(text, conv_id=31000 + n, msg_id=m),
                                    secret=SECRET)
            self.assertEqual(st, 200)
        deadline = time.monotonic() + 20
        q = None
        while time.monotonic() < deadline:
            q = k.kokoctl_json("queue")
            if q["dead_total"] == len(ids) and q["pending"] == 0:
                break
            time.sleep(0.2)
        self.assertEqual(q["dead_total"], len(ids), "%r\n%s" % (q, k.log()[-4000:]))
        self.assertEqual(q["pending"], 0, q)
        self.assertEqual(sorted(int(d["msg_id"]) for d in q["dead"]), ids)
        for d in q["dead"]:
            self.assertEqual(d["attempts"], 2, d)
            self.assertEqual(d["tenant"], "shop")
            self.assertEqual(d["channel"], "chatwoot")
            self.assertTrue(d["reason"], d)
            self.assertIn("%d" % (int(d["msg_id"]) - 810001), d["text"])
        self.assertEqual(self.replies(), {})
        rc, out, err = k.kokoctl("queue")
        self.assertEqual(rc, 0, err)
        self.assertIn("dead       3", out)
        for d in q["dead"]:
            self.assertIn(d["id"], out)
        # unknown id: refused, exit 1
        rc, out, err = k.kokoctl("queue", "retry", "no-such-id")
        self.assertEqual(rc, 1, out)
        self.assertIn("no such dead letter", err)
        self.assertEqual(k.kokoctl("queue", "retry")[0], 2)
        # Chatwoot works again: retry the first two only
        with self.fake.state.lock:
            self.fake.state.faults.clear()
        for d in q["dead"][:2]:
            rc, out, err = k.kokoctl("queue", "retry", d["id"])
            self.assertEqual(rc, 0, err)
            self.assertIn("queued again", out)
        want = {"koko:chatwoot:%s" % d["msg_id"] for d in q["dead"][:2]}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and set(self.replies()) != want:
            time.sleep(0.2)
        time.sleep(0.5)
        self.assertEqual(self.replies(), {w: 1 for w in want})
        q2 = k.kokoctl_json("queue")
        self.assertEqual(q2["pending"], 0, q2)
        self.assertEqual([d["msg_id"] for d in q2["dead"]], [q["dead"][2]["msg_id"]])
        # a retried id is gone from the dead letters
        self.assertEqual(k.kokoctl("queue", "retry", q["dead"][0]["id"])[0], 1)
        k.stop(expect=0)

    def test_queue_dead_letters_and_retry_embedded(self):
        self.queue_retry_scenario()

    def redis(self):
        r = Redis().start()
        self.addCleanup(r.close)
        return r

    def test_queue_dead_letters_and_retry_redis(self):
        self.queue_retry_scenario(redis=self.redis())

    def test_redis_restarted_mid_run(self):
        """(b) redis-server stopped (its append-only file fsync'ed always) and started again on the
        same port while 2,000 messages come in: what was accepted is answered exactly once."""
        r = self.redis()
        k = self.daemon(redis=r).start()
        sender = Sender(lambda: [self.url(k)])
        threads = sender.run()
        restarts = 0
        while any(t.is_alive() for t in threads) and restarts < 2:
            time.sleep(random.uniform(1.0, 2.0))
            r.stop()
            time.sleep(random.uniform(0.3, 1.0))
            r.start()
            restarts += 1
        self.wait_senders(threads)
        self.check_exactly_once(sender, [k])
        self.assertGreaterEqual(restarts, 1)
        k.stop(expect=0)

    def test_three_replicas_one_killed(self):
        """(c) three kokod replicas on one Redis, webhooks spread over them; one is killed with
        kill -9 mid-run and not restarted: the entries it had leased are reclaimed by the other
        two once the lease (1 s here) has run out."""
        r = self.redis()
        ks = [self.daemon(redis=r, lease_ms=1000).start() for _ in range(3)]
        live = [self.url(k) for k in ks]
        sender = Sender(lambda: list(live))
        threads = sender.run()
        while any(t.is_alive() for t in threads) and len(sender.accepted) < N // 3:
            time.sleep(0.05)
        victim = ks[0]
        live.remove(self.url(victim))
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        self.wait_senders(threads)
        self.check_exactly_once(sender, ks)
        for k in ks[1:]:
            k.stop(expect=0)


if __name__ == "__main__":
    main()
