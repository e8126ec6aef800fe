"""The llm-tasks command against the real stack, and the README's client and command-line
examples run as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from llm_tasks import Client, Unauthorized
from tests.conftest import another_api
from tools.stack import ROOT, clean_env, free_port

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
README_URL = "http://127.0.0.1:8000"


def cli(api_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = clean_env(url=api_url) | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(
        ["llm-tasks", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_submit_a_story_and_watch_every_step(api_url: str, client: httpx.Client):
    done = cli(api_url, "submit", "story", "a lighthouse keeper", "--watch")
    assert done.returncode == 0, done.stderr
    job_id = re.match(r"job (\S+) queued \(story\)", done.stdout)[1]
    job = client.get(f"/v1/jobs/{job_id}").json()
    out = done.stdout
    for step, field in (("outline", "outline"), ("expand", "story"), ("dialogue", "dialogue")):
        assert f"[{step}] running" in out
        text = job["output"][field]
        ending = "" if text.endswith("\n") else "\n"
        assert f"--- {step} ---\n{text}{ending}[{step}] succeeded" in out  # streamed whole
        # Its bar, full (a step that ends before its first progress update has none).
        assert re.search(rf"\[{step}\] succeeded( \[#+\] (\d+)/\2)?\n", out)
    assert out.index("--- outline ---") < out.index("--- expand ---") < out.index("--- dialogue")
    assert out.rstrip().endswith("succeeded in " + out.rstrip().rsplit("succeeded in ", 1)[1])


def test_input_from_flags_and_json(api_url: str, client: httpx.Client):
    done = cli(
        api_url, "--json", "submit", "generate", "--set", "max_new_tokens=7",
        "--set", "temperature=0", "--priority", "8", "Once upon a time",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["priority"] == 8
    record = client.get(f"/v1/jobs/{job['id']}").json()
    assert record["kind"] == "generate"

    raw = json.dumps({"prompt": "The sea", "temperatures": [0.2, 1.2]})
    done = cli(api_url, "--json", "submit", "variations", "--input", raw, "--watch")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["event"] == "status" and events[-1]["event"] == "done"
    assert {e["data"]["step"] for e in events if e["event"] == "output"} == {
        "variation-1",
        "variation-2",
    }
    assert len(events[-1]["data"]["output"]["variations"]) == 2


def test_status_cancel_list_and_exit_codes(api_url: str):
    job_id = cli(api_url, "submit", "generate", "Later", "--delay", "60", "-q").stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id)
    status = cli(api_url, "status", job_id)
    assert "status    queued" in status.stdout
    assert json.loads(cli(api_url, "--json", "status", job_id).stdout)["status"] == "queued"
    assert cli(api_url, "cancel", job_id).stdout == f"job {job_id} canceled\n"
    again = cli(api_url, "cancel", job_id)
    assert again.returncode == 2
    assert "409 Job already finished" in again.stderr
    listed = cli(api_url, "list", "--status", "canceled", "--limit", "50")
    assert job_id in listed.stdout and listed.stdout.startswith("ID")
    page = json.loads(cli(api_url, "--json", "list", "--limit", "1").stdout)
    assert len(page["items"]) == 1 and page["next_cursor"]

    # A watched job that fails (or was canceled) exits 1; its error is shown.
    failed = cli(api_url, "submit", "generate", "FAULT: the CLI sees it", "--watch")
    assert failed.returncode == 1
    assert "error: InjectedFault: the CLI sees it" in failed.stdout
    assert cli(api_url, "watch", job_id).returncode == 1

    invalid = cli(api_url, "submit", "generate", "Hi", "--set", "temperature=5")
    assert invalid.returncode == 2
    assert "input.temperature" in invalid.stderr
    missing = cli(api_url, "status", "no-such-job")
    assert missing.returncode == 2 and "404" in missing.stderr
    nowhere = cli(f"http://127.0.0.1:{free_port()}", "list")
    assert nowhere.returncode == 2 and "cannot reach the API" in nowhere.stderr


def test_a_terminal_gets_live_progress_bars(api_url: str):
    """On a TTY, the step's bar is drawn (and redrawn in place) under its streaming text."""
    master, slave = os.openpty()
    env = clean_env(url=api_url) | {"PATH": f"{BIN}:{os.environ['PATH']}", "COLUMNS": "100"}
    process = subprocess.Popen(
        ["llm-tasks", "submit", "long_text", "A long road", "--set", "chunks=3",
         "--set", "chunk_tokens=24", "--watch"],
        stdout=slave, stderr=slave, env=env,
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert process.wait(timeout=60) == 0
    screen = b"".join(chunks).decode()
    assert re.search(r"\[long_text\] succeeded \[#{24}\] 3/3", screen)
    assert "--- long_text ---" in screen
    live = re.findall(r"\r\x1b\[K\[long_text\] \[[#.]{24}\] (\d)/3 ", screen)
    assert {"1", "2"} <= set(live)  # chunk by chunk, while the text streams
    assert "\x1b[A" in screen  # back up to the end of the text after each redraw


def readme_blocks(heading: str, language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_python_client_examples_run(api_url: str):
    blocks = readme_blocks("Python client", "python")
    assert len(blocks) == 2
    for code in blocks:
        assert README_URL in code
        done = subprocess.run(
            [sys.executable, "-c", code.replace(README_URL, api_url)],
            env=clean_env(), capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()
    first = subprocess.run(
        [sys.executable, "-c", blocks[0].replace(README_URL, api_url)],
        env=clean_env(), capture_output=True, text=True, timeout=180,
    ).stdout  # fmt: skip
    assert "outline: succeeded" in first
    assert "succeeded" in first and "['body', 'generate', 'input', 'temperature']" in first


def test_the_readme_command_line_examples_run(api_url: str):
    [script] = readme_blocks("Command line", "bash")
    assert README_URL in script
    env = clean_env() | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace(README_URL, api_url)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--- dialogue ---" in done.stdout
    assert "canceled" in done.stdout


def test_the_api_key_comes_from_a_flag_or_the_environment(
    stack_env: dict[str, str], log_dir: Path, worker
):
    with another_api(stack_env | {"LLM_TASKS_API_KEYS": "cli-key"}, log_dir) as url:
        refused = cli(url, "list")
        assert refused.returncode == 2 and "401" in refused.stderr
        by_flag = cli(url, "--api-key", "cli-key", "submit", "sentiment", "Fine", "-q")
        assert by_flag.returncode == 0, by_flag.stderr
        env = clean_env(url=url, api_key="cli-key") | {"PATH": f"{BIN}:{os.environ['PATH']}"}
        listed = subprocess.run(
            ["llm-tasks", "--json", "list"], env=env, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert by_flag.stdout.strip() in [job["id"] for job in json.loads(listed.stdout)["items"]]
        with Client(url, api_key="cli-key") as client:
            assert client.get(by_flag.stdout.strip()).kind.value == "sentiment"
        with Client(url, api_key="wrong") as client, pytest.raises(Unauthorized):
            client.list()


def test_a_retried_step_starts_its_text_over_on_the_terminal(api_url: str, client: httpx.Client):
    prompt = "SLOW: TRANSIENT_AFTER:1:6: The sea"
    done = cli(api_url, "submit", "generate", prompt, "--set", "max_new_tokens=12", "--watch")
    assert done.returncode == 0, done.stderr
    job_id = re.match(r"job (\S+) queued \(generate\)", done.stdout)[1]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["attempts"] == 2
    out = done.stdout
    # The first attempt's text, the notice, then the second attempt's text, whole.
    first, notice, second = out.partition("[generate] attempt 2: the text starts over\n")
    assert notice and "--- generate ---" in first
    text = job["output"]["text"]
    ending = "" if text.endswith("\n") else "\n"
    assert f"--- generate ---\n{text}{ending}[generate] succeeded" in second


def test_submit_a_chat_message_and_watch_the_reply(
    api_url: str, client: httpx.Client, tiny_models_dir: Path
):
    from transformers import AutoTokenizer

    history = json.dumps({"messages": [{"role": "system", "content": "Be brief."}]})
    done = cli(
        api_url, "submit", "chat", "Where does the fox live?", "--input", history,
        "--set", "max_new_tokens=30", "--watch",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = re.match(r"job (\S+) queued \(chat\)", done.stdout)[1]
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    # TEXT came after the conversation --input gave, as the user's message.
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where does the fox live?"},
    ]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models_dir / "generator")
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
    assert job["output"]["prompt_tokens"] == len(rendered["input_ids"])
    text = job["output"]["text"]
    assert f"--- chat ---\n{text}" in done.stdout or not text


def test_models_are_listed_by_the_client_and_the_command(api_url: str):
    with Client(api_url) as client:
        models = {model.name: model for model in client.models()}
    assert set(models) == {"generator", "summarizer", "classifier"}
    assert models["generator"].chat_template is True
    listed = cli(api_url, "models")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert rows["generator"][1:4] == ["generator", "generate", str(models["generator"].workers)]


def test_submit_with_a_key_and_a_wait(api_url: str):
    key = f"cli-{os.getpid()}-{free_port()}"
    args = ("submit", "sentiment", "What a day", "--idempotency-key", key, "--wait", "20")
    first, again = cli(api_url, *args), cli(api_url, *args)
    assert first.returncode == again.returncode == 0, first.stderr
    job_id = re.match(r"job (\S+) succeeded \(sentiment\)", first.stdout)[1]
    assert again.stdout.startswith(f"job {job_id} succeeded")  # the same job, not a second
    assert "POSITIVE" in first.stdout or "NEGATIVE" in first.stdout
