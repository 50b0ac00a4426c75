#!/usr/bin/env bash
# The CPU-only install: `bash tools/install_cpu.sh` (from anywhere; the venv is <project>/.venv), then
# `. .venv/bin/activate && kedro run`.
#
# torch's CPU wheels come from PyTorch's own index (a venv of about 1.5 GB). A machine that reaches only PyPI
# (or a PyPI mirror) gets PyPI's torch instead, its CUDA build (a venv of about 6.5 GB), which runs on the CPU
# just the same. Either way torchvision's NMS must run beside that torch, or the script goes on to the next
# source. It says which source it used. FRCNN_TORCH_CPU_INDEX picks another CPU wheel index (a mirror of
# PyTorch's), or "none" to go to PyPI at once.
set -euo pipefail
cd "$(dirname "$0")/.."
index="${FRCNN_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip

torch_works() {
  python -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5)" 2>/dev/null
}

source=""
if [ "$index" != "none" ]; then
  if pip install -q --timeout 20 --retries 1 --index-url "$index" torch torchvision && torch_works; then
    source="PyTorch's CPU wheel index ($index)"
  else
    echo "No working torch and torchvision from $index (unreachable, or no pair for this Python): trying PyPI."
    pip uninstall -q -y torch torchvision 2>/dev/null || true
  fi
fi
if [ -z "$source" ]; then
  pip install -q torch torchvision
  torch_works || { echo "torch and torchvision from PyPI do not run together here: see docs/getting-started.md, "No GPU?"." >&2; exit 1; }
  source="PyPI"
fi
pip install -q -e .
python -c "import torch, torchvision; build = 'CUDA' if torch.version.cuda else 'CPU'; print(f'torch {torch.__version__} ({build} build) and torchvision {torchvision.__version__}', end=' ')"
echo "from $source; the venv takes $(du -sh .venv | cut -f1)."
echo "Next: . .venv/bin/activate && kedro run"
