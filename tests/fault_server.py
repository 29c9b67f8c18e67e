"""A local HTTP server that injects the faults image downloads meet in the wild.

Used by tests/test_download.py and bench/bench_download.py; binds 127.0.0.1 on a free port.
Routes (``NAME`` is any string; the query string tunes the fault)::

    /good/NAME[?w=&h=][&cd=FILE]  JPEG, unique per NAME (see ``image_bytes``); cd= sends a
                                 Content-Disposition file name (which must be ignored)
    /png/NAME                    PNG
    /status/CODE/NAME            that HTTP status, small text body
    /redirect/NAME               302 -> /good/NAME
    /redirect_placeholder/NAME   302 -> /photo_unavailable.png (Flickr's dead-link behaviour)
    /photo_unavailable.png       the placeholder bytes
    /placeholder/NAME            200 with the placeholder bytes (detected by hash)
    /html/NAME                   200 text/html page
    /truncated/NAME              first half of a JPEG (complete HTTP response)
    /big/NAME?bytes=N[&chunked=1]  N-byte body, with Content-Length unless chunked
    /slow/NAME[?delay=S]         sleeps S (default ``slow_delay``) then a JPEG
    /drip/NAME[?every=S]         a JPEG sent one byte every S seconds
    /flaky/NAME?fails=K[&code=503][&retry_after=V]   K failures, then a JPEG
    /ratelimit/NAME?fails=K&retry_after=V|date:SECS  K x 429 + Retry-After, then a JPEG
    /reset/NAME[?fails=K][&rst=1]  closes the socket without a response (K times, or always)

Any route takes ``delay=S`` (sleep before answering). Every request is logged as a ``Hit``.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

PLACEHOLDER_PATH = Path("/work/shared/data/nus-wide/flickr_unavailable_placeholder.jpg")


def placeholder_bytes() -> bytes:
    """Flickr's photo-unavailable image if the shared copy is there, else a stand-in PNG."""
    if PLACEHOLDER_PATH.exists():
        return PLACEHOLDER_PATH.read_bytes()
    return image_bytes("__placeholder__", "PNG")


