"""A local OpenAI-compatible chat-completions server (127.0.0.1, free port) that answers
from the offline provider and injects the faults real endpoints produce.

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``. Faults are planned per
request body: the first ``len(plan)`` times a body is seen, the server answers with the
planned fault in order (``429`` with Retry-After, ``500``, ``timeout`` = sleep past the
client's timeout, ``malformed`` = a 200 whose body is not JSON), then with the answer.
Which bodies get faults is a pure function of the body (``fault_every``), so the test
knows what to expect. Every hit is counted in ``stats``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pipelines.text.offline import OfflineLLM
from pipelines.text.providers import approx_tokens

FAULTS = ("429", "500", "timeout", "malformed")


class StubLLMServer:
    def __init__(
        self,
        llm: OfflineLLM,
        *,
        model: str = "offline-knowledge",
        fault_every: int = 4,
        timeout_sleep: float = 1.5,
        retry_after: str = "0",
    ):
        self.llm = llm
        self.model = model
        self.fault_every = fault_every
        self.timeout_sleep = timeout_sleep
        self.retry_after = retry_after
        self.stats: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.auth_headers: set[str] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    body = {"object": "list", "data": [{"id": server.model, "object": "model"}]}
                    return self._send(200, json.dumps(body).encode())
                self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n)
                with server._lock:
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                req = json.loads(raw)
                if req.get("model") != server.model:
                    server.stats["unknown_model"] += 1
                    msg = {"error": {"message": f"model {req.get('model')!r} not found"}}
                    return self._send(404, json.dumps(msg).encode())
                fault = server._plan(raw)
                if fault == "429":
                    return self._send(
                        429,
                        b'{"error": {"message": "rate limited"}}',
                        {"Retry-After": server.retry_after},
                    )
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                    return self._send(500, b'{"error": {"message": "too late"}}')
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"message": ')
                text = server.llm.answer(
                    req["messages"], req.get("temperature", 1.0), req.get("seed")
                )
                prompt = " ".join(m["content"] for m in req["messages"])
                body = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": 0,
                    "model": server.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": approx_tokens(prompt),
                        "completion_tokens": approx_tokens(text),
                        "total_tokens": approx_tokens(prompt) + approx_tokens(text),
                    },
                }
                server.stats["ok"] += 1
                return self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _plan(self, raw: bytes) -> str | None:
        """The fault for this hit of this body (None = answer)."""
        digest = hashlib.sha256(raw).digest()
        with self._lock:
            hit = self._seen[raw]
            self._seen[raw] += 1
        if digest[0] % self.fault_every:
            return None
        plan = FAULTS[digest[1] % len(FAULTS) :][:2]  # one or two faults, then the answer
        fault = plan[hit] if hit < len(plan) else None
        if fault:
            with self._lock:
                self.stats[fault] += 1
        return fault

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> StubLLMServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
