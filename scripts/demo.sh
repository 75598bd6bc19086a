#!/usr/bin/env bash
# Quickstart command 1: set up .venv and run the offline end-to-end demo. Extra arguments go to `castream demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/castream demo "$@"
