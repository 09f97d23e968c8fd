#!/usr/bin/env bash
# Build the wheelhouse that benchmarks/gpu_check.sh installs from on the lent GPU machine (Python 3.12,
# its own torch, no package index, at most 64 MiB of ignored files carried along):
#   bash scripts/build_wheelhouse.sh [DEST]     # default: .wheelhouse (git-ignored); needs a package index
# cp312 manylinux x86-64 wheels of benchmarks/gpu_requirements.txt. Downloaded with --no-deps, so every
# wheel is one of the pins and nothing unpinned slips in; tests/packaging/test_gpu_wheelhouse.py proves
# the pinned set is closed (every dependency present) for Python 3.12 and resolves offline.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 1 ] || [[ ${1:-} == -* ]]; then echo "usage: $0 [DEST]  (default .wheelhouse)" >&2; exit 2; fi
dest=${1:-.wheelhouse}
requirements=benchmarks/gpu_requirements.txt
python=${PYTHON:-python3}
max_bytes=$((64 * 1024 * 1024))  # the device tool carries at most 64 MiB of ignored files

# Download next to DEST, then swap it in: a failed or partial build never leaves a half wheelhouse.
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$(dirname "$dest")/.wheelhouse-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The GPU machine's glibc is at least 2.28 (its torch's CUDA 13 wheels are manylinux_2_28).
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp" -r "$requirements"

bytes=$(du -cb "$tmp"/*.whl | tail -1 | cut -f1)
if [ "$bytes" -ge "$max_bytes" ]; then
  echo "build_wheelhouse.sh: $bytes bytes, over the 64 MiB the device tool carries" >&2
  exit 1
fi
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "[wheelhouse] $(ls "$dest"/*.whl | wc -l) wheels, $((bytes / 1024)) KiB in $dest"
