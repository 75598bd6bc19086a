#!/usr/bin/env bash
# Quickstart command 2: set up .venv with the test extras (timm, Captum, Quantus, transformers, a real pretrained
# CNN, MkDocs and the notebook runner) and run the whole test suite.
# pytest exits non-zero on any failure and with code 5 when no test was collected, so CI cannot pass silently.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,timm,captum,quantus,peers,real-models,hf,docs,notebooks
# -n auto: one worker per CPU core (pytest-xdist, a test extra): the suite takes half the time on 2 cores
exec .venv/bin/python -m pytest -n auto "$@"
