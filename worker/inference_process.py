"""The inference process: the models and their device's inference thread, in a process of
their own beside the worker's Celery threads.

A decode step is a few hundred torch operations, and the inference thread gives the GIL
up and takes it back around each one. In the worker's process, Celery's threads (the
consumer loop, the task threads, the result writes) hold it in between, so every step
waits for them. So by default (``LLM_TASKS_INFERENCE_PROCESS``) each worker process
starts one inference process: it loads the models (the GPU holds one copy per worker),
runs their micro-batchers (:mod:`worker.batchers`) on its device loop
(:mod:`worker.device_loop`) from its main thread, and answers over a pipe. The task
threads keep the tokenizers: they send token ids and texts, and get token ids, labels and
summaries back.

Streaming and cancellation cross the pipe as messages, never as callables: a request's
:class:`~worker.device_loop.RowControl` stays in the worker; every ``STREAM_INTERVAL``
the inference process sends the tokens of each streaming row so far (its own control for
the row keeps them), and the worker, at the same pace, asks each row's ``should_stop``
and sends a cancel when it says yes (the row's control there answers it). If the inference
process dies, every request in flight fails with :class:`InferenceProcessLost` (a
transient error: the task retries it) and the next request starts a new process.
"""

import itertools
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing.connection import Connection
from typing import Any

from contracts.logs import configure
from worker.batchers import batcher_for
from worker.config import get_settings
from worker.device_loop import MicroBatcher, RowControl, call_safely, device_loop
from worker.errors import TransientError
from worker.metrics import flush, start_flushing
from worker.models import ModelRefused, get_registry

logger = logging.getLogger(__name__)

#: Seconds between two token updates of a streaming row, and between two cancel checks.
STREAM_INTERVAL = 0.05


class InferenceProcessLost(TransientError):
    """The inference process ended while it had this request."""


Initializer = Callable[[], None]


@dataclass
class _Call:
    control: RowControl
    future: "Future[Any]" = field(default_factory=Future)
    cancel_sent: bool = False


