"""A local OpenAI-compatible server (127.0.0.1, free port) that answers from the offline
provider and injects the faults real endpoints produce.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (the prompt as text, the
answer as ``choices[0].text``), ``GET /v1/models``. Faults are planned per request body:
the first ``len(plan)`` times a body is seen, the server answers with the planned fault in
order (``429`` with Retry-After, ``500``, ``timeout`` = sleep past the client's timeout,
``malformed`` = a 200 whose body is not JSON), then with the answer. Which bodies get faults
is a pure function of the body (``fault_every``), so the test knows what to expect.
``script`` is a fixed list of faults for the first requests whatever their body (``429``,
``503`` with Retry-After, ``500``, ``quota`` = OpenAI's 429 ``insufficient_quota``).

Model behaviours: ``completions_only`` refuses the chat route as OpenAI does for
``davinci-002`` (HTTP 404, "This is not a chat model..."); ``reasoning`` refuses
``max_tokens`` on the chat route as the o-series does (HTTP 400, "Use
'max_completion_tokens' instead"); ``served_model`` is the ``model`` the replies name
(chatglm.cpp's server names every reply ``default-model``). Every hit is counted in
``stats`` (also per route and per length parameter).
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
NOT_A_CHAT_MODEL = (
    "This is not a chat model and thus not supported in the v1/chat/completions endpoint. "
    "Did you mean to use v1/completions?"
)
NO_MAX_TOKENS = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)
QUOTA = "You exceeded your current quota, please check your plan and billing details."


class StubLLMServer:
    def __init__(
        self,
        llm: OfflineLLM,
        *,
        model: str = "offline-knowledge",
        fault_every: int = 4,
        timeout_sleep: float = 1.5,
        retry_after: str = "0",
        script: tuple[str, ...] = (),
        completions_only: bool = False,
        reasoning: bool = False,
        served_model: str | None = None,
    ):
        self.llm = llm
        self.model = model
        self.script = list(script)
        self.completions_only = completions_only
        self.reasoning = reasoning
        self.served_model = served_model or model
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

            def _error(self, code: int, message: str, kind: str, err_code=None, headers=None):
                body = {"error": {"message": message, "type": kind, "code": err_code}}
                return self._send(code, json.dumps(body).encode(), headers)

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n)
                with server._lock:
                    server.auth_headers.add(self.headers.get("Authorization", ""))
                path = self.path.rstrip("/")
                if path.endswith("/chat/completions"):
                    route = "chat"
                elif path.endswith("/completions"):
                    route = "completions"
                else:
                    return self._send(404, b'{"error": {"message": "no such route"}}')
                req = json.loads(raw)
                if req.get("model") != server.model:
                    server.stats["unknown_model"] += 1
                    msg = {"error": {"message": f"model {req.get('model')!r} not found"}}
                    return self._send(404, json.dumps(msg).encode())
                if route == "chat" and server.completions_only:
                    server.stats["refused_chat"] += 1
                    return self._error(404, NOT_A_CHAT_MODEL, "invalid_request_error")
                if route == "chat" and server.reasoning and "max_tokens" in req:
                    server.stats["refused_max_tokens"] += 1
                    return self._error(
                        400, NO_MAX_TOKENS, "invalid_request_error", "unsupported_parameter"
                    )
                fault = server._next_scripted() or server._plan(raw)
                retry = {"Retry-After": server.retry_after}
                if fault == "quota":
                    return self._error(429, QUOTA, "insufficient_quota", "insufficient_quota")
                if fault == "429":
                    return self._error(429, "rate limited", "requests", None, retry)
                if fault == "503":
                    return self._error(503, "overloaded", "server_error", None, retry)
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "internal error"}}')
                if fault == "timeout":
                    time.sleep(server.timeout_sleep)
                    return self._send(500, b'{"error": {"message": "too late"}}')
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"message": ')
                with server._lock:
                    server.stats[route] += 1
                    for key in ("max_tokens", "max_completion_tokens"):
                        server.stats[key] += key in req
                if route == "chat":
                    messages = req["messages"]
                else:  # a completions prompt: the text the model continues
                    messages = [{"role": "user", "content": str(req["prompt"]).strip()}]
                text = server.llm.answer(messages, req.get("temperature", 1.0), req.get("seed"))
                prompt = " ".join(m["content"] for m in messages)
                usage = {
                    "prompt_tokens": approx_tokens(prompt),
                    "completion_tokens": approx_tokens(text),
                    "total_tokens": approx_tokens(prompt) + approx_tokens(text),
                }
                if route == "chat":
                    choice = {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                    kind = "chat.completion"
                else:
                    choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    kind = "text_completion"
                body = {
                    "id": "cmpl-stub",
                    "object": kind,
                    "created": 0,
                    "model": server.served_model,
                    "choices": [choice],
                    "usage": usage,
                }
                server.stats["ok"] += 1
                return self._send(200, json.dumps(body).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _next_scripted(self) -> str | None:
        with self._lock:
            if not self.script:
                return None
            fault = self.script.pop(0)
            self.stats[fault] += 1
            return fault

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
