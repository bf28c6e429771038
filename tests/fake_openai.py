"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for the judge tests (no network)."""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"prompt_tokens": 50, "completion_tokens": 10, "total_tokens": 60}
_A1 = re.compile(r"\[Assistant 1's answer begins\]\n(.*?)\n\[Assistant 1's answer ends\]", re.S)
_A2 = re.compile(r"\[Assistant 2's answer begins\]\n(.*?)\n\[Assistant 2's answer ends\]", re.S)


class FakeOpenAI:
    """Minimal POST /v1/chat/completions. Behaviours are dicts:
    {"text": str}, {"status": int}, {"raw": bytes}, optional "sleep": seconds before answering."""

    def __init__(self):
        self.behaviours: deque = deque()
        self.ratings: dict[str, int] = {}  # answer text -> rating given by the default responder
        self.first_position_bonus = 0
        self.delay = 0.0  # added to every request (concurrency test)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                fake._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def n_requests(self) -> int:
        with self.lock:
            return len(self.requests)

    def script(self, *behaviours):
        self.behaviours.extend(behaviours)

    def default_reply(self, body: dict) -> str:
        user = body["messages"][-1]["content"]
        a1, a2 = _A1.search(user).group(1), _A2.search(user).group(1)
        s1 = min(10, self.ratings[a1] + self.first_position_bonus)
        s2 = self.ratings[a2]
        return f"{s1} {s2}\nAssistant 1 and Assistant 2 were rated on content."

    def _handle(self, h: BaseHTTPRequestHandler):
        length = int(h.headers.get("Content-Length", 0))
        body = json.loads(h.rfile.read(length) or b"{}")
        with self.lock:
            self.requests.append(body)
            self.auth.append(h.headers.get("Authorization", ""))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            beh = self.behaviours.popleft() if self.behaviours else None
        try:
            if h.path != "/v1/chat/completions":
                return self._send(h, 404, json.dumps({"error": {"message": "not found"}}).encode())
            if self.delay:
                time.sleep(self.delay)
            if beh is None:
                beh = {"text": self.default_reply(body)}
            if beh.get("sleep"):
                time.sleep(beh["sleep"])
            if "status" in beh:
                err = {"error": {"message": f"scripted {beh['status']}", "type": "test", "code": None}}
                return self._send(h, beh["status"], json.dumps(err).encode())
            if "raw" in beh:
                return self._send(h, 200, beh["raw"])
            completion = {
                "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": beh["text"]},
                             "finish_reason": "stop"}],
                "usage": USAGE,
            }
            self._send(h, 200, json.dumps(completion).encode())
        finally:
            with self.lock:
                self.in_flight -= 1

    @staticmethod
    def _send(h, status: int, payload: bytes):
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def close(self):
        self.server.shutdown()
        self.server.server_close()