class InferenceProcess:
    """The worker's side: starts the process on first use and hands it requests."""

    def __init__(self, initializer: Initializer | None = None) -> None:
        #: Run first thing in the new process (a picklable, module-level function).
        self.initializer = initializer
        #: The models the process loads when it starts (names; None: every declared one).
        #: Others load on their first request.
        self.models: list[str] | None = None
        self._lock = threading.Lock()  # guards the connection, the calls and sending
        self._conn: Connection | None = None
        self._pid: int | None = None
        self._calls: dict[int, _Call] = {}
        self._ids = itertools.count()

    def start(self) -> None:
        """Start the process (it loads every model) unless it runs; returns once it is ready."""
        with self._lock:
            self._connection()

    def close(self) -> None:
        """Stop the process: it exits when its pipe closes; requests in flight fail."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return self._pid if self._conn is not None else None

    def submit_many(
        self, model: str, items: Sequence[Any], controls: Sequence[RowControl] | None = None
    ) -> list[Any]:
        """Run ``items`` on the model named ``model`` (or a role's default model); blocks
        until all are done. Each item's control is called in this process."""
        calls = []
        with self._lock:
            conn = self._connection()
            for item, control in zip(items, controls or [RowControl()] * len(items), strict=True):
                call = _Call(control)
                call_id = next(self._ids)
                self._calls[call_id] = call
                calls.append(call)
                streaming = control.on_tokens is not None
                # If the process is gone, its reply thread fails every call.
                with suppress(OSError):
                    conn.send(("run", call_id, model, item, streaming))
        return [call.future.result() for call in calls]

    def _connection(self) -> Connection:
        if self._conn is not None:
            return self._conn
        context = multiprocessing.get_context("spawn")  # CUDA does not survive a fork
        mine, theirs = context.Pipe()
        process = context.Process(
            target=serve,
            args=(theirs, self.initializer, self.models),
            name="llm-tasks-inference",
            daemon=True,
        )
        process.start()
        theirs.close()
        try:
            kind, detail = mine.recv()
        except EOFError:
            kind, detail = "failed", "it exited"
        if kind == "refused":
            process.join(5)
            raise ModelRefused(detail)
        if kind != "ready":
            process.join(5)
            detail = f"{detail} (exit code {process.exitcode})"
            raise RuntimeError(f"the inference process did not start: {detail}")
        logger.info("inference process %d ready: %s", process.pid, detail)
        self._conn, self._pid = mine, process.pid
        threading.Thread(
            target=self._replies, args=(mine, process), name="inference-replies", daemon=True
        ).start()
        return mine

    def _replies(self, conn: Connection, process: Any) -> None:
        checked = time.monotonic()
        try:
            while True:
                if conn.poll(STREAM_INTERVAL):
                    self._handle(conn.recv())
                if time.monotonic() - checked >= STREAM_INTERVAL:
                    checked = time.monotonic()
                    self._send_cancels(conn)
        except (EOFError, OSError):
            pass
        with self._lock:
            if self._conn is conn:
                self._conn = None
            lost, self._calls = self._calls, {}
        conn.close()
        process.join(5)
        message = f"the inference process ended (exit code {process.exitcode})"
        if lost:
            logger.error("%s with %d requests in flight: they are retried", message, len(lost))
        for call in lost.values():
            call.future.set_exception(InferenceProcessLost(message))

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "tokens":
            for call_id, tokens in message[1].items():
                with self._lock:
                    call = self._calls.get(call_id)
                if call is not None and call.control.on_tokens is not None:
                    call_safely(call.control.on_tokens, tokens)
            return
        _, call_id, value = message
        with self._lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            return
        if kind == "done":
            call.future.set_result(value)
        else:
            call.future.set_exception(value)

    def _send_cancels(self, conn: Connection) -> None:
        with self._lock:
            watched = [
                (i, c.control.should_stop, c)
                for i, c in self._calls.items()
                if c.control.should_stop is not None and not c.cancel_sent
            ]
        for call_id, should_stop, call in watched:
            assert should_stop is not None
            try:
                stop = should_stop()
            except Exception:
                logger.exception("a cancellation check failed; the generation goes on")
                continue
            if stop:
                call.cancel_sent = True
                with self._lock:
                    conn.send(("cancel", call_id))


@lru_cache
def inference_process() -> InferenceProcess:
    """This worker process's inference process (started on first use)."""
    return InferenceProcess()


# --- the inference process's side -------------------------------------------------------


class _Server:
    """Takes requests from the pipe (a thread of its own) into the batchers; the main
    thread runs the device loop and sends results and token updates back."""

    def __init__(self, conn: Connection, names: list[str] | None) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        registry = get_registry()
        names = names or [model.name for model in get_settings().declared_models()]
        models = {name: registry.get(name) for name in names}
        devices = {str(loaded.device) for loaded in models.values()}
        assert len(devices) == 1, f"every model on one device, not {devices}"
        self.loop = device_loop(next(iter(models.values())).device, served_here=True)
        self._batchers: dict[str, MicroBatcher] = {
            name: batcher_for(loaded) for name, loaded in models.items()
        }
        self._canceled: set[int] = set()
        self._streams: dict[int, list[int]] = {}
        self._streamed_at = time.monotonic()
        self.ready = {name: f"{m.name} on {m.device}" for name, m in models.items()}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except OSError:
                os._exit(0)  # the worker is gone

    def read_forever(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "run":
                    self._enqueue(*message[1:])
                elif message[0] == "cancel":
                    self._canceled.add(message[1])
        except (EOFError, OSError):
            flush()
            os._exit(0)  # the worker is gone: so is its inference process

    def _batcher(self, model: str) -> MicroBatcher:
        """The model's batcher (a model not loaded at start loads on its first request)."""
        if model not in self._batchers:
            self._batchers[model] = batcher_for(get_registry().get(model))
        return self._batchers[model]

    def _enqueue(self, call_id: int, model: str, item: Any, streaming: bool) -> None:
        try:
            batcher = self._batcher(model)
        except Exception as error:
            self.send(("error", call_id, RuntimeError(f"model {model}: {error}")))
            return
        [pending] = batcher.enqueue([item], [self._control(call_id, streaming)])
        pending.future.add_done_callback(lambda future: self._reply(call_id, future))

    def _reply(self, call_id: int, future: "Future[Any]") -> None:
        self._streams.pop(call_id, None)
        self._canceled.discard(call_id)
        error = future.exception()
        if error is None:
            self.send(("done", call_id, future.result()))
            return
        try:
            pickle.dumps(error)
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
        self.send(("error", call_id, error))

    def _control(self, call_id: int, streaming: bool) -> RowControl:
        """The row's control here: stopped by a cancel from the worker, its tokens kept for
        the next update."""

        def on_tokens(tokens: list[int]) -> None:
            self._streams[call_id] = tokens

        return RowControl(
            on_tokens=on_tokens if streaming else None,
            should_stop=lambda: call_id in self._canceled,
        )

    def stream(self) -> None:
        """Between rounds: the streaming rows' tokens, at most every ``STREAM_INTERVAL``."""
        if self._streams and time.monotonic() - self._streamed_at >= STREAM_INTERVAL:
            self._streamed_at = time.monotonic()
            update = {call_id: list(tokens) for call_id, tokens in self._streams.items()}
            self._streams.clear()
            self.send(("tokens", update))


def serve(conn: Connection, initializer: Initializer | None, models: list[str] | None) -> None:
    """The inference process's main function."""
    settings = get_settings()
    configure(settings.log_format, "worker")
    try:
        if initializer is not None:
            initializer()
        server = _Server(conn, models)
    except ModelRefused as refused:
        conn.send(("refused", str(refused)))
        return
    except Exception as error:
        logging.getLogger(__name__).exception("the inference process could not start")
        conn.send(("failed", f"{type(error).__name__}: {error}"))
        return
    start_flushing()
    threading.Thread(target=server.read_forever, name="requests", daemon=True).start()
    server.send(("ready", server.ready))
    server.loop.serve(between_rounds=server.stream)
