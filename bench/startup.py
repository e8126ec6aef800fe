"""Startup costs: API import time, and each tiny model's build and load time.

Builds the tiny models from scratch into a temporary cache (as a fresh machine would),
then loads each one in a fresh process, the way a worker does at start.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

_IMPORT_API = (
    "import time; t = time.perf_counter(); import app.main; print(time.perf_counter() - t)"
)


def api_import_seconds(runs: int = 5) -> dict[str, float]:
    samples = [
        float(
            subprocess.run(
                [sys.executable, "-c", _IMPORT_API],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for _ in range(runs)
    ]
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def tiny_models(cache_dir: Path) -> dict[str, object]:
    env = {**os.environ, "LLM_TASKS_MODEL_CACHE_DIR": str(cache_dir)}
    build = subprocess.run(
        [sys.executable, "-m", "worker.tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    build_seconds = json.loads(build.stdout.splitlines()[-1])["build_seconds"]
    load = subprocess.run(
        [sys.executable, "-m", "worker.models"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    loads = json.loads(load.stdout)
    return {
        "build_seconds": build_seconds,
        "load_seconds": {role: info["load_seconds"] for role, info in loads.items()},
    }


def machine() -> dict[str, object]:
    import torch

    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        report = {
            "machine": machine(),
            "api_import_seconds": api_import_seconds(),
            "tiny_models": tiny_models(Path(cache)),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
