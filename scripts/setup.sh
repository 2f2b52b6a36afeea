#!/usr/bin/env bash
# Set up everything on a fresh machine: the Fashion-MNIST Debian package (real data for
# calibration and accuracy), a virtualenv in .venv, CPU torch 2.13.0 and the project with all
# extras that install here (export, openvino, dev). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# real high-resolution photos (12 nature photos, 1280-2560 px) for calibration/parity at 512 px and
# up (`--calib photos`); optional: everything else works without them
if [ ! -d /usr/share/backgrounds/mate/nature ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mate-backgrounds >/dev/null 2>&1 \
    || echo "note: mate-backgrounds not installed; --calib photos uses scikit-image's photos only"
fi

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first and pinned: 2.13.0 is the CPU wheel on local disk; anything else pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[export,openvino,dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import veca_deploy, torch, onnxruntime, openvino; print('veca-deploy', veca_deploy.__version__, 'ready')"
