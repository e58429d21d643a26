#!/usr/bin/env bash
# Set up nclab in ./.venv: Fashion-MNIST from Debian (when apt is available), PyTorch
# (the CPU build 2.13.0 when no NVIDIA GPU is present), then nclab with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
      || echo "setup: could not install Debian's dataset-fashion-mnist; pass --data-dir to nclab instead" >&2
  fi
fi

# pip on some machines warns about absent local index folders; keep the output readable.
pipq() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pipq "torch>=2.1,<2.15"
  else
    pipq torch==2.13.0   # CPU build
  fi
fi
pipq -e ".[dev]"
