#!/usr/bin/env python3
"""A fake OpenAI-compatible server: POST /v1/chat/completions, as served by
OpenAI, Ollama, llama.cpp's server and vLLM.

Auth: with --key K, a request without "Authorization: Bearer K" is 401
{"error": {"message", "type": "invalid_request_error", "code": "invalid_api_key"}}.
Answers: the next scripted answer (POST /_script {"answers": [...]}: a whole
response body, or {"status": N, "body": {...}}), else a default:
  - tool_calls of the first declared function that is not handoff_to_human
    when the last user message contains "use the test tool" (of
    handoff_to_human for "human please"), arguments a JSON string;
  - after a role "tool" message: "[xx] tool said: <its content>";
  - else "[xx] echo: <the last user message>", xx from the last
    "Reply language: xx" line of the messages.
usage: prompt_tokens = characters / 4, completion_tokens = answer characters
/ 4, prompt_tokens_details.cached_tokens = the longest prefix of messages
identical to an earlier request's, in characters / 4 (the way OpenAI's
automatic prompt caching reports), counted only from 1024 tokens on.

Structured output (response_format json_schema, as the customer-memory
extraction sends it) is checked like OpenAI's strict mode (every object
closed with additionalProperties false and all its properties required) and
answered with the canned JSON set by POST /_extraction (default {"facts": []}).

Test control: POST /_extraction, GET /_requests, POST /_reset, POST /_script, POST /_faults
{"path_regex", "count", "status", "retry_after", "delay_ms", "malformed"}
(429 answers carry a Retry-After header when retry_after is given).

Run: fake_openai.py [--port N] [--key K]; prints
"fake openai listening on http://127.0.0.1:PORT".
"""

import argparse
import json
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LANG = re.compile(r"Reply language: ([a-z]{2,3})")



def strict_problem(schema, name, ctx="()"):
    """What OpenAI's strict structured outputs would refuse in SCHEMA, or None."""
    if schema.get("type") == "object" or "properties" in schema:
        if schema.get("additionalProperties") is not False:
            return ("Invalid schema for response_format '%s': In context=%s, 'additionalProperties' is required to "
                    "be supplied and to be false." % (name, ctx))
        props = schema.get("properties", {})
        missing = [k for k in props if k not in schema.get("required", [])]
        if missing:
            return ("Invalid schema for response_format '%s': In context=%s, 'required' is required to be supplied "
                    "and to be an array including every key in properties. Missing '%s'." % (name, ctx, missing[0]))
        for k, v in props.items():
            bad = strict_problem(v, name, "('properties', '%s')" % k)
            if bad:
                return bad
    if isinstance(schema.get("items"), dict):
        return strict_problem(schema["items"], name, ctx + ", 'items'")
    return None

class State:
    def __init__(self, key):
        self.key = key
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests, self.faults, self.script, self.prefixes = [], [], [], []
        self.extraction = {"facts": []}  # the canned answer to response_format json_schema requests


