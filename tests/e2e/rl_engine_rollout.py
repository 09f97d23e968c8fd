"""An RL-style rollout through the in-process `sglang.Engine`, run as a script by test_rl_rollouts.py
(sglang.Engine needs its own process: its shutdown kills every child of the calling process).

The way verl's SGLang rollout calls it: every prompt repeated n times by the trainer, one batch of
token-id lists, `n = 1`, one sampling-params dict for the whole batch. With
`ESAMP_SGL_GROUP_BY=prompt` in the environment the copies of each prompt share one Distiller.
Prints one JSON line of observations.
"""

from __future__ import annotations

import json
import os
import sys

from esamp_sgl.launch.models import prepare_model
from esamp_sgl.launch.server import open_engine

REPEATS = 4
MAX_TOKENS = 8


def main() -> None:
    assert os.environ.get("ESAMP_SGL_GROUP_BY") == "prompt", "run with ESAMP_SGL_GROUP_BY=prompt"
    model = os.environ.get("ESAMP_SGL_TEST_MODEL") or str(prepare_model())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in ("Name a colour.", "Name a river.")]
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    batch = [ids for ids in prompts for _ in range(REPEATS)]  # verl: repeat_interleave(n) in the trainer
    params = {"n": 1, "max_new_tokens": MAX_TOKENS, "temperature": 1.0, "min_p": 0.05, "ignore_eos": True,
              "custom_params": {"esamp": True}}
    with open_engine(model, sampling_backend="esamp", random_seed=7) as engine:
        outs = engine.generate(input_ids=batch, sampling_params=params)
    reports = [o["meta_info"].get("esamp", [None])[0] for o in outs]
    out = {
        "groups": [r["group"] if r else None for r in reports],
        "members_joined": [r.get("members_joined") if r else None for r in reports],
        "predictions": [r.get("predictions") if r else None for r in reports],
        "completion_tokens": [o["meta_info"]["completion_tokens"] for o in outs],
        "repeats": REPEATS,
    }
    print("RESULT " + json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
