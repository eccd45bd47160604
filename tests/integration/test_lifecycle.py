"""
test_lifecycle.py — kokod's life: a graceful SIGTERM that still answers the
request in flight, one daemon per control socket, a channel plugin's
webhook → pipeline → delivered reply (with duplicate suppression), and a
failing backend that hands over to the next one in the chain.
"""
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import KokoTestCase, demo_tenant, echo_tenant  # noqa: E402


def poll(fn, timeout=10.0, interval=0.02):
    """Call FN until it returns something truthy; returns that (or the last falsy value on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


class Lifecycle(KokoTestCase):
    def test_backend_timeout_moves_on(self):
        # server.backend_timeout_ms: echo answers after 1.5 s, the core waits 300 ms
        # for it and then the fallback answers; three chats wait on one timer, and
        # echo's late answers are dropped without harm
        slow = demo_tenant(llm=["echo", "fallback"],
                           backends={"echo": {"delay_ms": 1500, "confidence": 0.9},
                                     "fallback": {"min_score": 1.0, "min_coverage": 0.45}})
        k = self.started(tenants={"demo": slow}, server={"backend_timeout_ms": 300})
        answers = []

        def ask(q):
            answers.append(k.chat("demo", q, language="en"))

        t0 = time.monotonic()
        threads = [threading.Thread(target=ask, args=(q,)) for q in
                   ("When do you open?", "How much is the call-out fee in Budapest?", "Do you repair dryers?")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        took = time.monotonic() - t0
        self.assertEqual(len(answers), 3, k.log())
        for a in answers:
            self.assertEqual(a["backend"], "fallback", a)
            self.assertEqual([x["backend"] for x in a["attempts"]], ["echo"], a)
            self.assertIn("deadline", a["attempts"][0]["error"], a)
        self.assertGreaterEqual(took, 0.28)
        self.assertLess(took, 1.4, "the fallback answered only after echo would have")
        self.assertIn("no answer within 300 ms (server.backend_timeout_ms)", k.log())
        time.sleep(1.6)  # echo's answers arrive for jobs that moved on
        self.assertEqual(k.health()["status"], "ok")
        a = k.chat("demo", "When do you open?", language="en")
        self.assertEqual(a["backend"], "fallback", a)

    def test_sigterm_waits_for_inflight_request(self):
        k = self.started(tenants={"demo": demo_tenant(), "slow": echo_tenant(delay_ms=1500)})
        result = {}

        def ask():
            try:
                result["answer"] = k.http("POST", "/api/chat", {"tenant": "slow", "message": "still there?"},
                                          timeout=30)
            except Exception as e:
                result["error"] = repr(e)

        t = threading.Thread(target=ask)
        t0 = time.monotonic()
        t.start()
        busy = poll(lambda: k.health()["inflight"] >= 2)  # the chat and this /health itself
        self.assertTrue(busy, "the slow request never showed up as in flight")
        k.proc.send_signal(harness.signal.SIGTERM)
        # the listener closes at once: new connections are refused while the old request drains
        refused = poll(lambda: self._refused(k), timeout=1.0)
        rc = k.wait_exit(timeout=15)
        t.join(timeout=30)
        self.assertNotIn("error", result, result)
        st, _, doc = result["answer"]
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc["reply"], "echo[v1]: still there?")
        self.assertGreaterEqual(time.monotonic() - t0, 1.4)
        self.assertEqual(rc, 0, k.log())
        self.assertTrue(refused, "kokod accepted new connections after SIGTERM")
        log = k.log()
        self.assertIn("SIGTERM: stopping gracefully", log)
        self.assertIn("stopped", log)
        self.assertNotIn("drain deadline reached", log)
        self.assertFalse(os.path.exists(k.socket))

    @staticmethod
    def _refused(k):
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((k.host, k.port))
            return False
        except OSError:
            return True
        finally:
            s.close()

    def test_second_kokod_same_socket(self):
        k1 = self.started()
        k2 = self.kokod()
        k2.write_config(server={"control": k1.socket})
        k2.spawn()
        rc = k2.wait_exit(timeout=15)
        self.assertEqual(rc, 1, k2.log())
        self.assertIn("another kokod is already running on %s" % k1.socket, k2.log())
        # the first one still owns its socket and answers
        doc = k1.kokoctl_json("status")
        self.assertEqual(doc["pid"], k1.proc.pid)
        self.assertEqual(k1.health()["status"], "ok")
        k1.stop()

    def test_stale_socket_is_replaced(self):
        k = self.kokod()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(k.socket)  # a socket file nobody listens on, as after a crash
        s.close()
        self.assertTrue(os.path.exists(k.socket))
        k.start()
        self.assertEqual(k.kokoctl_json("status")["pid"], k.proc.pid)
        k.stop()

    def test_testchan_webhook_reply_and_duplicate(self):
        shop = echo_tenant()
        shop["channels"] = {"testchan": {}}
        k = self.started(tenants={"shop": shop})

        def replies():
            st, _, doc = k.http("POST", "/webhook/shop/testchan-replies", "")
            self.assertEqual(st, 200, doc)
            return doc["replies"]

        self.assertEqual(replies(), [])
        msg = {"id": "m-1", "conversation": "conv-1", "text": "where is my order?"}
        st, _, doc = k.http("POST", "/webhook/shop/testchan", msg)
        self.assertEqual((st, doc), (200, {"status": "accepted"}))
        got = poll(lambda: replies())
        self.assertEqual(len(got), 1, got)
        r = got[0]
        self.assertEqual(r["msg_id"], "m-1")
        self.assertEqual(r["conversation"], "conv-1")
        self.assertEqual(r["text"], "echo[v1]: where is my order?")
        self.assertFalse(r["handoff"])
        self.assertTrue(r["idempotency_key"])

        # the same id again: acknowledged as a duplicate, not answered twice
        st, _, doc = k.http("POST", "/webhook/shop/testchan", msg)
        self.assertEqual((st, doc), (200, {"status": "duplicate"}))
        # a later message in the same conversation is answered; by then a second
        # answer to m-1 would have been delivered too
        st, _, doc = k.http("POST", "/webhook/shop/testchan",
                            {"id": "m-2", "conversation": "conv-1", "text": "thanks"})
        self.assertEqual((st, doc), (200, {"status": "accepted"}))
        got = poll(lambda: [x for x in replies() if x["msg_id"] == "m-2"] and replies())
        self.assertEqual([x["msg_id"] for x in got], ["m-1", "m-2"], got)
        self.assertEqual(got[1]["text"], "echo[v1]: thanks")

        # a malformed webhook body is the plugin's 400, and needs no bearer token
        st, _, doc = k.http("POST", "/webhook/shop/testchan", {"id": "m-3"})
        self.assertEqual(st, 400, doc)
        st, _, doc = k.http("POST", "/webhook/shop/nosuch", {})
        self.assertEqual(st, 404, doc)
        st, _, doc = k.http("POST", "/webhook/nosuch/testchan", msg)
        self.assertEqual(st, 404, doc)
        self.assertIn('unknown tenant "nosuch"', doc["error"])
        stats = k.kokoctl_json("stats")
        self.assertEqual(stats["shop"]["queries"], 2, stats)
        k.stop()

    def test_chain_failover(self):
        t = demo_tenant(llm=["echo", "fallback"])
        t["backends"] = {"echo": {"fail": True}, "fallback": {"min_score": 1.0, "min_coverage": 0.45}}
        k = self.started(tenants={"demo": t})
        doc = k.chat("demo", "How much is the call-out fee in Budapest?")
        self.assertEqual(doc["backend"], "fallback", doc)
        self.assertEqual(doc["language"], "en")
        self.assertIn("9,900", doc["reply"])
        self.assertIn("attempts", doc, doc)
        self.assertEqual(len(doc["attempts"]), 1, doc)
        self.assertEqual(doc["attempts"][0]["backend"], "echo")
        self.assertIn("echo configured to fail", doc["attempts"][0]["error"])
        # kokoctl chat shows the failed attempt too
        rc, out, err = k.kokoctl("chat", "demo", "How much is the call-out fee in Budapest?")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^failed\s+echo: .*echo configured to fail")
        self.assertRegex(out, r"(?m)^backend\s+fallback$")
        k.stop()

    def test_sigint_stops_too(self):
        k = self.started()
        k.proc.send_signal(harness.signal.SIGINT)
        self.assertEqual(k.wait_exit(), 0, k.log())
        self.assertIn("SIGINT: stopping gracefully", k.log())


if __name__ == "__main__":
    harness.main()
