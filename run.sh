#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs vfmxai with pinned dependencies
# (torch==2.13.0 through constraints.txt, so no CUDA packages are pulled), then runs
#   ./run.sh demo [ARGS]   -> vfmxai demo ARGS
#   ./run.sh test [ARGS]   -> ruff + pytest ARGS
#   ./run.sh vfmxai ARGS   -> any vfmxai command
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VFMXAI_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    echo "[run.sh] installing vfmxai and its pinned dependencies into $VENV ..." >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[dev]" >&2
    touch "$stamp"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd=${1:-demo}
shift || true
case "$cmd" in
    demo) exec "$VENV/bin/vfmxai" demo "$@" ;;
    test)
        "$VENV/bin/ruff" check src tests scripts
        exec "$VENV/bin/python" -m pytest "$@" ;;
    vfmxai) exec "$VENV/bin/vfmxai" "$@" ;;
    *) echo "usage: ./run.sh {demo|test|vfmxai} [ARGS]" >&2; exit 2 ;;
esac
