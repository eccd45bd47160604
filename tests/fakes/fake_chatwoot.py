#!/usr/bin/env python3
"""A fake Chatwoot: the REST endpoints Kokó calls, plus a signed-webhook sender.

Serves, on 127.0.0.1, what the chatwoot channel plugin uses of Chatwoot's
application API, with Chatwoot's paths, auth header and JSON shapes:

  POST /api/v1/accounts/{a}/conversations/{c}/messages              create a message
  GET  /api/v1/accounts/{a}/conversations/{c}/messages              {"meta", "payload": last 20}
  POST /api/v1/accounts/{a}/conversations/{c}/toggle_status         {"status"}
  POST /api/v1/accounts/{a}/conversations/{c}/toggle_typing_status  {"typing_status"}
  POST /api/v1/accounts/{a}/conversations/{c}/assignments           {"assignee_id"} or {"team_id"}
  POST /api/v1/accounts/{a}/conversations/{c}/labels                {"labels"} (replaces the list)

A wrong api_access_token is 401 {"error":"Invalid Access Token"}; an unknown
account or conversation 404 {"error":"Resource could not be found"}.
Conversations exist once registered (POST /_conversations, or auto=True).

Test control (no token): GET /_calls (every API call, oldest first), POST
/_reset, POST /_conversations {"id","status","labels","inbox_id"}, GET
/_conversations, POST /_faults {"path_regex","method","status","count",
"delay_ms","drop_after_create","retry_after","rate"}: the next COUNT matching
calls (with RATE, only that random fraction of them) wait DELAY_MS, then either answer STATUS without doing anything, or
(drop_after_create) do the work and close the connection without an answer,
or (neither) do the work normally.

Run: fake_chatwoot.py [--port N] [--token T] [--account A] [--auto]
prints "fake chatwoot listening on http://127.0.0.1:PORT" and serves until
killed. send_webhook() signs and posts a payload the way Chatwoot does.
"""

import argparse
import hashlib
import hmac
import json
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    """A real server's accept backlog (Python's default of 5 drops connections
    under a burst, which no production web server does)."""
    request_queue_size = 1024
    daemon_threads = True

API = re.compile(r"^/api/v1/accounts/(\d+)/conversations/(\d+)/"
                 r"(messages|toggle_status|toggle_typing_status|assignments|labels)$")
BOT = {"id": 9, "name": "Kokó", "avatar_url": "", "type": "agent_bot"}


