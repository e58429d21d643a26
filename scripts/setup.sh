#!/usr/bin/env bash
# Set up nclab in ./.venv, saying what it does, one line per step:
#   bash scripts/setup.sh         the runtime: what `nclab compare` needs (PyTorch, numpy, scipy,
#                                 matplotlib, ...), nothing more
#   bash scripts/setup.sh --dev   the runtime plus the dev extras: pytest, ruff and every optional
#                                 integration the tests exercise (Lightning, TensorBoard, W&B,
#                                 pandas, submitit, the notebook runner)
# Steps: Fashion-MNIST from Debian (when apt is available and it is missing), the virtual
# environment, PyTorch (the CPU build 2.13.0 when no NVIDIA GPU is present), then nclab itself.
# pip's own output is kept in .venv/setup.log; a failing step prints its tail.
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown option $arg (use --dev for the test tools, or nothing)" >&2; exit 2 ;;
  esac
done

START=$SECONDS
step() { printf 'setup: %s\n' "$*"; }
LOG=.venv/setup.log

# Run "$@" with its output in $LOG; on failure show the log's tail and stop.
quietly() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: failed: $* (last lines of $LOG below)" >&2
    grep -v "is neither a file nor a directory" "$LOG" | tail -n 20 >&2
    exit 1
  fi
}

if ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  step "Fashion-MNIST: found in /usr/share/datasets/fashion-mnist"
elif command -v apt-get >/dev/null 2>&1; then
  step "Fashion-MNIST: installing Debian's dataset-fashion-mnist (apt-get)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to nclab instead" >&2
else
  step "Fashion-MNIST: not found and no apt-get; pass --data-dir to nclab (docs/data.md)"
fi

PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then
  step "virtual environment: reusing .venv"
else
  step "virtual environment: creating .venv with $("$PY" --version 2>&1)"
  "$PY" -m venv .venv
fi
: >"$LOG"
quietly .venv/bin/python -m pip install --upgrade pip

if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  step "PyTorch: $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  step "PyTorch: installing a CUDA build (an NVIDIA GPU is present; a few minutes)"
  quietly .venv/bin/python -m pip install "torch>=2.1,<2.15"
else
  step "PyTorch: installing the CPU build 2.13.0 (no NVIDIA GPU found)"
  quietly .venv/bin/python -m pip install torch==2.13.0
fi

if [ "$DEV" = 1 ]; then
  step "nclab: installing it (editable) with the dev extras: tests, lint, integrations"
  quietly .venv/bin/python -m pip install -e ".[dev]"
else
  step "nclab: installing it (editable) with its runtime dependencies"
  quietly .venv/bin/python -m pip install -e .
fi
step "done in $((SECONDS - START)) s: $(du -sh .venv | cut -f1) in .venv; run .venv/bin/nclab --help"
