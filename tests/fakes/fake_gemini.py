#!/usr/bin/env python3
"""A fake Gemini API (v1beta): what the gemini backend plugin calls, with the
real paths, auth header, JSON shapes and error bodies.

  POST   /v1beta/models/{model}:generateContent
  POST   /v1beta/cachedContents                      create (ttl "Ns" or expireTime)
  GET    /v1beta/cachedContents                      list
  GET    /v1beta/cachedContents/{id}                 get
  PATCH  /v1beta/cachedContents/{id}?updateMask=ttl  extend (ttl or expireTime)
  DELETE /v1beta/cachedContents/{id}

The key travels in the x-goog-api-key header: a missing one is 403
PERMISSION_DENIED, a wrong one 400 INVALID_ARGUMENT (API_KEY_INVALID), as the
real API answers. Caches expire for real: after expireTime every use is 404.
A cache below the model's minimum (1024 tokens for *flash*, 4096 for *pro*;
tokens counted as characters / 4) is refused with 400. A generateContent
that names cachedContent AND sets systemInstruction, tools or toolConfig is
refused with 400 INVALID_ARGUMENT, like the real API.

Answers: the next scripted answer (POST /_script {"answers": [...]}: each a
whole response body, or {"status": N, "body": {...}}), else a default:
  - a functionCall of the first declared function that is not
    handoff_to_human when the last user text contains "use the test tool",
    and of handoff_to_human when it contains "human please" (once: after a
    functionResponse the model answers in text);
  - else an echo "[xx] echo: <last user text>" where xx is the code of the
    last "Reply language: xx" line in the system instruction, the cache or
    the message (the language marker); after a functionResponse the text
    is "[xx] tool said: <the response JSON>".
usageMetadata: promptTokenCount = request characters / 4 + the cache's
tokens, cachedContentTokenCount = the cache's tokens, candidatesTokenCount =
answer characters / 4.

Test control (no key): GET /_requests (every API request: method, path,
query, key, body, time = arrival in unix seconds), POST /_reset, POST /_script, POST /_faults {"path_regex",
"method", "count", "status", "retry_delay", "delay_ms", "malformed"}: the
next COUNT matching requests wait DELAY_MS, then answer STATUS (429 with a
RetryInfo retryDelay, 503 UNAVAILABLE, ...) or, with malformed, a 200 that is
not JSON; a fault with neither status nor malformed only delays.
POST /_expire {"name"} makes a cache expire now.
Structured output (generationConfig.responseSchema, as the customer-memory
extraction sends it) must come with responseMimeType application/json and
use only fields of Gemini's Schema object (else 400, like the real API); it is
answered with the canned JSON set by POST /_extraction (default {"facts": []}).

Run: fake_gemini.py [--port N] [--key K]; prints
"fake gemini listening on http://127.0.0.1:PORT" and serves until killed.
"""

import argparse
import json
import re
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, parse_qs

GEN = re.compile(r"^/v1beta/models/([^/:]+):generateContent$")
CACHE = re.compile(r"^/v1beta/cachedContents/([^/]+)$")
LANG = re.compile(r"Reply language: ([a-z]{2,3})")