class State:
    def __init__(self, token, account, auto):
        self.token, self.account, self.auto = token, account, auto
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.calls, self.faults, self.conversations = [], [], {}
        self.next_message_id = 5000

    def conversation(self, conv_id):
        conv = self.conversations.get(conv_id)
        if conv is None and self.auto:
            conv = self.add_conversation({"id": conv_id})
        return conv

    def add_conversation(self, spec):
        conv = {"id": int(spec["id"]), "status": spec.get("status", "pending"),
                "labels": list(spec.get("labels", [])), "inbox_id": spec.get("inbox_id", 1),
                "assignee_id": None, "team_id": None, "typing": None, "messages": []}
        self.conversations[conv["id"]] = conv
        return conv

    def take_fault(self, method, path):
        for f in self.faults:
            if f["count"] > 0 and re.search(f["path_regex"], path) and f.get("method", method) == method:
                if f.get("rate") is not None and random.random() >= f["rate"]:
                    continue
                f["count"] -= 1
                return dict(f)
        return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeChatwoot/1"

    def log_message(self, fmt, *args):  # quiet: tests read /_calls instead
        pass

    # ---- plumbing ----

    class Truncated(Exception):
        """The client went away before sending the body it announced."""

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if len(raw) < n:
            # as nginx in front of Chatwoot: a request whose body never fully
            # arrived is not handed to the application at all
            raise Handler.Truncated()
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return None

    def _send(self, status, obj=None, headers=None):
        data = b"" if obj is None else json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout tests)

    @property
    def st(self):
        return self.server.state

    # ---- control endpoints ----

    def _control(self, method):
        st = self.st
        path = self.path.split("?")[0]
        if method == "GET" and path == "/_calls":
            with st.lock:
                return self._send(200, list(st.calls))
        if method == "GET" and path == "/_conversations":
            with st.lock:
                return self._send(200, list(st.conversations.values()))
        try:
            body = self._body()
        except Handler.Truncated:
            self.close_connection = True
            return None
        if method == "POST" and path == "/_reset":
            with st.lock:
                st.reset()
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/_faults" and isinstance(body, dict) and "path_regex" in body:
            fault = {"count": 1, "delay_ms": 0, "drop_after_create": False}
            fault.update(body)
            with st.lock:
                st.faults.append(fault)
            return self._send(200, {"ok": True})
        if method == "POST" and path == "/_conversations" and isinstance(body, dict) and "id" in body:
            with st.lock:
                conv = st.add_conversation(body)
            return self._send(200, conv)
        return self._send(404, {"error": "unknown control endpoint or bad body"})

    # ---- the API ----

    def _api(self, method):
        st = self.st
        path = self.path.split("?")[0]
        try:
            body = self._body() if method == "POST" else {}
        except Handler.Truncated:
            self.close_connection = True
            return None
        token_ok = self.headers.get("api_access_token") == st.token
        call = {"method": method, "path": path, "body": body, "token_ok": token_ok, "t": time.time(),
                "peer": self.client_address[1]}  # the client's port: one per connection
        with st.lock:
            st.calls.append(call)
            fault = st.take_fault(method, path)
        if fault and fault.get("delay_ms"):
            time.sleep(fault["delay_ms"] / 1000.0)
        if fault and fault.get("status") and not fault.get("drop_after_create"):
            call["status"] = fault["status"]
            extra = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else None
            return self._send(fault["status"], {"error": "injected fault"}, extra)
        status, obj = self._handle(method, path, body, token_ok)
        call["status"] = status
        if fault and fault.get("drop_after_create"):
            call["status"] = "dropped"
            self.close_connection = True
            return  # the work is done, the answer is lost
        return self._send(status, obj)

    def _handle(self, method, path, body, token_ok):
        st = self.st
        if not token_ok:
            return 401, {"error": "Invalid Access Token"}
        m = API.match(path)
        if not m:
            return 404, {"error": "Resource could not be found"}
        account, conv_id, action = int(m.group(1)), int(m.group(2)), m.group(3)
        with st.lock:
            conv = st.conversation(conv_id) if account == st.account else None
            if conv is None:
                return 404, {"error": "Resource could not be found"}
            if body is None:
                return 400, {"error": "malformed JSON"}
            if action == "messages" and method == "GET":
                meta = {"labels": conv["labels"], "additional_attributes": {},
                        "contact": {"id": 7, "name": "Kiss Anna"}, "agent_last_seen_at": 0}
                return 200, {"meta": meta, "payload": conv["messages"][-20:]}
            if method != "POST":
                return 404, {"error": "Resource could not be found"}
            if action == "messages":
                if body.get("message_type", "outgoing") != "outgoing":
                    return 422, {"error": "Incoming messages are only allowed in Api inboxes"}
                st.next_message_id += 1
                msg = {"id": st.next_message_id, "content": body.get("content"), "inbox_id": conv["inbox_id"],
                       "conversation_id": conv_id, "message_type": 1, "content_type": "text",
                       "status": "sent", "content_attributes": {}, "created_at": int(time.time()),
                       "private": bool(body.get("private", False)), "source_id": body.get("source_id"),
                       "sender": BOT}
                conv["messages"].append(msg)
                return 200, msg
            if action == "toggle_status":
                status = body.get("status")
                if status not in ("open", "resolved", "pending", "snoozed"):
                    return 422, {"error": "invalid status"}
                conv["status"] = status
                return 200, {"meta": {}, "payload": {"success": True, "current_status": status,
                                                     "conversation_id": conv_id}}
            if action == "toggle_typing_status":
                conv["typing"] = body.get("typing_status")
                return 200, None
            if action == "assignments":
                if "assignee_id" in body:
                    conv["assignee_id"] = body["assignee_id"]
                    return 200, {"id": body["assignee_id"], "name": "Agent %s" % body["assignee_id"],
                                 "type": "user"}
                if "team_id" in body:
                    conv["team_id"] = body["team_id"]
                    return 200, {"id": body["team_id"], "name": "Team %s" % body["team_id"]}
                return 422, {"error": "assignee_id or team_id required"}
            if action == "labels":
                labels = body.get("labels")
                if not isinstance(labels, list):
                    return 422, {"error": "labels must be a list"}
                conv["labels"] = list(labels)
                return 200, {"payload": conv["labels"]}
        return 404, {"error": "Resource could not be found"}

    def do_GET(self):
        return self._control("GET") if self.path.startswith("/_") else self._api("GET")

    def do_POST(self):
        return self._control("POST") if self.path.startswith("/_") else self._api("POST")


