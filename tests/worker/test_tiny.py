import json
import threading
import time
from pathlib import Path

from filelock import FileLock

import tiny_models as tiny


def test_the_cache_folder_names_the_recipe(tmp_path: Path):
    assert tiny.tiny_models_dir(tmp_path) == tmp_path / f"tiny-{tiny.recipe_digest()}"
    assert tiny.recipe_digest() == tiny.recipe_digest()


def test_a_finished_build_is_reused(tiny_models_dir: Path):
    started = time.perf_counter()
    assert tiny.ensure_tiny_models(tiny_models_dir.parent) == tiny_models_dir
    assert time.perf_counter() - started < 5  # found, not rebuilt
    for role in tiny.ROLES:
        assert (tiny_models_dir / role / "config.json").exists()
        assert (tiny_models_dir / role / "tokenizer.json").exists()


def test_a_second_builder_waits_for_the_first_and_uses_its_build(tmp_path: Path):
    """While one process holds the build lock, another waits, then takes the finished folder."""
    target = tiny.tiny_models_dir(tmp_path)
    result: list[Path] = []
    with FileLock(str(target) + ".lock"):
        waiter = threading.Thread(target=lambda: result.append(tiny.ensure_tiny_models(tmp_path)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive(), "the second builder must wait for the lock"
        # What the first builder leaves behind when it finishes:
        target.mkdir(parents=True)
        (target / "COMPLETE.json").write_text(json.dumps({"build_seconds": {}}))
    waiter.join(timeout=10)
    assert result == [target]
    assert not list(tmp_path.glob(".building-*")), "the waiter must not build again"
