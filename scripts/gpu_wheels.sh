#!/usr/bin/env bash
# Download into .whl/ the wheels that the lent GPU machine (Python 3.12, torch preinstalled, no
# network) lacks, then check the set: every requirement reached from pyproject.toml through the
# wheels' Requires-Dist is preinstalled there or carried, one version each, the pinned versions,
# at most 60 MiB in all. The list lives in scripts/gpu_wheels.py. Run here, where pip reaches PyPI:
#     bash scripts/gpu_wheels.sh          (or: make gpu-wheels)
# docs/gpu.md says how the folder travels and how scripts/gpu_check.py installs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${WHEEL_DIR:-.whl}
# the checker needs `packaging` (or pip's copy of it): the project's venv has it, so does python3
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

mapfile -t PINS < <("$PY" scripts/gpu_wheels.py pins)
PLATFORMS=()
for p in $("$PY" -c 'import sys; sys.path.insert(0, "scripts"); import gpu_wheels; print(" ".join(gpu_wheels.PLATFORMS))'); do
    PLATFORMS+=(--platform "$p")
done
mkdir -p "$DEST"
echo "downloading ${#PINS[@]} wheels for CPython 3.12 on x86-64 Linux into $DEST/"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DEST" "${PINS[@]}"
if ! "$PY" scripts/gpu_wheels.py check "$DEST"; then
    echo "gpu_wheels.sh: the wheel set in $DEST is not right (see PROBLEM lines above)" >&2
    exit 1
fi