class FakeChatwoot:
    """The fake in a background thread: FakeChatwoot().start() ... .stop()."""

    def __init__(self, token="test-token", account=1, port=0, auto=False):
        self.state = State(token, account, auto)
        self.httpd = Server(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # direct access for in-process tests
    def calls(self, action=None):
        with self.state.lock:
            calls = list(self.state.calls)
        return [c for c in calls if action is None or c["path"].endswith("/" + action)]

    def reset(self):
        with self.state.lock:
            self.state.reset()

    def add_conversation(self, conv_id, status="pending", labels=(), inbox_id=1):
        with self.state.lock:
            return self.state.add_conversation({"id": conv_id, "status": status, "labels": list(labels),
                                                "inbox_id": inbox_id})

    def conversation(self, conv_id):
        with self.state.lock:
            return self.state.conversations.get(conv_id)

    def fault(self, path_regex, **kw):
        f = {"count": 1, "delay_ms": 0, "drop_after_create": False, "path_regex": path_regex}
        f.update(kw)
        with self.state.lock:
            self.state.faults.append(f)


def sign(secret, timestamp, body):
    """X-Chatwoot-Signature for BODY (bytes) sent at TIMESTAMP (unix seconds)."""
    mac = hmac.new(secret.encode(), ("%s." % timestamp).encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def send_webhook(url, payload, secret=None, delivery=None, timestamp=None, signature=None, raw=None,
                 timeout=10):
    """POST PAYLOAD (or RAW bytes) to URL as Chatwoot does: JSON body, X-Chatwoot-Delivery,
    and, with SECRET, X-Chatwoot-Timestamp and X-Chatwoot-Signature (SIGNATURE overrides
    the computed one). Returns (status, parsed body or text, delivery id)."""
    body = raw if raw is not None else json.dumps(payload).encode()
    delivery = delivery or str(uuid.uuid4())
    headers = {"Content-Type": "application/json", "User-Agent": "rest-client/2.1.0",
               "X-Chatwoot-Delivery": delivery}
    if secret is not None or signature is not None or timestamp is not None:
        ts = int(time.time()) if timestamp is None else timestamp
        headers["X-Chatwoot-Timestamp"] = str(ts)
        headers["X-Chatwoot-Signature"] = signature or sign(secret or "", ts, body)
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, text = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text), delivery
    except ValueError:
        return status, text, delivery


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="test-token")
    ap.add_argument("--account", type=int, default=1)
    ap.add_argument("--auto", action="store_true", help="every conversation id exists")
    args = ap.parse_args()
    fake = FakeChatwoot(args.token, args.account, args.port, args.auto)
    print("fake chatwoot listening on %s" % fake.url, flush=True)
    try:
        fake.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
