#!/usr/bin/env bash
# GPU check: the one command a lent GPU machine needs. That machine (the device tool) has one NVIDIA GPU,
# Python 3.12 with its own torch for its CUDA, no package index, at most 64 MiB of ignored files carried
# with the working tree and 10 minutes per command. So:
#   here:   bash scripts/build_wheelhouse.sh       # .wheelhouse/: cp312 wheels of benchmarks/gpu_requirements.txt
#   there:  bash benchmarks/gpu_check.sh           # device tool: carry [".wheelhouse"], timeout_s 540
# The project is not installed there: the wheels go into a target folder, the repo goes on PYTHONPATH, and
# the machine's own torch is used. Each stage is time-boxed (limits below add up to at most 8 minutes;
# tests/packaging/test_gpu_wheelhouse.py checks the sum), writes its log and JSON under $OUT as it goes,
# and a stage that fails is recorded in summary.json (rewritten after every stage) while the next runs:
#   install      the wheelhouse into $SITE with --no-index --no-deps
#   env          GPU, Python, torch and package versions (env.json); fails without CUDA
#   cuda_tests   every CUDA-marked test of the core (pytest -m cuda tests/core; junit XML)
#   bench_counts `esamp-sgl bench core --device cuda --no-timing`: launches/bytes per step at the GPU shapes
#   bench_timing `esamp-sgl bench core --device cuda --no-counts`: per-step milliseconds, stock vs ESamp
#   core_tests   the rest of tests/core on this torch (test_telemetry_read.py among them; junit XML)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  echo "usage: bash benchmarks/gpu_check.sh  (no arguments; results go to \$OUT)" >&2
  exit 2
fi
OUT=${OUT:-$PWD/gpu-check-out}
WHEELHOUSE=${ESAMP_SGL_WHEELHOUSE:-.wheelhouse}
SITE=${ESAMP_SGL_GPU_SITE:-/tmp/esamp-gpu-site}
PY=${PYTHON:-python3}
KILL_AFTER=5  # seconds between a stage's TERM and KILL; counted in the 8-minute budget
mkdir -p "$OUT"
export PYTHONPATH="$SITE:$PWD" PYTHONDONTWRITEBYTECODE=1 ESAMP_SGL_CACHE=/tmp/esamp-sgl-cache
started=$(date +%s)
stages=()

summary() {  # summary.json: every stage so far, rewritten after each so a cut-off run still reports
  "$PY" - "$OUT/summary.json" "$(( $(date +%s) - started ))" "${stages[@]}" <<'PY'
import json, sys
path, total, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
stages = {name: {"rc": int(rc), "seconds": int(s), "limit": int(lim)}
          for name, rc, s, lim in (row.split(":") for row in rows)}
json.dump({"total_seconds": total, "ok": all(v["rc"] == 0 for v in stages.values()), "stages": stages},
          open(path, "w"), indent=1)
PY
}

stage() {  # stage NAME SECONDS CMD...: run CMD under a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  echo "[gpu_check] $name (limit ${limit}s)"
  timeout --kill-after=$KILL_AFTER "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  stages+=("$name:$rc:$(( $(date +%s) - t0 )):$limit")
  echo "[gpu_check] $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  tail -5 "$OUT/$name.log"
  summary
}

if ! ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
  echo "gpu_check.sh: no wheels in $WHEELHOUSE: run 'bash scripts/build_wheelhouse.sh' where an index" \
    "is reachable, and carry .wheelhouse" >&2
  exit 2
fi

install_wheels() {
  rm -rf "$SITE"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$SITE" "$WHEELHOUSE"/*.whl
  else  # no pip on the machine: a wheel is a zip laid out for site-packages (no scripts are needed here)
    "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$SITE" "$WHEELHOUSE"/*.whl
  fi
}
export -f install_wheels  # `timeout` runs programs, not shell functions: run it as `bash -c install_wheels`
export PY WHEELHOUSE SITE

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
stage install 45 bash -c install_wheels
stage env 20 "$PY" - "$OUT/env.json" <<'PY'
import json, platform, sys
import numpy, pydantic, pytest, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "numpy": numpy.__version__,
        "pydantic": pydantic.VERSION, "pytest": pytest.__version__}
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name(0)
    info["capability"] = list(torch.cuda.get_device_capability(0))
try:
    import flashinfer
    info["flashinfer"] = flashinfer.__version__
except Exception:  # absent, or present but unusable here
    info["flashinfer"] = None  # informational only: ESamp's core no longer uses FlashInfer
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(info)
sys.exit(0 if info["cuda_available"] else 1)
PY
stage cuda_tests 140 "$PY" -m pytest -q -rA -p no:cacheprovider -m cuda tests/core --timeout=100 \
  --junitxml="$OUT/cuda_tests.xml"
# Counts first (deterministic, the 7B shape R 256 / H 3584 / V 152064 among them), then timing; each
# JSON is rewritten after every case, so a stage cut off by its limit still leaves what it measured.
stage bench_counts 40 "$PY" -m esamp_sgl.cli bench core --device cuda --no-timing --train-every 1 4 \
  --output "$OUT/bench-core-counts.json"
stage bench_timing 80 "$PY" -m esamp_sgl.cli bench core --device cuda --no-counts \
  --rows 64 256 --hidden 896 3584 --vocab 152064 --repeats 5 --output "$OUT/bench-core-timing.json"
# Last: the CPU-side core tests on this torch (the GPU results above do not wait on them).
stage core_tests 100 "$PY" -m pytest -q -p no:cacheprovider -m "not cuda" tests/core --timeout=60 \
  --maxfail=20 --junitxml="$OUT/core_tests.xml"

cat "$OUT/summary.json"
