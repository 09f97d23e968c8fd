#!/usr/bin/env bash
# GPU check, for a lent GPU machine (device tool): one prepared run that must finish within 8 minutes.
#   bash benchmarks/gpu_check.sh            # writes JSON/logs under $OUT (default ./gpu-check-out)
# Stages, each time-boxed so a slow one cannot eat the next's time; a stage that fails is recorded in
# summary.json and the script goes on:
#   1. install the gpu profile (full sglang==0.5.23 with FlashInfer and sgl-kernel) + the model;
#   2. the CUDA/FlashInfer tests of the core (tests/core/test_cuda_backends.py) and the core tests;
#   3. the core micro-benchmark on CUDA (FlashInfer candidates, side-stream training);
#   4. the serving overhead benchmark on a random-weight 0.5B-class Qwen2 (hidden 896, 24 layers;
#      SmolLM2's tokenizer and vocabulary) — speed only, the text is noise;
#   5. a small diversity eval and pass@k on SmolLM2-135M (the only real weights available offline).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
export ESAMP_SGL_CACHE=${ESAMP_SGL_CACHE:-$OUT/cache}
started=$(date +%s)
declare -A status

stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "[gpu_check] $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status[$name]="rc=$rc seconds=$(( $(date +%s) - t0 ))"
  echo "[gpu_check] $name: ${status[$name]}"
  tail -3 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
stage install 270 bash scripts/setup.sh gpu
PY=.venv/bin/python
stage core_tests 60 $PY -m pytest -q tests/core -x --timeout=50
stage core_bench 40 bash -c "$PY -m esamp_sgl.bench.core --device cuda --rows 8 64 256 --hidden 896 3584 --vocab 151936 > $OUT/core-bench.json"
stage random_qwen2_0p5b 30 $PY - "$OUT/qwen2-0.5b-random" <<'PY'
import sys, torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from esamp_sgl.launch.models import resolve_model_path
tok = AutoTokenizer.from_pretrained(resolve_model_path(None))
torch.manual_seed(0)
cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                  tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1]); tok.save_pretrained(sys.argv[1])
PY
stage overhead_0p5b 150 .venv/bin/esamp-sgl bench overhead --model-path "$OUT/qwen2-0.5b-random" \
  --prompts 16 --n 8 --max-tokens 128 --rounds 3 --output "$OUT/overhead-0.5b"
stage eval_diversity 90 .venv/bin/esamp-sgl eval diversity --limit 8 --n 8 --max-tokens 48 --replicates 1 \
  --arms quick --concurrency 32 --output "$OUT/eval-diversity"
stage eval_passk 40 .venv/bin/esamp-sgl eval passk --count 40 --n 16 --arms passk --concurrency 32 \
  --output "$OUT/eval-passk"

{
  echo "{"
  echo "  \"total_seconds\": $(( $(date +%s) - started )),"
  echo "  \"stages\": {"
  first=1
  for k in install core_tests core_bench random_qwen2_0p5b overhead_0p5b eval_diversity eval_passk; do
    [ $first = 1 ] || echo ","
    first=0
    printf '    "%s": "%s"' "$k" "${status[$k]:-not run}"
  done
  echo ""
  echo "  }"
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
