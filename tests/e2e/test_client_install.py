"""The client installs alone (its lock, ``requirements/client.txt``, then ``client/``, in a
fresh virtualenv: the ``llm_tasks`` package and nothing else of the service — no torch,
Celery, Redis or FastAPI) and from there watches a story job live."""

import subprocess
import sys
from pathlib import Path

import pytest

from tools.stack import ROOT, clean_env

pytestmark = pytest.mark.e2e

#: The top-level names the client's distribution installs into site-packages.
TOP_LEVEL = """
from importlib.metadata import distribution
files = distribution("llm-tasks-client").files or []
print(*sorted({f.parts[0] for f in files if f.parts[0] != ".." and ".dist-info" not in f.parts[0]
               and f.parts[0] != "__pycache__"}))
"""
SERVICE_ONLY = {"torch", "transformers", "celery", "kombu", "redis", "fastapi", "uvicorn"}


def test_the_client_installs_alone_and_watches_a_story(api_url: str, tmp_path: Path):
    venv = tmp_path / "client-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)
    pip = [venv / "bin" / "pip", "install", "--quiet", "--no-deps"]
    for arguments in (
        ["--require-hashes", "-r", str(ROOT / "requirements" / "client.txt")],  # the lock
        ["--no-build-isolation", "--no-index", str(ROOT / "client")],  # then the client
    ):
        installed = subprocess.run(
            [*pip, *arguments], capture_output=True, text=True, timeout=600, env=clean_env()
        )
        assert installed.returncode == 0, installed.stderr
    freeze = subprocess.run(
        [venv / "bin" / "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    packages = {line.split("==")[0].split(" @ ")[0].lower() for line in freeze.split()}
    assert packages & SERVICE_ONLY == set()
    assert {"httpx", "httpx-sse", "pydantic", "llm-tasks-client"} <= packages
    assert "llm-tasks" not in packages
    # What it put on the path: one top-level package, llm_tasks (and the command).
    listing = subprocess.run(
        [venv / "bin" / "python", "-c", TOP_LEVEL], capture_output=True, text=True, check=True
    ).stdout
    assert listing.split() == ["llm_tasks"]

    watched = subprocess.run(
        [venv / "bin" / "llm-tasks", "--url", api_url, "submit", "story", "a ship", "--watch"],
        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=tmp_path,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    for step in ("outline", "expand", "dialogue"):
        assert f"--- {step} ---" in watched.stdout
        assert f"[{step}] succeeded" in watched.stdout