def rfc3339(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(s):
    s = s.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in s else "%Y-%m-%dT%H:%M:%S"
    return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()


def parse_duration(s):
    if not isinstance(s, str) or not s.endswith("s"):
        raise ValueError("bad duration")
    return float(s[:-1])


def texts(obj):
    """Every "text" string inside OBJ, in order."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "text" and isinstance(v, str):
                out.append(v)
            else:
                out.extend(texts(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(texts(v))
    return out


def gerror(code, status, message, details=None):
    e = {"code": code, "message": message, "status": status}
    if details:
        e["details"] = details
    return {"error": e}


class State:
    def __init__(self, key):
        self.key = key
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        self.requests, self.faults, self.script, self.caches = [], [], [], {}
        self.extraction = {"facts": []}  # the canned answer to structured-output (extraction) requests

    def cache(self, cid):
        """The live cache CID, or None (expired ones are removed)."""
        c = self.caches.get(cid)
        if c and c["expire"] <= time.time():
            del self.caches[cid]
            return None
        return c

    def take_fault(self, method, path):
        for f in self.faults:
            if f["count"] > 0 and re.search(f.get("path_regex", ""), path) and \
                    f.get("method", method) == method:
                f["count"] -= 1
                return dict(f)
        return None


SCHEMA_FIELDS = {"type", "format", "description", "nullable", "enum", "maxItems", "minItems", "properties",
                 "required", "propertyOrdering", "items", "minimum", "maximum", "anyOf", "title"}


def schema_unknown(schema):
    """The first key of a responseSchema the Gemini Schema object does not have, or None."""
    if not isinstance(schema, dict):
        return None
    for k, v in schema.items():
        if k not in SCHEMA_FIELDS:
            return k
        if k == "properties":
            for sub in v.values():
                bad = schema_unknown(sub)
                if bad:
                    return bad
        elif k == "items":
            bad = schema_unknown(v)
            if bad:
                return bad
    return None


def min_tokens(model):
    return 4096 if "pro" in model else 1024


def count_tokens(obj):
    return sum(len(t) for t in texts(obj)) // 4 + (len(json.dumps(obj.get("tools", []))) // 4 if isinstance(obj, dict) else 0)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-gemini/1"

    def log_message(self, fmt, *args):
        pass

    @property
    def st(self):
        return self.server.state

    def reply(self, status, doc, raw=None):
        body = raw if raw is not None else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return "malformed"

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_PATCH(self):
        self.route("PATCH")

    def do_DELETE(self):
        self.route("DELETE")

    def route(self, method):
        u = urlsplit(self.path)
        path, query = u.path, parse_qs(u.query)
        body = self.body()
        if path.startswith("/_"):
            return self.control(method, path, body)
        st = self.st
        with st.lock:
            st.requests.append({"method": method, "path": path, "query": u.query,
                                "key": self.headers.get("x-goog-api-key"), "body": body,
                                "time": time.time()})
            fault = st.take_fault(method, path)
        if fault:
            if fault.get("delay_ms"):
                time.sleep(fault["delay_ms"] / 1000.0)
            if fault.get("malformed"):
                return self.reply(200, None, raw=b"{\"candidates\": [ this is not json")
            status = fault.get("status")
            if status == 429:
                details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": fault.get("retry_delay", "1s")}]
                return self.reply(429, gerror(429, "RESOURCE_EXHAUSTED",
                                              "You exceeded your current quota.", details))
            if status:
                names = {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
                         400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 403: "PERMISSION_DENIED"}
                msg = "The model is overloaded. Please try again later." if status == 503 else "injected fault"
                return self.reply(status, gerror(status, names.get(status, "UNKNOWN"), msg))
        key = self.headers.get("x-goog-api-key")
        if not key:
            return self.reply(403, gerror(403, "PERMISSION_DENIED",
                                          "Method doesn't allow unregistered callers (callers without established "
                                          "identity). Please use API Key or other form of API consumer identity to "
                                          "call this API."))
        if key != st.key:
            return self.reply(400, gerror(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                                          [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                            "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]))
        if body == "malformed":
            return self.reply(400, gerror(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        m = GEN.match(path)
        if m and method == "POST":
            return self.generate(m.group(1), body or {})
        if path == "/v1beta/cachedContents":
            if method == "POST":
                return self.cache_create(body or {})
            if method == "GET":
                with st.lock:
                    live = [self.cache_doc(c) for cid in list(st.caches) if (c := st.cache(cid))]
                return self.reply(200, {"cachedContents": live} if live else {})
        m = CACHE.match(path)
        if m:
            cid = m.group(1)
            with st.lock:
                c = st.cache(cid)
                if not c:
                    return self.reply(404, gerror(404, "NOT_FOUND", "CachedContent not found (or permission denied)"))
                if method == "GET":
                    return self.reply(200, self.cache_doc(c))
                if method == "DELETE":
                    del st.caches[cid]
                    return self.reply(200, {})
                if method == "PATCH":
                    b = body or {}
                    try:
                        if "ttl" in b:
                            c["expire"] = time.time() + parse_duration(b["ttl"])
                        elif "expireTime" in b:
                            c["expire"] = parse_rfc3339(b["expireTime"])
                        else:
                            raise ValueError
                    except ValueError:
                        return self.reply(400, gerror(400, "INVALID_ARGUMENT", "ttl or expireTime required"))
                    c["update"] = time.time()
                    return self.reply(200, self.cache_doc(c))
        return self.reply(404, gerror(404, "NOT_FOUND", "no such method: %s %s" % (method, path)))

    def cache_doc(self, c):
        return {"name": "cachedContents/" + c["id"], "model": c["model"], "displayName": c.get("displayName", ""),
                "createTime": rfc3339(c["create"]), "updateTime": rfc3339(c["update"]),
                "expireTime": rfc3339(c["expire"]), "usageMetadata": {"totalTokenCount": c["tokens"]}}

    def cache_create(self, b):
        model = b.get("model", "")
        if not model.startswith("models/"):
            return self.reply(400, gerror(400, "INVALID_ARGUMENT", "model must be models/{model}"))
        tokens = count_tokens(b)
        need = min_tokens(model)
        if tokens < need:
            return self.reply(400, gerror(400, "INVALID_ARGUMENT",
                                          "Cached content is too small. total_token_count=%d, "
                                          "min_total_token_count=%d" % (tokens, need)))
        now = time.time()
        try:
            if "ttl" in b:
                expire = now + parse_duration(b["ttl"])
            elif "expireTime" in b:
                expire = parse_rfc3339(b["expireTime"])
            else:
                expire = now + 3600
        except ValueError:
            return self.reply(400, gerror(400, "INVALID_ARGUMENT", "bad ttl"))
        c = {"id": uuid.uuid4().hex[:12], "model": model, "displayName": b.get("displayName", ""),
             "systemInstruction": b.get("systemInstruction"), "contents": b.get("contents", []),
             "tools": b.get("tools", []), "tokens": tokens, "create": now, "update": now, "expire": expire}
        with self.st.lock:
            self.st.caches[c["id"]] = c
        return self.reply(200, self.cache_doc(c))

    def generate(self, model, b):
        st = self.st
        cached = None
        if "cachedContent" in b:
            if any(k in b for k in ("systemInstruction", "tools", "toolConfig")):
                return self.reply(400, gerror(400, "INVALID_ARGUMENT",
                                              "CachedContent can not be used with GenerateContent request setting "
                                              "system_instruction, tools or tool_config.\n\nProposed fix: move those "
                                              "values to CachedContent from GenerateContent request."))
            name = b["cachedContent"]
            with st.lock:
                cached = st.cache(name.split("/", 1)[-1]) if name.startswith("cachedContents/") else None
            if not cached:
                return self.reply(404, gerror(404, "NOT_FOUND", "CachedContent not found (or permission denied)"))
            if cached["model"] != "models/" + model:
                return self.reply(400, gerror(400, "INVALID_ARGUMENT",
                                              "Model used by GenerateContent request (models/%s) and CachedContent "
                                              "(%s) has to be the same." % (model, cached["model"])))
        contents = b.get("contents")
        if not contents:
            return self.reply(400, gerror(400, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified"))
        gc = b.get("generationConfig") or {}
        if "responseSchema" in gc:
            # structured output (customer-memory extraction): as strict as the real API
            if gc.get("responseMimeType") != "application/json":
                return self.reply(400, gerror(400, "INVALID_ARGUMENT",
                                              "* GenerateContentRequest.generation_config.response_mime_type: "
                                              "response_schema requires response_mime_type application/json"))
            bad = schema_unknown(gc["responseSchema"])
            if bad:
                return self.reply(400, gerror(400, "INVALID_ARGUMENT",
                                              "Invalid JSON payload received. Unknown name \"%s\" at "
                                              "'generation_config.response_schema': Cannot find field." % bad))
            with st.lock:
                answer = json.dumps(st.extraction, ensure_ascii=False)
            prompt_tokens = sum(len(t) for t in texts(b)) // 4
            return self.reply(200, {"candidates": [{"content": {"role": "model", "parts": [{"text": answer}]},
                                                    "finishReason": "STOP", "index": 0}],
                                    "usageMetadata": {"promptTokenCount": prompt_tokens,
                                                      "candidatesTokenCount": len(answer) // 4 + 1,
                                                      "totalTokenCount": prompt_tokens + len(answer) // 4 + 1},
                                    "modelVersion": model})
        with st.lock:
            scripted = st.script.pop(0) if st.script else None
        prompt_tokens = sum(len(t) for t in texts(b)) // 4 + (cached["tokens"] if cached else 0)
        if scripted is not None:
            if "status" in scripted and "body" in scripted:
                return self.reply(scripted["status"], scripted["body"])
            doc = dict(scripted)
            doc.setdefault("usageMetadata", {"promptTokenCount": prompt_tokens, "candidatesTokenCount": 5,
                                             "totalTokenCount": prompt_tokens + 5})
            return self.reply(200, doc)
        # the language marker and the tools, from the request or its cache
        all_text = texts(cached["systemInstruction"]) + texts(cached["contents"]) if cached else []
        all_text += texts(b.get("systemInstruction")) + texts(contents)
        langs = LANG.findall("\n".join(all_text))
        lang = langs[-1] if langs else "??"
        tools = (cached["tools"] if cached else b.get("tools")) or []
        decls = [d for t in tools for d in t.get("functionDeclarations", [])]
        last = contents[-1]
        responses = [p["functionResponse"] for p in last.get("parts", []) if "functionResponse" in p]
        user_text = ""
        for c in reversed(contents):
            if c.get("role") == "user":
                ts = [p["text"] for p in c.get("parts", []) if "text" in p]
                if ts:
                    user_text = ts[-1]
                    break
        parts = None
        if responses:
            text = "[%s] tool said: %s" % (lang, json.dumps(responses[0].get("response"), sort_keys=True))
        else:
            want = None
            if "use the test tool" in user_text:
                want = next((d for d in decls if d.get("name") != "handoff_to_human"), None)
            elif "human please" in user_text:
                want = next((d for d in decls if d.get("name") == "handoff_to_human"), None)
            if want:
                args = {"reason": "the customer asked"} if want["name"] == "handoff_to_human" else {"q": user_text}
                parts = [{"functionCall": {"name": want["name"], "args": args}}]
            text = "[%s] echo: %s" % (lang, user_text)
        if parts is None:
            parts = [{"text": text}]
        out_tokens = max(1, len(json.dumps(parts)) // 4)
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt_tokens + out_tokens}
        if cached:
            usage["cachedContentTokenCount"] = cached["tokens"]
        return self.reply(200, {"candidates": [{"content": {"role": "model", "parts": parts},
                                                "finishReason": "STOP", "index": 0}],
                                "usageMetadata": usage, "modelVersion": model})

    def control(self, method, path, body):
        st = self.st
        with st.lock:
            if path == "/_requests" and method == "GET":
                return self.reply(200, st.requests)
            if path == "/_reset" and method == "POST":
                st.reset()
                return self.reply(200, {"ok": True})
            if path == "/_faults" and method == "POST":
                f = dict(body or {})
                f.setdefault("count", 1)
                st.faults.append(f)
                return self.reply(200, {"ok": True})
            if path == "/_extraction" and method == "POST":
                st.extraction = body
                return self.reply(200, {"ok": True})
            if path == "/_script" and method == "POST":
                st.script.extend((body or {}).get("answers", []))
                return self.reply(200, {"ok": True})
            if path == "/_caches" and method == "GET":
                live = [self.cache_doc(c) for cid in list(st.caches) if (c := st.cache(cid))]
                return self.reply(200, live)
            if path == "/_expire" and method == "POST":
                cid = (body or {}).get("name", "").split("/", 1)[-1]
                if cid in st.caches:
                    st.caches[cid]["expire"] = time.time() - 1
                return self.reply(200, {"ok": True})
        return self.reply(404, {"error": "unknown control path"})


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
    ap.add_argument("--key", default="test-key")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", a.port), Handler)
    srv.state = State(a.key)
    print("fake gemini listening on http://127.0.0.1:%d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
