"""``make test-latest``: the upgrade canary.

A throwaway environment with the newest releases that ``pyproject.toml``'s ranges allow
(not the lock; torch stays at the lock's build), running the worker and contract tests.
It prints which packages are newer than the lock and what breaks, so that the team sees a
breaking release before a user's fresh install does. Exits non-zero when a test fails.

``python -m tools.latest [--venv PATH] [pip arguments ...]``
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.txt"
EXTRAS = "api,worker,dev"
TESTS = ["tests/worker", "tests/contracts"]
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)")


def pins(text: str) -> dict[str, str]:
    """``name: version`` of every ``name==version`` line (a lock, or ``pip freeze``)."""
    found = {}
    for line in text.splitlines():
        if match := _PIN.match(line.strip()):
            found[_normalized(match[1])] = match[2]
    return found


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def newer_than_lock(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per package whose installed version is not the locked one."""
    return [
        f"  {name}: {locked.get(name, '(not in the lock)')} -> {version}"
        for name, version in sorted(installed.items())
        if locked.get(name) != version and name != "llm-tasks"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-latest")
    arguments, pip_arguments = parser.parse_known_args()
    venv: Path = arguments.venv
    python = str(venv / "bin" / "python")
    locked = pins(LOCK.read_text())

    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write(f"torch=={locked['torch']}\n")  # the lock's build, never CUDA's
        constraints.flush()
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "--quiet", "--upgrade",
             "--upgrade-strategy", "eager", "-c", constraints.name, *pip_arguments,
             "-e", str(ROOT / "client"), "-e", f"{ROOT}[{EXTRAS}]"],
            check=True,
        )  # fmt: skip
    freeze = subprocess.run(
        [python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    changes = newer_than_lock(locked, pins(freeze))
    print("Newest releases allowed, where they differ from the lock:")
    print("\n".join(changes) if changes else "  none: the lock is up to date")
    print(f"Running {' '.join(TESTS)} on them:", flush=True)
    tests = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT, check=False
    )
    if tests.returncode == 0:
        print("The newest releases pass: `make upgrade` can take them.")
    else:
        print("The newest releases break the tests above: fix before `make upgrade`.")
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
