"""``python -m tests.support.compiled_rows FOLDER``: loads the generator saved in FOLDER
with its decode step compiled, as a worker loads it (in a process of its own, with
Python's default warning filters), and checks that the rows of the parity test, joining
and leaving the decode loop, and a row alone write what ``generate`` writes, with no
compilation after the load. Exits with an assertion error otherwise."""

import sys

import torch

from tests.worker.test_parity import (
    LIMITS,
    PROMPTS,
    assert_rows_match_generate,
    context,
    generate_alone,
)
from worker.config import WorkerSettings
from worker.decode_loop import DecodeRow, decode_batch
from worker.device_loop import Pending
from worker.models import ModelRegistry, ModelRole


def main(folder: str) -> None:
    settings = WorkerSettings(
        generator_model=folder, device="cpu", compile=True, batch_max_size=len(PROMPTS)
    )
    served = ModelRegistry(settings).get(ModelRole.GENERATOR)
    assert served.compiled_step is not None
    with torch.compiler.set_stance("fail_on_recompile"):
        assert_rows_match_generate(served, served.model)
        # A request alone (its cache is never trimmed).
        prompt = context(served.tokenizer, PROMPTS[2])
        alone = [Pending(DecodeRow(prompt, LIMITS[2], temperature=0.0, top_p=1.0, seed=0))]
        with torch.inference_mode():
            decode_batch(served, alone, capacity=len(PROMPTS))
        expected = generate_alone(served.model, prompt, LIMITS[2], served.tokenizer.eos_token_id)
        assert alone[0].future.result().tokens == expected


if __name__ == "__main__":
    main(sys.argv[1])