@lru_cache(maxsize=4096)
def image_bytes(name: str, fmt: str = "JPEG", size: tuple[int, int] = (48, 32)) -> bytes:
    """Deterministic image for ``name``: a colour gradient plus a little noise."""
    seed = hashlib.sha256(f"{name}|{fmt}|{size}".encode()).digest()
    w, h = size
    base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    tint = Image.new("RGB", (w, h), tuple(seed[:3]))
    noise = Image.frombytes("RGB", (w, h), (seed * (w * h * 3 // len(seed) + 1))[: w * h * 3])
    im = Image.blend(Image.blend(base, tint, 0.5), noise, 0.25)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class Hit:
    path: str
    status: int | None  # None: the connection was closed without a response
    t_start: float
    t_end: float
    complete: bool  # the whole response body was written


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms stalls
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.server.fault._handle(self)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    fault: FaultServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hanging up mid-request is the point of this server


class FaultServer:
    """``with FaultServer() as srv: srv.url("/good/a")``."""

    def __init__(
        self,
        *,
        slow_delay: float = 5.0,
        image_size: tuple[int, int] = (48, 32),
        image_pool: int | None = None,
    ):
        """``image_pool=N`` serves one of N pre-made images per name (cheap: for benchmarks)
        instead of a unique image per name."""
        self.slow_delay = slow_delay
        self.image_size = image_size
        self.image_pool = image_pool
        self.placeholder = placeholder_bytes()
        self.hits: list[Hit] = []
        self.max_inflight = 0
        self._inflight = 0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultServer:
        if self.image_pool:
            for i in range(self.image_pool):
                image_bytes(f"pool{i}", "JPEG", self.image_size)
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.fault = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.base_url + path

    # -- inspection --------------------------------------------------------------------------

    def requests_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [h for h in self.hits if h.path == path]

    def count(self, path: str) -> int:
        """Requests received for ``path`` (counted on arrival, before any delay)."""
        with self._lock:
            return self._counts[path]

    def total_requests(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def reset_log(self) -> None:
        """Forget the hits and the in-flight peak (the per-path fault counters stay)."""
        with self._lock:
            self.hits.clear()
            self.max_inflight = 0

    def expected_body(self, path: str) -> bytes:
        """The image a successful ``/good``-like path serves."""
        parts = urlsplit(path)
        route, _, name = parts.path.strip("/").partition("/")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return self._image(name, q, "PNG" if route == "png" else "JPEG")

    # -- serving -----------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        t0 = time.monotonic()
        parts = urlsplit(h.path)
        route, _, name = parts.path.strip("/").partition("/")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self._counts[h.path] += 1
            n = self._counts[h.path]  # 1-based count of requests for this exact path
            self._inflight += 1
            self.max_inflight = max(self.max_inflight, self._inflight)
        status: int | None = None
        complete = False
        try:
            status, complete = self._respond(h, route, name, q, n)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            h.close_connection = True
        finally:
            with self._lock:
                self._inflight -= 1
                self.hits.append(Hit(h.path, status, t0, time.monotonic(), complete))

    def _image(self, name: str, q: dict[str, str], fmt: str = "JPEG") -> bytes:
        size = (int(q.get("w", self.image_size[0])), int(q.get("h", self.image_size[1])))
        if self.image_pool:
            name = f"pool{int(hashlib.md5(name.encode()).hexdigest(), 16) % self.image_pool}"
        return image_bytes(name, fmt, size)

    def _respond(
        self, h: _Handler, route: str, name: str, q: dict[str, str], n: int
    ) -> tuple[int | None, bool]:
        if "delay" in q and route != "slow":
            time.sleep(float(q["delay"]))
        fails = int(q.get("fails", "1000000000"))
        if route == "good":
            extra = (
                {"Content-Disposition": f'attachment; filename="{q["cd"]}"'} if "cd" in q else {}
            )
            return _send(h, 200, self._image(name, q), "image/jpeg", extra)
        if route == "png":
            return _send(h, 200, self._image(name, q, "PNG"), "image/png")
        if route == "status":
            code, _, _ = name.partition("/")
            return _send(h, int(code), f"status {code}\n".encode(), "text/plain")
        if route == "redirect":
            return _send(h, 302, b"", "text/plain", {"Location": f"/good/{name}"})
        if route == "redirect_placeholder":
            return _send(h, 302, b"", "text/plain", {"Location": "/photo_unavailable.png"})
        if route in ("photo_unavailable.png", "placeholder"):
            return _send(h, 200, self.placeholder, "image/png")
        if route == "html":
            page = b"<!doctype html><html><body><h1>Not an image</h1></body></html>\n"
            return _send(h, 200, page, "text/html; charset=utf-8")
        if route == "truncated":
            body = self._image(name, q)
            return _send(h, 200, body[: len(body) // 2], "image/jpeg")
        if route == "big":
            size = int(q.get("bytes", "100000"))
            body = self._image(name, {}) + b"\0" * size
            return _send(h, 200, body[:size], "image/jpeg", chunked=q.get("chunked") == "1")
        if route == "slow":
            time.sleep(float(q.get("delay", self.slow_delay)))
            return _send(h, 200, self._image(name, q), "image/jpeg")
        if route == "drip":
            body = self._image(name, q)
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(float(q.get("every", "0.05")))
            return 200, True
        if route == "flaky":
            if n <= fails:
                code = int(q.get("code", "503"))
                extra = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
                return _send(h, code, b"try again later\n", "text/plain", extra)
            return _send(h, 200, self._image(name, q), "image/jpeg")
        if route == "ratelimit":
            if n <= fails:
                ra = q.get("retry_after", "1")
                if ra.startswith("date:"):
                    ra = email.utils.formatdate(time.time() + float(ra[5:]), usegmt=True)
                return _send(h, 429, b"slow down\n", "text/plain", {"Retry-After": ra})
            return _send(h, 200, self._image(name, q), "image/jpeg")
        if route == "reset":
            if n <= fails:
                if q.get("rst") == "1":
                    h.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                h.close_connection = True
                return None, False
            return _send(h, 200, self._image(name, q), "image/jpeg")
        return _send(h, 404, b"no such route\n", "text/plain")


def _send(
    h: _Handler,
    code: int,
    body: bytes,
    ctype: str,
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
) -> tuple[int, bool]:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    if chunked:
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(body), 8192):
            piece = body[i : i + 8192]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")
    else:
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    h.wfile.flush()
    return code, True


if __name__ == "__main__":  # manual poking: python tests/fault_server.py
    with FaultServer() as srv:
        print(srv.base_url, flush=True)
        threading.Event().wait()
