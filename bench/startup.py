"""Startup costs: API import time, and each tiny model's build and load time.

Builds the tiny models from scratch into a temporary cache (as a fresh machine would),
then loads each one in a fresh process, the way a worker does at start.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import machine, save

ROOT = Path(__file__).resolve().parent.parent

_IMPORT_API = (
    "import time; t = time.perf_counter(); import app.main; print(time.perf_counter() - t)"
)


def _python(*args: str, env: dict[str, str] | None = None) -> str:
    """What a fresh interpreter prints, run from the project root."""
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def api_import_seconds(runs: int = 5) -> dict[str, float]:
    samples = [float(_python("-c", _IMPORT_API)) for _ in range(runs)]
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def tiny_models(cache_dir: Path) -> dict[str, object]:
    env = {**os.environ, "LLM_TASKS_MODEL_CACHE_DIR": str(cache_dir)}
    build = _python("-m", "tiny_models", env=env)
    build_seconds = json.loads(build.splitlines()[-1])["build_seconds"]
    loads = json.loads(_python("-m", "worker.models", env=env))
    return {
        "build_seconds": build_seconds,
        "load_seconds": {role: info["load_seconds"] for role, info in loads.items()},
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        report = {
            "machine": machine(),
            "api_import_seconds": api_import_seconds(),
            "tiny_models": tiny_models(Path(cache)),
        }
    save("startup", report)


if __name__ == "__main__":
    main()
