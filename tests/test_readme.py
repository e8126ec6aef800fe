"""The README stays true: every setting is in its configuration table."""

import re

from app.core.config import ApiSettings
from tools.stack import ROOT
from worker.config import WorkerSettings


def test_every_setting_is_documented():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(LLM_TASKS_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    settings = {
        f"LLM_TASKS_{name.upper()}"
        for model in (ApiSettings, WorkerSettings)
        for name in model.model_fields
    }
    assert documented == settings


def test_readme_shows_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
