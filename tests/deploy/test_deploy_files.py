"""What can be checked of the compose file and Dockerfiles without a Docker engine."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

from app.core.config import ApiSettings
from tools.stack import ROOT
from worker.config import WorkerSettings

SETTINGS = {
    f"LLM_TASKS_{name.upper()}"
    for model in (ApiSettings, WorkerSettings)
    for name in model.model_fields
}
DOCKERFILES = [ROOT / "Dockerfile.api", ROOT / "Dockerfile.worker"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_four_services(compose: dict):
    assert set(compose["services"]) == {"redis", "api", "worker", "flower"}
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert "--maxmemory-policy noeviction" in redis_command
    assert "--appendonly yes" in redis_command
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_every_setting_named_in_deploy_files_exists(compose: dict):
    texts = [(ROOT / "docker-compose.yml").read_text()] + [p.read_text() for p in DOCKERFILES]
    named = {m for text in texts for m in re.findall(r"LLM_TASKS_[A-Z_]+", text)}
    assert named, "the deploy files configure the service through its settings"
    assert named <= SETTINGS, f"unknown settings: {named - SETTINGS}"


def test_commands_name_real_modules(compose: dict):
    worker_command = compose["services"]["worker"]["command"]
    app_module = worker_command[worker_command.index("-A") + 1]
    assert hasattr(importlib.import_module(app_module), "app")
    api_cmd = (ROOT / "Dockerfile.api").read_text()
    module, attribute = re.search(r"uvicorn (\S+):(\S+)", api_cmd).groups()
    assert hasattr(importlib.import_module(module), attribute)
    assert "python -m worker.models" in (ROOT / "Dockerfile.worker").read_text()
    assert importlib.util.find_spec("worker.models") is not None


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists(dockerfile: Path):
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name}: {source} missing"


def test_the_api_image_carries_no_torch():
    text = (ROOT / "Dockerfile.api").read_text()
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs == ['RUN pip install ".[api]" \\']
    assert "COPY worker" not in text
