"""`sglang.Engine` with exploration, no DSL and no server: `custom_params` in the sampling parameters.

    python examples/engine_generate.py                   # the bundled model (`esamp-sgl models prepare`)
    python examples/engine_generate.py --model-path M    # any Hugging Face model folder

The engine is SGLang's own, started with `sampling_backend="esamp"` (the plugin is loaded by SGLang
through its entry point). The n samples of the request share one Distiller; each output's telemetry
is in `meta_info["esamp"]`.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--beta", type=float, default=1.0)
    args = parser.parse_args(argv)

    import torch

    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        os.environ["SGLANG_USE_CPU_ENGINE"] = "1"  # SGLang's CPU engine; set before sglang is imported
    import sglang
    from transformers import AutoTokenizer

    from esamp_sgl.core.telemetry import group_report

    model_path = args.model_path
    if model_path is None:
        from esamp_sgl.launch.models import prepare_model

        model_path = str(prepare_model())
    # On CPU: no GPU attention kernels, and a small KV cache (the default would reserve ~15 GB).
    cpu = {"device": "cpu", "attention_backend": "torch_native", "mem_fraction_static": 0.05} if on_cpu else {}
    engine = sglang.Engine(model_path=model_path, sampling_backend="esamp", log_level="warning", **cpu)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Invent a name for a new board game. Reply with the name only."}],
            tokenize=False, add_generation_prompt=True)
        outputs = engine.generate(prompt, sampling_params={
            "n": args.n, "max_new_tokens": args.max_tokens, "temperature": 1.0, "min_p": 0.05,
            "custom_params": {"esamp": True, "esamp_beta": args.beta},
        })
    finally:
        engine.shutdown()
    outputs = outputs if isinstance(outputs, list) else [outputs]
    for i, out in enumerate(outputs):
        print(f"[{i}] {out['text'].strip()!r}")
    reports = [out["meta_info"]["esamp"][0] for out in outputs]
    print(f"{len(outputs)} samples; ESamp groups: {sorted({t['group'] for t in reports})}")
    last = group_report(reports)  # the last member to leave saw the most steps
    print(f"Distiller: steps_trained={last['steps_trained']} predictions={last['predictions']} "
          f"tokens_reweighted={last['tokens_reweighted']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
