#!/usr/bin/env bash
# Creates .venv with everything pinned and installs vexkd editable. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
# A sourced /opt/ros must not leak into the wheel environment (random load failures).
unset LD_LIBRARY_PATH AMENT_PREFIX_PATH PYTHONPATH CMAKE_PREFIX_PATH
python=${PYTHON:-python3}
started=$(date +%s)

quiet_pip() {
  # pip warns about every unreachable local index it is configured with; keep real errors.
  .venv/bin/python -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

[ -x .venv/bin/python ] || "$python" -m venv .venv
echo "installing pinned requirements into .venv ..."
quiet_pip install -q -r requirements.txt -r requirements-ros-wheels.txt -r requirements-dev.txt
.venv/bin/python tools/build_interfaces.py
quiet_pip install -q --no-deps --no-build-isolation -e .
echo "environment ready in $(( $(date +%s) - started )) s: $(du -sh .venv | cut -f1) in .venv"
