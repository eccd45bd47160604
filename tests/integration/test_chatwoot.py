"""
test_chatwoot.py — the chatwoot channel end to end: kokod with the chatwoot
plugin, signed webhooks from tests/fakes/chatwoot_payloads.py, replies to
tests/fakes/fake_chatwoot.py.

Customer message → typing on → reply → typing off; a burst → one reply;
handoff (low confidence, "beszélhetnék egy emberrel?"); human takes over →
silence → resolved → pending → the bot answers again; duplicates; our own
and agents' messages, private notes, activity messages and every bounce /
auto-reply rule → nothing; bad signature, stale timestamp, malformed JSON,
oversize body → the right status and nothing posted; Chatwoot failing then
recovering → exactly one reply. Negative cases run in their own
conversations and end with a positive "barrier" message whose reply proves
the daemon had time to (wrongly) answer them.
"""
import http.client
import json
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
from harness import BUILDDIR, FALLBACK_DIR, TEST_PLUGINS, Kokod, KokoTestCase, main  # noqa: E402
import chatwoot_payloads as P  # noqa: E402
from fake_chatwoot import FakeChatwoot, send_webhook  # noqa: E402

CHATWOOT_DIR = os.path.dirname(os.environ.get("KOKO_CHATWOOT_SO",
                                              os.path.join(BUILDDIR, "plugins/chatwoot/.libs/chatwoot.so")))
SECRET = "it-secret"
QUIET_MS = 300


def tenant(fake, llm="echo", backend=None, **chatwoot):
    cfg = {"base_url": fake.url, "account_id": 1, "api_token": "test-token", "webhook_secret": SECRET,
           "quiet_ms": QUIET_MS, "retry_base_ms": 100, "timeout_ms": 2000}
    cfg.update(chatwoot)
    t = {"languages": ["hu", "en"], "llm": [llm], "channels": {"chatwoot": cfg},
         "handoff": {"min_confidence": 0.5}}
    t["backends"] = {llm: backend if backend is not None else {"confidence": 0.9}}
    if llm == "fallback":
        t.update({"kb": ["kb/_global", "kb/demo"], "memory": "memory/demo"})
    return t


