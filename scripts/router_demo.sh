#!/usr/bin/env bash
# Two esamp CPU workers behind SGLang's router (the SGLang Model Gateway), loopback only: which worker a
# prompt group / an explicit group lands on per routing policy, 1 vs 2 workers, a worker killed mid-group.
#   bash scripts/router_demo.sh [OUT] [esamp-sgl bench router flags]       # OUT default: results/router
#   ROUTER=sglang-router bash scripts/router_demo.sh ...                    # the older package (drops custom_params)
# The router is installed with `pip install --target .venv/routers/<name>-<version>` on first use (not a
# dependency of esamp-sgl, not in the project's site-packages). ~4 min on 2 cores, plus set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ROUTER=${ROUTER:-smg}
case "$ROUTER" in
  smg) VERSION=1.13.0 ;;            # the gateway's current package; forwards custom_params
  sglang-router) VERSION=0.3.2 ;;   # its older name; drops custom_params (docs/scale-out.md)
  *) echo "router_demo.sh: ROUTER must be smg or sglang-router, got '$ROUTER'" >&2; exit 2 ;;
esac
DIR=.venv/routers/$ROUTER-$VERSION
if [ ! -f "$DIR/.installed" ]; then
  .venv/bin/python -m pip install --disable-pip-version-check --no-warn-conflicts --quiet --target "$DIR" "$ROUTER==$VERSION"
  touch "$DIR/.installed"
fi
OUT="${1:-results/router}"
shift || true
exec .venv/bin/python -m esamp_sgl.bench.router --output "$OUT" --router "$ROUTER" --router-path "$DIR" "$@"
