"""A scripted OpenAI-compatible streaming server for the benchmark client's protocol tests.

Real servers cannot be made to refuse, break or stall on demand, so the client's handling of
those cases is tested against this stand-in (the standard library's HTTP server in a thread,
real sockets and server-sent events). Each request's behaviour is picked by its `slo_class`:

- ok: `max_tokens` chunks of one word each `gap_s` apart, finish "length", usage, slo_report;
- merged: two tokens per chunk (text only; the usage has the true count);
- short: one token fewer than asked, finish "stop" (a server that ignored ignore_eos);
- reject: HTTP 429 {"error": {"code": "queue_full"}} with Retry-After;
- busy: HTTP 503 {"error": {"code": "loading"}};
- broken: two tokens, then an error event {"error": {"code": "internal"}} and [DONE];
- slow: waits `slow_s` before answering (a client time limit below that times out).
Every body is kept in `bodies` for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, gap_s: float = 0.002, slow_s: float = 2.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gap_s, self.slow_s = gap_s, slow_s
        self.bodies: list[dict[str, Any]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and closed its connection: expected in these tests

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StandIn

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, payload: dict[str, Any], **headers: str) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "stand-in", "owned_by": "t"}]})
        else:
            self._json(404, {"error": {"message": "not found", "code": "not_found"}})

    def _event(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        kind = body.get("slo_class", "ok")
        if kind == "reject":
            return self._json(429, {"error": {"message": "queue is full", "type": "rejected",
                                              "param": None, "code": "queue_full"}},
                              **{"Retry-After": "1"})
        if kind == "busy":
            return self._json(503, {"error": {"message": "loading", "code": "loading"}})
        if kind == "slow":
            time.sleep(self.server.slow_s)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        n = int(body["max_tokens"]) - (1 if kind == "short" else 0)
        per_chunk = 2 if kind == "merged" else 1
        sent = 0
        while sent < n:
            if kind == "broken" and sent == 2:
                self._event({"error": {"message": "engine failed", "code": "internal"}})
                self._event("[DONE]")
                return
            k = min(per_chunk, n - sent)
            sent += k
            time.sleep(self.server.gap_s)
            self._event({"choices": [{"index": 0, "text": " w" * k, "finish_reason": None}]})
        finish = "stop" if kind == "short" else "length"
        report = {"slo_class": kind, "met": True, "missed": []}
        self._event({"choices": [{"index": 0, "text": "", "finish_reason": finish}],
                     "slo_report": report})
        self._event({"choices": [], "usage": {"prompt_tokens": len(body["prompt"].split()),
                                              "completion_tokens": n}})
        self._event("[DONE]")


@contextmanager
def standin(**kwargs: Any) -> Iterator[StandIn]:
    server = StandIn(**kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
