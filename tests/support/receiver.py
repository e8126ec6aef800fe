"""A webhook receiver on 127.0.0.1, as a client's server would be: it verifies every
delivery with the ``standardwebhooks`` library (the specification's own, not ours) and
answers as each path's script says."""

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    job: dict[str, Any]  # the verified body
    received_at: float
    answered: int  # the status code this receiver answered

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def event(self) -> str:
        return self.headers["webhook-event"]


@dataclass
class Receiver:
    """Paths: ``/ok/…`` answers 204; ``/fail-once/…`` 500 the first time, then 204;
    ``/redirect/…`` 307 to ``/ok/…``; ``/hang/…`` never answers until :meth:`release`."""

    secret: str
    port: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # paths of deliveries that did not verify
    released: threading.Event = field(default_factory=threading.Event)
    hanging: threading.Event = field(default_factory=threading.Event)
    _seen: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, condition, timeout: float = 60) -> list[Delivery]:
        """Until ``condition(deliveries to path)`` holds; returns them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.at(path)
            if condition(found):
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path}: never got there; received {self.at(path)}")

    def release(self) -> None:
        self.released.set()

    def answer(self, path: str) -> int | None:
        with self._lock:
            first = path not in self._seen
            self._seen.add(path)
        if path.startswith("/fail-once/"):
            return 500 if first else 204
        if path.startswith("/redirect/"):
            return 307
        if path.startswith("/hang/"):
            return None
        return 204

    def record(self, path: str, headers: dict[str, str], body: bytes, code: int) -> None:
        try:
            job = Webhook(self.secret).verify(body, headers)
        except Exception:
            with self._lock:
                self.refused.append(path)
            return
        with self._lock:
            self.deliveries.append(Delivery(path, headers, body, job, time.time(), code))


@contextlib.contextmanager
def webhook_receiver(secret: str) -> Iterator[Receiver]:
    receiver = Receiver(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            code = receiver.answer(self.path)
            if code is None:
                receiver.record(self.path, headers, body, 0)
                receiver.hanging.set()
                receiver.released.wait(60)
                return
            receiver.record(self.path, headers, body, code)
            self.send_response(code)
            if code == 307:
                self.send_header("location", receiver.url(self.path.replace("/redirect/", "/ok/")))
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        server.shutdown()
        server.server_close()
