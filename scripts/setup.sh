#!/usr/bin/env bash
# Create (once) and update (when pyproject.toml changes) the project's virtual environment in .venv.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh test,timm
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "castream: creating .venv with $($python --version)" >&2
    "$python" -m venv .venv
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
stamp="$(cat pyproject.toml setup.py src/castream/_components.c | sha256sum | cut -c1-16)-$extras"
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "castream: installing $spec into .venv (first time: a few minutes, torch is large)" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    echo "$stamp" > .venv/.setup-stamp
fi