class Chatwoot(KokoTestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = FakeChatwoot(auto=True).start()
        cls.k = Kokod(shared=True, plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR],
                      tenants={"shop": tenant(cls.fake),
                               # a backend slower than the typing delay (300 ms)
                               "slow": tenant(cls.fake, backend={"confidence": 0.9, "delay_ms": 800})})
        cls.k.start()
        cls.url = "http://%s:%d/webhook/shop/chatwoot" % (cls.k.host, cls.k.port)
        cls.slow_url = "http://%s:%d/webhook/slow/chatwoot" % (cls.k.host, cls.k.port)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.k.stop(expect=0)
        finally:
            cls.k.close()
            cls.fake.stop()

    def setUp(self):
        self.fake.reset()

    # ---- helpers ----

    def send(self, payload, **kw):
        kw.setdefault("secret", SECRET)
        status, body, _ = send_webhook(self.url, payload, **kw)
        return status, body

    def posted(self, conv_id, private=None):
        """Messages the daemon posted to conversation CONV_ID."""
        out = []
        for c in self.fake.calls("messages"):
            if c["method"] == "POST" and "/conversations/%d/" % conv_id in c["path"]:
                if private is None or c["body"].get("private") == private:
                    out.append(c)
        return out

    def actions(self, conv_id):
        """The daemon's calls on CONV_ID as "METHOD action" strings, in order."""
        return ["%s %s" % (c["method"], c["path"].rsplit("/", 1)[1]) for c in self.fake.calls()
                if "/conversations/%d/" % conv_id in c["path"]]

    def wait_posts(self, conv_id, n=1, timeout=8.0, private=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.posted(conv_id, private)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail("conversation %d: %d message(s) posted, expected %d; calls: %s"
                  % (conv_id, len(self.posted(conv_id, private)), n, self.actions(conv_id)))

    def oversize(self, conv_id):
        """Announce a body over server.max_body, send its start, return the status kokod answers."""
        body = json.dumps(P.contact_message("x" * (4 * 1024 * 1024), conv_id=conv_id)).encode()
        conn = http.client.HTTPConnection(self.k.host, self.k.port, timeout=10)
        conn.putrequest("POST", "/webhook/shop/chatwoot")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            conn.send(body[:65536])
        except OSError:
            pass
        try:
            return conn.getresponse().status
        finally:
            conn.close()

    def barrier(self, conv_id=999):
        """An ordinary customer message; once it is answered, earlier webhooks had their chance."""
        self.assertEqual(self.send(P.contact_message("barrier", conv_id=conv_id))[0], 200)
        self.wait_posts(conv_id)
        time.sleep(QUIET_MS / 1000.0)

    # ---- the happy path ----

    def test_reply_with_typing(self):
        # a slow answer: typing on → reply → typing off
        status, body, _ = send_webhook(self.slow_url, P.contact_message("Mennyi a kiszállítás?", conv_id=1),
                                       secret=SECRET)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["status"], "accepted")
        posts = self.wait_posts(1)
        self.assertEqual(posts[0]["body"]["content"], "echo[v1]: Mennyi a kiszállítás?")
        self.assertFalse(posts[0]["body"]["private"])
        self.assertTrue(posts[0]["body"]["source_id"].startswith("koko:"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(self.fake.calls("toggle_typing_status")) < 2:
            time.sleep(0.05)
        self.assertEqual(self.actions(1)[0], "POST toggle_typing_status")
        typing = [c["body"]["typing_status"] for c in self.fake.calls("toggle_typing_status")]
        self.assertEqual(typing, ["on", "off"])

    def test_quick_reply_without_typing(self):
        # answered within the typing delay: no indicator, just the reply
        self.assertEqual(self.send(P.contact_message("Nyitvatartás?", conv_id=3))[0], 200)
        self.wait_posts(3)
        time.sleep(0.5)
        self.assertEqual(self.actions(3), ["POST messages"])

    def test_duplicate_delivery_one_reply(self):
        p = P.contact_message("Nyitvatartás?", conv_id=2)
        s1, _, d = send_webhook(self.url, p, secret=SECRET)
        s2, b2, _ = send_webhook(self.url, p, secret=SECRET, delivery=d)      # Chatwoot's retry
        s3, b3, _ = send_webhook(self.url, p, secret=SECRET)                  # a second delivery
        self.assertEqual((s1, s2, s3), (200, 200, 200))
        self.assertEqual(b2["status"], "duplicate")
        self.assertEqual(b3["status"], "duplicate")
        self.wait_posts(2)
        self.barrier()
        self.assertEqual(len(self.posted(2)), 1)

    def test_fake_drops_a_truncated_post(self):
        """The fake, like nginx in front of Chatwoot, never creates a message from a
        request whose body stopped short (a client killed between its headers and
        its body): the durability tests rely on it."""
        body = json.dumps({"content": "half", "message_type": "outgoing", "private": False,
                           "source_id": "koko:test"}).encode()
        with socket.create_connection(("127.0.0.1", self.fake.port)) as s:
            s.sendall(b"POST /api/v1/accounts/1/conversations/77/messages HTTP/1.1\r\n"
                      b"Host: x\r\napi_access_token: test-token\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(5)
            self.assertEqual(s.recv(100), b"")  # closed without an answer
        conv = self.fake.conversation(77)
        self.assertEqual(conv["messages"] if conv else [], [])

    def test_api_failing_then_recovering(self):
        self.fake.fault(r"/conversations/3/messages$", method="POST", status=500, count=2)
        self.fake.fault(r"/conversations/3/messages$", method="POST", drop_after_create=True, count=1)
        self.assertEqual(self.send(P.contact_message("Szia", conv_id=3))[0], 200)
        self.wait_posts(3, n=3)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and self.fake.conversation(3) is None:
            time.sleep(0.05)
        self.barrier()
        stored = [m for m in self.fake.conversation(3)["messages"] if not m["private"]]
        self.assertEqual(len(stored), 1, self.actions(3))
        # the dropped post went out on a kept-alive connection (the one the call
        # before it used): the case where libcurl would re-send a request by itself
        calls = self.fake.calls()
        i = next(i for i, c in enumerate(calls) if c.get("status") == "dropped")
        self.assertEqual(calls[i]["peer"], calls[i - 1]["peer"], calls[i - 1:i + 1])

    # ---- refusals ----

    def test_refusals_post_nothing(self):
        p = P.contact_message("hello", conv_id=10)
        self.assertEqual(self.send(p, signature="sha256=" + "0" * 64)[0], 401)
        status, body = self.send(p, timestamp=int(time.time()) - 3600)
        self.assertEqual(status, 401)
        self.assertIn("stale", body["error"])
        self.assertEqual(self.send(None, secret=None, raw=b'{"event":"message_created"}')[0], 401)
        self.assertEqual(self.send(None, raw=b'{"event": "message_created", ')[0], 400)
        status, body = self.send({"event": "contact_updated", "id": 7})
        self.assertEqual((status, body["status"]), (200, "ignored"))
        self.assertEqual(self.oversize(conv_id=10), 413)
        self.barrier()
        self.assertEqual(self.actions(10), [])

    # ---- what the guard drops (needs the core's guard stage) ----

    def test_loops_and_notes_post_nothing(self):
        cases = [P.agent_message("Átvettem.", conv_id=20, status="pending"),
                 P.agent_bot_message("echo[v1]: hi", conv_id=21),
                 P.captain_message("Segíthetek?", conv_id=22),
                 P.private_note("belső megjegyzés", conv_id=23),
                 P.activity_message(conv_id=24),
                 P.contact_message("open conversation", conv_id=25, status="open")]
        for p in cases:
            self.assertEqual(self.send(p)[0], 200)
        self.barrier()
        for conv in range(20, 26):
            self.assertEqual(self.posted(conv), [], "conversation %d answered: %s" % (conv, self.actions(conv)))

    def test_bounces_and_auto_replies_post_nothing(self):
        for i, (name, kw) in enumerate(P.BOUNCE_CASES):
            status, body = self.send(P.email_message("Automatic message", conv_id=100 + i, **kw))
            self.assertEqual(status, 200, name)
        self.barrier()
        for i, (name, _) in enumerate(P.BOUNCE_CASES):
            self.assertEqual(self.posted(100 + i), [], "%s was answered" % name)
        # an ordinary e-mail is answered
        self.send(P.email_message("Mikor szállítanak?", conv_id=150))
        self.wait_posts(150)

    # ---- coalescing and ownership (need the core) ----

    def test_burst_gets_one_reply(self):
        for text in ("Szia!", "Lenne egy kérdésem.", "Mennyi a szállítás?"):
            self.assertEqual(self.send(P.contact_message(text, conv_id=30))[0], 200)
        self.wait_posts(30)
        self.barrier()
        posts = self.posted(30)
        self.assertEqual(len(posts), 1, [p["body"]["content"] for p in posts])
        self.assertIn("Mennyi a szállítás?", posts[0]["body"]["content"])

    def test_human_takeover_then_back(self):
        agent = P.agent(3)
        self.send(P.contact_message("Első kérdés", conv_id=40))
        self.wait_posts(40)
        self.send(P.status_changed(40, "open", assignee=agent))
        self.send(P.agent_message("Itt Péter, segítek.", conv_id=40))
        self.send(P.contact_message("Köszönöm!", conv_id=40, status="open", assignee=agent))
        self.barrier()
        self.assertEqual(len(self.posted(40)), 1, "the bot talked over a human")
        self.send(P.status_changed(40, "resolved", previous="open"))
        self.send(P.status_changed(40, "pending", previous="resolved"))
        self.send(P.contact_message("Újabb kérdés", conv_id=40))
        self.wait_posts(40, n=2)

    def test_handoff_on_request(self):
        self.send(P.contact_message("beszélhetnék egy emberrel?", conv_id=50, labels=["vip"]))
        notes = self.wait_posts(50, private=True)
        acts = self.actions(50)
        self.assertIn("POST toggle_status", acts)
        self.assertEqual(self.fake.conversation(50)["status"], "open")
        self.assertIn("beszélhetnék egy emberrel?", notes[0]["body"]["content"])
        # the reply to the customer comes after the note: wait for it before counting
        n = len(self.wait_posts(50, private=False))
        # the conversation is the humans' now: the next customer message is not answered
        self.send(P.contact_message("Halló?", conv_id=50, status="open"))
        self.barrier()
        self.assertEqual(len(self.posted(50, private=False)), n)


class ChatwootLowConfidence(KokoTestCase):
    """A tenant whose model is never sure: every answer is a handoff with a private note."""

    def test_low_confidence_handoff(self):
        fake = FakeChatwoot(auto=True).start()
        k = self.kokod(plugin_dirs=[FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR],
                       tenants={"shop": tenant(fake, backend={"confidence": 0.1},
                                               handoff={"team_id": 2, "labels": ["kokó-átadás"]})})
        try:
            k.start()
            url = "http://%s:%d/webhook/shop/chatwoot" % (k.host, k.port)
            status, _, _ = send_webhook(url, P.contact_message("Valami nagyon egyedi?", conv_id=60,
                                                               labels=["vip"]), secret=SECRET)
            self.assertEqual(status, 200)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not [c for c in fake.calls("messages")
                                                       if c["body"].get("private")]:
                time.sleep(0.05)
            acts = [c["path"].rsplit("/", 1)[1] for c in fake.calls() if "/conversations/60/" in c["path"]]
            for a in ("toggle_status", "assignments", "labels", "messages"):
                self.assertIn(a, acts)
            self.assertEqual(fake.conversation(60)["labels"], ["vip", "kokó-átadás"])
            self.assertEqual(fake.conversation(60)["team_id"], 2)
            k.stop(expect=0)
        finally:
            fake.stop()


if __name__ == "__main__":
    sys.exit(main())