def oerror(message, etype, code=None):
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, doc, raw=None, headers=()):
        body = raw if raw is not None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = "malformed"
        st = self.server.state
        if self.path.startswith("/_"):
            with st.lock:
                if self.path == "/_requests":
                    return self.reply(200, st.requests)
                if self.path == "/_reset":
                    st.reset()
                    return self.reply(200, {"ok": True})
                if self.path == "/_faults":
                    f = dict(body or {})
                    f.setdefault("count", 1)
                    st.faults.append(f)
                    return self.reply(200, {"ok": True})
                if self.path == "/_extraction":
                    st.extraction = body
                    return self.reply(200, {"ok": True})
                if self.path == "/_script":
                    st.script.extend((body or {}).get("answers", []))
                    return self.reply(200, {"ok": True})
            return self.reply(404, {"error": "unknown control path"})
        with st.lock:
            st.requests.append({"method": method, "path": self.path,
                                "authorization": self.headers.get("Authorization"), "body": body,
                                "time": time.time()})
            fault = None
            for f in st.faults:
                if f["count"] > 0 and re.search(f.get("path_regex", ""), self.path):
                    f["count"] -= 1
                    fault = dict(f)
                    break
        if fault:
            if fault.get("delay_ms"):
                time.sleep(fault["delay_ms"] / 1000.0)
            if fault.get("malformed"):
                return self.reply(200, None, raw=b"{\"choices\": [ not json")
            if fault.get("status"):
                hdrs = [("Retry-After", str(fault["retry_after"]))] if "retry_after" in fault else []
                etype = "rate_limit_error" if fault["status"] == 429 else "server_error"
                return self.reply(fault["status"], oerror("injected fault", etype), headers=hdrs)
        if st.key and self.headers.get("Authorization") != "Bearer " + st.key:
            return self.reply(401, oerror("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        if self.path != "/v1/chat/completions" or method != "POST":
            return self.reply(404, oerror("Unknown request URL: %s %s" % (method, self.path), "invalid_request_error"))
        if not isinstance(body, dict) or not body.get("messages") or not body.get("model"):
            return self.reply(400, oerror("'messages' and 'model' are required", "invalid_request_error"))
        return self.complete(st, body)

    def complete(self, st, b):
        msgs = b["messages"]
        rf = b.get("response_format")
        if isinstance(rf, dict) and rf.get("type") == "json_schema":
            # structured output (customer-memory extraction), checked as strictly as OpenAI does
            js = rf.get("json_schema") or {}
            if not js.get("name") or not isinstance(js.get("schema"), dict):
                return self.reply(400, oerror("Missing required parameter: 'response_format.json_schema.name'",
                                              "invalid_request_error"))
            if js.get("strict"):
                bad = strict_problem(js["schema"], js["name"])
                if bad:
                    return self.reply(400, oerror(bad, "invalid_request_error"))
            with st.lock:
                content = json.dumps(st.extraction, ensure_ascii=False)
            chars = sum(len(m.get("content") or "") for m in msgs)
            return self.reply(200, {
                "id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                "model": b["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": chars // 4, "completion_tokens": len(content) // 4 + 1,
                          "total_tokens": chars // 4 + len(content) // 4 + 1}})
        with st.lock:
            scripted = st.script.pop(0) if st.script else None
        chars = sum(len(m.get("content") or "") for m in msgs)
        # automatic prefix caching: the longest run of leading messages seen before
        with st.lock:
            best = 0
            for p in st.prefixes:
                k = 0
                while k < min(len(p), len(msgs)) and p[k] == msgs[k]:
                    k += 1
                best = max(best, sum(len(m.get("content") or "") for m in msgs[:k]))
            st.prefixes.append(msgs)
        cached = best // 4 if best // 4 >= 1024 else 0
        if scripted is not None:
            if "status" in scripted and "body" in scripted:
                return self.reply(scripted["status"], scripted["body"])
            return self.reply(200, scripted)
        langs = LANG.findall("\n".join(m.get("content") or "" for m in msgs))
        lang = langs[-1] if langs else "??"
        last = msgs[-1]
        user = next((m.get("content") or "" for m in reversed(msgs) if m.get("role") == "user"), "")
        user = user.rsplit("Customer's message:\n", 1)[-1]
        decls = [t["function"] for t in b.get("tools", []) if t.get("type") == "function"]
        message = {"role": "assistant", "content": None, "refusal": None}
        finish = "stop"
        if last.get("role") == "tool":
            message["content"] = "[%s] tool said: %s" % (lang, last.get("content"))
        else:
            want = None
            if "use the test tool" in user:
                want = next((d for d in decls if d.get("name") != "handoff_to_human"), None)
            elif "human please" in user:
                want = next((d for d in decls if d.get("name") == "handoff_to_human"), None)
            if want:
                args = {"reason": "the customer asked"} if want["name"] == "handoff_to_human" else {"q": user}
                message["tool_calls"] = [{"id": "call_" + uuid.uuid4().hex[:8], "type": "function",
                                          "function": {"name": want["name"], "arguments": json.dumps(args)}}]
                finish = "tool_calls"
            else:
                message["content"] = "[%s] echo: %s" % (lang, user)
        out = max(1, len(json.dumps(message)) // 4)
        return self.reply(200, {
            "id": "chatcmpl-" + uuid.uuid4().hex[:10], "object": "chat.completion", "created": int(time.time()),
            "model": b["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": chars // 4, "completion_tokens": out, "total_tokens": chars // 4 + out,
                      "prompt_tokens_details": {"cached_tokens": cached}}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # hundreds of concurrent connections in the load tests

    def handle_error(self, request, client_address):
        # a client that timed out and hung up is part of the tests, not an error
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", default="")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.state = State(a.key)
    print("fake openai listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
