#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, including the end-to-end tests against a real
# SGLang server on this machine's CPU with SmolLM2-135M. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest tests --timeout=900 "$@"
