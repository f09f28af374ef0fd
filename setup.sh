#!/usr/bin/env bash
# Create .venv and install hbt-tools with its offline default model and test tools.
# torch==2.13.0 first: the CPU build (a wider spec may pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e '.[offline,test,plot]'
echo "hbt-tools installed in .venv (activate with: . .venv/bin/activate)" >&2
