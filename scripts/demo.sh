#!/usr/bin/env bash
# Set up (idempotent) and run the main job: stock vs ESamp samples side by side on this machine.
# Extra arguments go to `esamp-sgl demo` (see `.venv/bin/esamp-sgl demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/esamp-sgl demo "$@"
