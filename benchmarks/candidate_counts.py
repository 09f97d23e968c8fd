"""Candidate-set sizes of SmolLM2-135M-Instruct under common filters, on sampled continuations.

    python benchmarks/candidate_counts.py "$(esamp-sgl models path | tail -1)" > docs/results/candidate-counts-smollm2.json
(12 bench prompts, 48 steps each sampled at T = 1, one thread; a few minutes on CPU.)
"""
import json, sys, torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from esamp_sgl.core.candidates import candidate_set
from esamp_sgl.bench.overhead import PROMPTS, _chat
mp = sys.argv[1]
tok = AutoTokenizer.from_pretrained(mp)
model = AutoModelForCausalLM.from_pretrained(mp, torch_dtype=torch.float32).eval()
torch.manual_seed(0)
prompts = [_chat(p) for p in PROMPTS]  # 12 prompts
configs = {"min_p=0.05,T=1": (1.0, 0, 1.0, 0.05), "top_p=0.95,T=0.8": (0.8, 0, 0.95, 0.0),
           "top_p=0.9,T=1": (1.0, 0, 0.9, 0.0), "top_p=0.95,T=1": (1.0, 0, 0.95, 0.0),
           "top_k=50,T=1": (1.0, 50, 1.0, 0.0), "min_p=0.02,T=1.3": (1.3, 0, 1.0, 0.02)}
counts = {k: [] for k in configs}
steps = 48
with torch.no_grad():
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
    ids, attn = enc.input_ids, enc.attention_mask
    past = None
    out = model(input_ids=ids, attention_mask=attn, use_cache=True)
    for t in range(steps):
        logits = out.logits[:, -1].float()
        rows = logits.shape[0]
        for name, (temp, k, p, m) in configs.items():
            scaled = logits / temp
            c = candidate_set(scaled, torch.full((rows,), k), torch.full((rows,), p), torch.full((rows,), m),
                              1 << 20)
            counts[name] += c.keep.sum(-1).tolist()
        nxt = torch.multinomial(torch.softmax(logits, -1), 1)  # continue with T=1 samples
        ids = nxt
        attn = torch.cat([attn, torch.ones(rows, 1, dtype=attn.dtype)], 1)
        out = model(input_ids=ids, attention_mask=attn, past_key_values=out.past_key_values, use_cache=True)
res = {}
for name, xs in counts.items():
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    res[name] = {"rows": len(xs), "median": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": xs[-1],
                 "over_K": {K: sum(x > K for x in xs) / len(xs) for K in (16, 32, 64, 128, 256, 512, 1024)}}
print(json.dumps({"model": "SmolLM2-135M-Instruct", "prompts": len(prompts), "steps": steps,
                  "continuation": "sampled at T=1, no filter", "candidates": res}, indent=1))
