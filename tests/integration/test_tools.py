"""
test_tools.py — function calling through the core (koko_host.tool_call): a
backend (the echo test plugin told to call a function) runs a tool plugin's
function and gets its result; tool errors come back as results, not
failures; the built-in handoff_to_human hands the conversation over; a
route's `tools:` limits what may be called; and a tenant's monthly budget.
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Kokod, KokoTestCase, main  # noqa: E402


def tenant(call, **extra):
    t = {"languages": ["en", "hu"], "llm": ["echo", "fallback"],
         "backends": {"echo": {"confidence": 0.9, "call": call}},
         "tools": {"testtool": {}}}
    t.update(extra)
    return t


class Tools(KokoTestCase):
    def test_round_trip(self):
        k = self.started(tenants={"t": tenant({"name": "add", "args": {"a": 2, "b": 3}})})
        a = k.chat("t", "what is two plus three?")
        self.assertEqual(a["backend"], "echo")
        self.assertEqual(a["reply"], 'echo[v1]: what is two plus three? | add → {"sum":5.0}')
        self.assertFalse(a["handoff"])
        st, _, doc = k.http("POST", "/webhook/t/testtool", {})
        self.assertEqual((st, doc["calls"]), (200, 1))
        stats = k.kokoctl_json("stats")["t"]
        self.assertEqual(stats["tool_calls"], 1)

    def test_errors_are_fed_back(self):
        k = self.started(tenants={
            "broken": tenant({"name": "broken"}),
            "bad": tenant({"name": "add", "args": {"a": "two"}}),
            "unknown": tenant({"name": "rm_rf"}),
        })
        a = k.chat("broken", "please break")
        self.assertEqual(a["backend"], "echo")
        self.assertIn('| broken (failed) → {"error":"this tool always fails"}', a["reply"])
        a = k.chat("bad", "add words")
        self.assertIn('| add (failed) → {"error":"add needs numbers a and b"}', a["reply"])
        a = k.chat("unknown", "delete everything")
        self.assertIn('| rm_rf (failed) → {"error":"no such function is available here"}', a["reply"])
        self.assertIn('model called unknown or unavailable function "rm_rf"', k.log())

    def test_route_limits_tools(self):
        k = self.started(tenants={"t": tenant(
            {"name": "add", "args": {"a": 1, "b": 1}},
            routes=[{"name": "no-tools", "match": {"keywords": ["secret"]}, "tools": []}])})
        self.assertIn('→ {"sum":2.0}', k.chat("t", "one plus one")["reply"])
        a = k.chat("t", "secret sum please")
        self.assertEqual(a["route"], "no-tools")
        self.assertIn('| add (failed) → {"error":"no such function is available here"}', a["reply"])

    def test_handoff_to_human(self):
        k = self.started(tenants={"t": tenant({"name": "handoff_to_human",
                                               "args": {"reason": "the customer is angry"}})})
        a = k.chat("t", "I want my money back")
        self.assertEqual(a["backend"], "echo")
        self.assertTrue(a["handoff"])
        self.assertEqual(a["handoff_reason"], "the model asked for a human: the customer is angry")
        # the customer is told a colleague takes over; the model's answer is the agents' draft
        self.assertEqual(a["reply"], "I am handing this conversation to a colleague, who will be with you shortly.")
        self.assertIn('handoff_to_human → {"note":"a human colleague will take over after your answer","ok":true}',
                      a["draft"])


class Budget(KokoTestCase):
    def test_monthly_budget_cuts_paid_backends(self):
        k = self.started(tenants={"t": {
            "languages": ["en", "hu"], "llm": ["echo", "fallback"],
            "backends": {"echo": {"confidence": 0.9, "cost_usd": 0.01}},
            "budget": {"monthly_usd": 0.025}}})
        for i in range(3):  # 0.01, 0.02, 0.03 USD: the third crosses the budget
            self.assertEqual(k.chat("t", "question %d" % i)["backend"], "echo")
        a = k.chat("t", "question 4")
        self.assertEqual(a["backend"], "fallback")
        self.assertTrue(a["handoff"])
        self.assertEqual(a["attempts"], [{"backend": "echo", "error": "skipped: the tenant's monthly budget is spent"}])
        self.assertIn("t: monthly budget of 0.025 USD spent (0.0300 USD): paid backends are skipped", k.log())
        st, _, doc = k.http("GET", "/stats")
        self.assertEqual(st, 200)
        self.assertAlmostEqual(doc["tenants"]["t"]["estimated_cost_usd"], 0.03, places=6)
        self.assertAlmostEqual(doc["estimated_cost_usd"], 0.03, places=6)
        self.assertEqual(doc["total_queries"], 4)
        self.assertEqual(k.kokoctl_json("stats")["t"]["budget_skips"], 1)

    def test_every_tenant_gets_its_own_budget_alert(self):
        # the alert is throttled per tenant: one tenant's alert must not silence another's
        def paid():
            return {"languages": ["en", "hu"], "llm": ["echo", "fallback"],
                    "backends": {"echo": {"confidence": 0.9, "cost_usd": 0.01}},
                    "budget": {"monthly_usd": 0.005}}
        k = self.started(tenants={"a": paid(), "b": paid()})
        for name in ("a", "b"):
            self.assertEqual(k.chat(name, "first question")["backend"], "echo")  # 0.01 USD: spent
        for name in ("a", "b"):
            for i in range(2):
                self.assertEqual(k.chat(name, "question %d" % i)["backend"], "fallback")
        log = k.log()
        for name in ("a", "b"):
            self.assertEqual(log.count("%s: monthly budget of 0.005 USD spent" % name), 1, log)


if __name__ == "__main__":
    main()
